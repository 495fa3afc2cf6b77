"""``fcn-data``: prepare, verify and inspect sharded datasets (thin: parse, call, print)."""

from __future__ import annotations

import json
from typing import Any

import click

from fcn_dist import config
from fcn_dist.cli.support import Group
from fcn_dist.fs import masked


def _parse_size(_ctx: Any, _param: Any, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(p) for p in value.lower().replace("*", "x").split("x")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or min(parts) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"expected HxW or N, got {value!r}") from None
    return (parts[0], parts[1])


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable preparation summary."""
    lines = [
        f"prepared {s['source']} -> {s['out']} in {s['seconds']} s",
        "  splits:  " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()),
        f"  kept:    {s['kept']}   classes: {len(s['classes'])} ({', '.join(s['classes'])}), "
        f"ignore index {s['ignore_index']}",
        f"  shards:  {s['shards']} ({s['bytes'] / 1e6:.1f} MB)",
    ]
    skipped = s.get("skipped") or {}
    lines.append(f"  skipped: {sum(skipped.values())}" + (":" if skipped else ""))
    for reason, n in skipped.items():
        ex = s.get("skipped_examples", {}).get(reason, [])
        lines.append(f"    {reason}: {n}" + (f"  (e.g. {ex[0]})" if ex else ""))
    if s.get("converted"):
        lines.append("  converted to RGB: " + ", ".join(f"{m} {n}" for m, n in s["converted"].items()))
    if s.get("orphan_labels"):
        lines.append(f"  labels without an image (ignored): {s['orphan_labels']}")
    return "\n".join(lines)


@click.group(cls=Group, fcn_error_code=2)  # a dataset error is the user's input: exit 2
def main() -> None:
    """Prepare, verify and inspect sharded segmentation datasets."""


@main.command()
@click.argument("source", type=click.Choice(["pets", "camvid", "folder", "synthetic"]))
@click.option("--out", "out", default=None, metavar="DIR|URI",
              help="Output dataset dir or URI, e.g. s3://bucket/data/NAME (default: $FCN_DATA/SOURCE).")
@click.option("--root", type=click.Path(), default=None, help="Source data root.")
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True, help="Rows per shard.")
@click.option("--max-size", type=click.IntRange(min=16), default=None, help="Cap the longer image side (pixels).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="pets/folder/synthetic: share carved out as val.")
@click.option("--test-fraction", type=float, default=0.1, show_default=True, help="synthetic: share for test.")
@click.option("--ignore-border", is_flag=True, help="pets: label the trimap border as ignore (255).")
@click.option("--download", is_flag=True, help="pets: download via torchvision when missing (needs network).")
@click.option("--classes", "classes_file", type=click.Path(), default=None,
              help="folder: classes file (default ROOT/classes.{json,yaml}).")
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="synthetic: images.")
@click.option("--size", callback=_parse_size, default="64x64", show_default=True, help="synthetic: HxW.")
@click.option("--shape-classes", is_flag=True, help="synthetic: one class per shape kind.")
@click.option("--strict", is_flag=True, help="Fail on the first bad sample instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Decode threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def prepare(source: str, out: str | None, root: str | None, as_json: bool, **kw: Any) -> None:
    """Turn SOURCE (pets, camvid, folder, synthetic) into Parquet shards + manifest.json."""
    from fcn_dist.data import prepare as do_prepare

    if source != "pets":
        kw.pop("ignore_border"), kw.pop("download")
    if source != "synthetic":
        for k in ("count", "size", "shape_classes", "test_fraction"):
            kw.pop(k)
    if source != "folder":
        kw.pop("classes_file")
    if source == "camvid":
        kw.pop("val_fraction"), kw.pop("seed")
    out_dir = out or str(config.data_path() / source)
    summary = do_prepare(source, out_dir, root=root, **kw)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@main.command()
@click.argument("path", metavar="DIR|URI")
@click.option("--sha256", is_flag=True, help="Also recompute every shard's sha256.")
def verify(path: str, sha256: bool) -> None:
    """Check a prepared dataset's shards against its manifest."""
    from fcn_dist.data import verify as do_verify

    r = do_verify(path, sha256=sha256)
    click.echo(f"ok: {r['shards']} shards, {r['rows']} rows, {r['bytes'] / 1e6:.1f} MB"
               + (", sha256 verified" if sha256 else " (sizes and row counts; --sha256 for checksums)"))


@main.command()
@click.argument("path", metavar="DIR|URI")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(path: str, as_json: bool) -> None:
    """Show a prepared dataset's manifest: classes, splits, shards, source and options."""
    from fcn_dist.data import read_manifest

    m = read_manifest(path)
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    click.echo(f"{masked(m.root)}  (source {m.source}, format v{m.format_version}, created {m.created})")
    click.echo(f"classes ({m.num_classes}): {', '.join(m.classes)}; ignore index {m.ignore_index}")
    for split, n in m.splits.items():
        shards = m.shards.get(split, [])
        click.echo(f"  {split:6s} {n:7d} rows in {len(shards)} shards ({sum(s['bytes'] for s in shards) / 1e6:.1f} MB)")
    click.echo("options: " + json.dumps(m.options, sort_keys=True))
    sk = m.summary.get("skipped") or {}
    if sk:
        click.echo("skipped at preparation: " + ", ".join(f"{k} {v}" for k, v in sk.items()))


if __name__ == "__main__":
    main()
