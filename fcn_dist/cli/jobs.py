"""fcn-jobs: look at and steer the job queue (list, show, cancel, retry, logs, dead letters,
purge)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import click

from fcn_dist.cli.support import Group, redis_options


def _ts(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _queue(ctx: click.Context):
    from fcn_dist.queue.redis_queue import JobQueue

    if ctx.obj is None:
        ctx.obj = JobQueue(ctx.meta["redis_url"], prefix=ctx.meta["prefix"])
    return ctx.obj


def _short(s: str, n: int = 60) -> str:
    s = " ".join((s or "").split())
    return s if len(s) <= n else s[: n - 3] + "..."


_HEADER = ["ID", "STATE", "VARIANT", "BACKBONE", "NAME", "ATTEMPTS", "PRIO", "WORKER", "UPDATED (UTC)",
           "ERROR"]


def _job_table(jobs) -> str:
    """The jobs as aligned text (a * after the state: cancel pending; a corrupt record shows
    its raw fields and why it is corrupt)."""
    from fcn_dist.report.tables import render

    return render(_HEADER, [
        [j.id, j.shown_state + ("*" if j.cancel_requested else ""), j.variant, j.backbone, j.name,
         _attempts(j), _raw(j, "priority", j.priority), j.worker or "-", _ts(j.updated_at),
         _short(j.error or j.corrupt, 50)] for j in jobs])


def _raw(job, name: str, parsed) -> str:
    """A field as parsed, or as stored when the record is corrupt (so the bad value shows)."""
    return str(job.raw.get(name, "-")) if job.corrupt else str(parsed)


def _attempts(job) -> str:
    return f"{_raw(job, 'attempts', job.attempts)}/{_raw(job, 'max_attempts', job.max_attempts)}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@redis_options
@click.pass_context
def main(ctx: click.Context, redis_url: str, prefix: str) -> None:
    """Inspect and control queued training jobs. IDs may be abbreviated (unique prefix)."""
    ctx.meta["redis_url"] = redis_url
    ctx.meta["prefix"] = prefix


@main.command("list")
@click.option("--state", default=None, metavar="STATE",
              help="Only jobs in STATE (waiting, queued, running, succeeded, failed, cancelled).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Only the newest N jobs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(ctx: click.Context, state: str | None, limit: int | None, as_json: bool) -> None:
    """List jobs, oldest first (a * after the state: cancel pending)."""
    jobs = _queue(ctx).list(state=state, limit=limit)
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in jobs], default=str))
    elif limit == 0:
        return  # asked for none: nothing to say
    elif jobs:
        click.echo(_job_table(jobs), nl=False)
    else:
        click.echo("no jobs" + (f" in state {state}" if state else ""))


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job: spec, state history, attempts, errors, result, run directory."""
    q = _queue(ctx)
    job = q.get(job_id)
    hist = q.history(job.id)
    if as_json:
        click.echo(json.dumps({**job.to_dict(), "history": hist}, default=str, indent=2))
        return
    lines = [
        f"job        {job.id}",
        f"name       {job.name}  ({job.variant}, {job.backbone})",
        f"state      {job.shown_state}" + (f" (cancel requested: {job.cancel_reason})" if job.cancel_requested else ""),
    ]
    if job.corrupt:
        lines.append(f"corrupt    {job.corrupt} (stored state {job.state or '-'}; fix the field, "
                     "then fcn-jobs retry)")
    lines += [
        f"attempts   {_raw(job, 'attempts', job.attempts)} of {_raw(job, 'max_attempts', job.max_attempts)}",
        f"priority   {_raw(job, 'priority', job.priority)}",
        f"created    {_ts(job.created_at)}",
        f"started    {_ts(job.started_at)}",
        f"finished   {_ts(job.finished_at)}",
        f"worker     {job.worker or '-'}",
    ]
    if job.state == "running":
        lines.append(f"lease      {job.lease} until {_ts(job.lease_deadline)} (last heartbeat "
                     f"{_ts(job.heartbeat_at)})")
    if job.retry_at and job.state == "queued":
        lines.append(f"retry at   {_ts(job.retry_at)}")
    if job.depends_on:
        lines.append(f"after      {job.depends_on} (staged; init_from {job.init_from or '-'})")
    lines.append(f"run dir    {job.run_dir or '-'}")
    if job.progress and job.state == "running":
        p = job.progress
        lines.append(f"progress   epoch {p.get('epoch')}/{p.get('epochs')}, step {p.get('step')}/"
                     f"{p.get('steps')}, val mIoU {p.get('miou') if p.get('miou') is not None else '-'}"
                     f", ETA {_eta(p)}")
    if job.dashboard:
        from fcn_dist.monitoring import dashboard_access_hint

        lines.append(f"dashboard  {job.dashboard.get('dashboard', '-')}"
                     f"  (Ray Train run {job.dashboard.get('run_name', '-')}; "
                     f"{dashboard_access_hint()})")
        if job.dashboard.get("ray_job"):
            lines.append(f"ray job    {job.dashboard['ray_job']}")
    if job.result:
        ckpt = job.result.get("best_checkpoint")
        if ckpt:
            lines.append(f"checkpoint {ckpt}")
        if job.result.get("miou") is not None:
            lines.append(f"score      {_score_line(job.result)}")
    if job.error:
        lines.append(f"error      {job.error}")
    lines.append("spec")
    lines += ["  " + ln for ln in json.dumps(job.spec_dict, indent=2, sort_keys=True).splitlines()]
    if job.result:
        lines.append("result")
        lines += ["  " + ln for ln in json.dumps(job.result, indent=2, sort_keys=True, default=str).splitlines()]
    if job.traceback:
        lines.append("traceback (tail)")
        lines += ["  " + ln for ln in job.traceback.rstrip().splitlines()[-15:]]
    lines.append("history")
    for h in hist:
        who = f" [{h.get('worker')}]" if h.get("worker") else ""
        lines.append(f"  {_ts(h.get('t'))}  {h.get('from') or '-':>9} -> {h.get('to'):<9} "
                     f"{h.get('event')}{who}: {h.get('reason')}")
    click.echo("\n".join(lines))


def _score_line(result: dict) -> str:
    """The final score of a result and the split it is on (``val (used for selection)`` when
    that split chose the checkpoint); results of older versions said only ``test_split``."""
    from fcn_dist.store import scored_on

    split = result.get("scored_on") or scored_on(result.get("eval_split") or result.get("test_split"),
                                                 result.get("eval_is_selection"))

    def f(v):
        return "-" if v is None else f"{float(v):.4f}"

    return (f"{split}: mIoU {f(result.get('miou'))}, pixel acc {f(result.get('pixel_accuracy'))}"
            f" (best epoch {result.get('best_epoch', '-')}, val mIoU {f(result.get('best_val_miou'))})")


@main.command()
@click.argument("job_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@click.pass_context
def cancel(ctx: click.Context, job_id: str, reason: str) -> None:
    """Cancel a job: at once if waiting/queued; a running job is stopped by its worker."""
    from fcn_dist.errors import QueueError

    q = _queue(ctx)
    jid = q.resolve(job_id)
    state = q.cancel(jid, reason)
    if state == "cancelling":
        click.echo(f"{jid} cancelling (its worker stops the run at the next heartbeat)")
    elif state == "cancelled":
        click.echo(f"{jid} cancelled")
    else:
        raise QueueError(f"job {jid} already {state}; nothing to cancel")


@main.command()
@click.argument("job_id")
@click.pass_context
def retry(ctx: click.Context, job_id: str) -> None:
    """Re-queue a failed (dead-lettered) or cancelled job with its attempts reset."""
    q = _queue(ctx)
    jid = q.resolve(job_id)
    click.echo(f"{jid} {q.retry(jid)}")


@main.command()
@click.argument("job_id")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job finishes.")
@click.option("--json", "as_json", is_flag=True,
              help="A JSON array of the lines (with --follow: one JSON string per line).")
@click.pass_context
def logs(ctx: click.Context, job_id: str, tail: int | None, follow: bool, as_json: bool) -> None:
    """Print the log lines the worker recorded for a job."""
    q = _queue(ctx)
    jid = q.resolve(job_id)
    lines = q.logs(jid, tail=tail)
    if as_json and not follow:
        click.echo(json.dumps(lines))
        return

    def say(ln: str) -> None:
        click.echo(json.dumps(ln) if as_json else ln)

    for ln in lines:
        say(ln)
    if not follow:
        return
    seen = len(q.logs(jid))
    while True:
        new = q.logs(jid)[seen:]
        for ln in new:
            say(ln)
        seen += len(new)
        if q.get(jid).state in ("succeeded", "failed", "cancelled") and not new:
            return
        time.sleep(1.0)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dead(ctx: click.Context, as_json: bool) -> None:
    """List dead-lettered jobs (failed after their last attempt), newest first."""
    jobs = _queue(ctx).dead_letters()
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in jobs], default=str))
    elif jobs:
        click.echo(_job_table(jobs), nl=False)
    else:
        click.echo("no dead-lettered jobs")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Queue depth per state, ready/delayed/dead counts and live workers."""
    q = _queue(ctx)
    counts = q.counts()
    workers = q.workers()
    if as_json:
        click.echo(json.dumps({**counts, "workers": workers}))
        return
    click.echo("  ".join(f"{k}={v}" for k, v in counts.items()))
    click.echo(f"workers seen in the last 2 min: {len(workers)}"
               + (f" ({', '.join(sorted(workers))})" if workers else ""))


@main.command()
@click.option("--count", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--job", "job_id", default=None, help="Only events of this job.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of the events (t: seconds).")
@click.pass_context
def events(ctx: click.Context, count: int, job_id: str | None, as_json: bool) -> None:
    """The latest state-change events of the queue (the Redis stream), oldest first."""
    q = _queue(ctx)
    jid = q.resolve(job_id) if job_id else None
    evs = q.events(count=count, job_id=jid)
    if as_json:
        click.echo(json.dumps([{"t": int(e["id"].split("-")[0]) / 1000.0, **e} for e in evs]))
        return
    for e in evs:
        t = int(e["id"].split("-")[0]) / 1000.0
        who = f" [{e['worker']}]" if e.get("worker") else ""
        click.echo(f"{_ts(t)}  {e['job']}  {e.get('from') or '-'} -> {e.get('to')}  "
                   f"{e.get('event')}{who}: {e.get('reason')}")


def _duration(_ctx, param, value: str | None) -> float | None:
    from fcn_dist.config import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value, f"--{param.name.replace('_', '-')}")
    except ValueError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from None


@main.command()
@click.argument("job_ids", nargs=-1, metavar="[ID]...")
@click.option("--older-than", callback=_duration, default=None, metavar="DURATION",
              help="Jobs that finished more than DURATION ago (30s, 12h, 7d).")
@click.option("--state", default=None, metavar="STATE", help="Jobs in STATE.")
@click.option("--expired", is_flag=True,
              help="Jobs past their retention (what the sweep at every submit purges, unbounded).")
@click.option("--dry-run", is_flag=True, help="Say what would be purged; change nothing.")
@click.option("--force", is_flag=True,
              help="Also purge active jobs and parents of active jobs (waiting children are cancelled).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def purge(ctx: click.Context, job_ids: tuple[str, ...], older_than: float | None,
          state: str | None, expired: bool, dry_run: bool, force: bool, as_json: bool) -> None:
    """Remove jobs with their history, logs, events and index entries (criteria combine).
    Active jobs and parents of active jobs are refused unless --force."""
    from fcn_dist.errors import QueueError

    selectors = older_than is not None or state is not None or expired
    if job_ids and selectors:
        raise click.UsageError("give job IDs or --older-than/--state/--expired, not both")
    if not job_ids and not selectors:
        raise click.UsageError("nothing to purge: give job IDs, --older-than, --state or --expired")
    q = _queue(ctx)
    ids = ([q.resolve(j) for j in job_ids] if job_ids
           else q.select(state=state, older_than=older_than, expired=expired))
    results = q.purge(ids, force=force, dry_run=dry_run)
    refused = [r for r in results if r["outcome"] == "refused"]
    if as_json:
        click.echo(json.dumps(results))
    else:
        for r in results:
            if r["outcome"] == "refused":
                click.echo(f"refused {r['id']}: {r['detail']}")
            else:
                click.echo(f"{r['outcome']} {r['id']} ({r['detail'] or 'no state'})")
        done = sum(r["outcome"] in ("purged", "would purge") for r in results)
        click.echo(f"{'would purge' if dry_run else 'purged'} {done} job(s)"
                   + (f", refused {len(refused)}" if refused else ""), err=True)
    if refused:
        raise QueueError(f"{len(refused)} job(s) refused (active, or the parent of an active "
                         "job); --force purges them anyway")


_WATCH_HEADER = ["ID", "STATE", "VARIANT", "NAME", "EPOCH", "VAL mIoU", "IMG/S", "ETA", "WORKER",
                 "ATTEMPTS"]


def _eta(p: dict) -> str:
    s = p.get("eta_seconds")
    if s is None:
        return "-"
    m, sec = divmod(int(round(float(s))), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def watch_frame(jobs) -> str:
    """One frame of ``fcn-jobs watch``: each job's state, epoch k/N, latest val mIoU, img/s,
    ETA, worker and attempts (running jobs from the progress their worker publishes)."""
    from fcn_dist.report.tables import render

    rows = []
    for j in jobs:
        p = j.progress or {}
        live = j.state == "running"
        epoch = f"{p.get('epoch', '?')}/{p.get('epochs', '?')}" if p else "-"
        if live and p.get("steps"):
            epoch += f" ({p.get('step', 0)}/{p['steps']} steps)"
        miou = p.get("miou")
        if not live and j.result and j.result.get("miou") is not None:
            miou = j.result.get("best_val_miou", miou)
        ips = p.get("images_per_second")
        rows.append([j.id, j.state + ("*" if j.cancel_requested else ""), j.variant, j.name, epoch,
                     "-" if miou is None else f"{float(miou):.4f}",
                     "-" if ips is None else f"{float(ips):.1f}", _eta(p) if live else "-",
                     j.worker or "-", f"{j.attempts}/{j.max_attempts}"])
    return render(_WATCH_HEADER, rows) if rows else "no jobs"


@main.command()
@click.option("--state", default=None, metavar="STATE", help="Only jobs in STATE.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.pass_context
def watch(ctx: click.Context, state: str | None, interval: float, once: bool) -> None:
    """A live table of the queue: state, epoch k/N, val mIoU, img/s, ETA, worker, attempts.
    Ends with Ctrl-C."""
    q = _queue(ctx)
    if once:
        click.echo(watch_frame(q.list(state=state)))
        return
    from rich.live import Live
    from rich.text import Text

    def frame() -> Text:
        stamp = datetime.now(tz=timezone.utc).strftime("%H:%M:%S UTC")
        counts = q.counts()
        head = "  ".join(f"{k} {counts[k]}" for k in ("queued", "running", "succeeded", "failed"))
        return Text(f"fcn-jobs watch  {stamp}  {head}  (Ctrl-C to stop)\n\n"
                    + watch_frame(q.list(state=state)))

    try:
        with Live(frame(), refresh_per_second=4, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
