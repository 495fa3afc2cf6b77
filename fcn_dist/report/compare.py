"""The compare table: one row per run (final score and cost), the best of each column marked.

Every row says which split its score is on (``scored on``: ``test``, or ``val (used for
selection)`` when the dataset has no test split and the score is on the split that chose the
checkpoint, :func:`fcn_dist.store.scored_on`).

:func:`compare` reads only the projected columns of the ``runs`` table; :func:`format_compare`
renders its rows through :func:`fcn_dist.report.tables.render`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from fcn_dist.report.tables import check_format, render
from fcn_dist.spec import VARIANTS
from fcn_dist.store import ResultsStore, scored_on

#: (key, header, higher_is_better) of the compared columns, in display order
COMPARE_COLUMNS: list[tuple[str, str, bool]] = [
    ("miou", "mIoU", True),
    ("pixel_accuracy", "pixel acc", True),
    ("mean_accuracy", "mean acc", True),
    ("fwiou", "fwIoU", True),
    ("params", "params", False),
    ("gflops_per_image", "GFLOPs/img", False),
    ("train_seconds", "train time", False),
    ("images_per_second", "img/s", True),
]
ID_COLUMNS = [("variant", "variant"), ("backbone", "backbone"), ("dataset", "dataset"),
              ("run", "run"), ("scored_on", "scored on")]
_COMPARE_READ = ["run_id", "variant", "backbone", "dataset", "status", "finished_at",
                 "eval_split", "eval_is_selection", "eval_size"] + [k for k, _, _ in COMPARE_COLUMNS]
_CSV_KEYS = ["run_id", "variant", "backbone", "dataset", "status", "scored_on", "eval_split",
             "eval_is_selection", "eval_size"] + [k for k, _, _ in COMPARE_COLUMNS] + [
    "finished_at", "best"]


def short_run_id(run_id: str | None) -> str:
    """A run id short enough for a table cell that still tells runs apart: ids are
    ``<name>-<variant>-<timestamp>`` or uuids, so keep the head and the tail."""
    rid = run_id or ""
    return rid if len(rid) <= 20 else f"{rid[:9]}..{rid[-8:]}"


def _dedupe_latest(tbl: pa.Table) -> pa.Table:
    """A run written twice (a retried final write) counts once: keep its latest row."""
    import pyarrow.compute as pc

    if tbl.num_rows < 2 or pc.count_distinct(tbl.column("run_id")).as_py() == tbl.num_rows:
        return tbl
    idx = pa.array(range(tbl.num_rows), pa.int64())
    t = tbl.append_column("__i", idx).sort_by([("finished_at", "ascending"), ("__i", "ascending")])
    last = t.group_by("run_id", use_threads=False).aggregate([("__i", "last")])
    idx = last.column("__i_last")
    return tbl.take(pc.take(idx, pc.sort_indices(idx)))


def compare(store: ResultsStore | str, dataset: str | None = None,
            backbone: str | None = None, variant: str | None = None) -> list[dict]:
    """One row per run: identifiers, the final score (``scored_on``: its split) and cost,
    sorted by dataset, backbone, variant (32s, 16s, 8s) and finish time. Each row's ``best``
    lists the columns where it holds the best value among the runs of its dataset scored on
    the same split (max for metrics and img/s, min for params, GFLOPs and train time). Reads
    only the projected columns of ``runs``; the work is columnar."""
    import pyarrow.compute as pc

    st = store if isinstance(store, ResultsStore) else ResultsStore(store)
    filters = {k: v for k, v in (("dataset", dataset), ("backbone", backbone),
                                 ("variant", variant)) if v is not None}
    tbl = _dedupe_latest(st.runs(filters=filters or None, columns=_COMPARE_READ))
    n = tbl.num_rows
    if n == 0:
        return []
    # non-finite metrics (a diverged run) compare as missing
    for name in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "gflops_per_image",
                 "train_seconds", "images_per_second"):
        col = tbl.column(name)
        tbl = tbl.set_column(tbl.schema.get_field_index(name), name,
                             pc.if_else(pc.is_finite(col), col, pa.nulls(n, col.type)))
    order = pc.fill_null(pc.index_in(tbl.column("variant"), value_set=pa.array(list(VARIANTS))),
                         len(VARIANTS))  # unknown variants last, as spec.variant_order has it
    tbl = (tbl.append_column("__v", order)
           .append_column("__i", pa.array(range(n), pa.int64()))
           # joinable key: runs compete within one dataset and one scored split
           .append_column("__d", pc.binary_join_element_wise(
               pc.fill_null(tbl.column("dataset"), ""), pc.fill_null(tbl.column("eval_split"), ""),
               "\x00")))
    tbl = tbl.sort_by([("dataset", "ascending"), ("backbone", "ascending"), ("__v", "ascending"),
                       ("variant", "ascending"), ("finished_at", "ascending"),
                       ("run_id", "ascending")])
    # best per column within each dataset and split (only where it has two runs or more)
    aggs = [(k, "max" if higher else "min") for k, _, higher in COMPARE_COLUMNS]
    stats = tbl.group_by("__d", use_threads=False).aggregate(aggs + [("run_id", "count")])
    joined = tbl.select(["__i", "__d"]).join(stats, "__d", use_threads=False).sort_by("__i")
    inv = joined.take(tbl.column("__i"))  # joined row i is original row i; align to sorted tbl
    multi = pc.greater(inv.column("run_id_count"), 1)
    flags = []
    for (key, _, higher), (_, fn) in zip(COMPARE_COLUMNS, aggs):
        hit = pc.and_(pc.equal(tbl.column(key), inv.column(f"{key}_{fn}")), multi)
        flags.append((key, pc.fill_null(hit, False).to_pylist()))
    run_ids = tbl.column("run_id").to_pylist()
    finished = [f.isoformat() if f else None for f in tbl.column("finished_at").to_pylist()]
    cols = {name: tbl.column(name).to_pylist() for name in _COMPARE_READ
            if name != "finished_at"}
    rows = []
    for j in range(n):
        r = {name: vals[j] for name, vals in cols.items()}
        r["run"] = short_run_id(run_ids[j])
        r["scored_on"] = scored_on(r["eval_split"], r["eval_is_selection"])
        r["finished_at"] = finished[j]
        r["best"] = [key for key, f in flags if f[j]]
        rows.append(r)
    return rows


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _fmt_params(p: int | None) -> str:
    if p is None:
        return "-"
    p = float(p)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if p >= div:
            return f"{p / div:.1f}{unit}"
    return str(int(p))


def _fmt_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou"):
        return f"{value:.4f}"
    if key == "params":
        return _fmt_params(value)
    if key == "gflops_per_image":
        return f"{value:.2f}"
    if key == "train_seconds":
        return _fmt_seconds(value)
    if key == "images_per_second":
        return f"{value:.1f}"
    return str(value)


def display_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of :func:`compare` rows (a best value gets a ``*``)."""
    headers = [h for _, h in ID_COLUMNS] + [h for _, h, _ in COMPARE_COLUMNS]
    columns = [[str(r.get(k) or "-") for r in rows] for k, _ in ID_COLUMNS]
    for key, _, _ in COMPARE_COLUMNS:  # column by column: one formatter per column
        columns.append([_fmt_cell(key, r.get(key)) + ("*" if key in r["best"] else "")
                        for r in rows])
    return headers, [list(cells) for cells in zip(*columns)]


def format_compare(rows: list[dict], fmt: str = "table") -> str:
    """Render :func:`compare` rows as ``table`` (aligned text), ``markdown``, ``csv`` (raw
    numbers, ``best`` = ``;``-joined column names) or ``json`` (a list of objects)."""
    check_format(fmt)
    if fmt == "json":
        keys = list(rows[0]) if rows else []
        return render(keys, [[r.get(k) for k in keys] for r in rows], fmt)
    if fmt == "csv":
        return render(_CSV_KEYS, [[";".join(r["best"]) if k == "best" and r.get(k) is not None
                                   else r.get(k) for k in _CSV_KEYS] for r in rows], fmt)
    headers, cells = display_rows(rows)
    numeric = [False] * len(ID_COLUMNS) + [True] * len(COMPARE_COLUMNS)
    note = ("`*` best in its column (per dataset and scored split): highest metric and img/s, "
            "lowest params, GFLOPs and train time. \"val (used for selection)\": no test split, "
            "scored on the split that chose the checkpoint." if fmt == "markdown" else
            "* best in its column (per dataset and scored split)")
    return render(headers, cells, fmt, numeric=numeric, note=note)
