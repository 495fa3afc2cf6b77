"""fcn-submit: validate a job spec and enqueue one training job per FCN variant."""

from __future__ import annotations

import json

import click

from fcn_dist.cli.support import Command, redis_options
from fcn_dist.errors import SpecError

VARIANT_CHOICES = ("all", "32s", "16s", "8s")


def parse_variants(value: str) -> list[str]:
    """``all`` -> the three variants (32s, 16s, 8s); else a comma-separated list of them."""
    from fcn_dist.spec import VARIANTS

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SpecError("--variant: give all, 32s, 16s or 8s")
    out: list[str] = []
    for v in items:
        if v == "all":
            out.extend(VARIANTS)
        elif v in VARIANTS:
            out.append(v)
        else:
            raise SpecError(f"--variant: unknown variant {v!r}; choose from {', '.join(VARIANT_CHOICES)}")
    return list(dict.fromkeys(out))


def _retention(_ctx, _param, value: str | None) -> float | str:
    """The flag, else $FCN_RETENTION, else 7d, checked before Redis is contacted."""
    from fcn_dist import config

    try:
        seconds = config.retention_seconds(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return "never" if seconds is None else seconds


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spec", "spec_path", required=True, metavar="FILE", help="Job spec (YAML).")
@click.option("--variant", default="all", show_default=True, metavar="all|32s|16s|8s",
              help="Variant(s) to train; 'all' submits 32s, 16s and 8s (comma lists work too).")
@click.option("--backbone", default=None, metavar="NAME", help="Override the spec's backbone.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec field (repeatable), e.g. --set epochs=2.")
@click.option("--priority", type=int, default=0, show_default=True,
              help="Higher runs first (-1000..1000); FIFO within a priority.")
@click.option("--staged", is_flag=True,
              help="Chain 32s -> 16s -> 8s: each waits for the previous and starts from its best checkpoint.")
@click.option("--force", is_flag=True, help="Submit even if the same job is already waiting, queued or running.")
@click.option("--max-attempts", type=int, default=3, show_default=True,
              help="Attempts before a failing job is dead-lettered.")
@click.option("--retention", default=None, metavar="DURATION|never", callback=_retention,
              show_default="$FCN_RETENTION or 7d",
              help="How long the jobs are kept once finished (30m, 12h, 7d, never).")
@redis_options
@click.option("--json", "as_json", is_flag=True, help="Print the submissions as JSON.")
def main(spec_path: str, variant: str, backbone: str | None, overrides: tuple[str, ...],
         priority: int, staged: bool, force: bool, max_attempts: int, retention: float | str,
         redis_url: str, prefix: str, as_json: bool) -> None:
    """Submit training jobs; prints one job id per line (an existing id for a duplicate)."""
    from fcn_dist.queue.redis_queue import JobQueue
    from fcn_dist.spec import load_spec

    variants = parse_variants(variant)
    # everything the worker would refuse is refused here, before Redis is contacted
    spec = load_spec(spec_path, overrides, variant=variants[0], backbone=backbone)
    for v in variants[1:]:
        spec.replace(variant=v)  # validate every variant up front
    _check_local_data(spec)
    q = JobQueue(redis_url, prefix=prefix)

    def warn(delay: float, err: Exception) -> None:
        click.echo(f"redis unavailable, retrying in {delay:.1f}s ({err})", err=True)

    q.call_with_retry(q.ping, attempts=3, base=0.5, on_retry=warn)
    subs = q.call_with_retry(
        lambda: q.submit_variants(spec, variants, staged=staged, priority=priority,
                                  max_attempts=max_attempts, force=force, retention=retention),
        attempts=1 if force else 3, base=0.5, on_retry=warn)
    for note in _unapplied_settings(q, subs, priority=priority, max_attempts=max_attempts):
        click.echo(note, err=True)
    if as_json:
        click.echo(json.dumps([{"id": s.id, "variant": s.variant, "state": s.state,
                                "created": s.created} for s in subs]))
        return
    for s in subs:
        click.echo(s.id)
    summary = ", ".join(f"{s.variant} {s.id} ({s.state}{'' if s.created else ', already submitted'})"
                        for s in subs)
    click.echo(f"submitted {spec.name}: {summary}", err=True)


def _unapplied_settings(q, subs, **asked: int) -> list[str]:
    """A note per duplicate submission whose explicitly given --priority/--max-attempts differ
    from the existing job's: those are not changed (the existing job is returned as it is)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = {k: v for k, v in asked.items()
             if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    notes = []
    for s in subs:
        if s.created or not given:
            continue
        job = q.call_with_retry(lambda: q.get(s.id), attempts=3, base=0.5)
        kept = [f"--{k.replace('_', '-')} {v} not applied (it keeps {getattr(job, k)})"
                for k, v in given.items() if getattr(job, k) != v]
        if kept:
            notes.append(f"note: {s.variant} {s.id} was already submitted: {'; '.join(kept)}; "
                         "cancel it or use --force to submit anew")
    return notes


def _check_local_data(spec) -> None:
    """Where the prepared data is visible from this host, its val and test splits must exist
    and hold rows (the workers check again: they may see another copy)."""
    from fcn_dist import fs as fsio
    from fcn_dist.errors import FcnError

    manifest = spec.data_dir() / "manifest.json"
    try:
        splits = json.loads(fsio.read_text(manifest)).get("splits")
    except (OSError, ValueError, AttributeError, FcnError):  # not visible here: the worker checks
        return
    if isinstance(splits, dict):
        spec.eval_splits(splits, where=fsio.masked(manifest.parent))


if __name__ == "__main__":
    main()
