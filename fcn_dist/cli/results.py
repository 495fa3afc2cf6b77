"""``fcn-results``: compare, query and plot the runs in the Parquet results store."""

from __future__ import annotations

import click

from fcn_dist.cli.support import Group
from fcn_dist.errors import FcnError

_store_opt = click.option("--store", "store", default=None, metavar="DIR",
                          help="results store root (default: $FCN_STORE, else ./results)")
_fmt_opt = click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]),
                        default="table", show_default=True, help="output format")


def _open(store):
    from fcn_dist.store import ResultsStore

    return ResultsStore(store)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Compare, query and plot FCN training results from the Parquet store."""


@main.command()
@_store_opt
@click.option("--dataset", default=None, help="only runs on this dataset")
@click.option("--backbone", default=None, help="only runs with this backbone")
@click.option("--variant", default=None, help="only this variant (32s, 16s, 8s)")
@_fmt_opt
def compare(store, dataset, backbone, variant, fmt) -> None:
    """One row per run: final score (and the split it is on), cost; best per column marked."""
    from fcn_dist.report import compare as _compare, format_compare

    st = _open(store)
    rows = _compare(st, dataset=dataset, backbone=backbone, variant=variant)
    if not rows and fmt in ("table", "markdown"):
        raise FcnError(f"no finished runs in {st.root}"
                       + "".join(f" {k}={v}" for k, v in (("dataset", dataset),
                                                            ("backbone", backbone),
                                                            ("variant", variant)) if v))
    click.echo(format_compare(rows, fmt), nl=False)


@main.command()
@click.argument("sql")
@_store_opt
@_fmt_opt
def query(sql, store, fmt) -> None:
    """Run SQL (DuckDB) over the tables `epochs` and `runs`.

    Example: fcn-results query "select variant, max(miou) from epochs group by variant"
    """
    from fcn_dist.report import format_table, query as _query

    click.echo(format_table(_query(_open(store), sql), fmt), nl=False)


@main.command()
@_store_opt
@click.option("--out", "out", required=True, metavar="DIR", help="output directory")
@click.option("--dataset", default=None,
              help="dataset to report (default: that of the latest finished run)")
@click.option("--backbone", default=None, help="only runs with this backbone")
@click.option("--run", "run_ids", multiple=True, metavar="RUN_ID",
              help="report these runs (repeatable; unique prefixes accepted)")
@click.option("--gallery", default=4, show_default=True, type=click.IntRange(min=0),
              help="images in the overlay gallery (of the test split, else val; 0: none)")
@click.option("--data", "data_dir", default=None, metavar="DIR",
              help="prepared data for the gallery (default: the runs' spec data dir)")
def plot(store, out, dataset, backbone, run_ids, gallery, data_dir) -> None:
    """Curves, per-class IoU, confusion matrix, overlay gallery and report.html."""
    from fcn_dist.report import plot as _plot

    res = _plot(_open(store), out, dataset=dataset, backbone=backbone,
                run_ids=list(run_ids) or None, gallery=gallery, data_dir=data_dir)
    for name, path in res["files"].items():
        click.echo(f"{name}: {path}")
    if res["gallery_skipped"]:
        click.echo(f"gallery skipped: {res['gallery_skipped']}", err=True)


@main.command()
@_store_opt
@click.option("--dataset", default=None)
@_fmt_opt
def runs(store, dataset, fmt) -> None:
    """List the runs (id, variant, backbone, dataset, status, final mIoU and its split, finished)."""
    from fcn_dist.report import format_table

    cols = ["run_id", "job_id", "variant", "backbone", "dataset", "status", "miou", "eval_split",
            "eval_is_selection", "epochs", "best_checkpoint", "finished_at"]
    try:
        tbl = _open(store).runs(filters={"dataset": dataset} if dataset else None, columns=cols)
    except ValueError as exc:  # the store names the unknown column
        raise FcnError(str(exc)) from None
    click.echo(format_table(tbl.sort_by("finished_at"), fmt), nl=False)


@main.command()
@click.argument("run_id", required=False)
@_store_opt
@_fmt_opt
def epochs(run_id, store, fmt) -> None:
    """List epoch rows (of RUN_ID, or all runs)."""
    from fcn_dist.report import format_table

    cols = ["run_id", "variant", "epoch", "train_loss", "val_loss", "miou", "pixel_accuracy",
            "lr", "epoch_seconds", "images_per_second"]
    try:
        tbl = _open(store).epochs(filters={"run_id": run_id} if run_id else None, columns=cols)
    except ValueError as exc:  # the store names the unknown column
        raise FcnError(str(exc)) from None
    click.echo(format_table(tbl.sort_by([("run_id", "ascending"), ("epoch", "ascending")]),
                            fmt), nl=False)


@main.command()
@_store_opt
@click.option("--table", type=click.Choice(["epochs", "runs", "all"]), default="all",
              show_default=True)
def compact(store, table) -> None:
    """Merge each table's small files into one (safe while jobs write and users read)."""
    st = _open(store)
    for t in (("epochs", "runs") if table == "all" else (table,)):
        s = st.compact(t)
        click.echo(f"{t}: {s['files_before']} -> {s.get('files_after', s['files_before'])} files"
                   f" ({s['rows']} rows merged)")


if __name__ == "__main__":
    main()
