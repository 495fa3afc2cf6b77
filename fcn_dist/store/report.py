"""Reports over the results store: compare table, SQL queries, plots and ``report.html``.

- :func:`compare` -> one dict per run (reads only the ``runs`` table, projected columns);
  :func:`format_compare` renders it as ``table``, ``markdown``, ``csv`` or ``json`` with the
  best value of each column marked (``*``; a ``best`` list in csv/json).
- :func:`query` runs DuckDB SQL over the views ``epochs`` and ``runs``.
- :func:`plot` writes ``curves.png``, ``per_class_iou.png``, ``confusion.png``, the overlay
  gallery (``gallery.png`` + ``overlays/*.png`` at each image's size) and ``report.html``
  (self-contained: images embedded, opens offline).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

from fcn_dist.errors import FcnError
from fcn_dist.store.parquet import ResultsStore

VARIANT_ORDER = {"32s": 0, "16s": 1, "8s": 2}

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
_ID_COLUMNS = [("variant", "variant"), ("backbone", "backbone"), ("dataset", "dataset"),
               ("run", "run")]
_COMPARE_READ = ["run_id", "variant", "backbone", "dataset", "status", "finished_at"] + [
    k for k, _, _ in COMPARE_COLUMNS]
FORMATS = ("table", "markdown", "csv", "json")


def _store(store: ResultsStore | str | Any) -> ResultsStore:
    return store if isinstance(store, ResultsStore) else ResultsStore(store)


def short_run_id(run_id: str | None) -> str:
    """A run id short enough for a table cell that still tells runs apart: ids are
    ``<name>-<variant>-<timestamp>`` or uuids, so keep the head and the tail."""
    rid = run_id or ""
    return rid if len(rid) <= 20 else f"{rid[:9]}..{rid[-8:]}"


def _variant_key(v: str | None) -> tuple:
    return (VARIANT_ORDER.get(v or "", 99), v or "")


def _latest_per_run(rows: list[dict]) -> list[dict]:
    """A run written twice (a retried final write) counts once: keep its latest row."""
    best: dict[str, dict] = {}
    for r in rows:
        cur = best.get(r["run_id"])
        key = r.get("finished_at") or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
        if cur is None or key >= (cur.get("finished_at") or key):
            best[r["run_id"]] = r
    return list(best.values())


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
    """One row per run: identifiers, test metrics and cost, sorted by dataset, backbone,
    variant (32s, 16s, 8s) and finish time. Each row's ``best`` lists the columns where it
    holds the best value among the runs of its dataset (max for metrics and img/s, min for
    params, GFLOPs and train time). Reads only the projected columns of ``runs``; the work is
    columnar (10,000 runs in tens of milliseconds)."""
    import pyarrow.compute as pc

    filters = {k: v for k, v in (("dataset", dataset), ("backbone", backbone),
                                 ("variant", variant)) if v is not None}
    tbl = _dedupe_latest(_store(store).runs(filters=filters or None, columns=_COMPARE_READ))
    n = tbl.num_rows
    if n == 0:
        return []
    # non-finite metrics (a diverged run) compare as missing
    for name in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "gflops_per_image",
                 "train_seconds", "images_per_second"):
        col = tbl.column(name)
        tbl = tbl.set_column(tbl.schema.get_field_index(name), name,
                             pc.if_else(pc.is_finite(col), col, pa.nulls(n, col.type)))
    order = pc.fill_null(pc.index_in(tbl.column("variant"),
                                     value_set=pa.array(list(VARIANT_ORDER))), 99)
    tbl = (tbl.append_column("__v", order)
           .append_column("__i", pa.array(range(n), pa.int64()))
           .append_column("__d", pc.fill_null(tbl.column("dataset"), "")))  # joinable key
    tbl = tbl.sort_by([("dataset", "ascending"), ("backbone", "ascending"), ("__v", "ascending"),
                       ("variant", "ascending"), ("finished_at", "ascending"),
                       ("run_id", "ascending")])
    # best per column within each dataset (only where a dataset has two runs or more)
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


def _display_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = [h for _, h in _ID_COLUMNS] + [h for _, h, _ in COMPARE_COLUMNS]
    columns = [[str(r.get(k) or "-") for r in rows] for k, _ in _ID_COLUMNS]
    for key, _, _ in COMPARE_COLUMNS:  # column by column: one formatter per column
        columns.append([_fmt_cell(key, r.get(key)) + ("*" if key in r["best"] else "")
                        for r in rows])
    return headers, [list(cells) for cells in zip(*columns)]


def format_compare(rows: list[dict], fmt: str = "table") -> str:
    """Render :func:`compare` rows as ``table`` (aligned text), ``markdown``, ``csv`` (raw
    numbers, ``best`` = ``;``-joined column names) or ``json`` (a list of objects)."""
    if fmt not in FORMATS:
        raise FcnError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        keys = ["run_id", "variant", "backbone", "dataset", "status"] + [
            k for k, _, _ in COMPARE_COLUMNS] + ["finished_at", "best"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(keys)
        for r in rows:
            w.writerow(["" if r.get(k) is None else (";".join(r[k]) if k == "best" else
                                                     (repr(r[k]) if isinstance(r[k], float)
                                                      else r[k])) for k in keys])
        return buf.getvalue()
    headers, cells = _display_rows(rows)
    numeric = [False] * len(_ID_COLUMNS) + [True] * len(COMPARE_COLUMNS)
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        lines.append("")
        lines.append("`*` best in its column (per dataset): highest metric and img/s, lowest "
                     "params, GFLOPs and train time.")
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(vals, widths, numeric)).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
    out.append("* best in its column (per dataset)")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------ query
def query(store: ResultsStore | str, sql: str) -> pa.Table:
    """Run DuckDB ``sql`` over the views ``epochs`` and ``runs`` (a consistent snapshot read
    through :class:`ResultsStore`); returns a pyarrow Table. Needs the ``duckdb`` extra."""
    try:
        import duckdb
    except ImportError:
        raise FcnError("fcn-results query needs DuckDB: pip install 'fcn-dist[duckdb]' "
                       "(or read the store with pandas: pandas.read_parquet(STORE/'runs'))"
                       ) from None
    st = _store(store)
    con = duckdb.connect(":memory:")
    try:
        for name in ("epochs", "runs"):
            if re.search(rf"\b{name}\b", sql, re.IGNORECASE):
                tbl = st.read(name)  # noqa: F841 (DuckDB sees the local by name)
                con.register(name, tbl)
        try:
            rel = con.sql(sql)
            if rel is None:  # a statement without a result
                return pa.table({})
            for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):  # across DuckDB versions
                if hasattr(rel, name):
                    out = getattr(rel, name)()
                    return out if isinstance(out, pa.Table) else out.read_all()
            return pa.Table.from_pandas(rel.df(), preserve_index=False)
        except duckdb.Error as exc:
            raise FcnError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def format_table(tbl: pa.Table, fmt: str = "table") -> str:
    """Render any Arrow table (e.g. a :func:`query` result) as table/markdown/csv/json."""
    if fmt not in FORMATS:
        raise FcnError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rows = tbl.to_pylist()
    cols = tbl.column_names
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)

    def cell(v: Any) -> str:
        if v is None:
            return "" if fmt == "csv" else "-"
        if isinstance(v, float):
            return repr(v) if fmt == "csv" else f"{v:.6g}"
        if isinstance(v, (list, dict)):
            return json.dumps(v, default=str)
        return str(v)

    cells = [[cell(r[c]) for c in cols] for r in rows]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows(cells)
        return buf.getvalue()
    if fmt == "markdown":
        return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
                         + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                            for r in cells]) + "\n"
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------ plots
def _label(r: dict) -> str:
    return f"FCN-{r.get('variant') or '?'} {r.get('backbone') or ''} [{short_run_id(r['run_id'])}]"


def _select_runs(st: ResultsStore, dataset: str | None, backbone: str | None,
                 run_ids: Sequence[str] | None) -> tuple[str | None, list[dict]]:
    """The runs a report shows: given ids, else the latest run per (variant, backbone) of
    ``dataset`` (default: the dataset of the most recently finished run)."""
    cols = ["run_id", "variant", "backbone", "dataset", "status", "miou", "pixel_accuracy",
            "mean_accuracy", "fwiou", "per_class_iou", "class_names", "confusion_matrix",
            "best_checkpoint", "spec", "finished_at"]
    rows = _latest_per_run(st.runs(columns=cols).to_pylist())
    if run_ids:
        wanted = set(run_ids)
        rows = [r for r in rows if any((r["run_id"] or "").startswith(w) for w in wanted)]
    else:
        if backbone:
            rows = [r for r in rows if r["backbone"] == backbone]
        if dataset is None and rows:
            dataset = max(rows, key=lambda r: r["finished_at"] or _dt.datetime.min.replace(
                tzinfo=_dt.timezone.utc))["dataset"]
        rows = [r for r in rows if r["dataset"] == dataset]
        latest: dict[tuple, dict] = {}
        for r in sorted(rows, key=lambda r: r["finished_at"] or _dt.datetime.min.replace(
                tzinfo=_dt.timezone.utc)):
            latest[(r["variant"], r["backbone"])] = r
        rows = list(latest.values())
    rows.sort(key=lambda r: (r["backbone"] or "", _variant_key(r["variant"])))
    return dataset, rows


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_curves(epochs: list[dict], runs: list[dict], path: Path) -> Path:
    """Loss, mIoU and pixel accuracy per epoch; one colour per run, train solid, val dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "train_loss", "val_loss"), ("mIoU", "train_miou", "miou"),
              ("pixel accuracy", "train_pixel_accuracy", "pixel_accuracy")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    colors = _colors(len(runs))
    by_run: dict[str, list[dict]] = {}
    for e in epochs:
        by_run.setdefault(e["run_id"], []).append(e)
    for ax, (title, train_key, val_key) in zip(axes, panels):
        for color, r in zip(colors, runs):
            pts: dict[int, dict] = {}
            for e in sorted(by_run.get(r["run_id"], []),
                            key=lambda e: (e["epoch"], e["timestamp"] or 0)):
                pts[e["epoch"]] = e  # a re-written epoch (resumed run) counts once: latest
            xs = sorted(pts)
            for key, style in ((train_key, "-"), (val_key, "--")):
                ys = [pts[x].get(key) for x in xs]
                if any(y is not None for y in ys):
                    ax.plot(xs, [float("nan") if y is None else y for y in ys], style,
                            color=color, marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if title != "loss":
            ax.set_ylim(bottom=0)
    handles = [Line2D([], [], color=c, label=_label(r)) for c, r in zip(colors, runs)]
    handles += [Line2D([], [], color="k", ls="-", label="train"),
                Line2D([], [], color="k", ls="--", label="val")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5),
               fontsize=10, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class_iou(runs: list[dict], path: Path) -> Path:
    """Grouped bars: test IoU per class, one bar per run."""
    import matplotlib.pyplot as plt
    import numpy as np

    classes: list[str] = []
    for r in runs:
        for c in (r.get("class_names") or json.loads(r.get("per_class_iou") or "{}")):
            if c not in classes:
                classes.append(c)
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(classes) * max(1, len(runs)) ** 0.5 + 3),
                                    4.8), constrained_layout=True)
    x = np.arange(len(classes))
    for i, (color, r) in enumerate(zip(_colors(len(runs)), runs)):
        ious = json.loads(r.get("per_class_iou") or "{}")
        ys = [ious.get(c) for c in classes]
        ys = [np.nan if y is None else y for y in ys]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), ys, width, color=color, label=_label(r))
        if len(classes) * len(runs) <= 40:  # values on the bars (a zero IoU is no bar at all)
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center")
    ax.set_ylabel("test IoU")
    ax.set_ylim(0, 1.05)
    ax.set_title("Per-class IoU (test)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(run: dict, path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, sums to 1) of one run."""
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(run.get("confusion_matrix") or [[0]], dtype=np.float64)
    names = run.get("class_names") or [str(i) for i in range(cm.shape[0])]
    sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
    n = cm.shape[0]
    size = min(14.0, max(4.5, 0.6 * n + 3))
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Normalised confusion matrix (rows sum to 1)\n{_label(run)}, test mIoU "
                 f"{run.get('miou') or 0:.4f}", fontsize=10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colorize(label, palette, ignore_index):
    import numpy as np

    pal = np.zeros((256, 3), dtype=np.uint8)
    for i, c in enumerate(palette[:256]):
        pal[i] = c[:3]
    lab = np.asarray(label).astype(np.int64)
    rgb = pal[np.clip(lab, 0, 255)]
    valid = (lab != ignore_index) & (lab >= 0) & (lab < len(palette))
    return rgb, valid


def _overlay(image, label, palette, ignore_index, alpha: float = 0.55):
    """Blend the colour label map onto the RGB image (ignored pixels left as they are)."""
    import numpy as np

    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    rgb, valid = _colorize(label, palette, ignore_index)
    out = img.copy()
    out[valid] = (1 - alpha) * img[valid] + alpha * rgb[valid].astype(np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _default_palette(n: int) -> list[list[int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [[int(255 * v) for v in cmap(i % 20)[:3]] for i in range(n)]


def _data_dir_of(run: dict) -> Path | None:
    spec = run.get("spec")
    if not spec:
        return None
    try:
        from fcn_dist.spec import JobSpec

        return JobSpec.from_json(spec).data_dir()
    except Exception:
        try:
            from fcn_dist.config import data_path

            data = json.loads(spec).get("data")
            return data_path() / data if data else None
        except Exception:
            return None


def plot_gallery(runs: list[dict], out_dir: Path, n: int, *,
                 predict_fn: Callable[[str], Callable[[Any], Any]] | None = None,
                 dataset_fn: Callable[[Path, str], Any] | None = None,
                 data_dir: str | Path | None = None, split: str | None = None) -> dict:
    """Overlay gallery for ``n`` test images: image, ground truth, each run's prediction.

    ``predict_fn(checkpoint_path)`` returns a callable image -> label map (default:
    ``fcn_dist.predict.Segmenter.from_checkpoint(path).predict``); ``dataset_fn(dir, split)``
    returns an object with ``raw(i) -> (PIL image, label)``, ``len()`` and ``manifest``
    (default: ``fcn_dist.data.ShardDataset``). Writes ``gallery.png`` and
    ``overlays/<i>_<name>.png`` at each image's original size. Returns ``{"files": [...],
    "skipped": reason or None}``.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch
    from PIL import Image

    result: dict = {"files": [], "skipped": None}
    runs = [r for r in runs if r.get("best_checkpoint")]
    if n <= 0:
        result["skipped"] = "gallery disabled (--gallery 0)"
        return result
    if not runs:
        result["skipped"] = "no run has a best checkpoint"
        return result
    if predict_fn is None:
        try:
            from fcn_dist.predict import Segmenter
        except ImportError as exc:
            result["skipped"] = f"fcn_dist.predict is not available ({exc})"
            return result
        predict_fn = lambda p: Segmenter.from_checkpoint(p).predict  # noqa: E731
    if dataset_fn is None:
        try:
            from fcn_dist.data import ShardDataset
        except ImportError as exc:
            result["skipped"] = f"fcn_dist.data.ShardDataset is not available ({exc})"
            return result
        dataset_fn = ShardDataset
    ddir = Path(data_dir) if data_dir else _data_dir_of(runs[0])
    if ddir is None or not Path(ddir).exists():
        result["skipped"] = f"data directory not found ({ddir}); pass data_dir / --data"
        return result
    try:
        ds = None
        splits = [split] if split else ["test", "val", "train"]
        for s in splits:
            try:
                ds = dataset_fn(ddir, s)
                if len(ds) > 0:
                    split = s
                    break
            except Exception:
                ds = None
        if ds is None:
            result["skipped"] = f"no split of {splits} readable in {ddir}"
            return result
        manifest = getattr(ds, "manifest", None)
        classes = list(getattr(manifest, "classes", None) or runs[0].get("class_names") or [])
        palette = [list(c) for c in (getattr(manifest, "palette", None) or
                                     _default_palette(max(1, len(classes))))]
        ignore = getattr(manifest, "ignore_index", 255)
        predictors = [(r, predict_fn(r["best_checkpoint"])) for r in runs]
    except Exception as exc:
        result["skipped"] = f"gallery failed: {type(exc).__name__}: {exc}"
        return result
    n = min(n, len(ds))
    ov_dir = out_dir / "overlays"
    ov_dir.mkdir(parents=True, exist_ok=True)
    ncols = 2 + len(predictors)
    fig, axes = plt.subplots(n, ncols, figsize=(2.6 * ncols, 2.6 * n + 0.5), squeeze=False)
    for i in range(n):
        image, label = ds.raw(i)
        image = image.convert("RGB")
        panels = [("image", np.asarray(image)), ("ground truth", _overlay(image, label, palette,
                                                                          ignore))]
        Image.fromarray(panels[1][1]).save(ov_dir / f"{i:03d}_ground_truth.png")
        for r, pred in predictors:
            lab = np.asarray(pred(image))
            ov = _overlay(image, lab, palette, ignore)
            name = f"{i:03d}_fcn{r['variant']}_{_safe_name(r['run_id'])}.png"
            Image.fromarray(ov).save(ov_dir / name)
            result["files"].append(str(ov_dir / name))
            panels.append((f"FCN-{r['variant']} {r.get('backbone') or ''}", ov))
        for j, (title, arr) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(arr)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=10)
    handles = [Patch(facecolor=np.array(palette[k][:3]) / 255.0, edgecolor="k", label=c)
               for k, c in enumerate(classes) if k < len(palette)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0.45 / (2.6 * n + 0.5), 1, 1))  # leave 0.45 in for the legend
    path = out_dir / "gallery.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    result["files"].insert(0, str(path))
    result["split"] = split
    return result


def _safe_name(text: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text or "run").lstrip(".")[:64]


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_compare(rows: list[dict]) -> str:
    headers, cells = _display_rows(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in cells:
        tds = []
        for i, c in enumerate(row):
            best = c.endswith("*")
            text = html.escape(c.rstrip("*"))
            cls = ' class="num"' if i >= len(_ID_COLUMNS) else ""
            tds.append(f"<td{cls}>{'<b>' + text + ' ★</b>' if best else text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p class=note>★ best in its column (per dataset): highest metric and img/s, "
            "lowest params, GFLOPs and train time.</p>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1320px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:13px} .note{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #eee} .skip{color:#a33;font-size:13px}
"""


def plot(store: ResultsStore | str, out_dir: str | Path, *, dataset: str | None = None,
         backbone: str | None = None, run_ids: Sequence[str] | None = None, gallery: int = 4,
         predict_fn: Callable[[str], Callable[[Any], Any]] | None = None,
         dataset_fn: Callable[[Path, str], Any] | None = None,
         data_dir: str | Path | None = None) -> dict:
    """Write ``curves.png``, ``per_class_iou.png``, ``confusion.png`` (best run by test mIoU),
    the overlay gallery (``gallery`` images; see :func:`plot_gallery`) and ``report.html``
    (all images embedded, the compare table) into ``out_dir``.

    Runs shown: ``run_ids`` if given, else the latest run per (variant, backbone) of
    ``dataset`` (default: the dataset of the most recently finished run). Returns
    ``{"dataset", "runs", "files": {name: path}, "gallery_skipped": reason or None}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    st = _store(store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset, runs = _select_runs(st, dataset, backbone, run_ids)
    if not runs:
        raise FcnError(f"no runs to plot in {st.root}"
                       + (f" for dataset {dataset!r}" if dataset else ""))
    ids = [r["run_id"] for r in runs]
    epochs = st.epochs(filters={"run_id": ids},
                       columns=["run_id", "epoch", "train_loss", "val_loss", "miou",
                                "train_miou", "pixel_accuracy", "train_pixel_accuracy",
                                "timestamp"]).to_pylist()
    files: dict[str, str] = {}
    files["curves"] = str(plot_curves(epochs, runs, out / "curves.png"))
    files["per_class_iou"] = str(plot_per_class_iou(runs, out / "per_class_iou.png"))
    with_cm = [r for r in runs if r.get("confusion_matrix")]
    best = max(with_cm, key=lambda r: r.get("miou") or -1.0) if with_cm else None
    if best is not None:
        files["confusion"] = str(plot_confusion(best, out / "confusion.png"))
    gal = plot_gallery(runs, out, gallery, predict_fn=predict_fn, dataset_fn=dataset_fn,
                       data_dir=data_dir)
    if gal["files"]:
        files["gallery"] = gal["files"][0]
    rows = compare(st, dataset=dataset, backbone=backbone)
    if run_ids:
        rows = [r for r in rows if r["run_id"] in set(ids)]
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>FCN results — "
             f"{html.escape(str(dataset))}</title><style>{_CSS}</style></head><body>",
             f"<h1>FCN-32s / 16s / 8s — {html.escape(str(dataset))}</h1>",
             f"<p class=meta>store {html.escape(str(st.root))} · {len(runs)} runs · generated "
             f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}</p>",
             "<h2>Test metrics and cost</h2>", _html_compare(rows),
             "<h2>Training curves</h2>", _img_tag(out / "curves.png", "training curves"),
             "<p class=note>solid: train, dashed: validation; mIoU and pixel accuracy per epoch "
             "on the validation split.</p>",
             "<h2>Per-class IoU (test)</h2>", _img_tag(out / "per_class_iou.png",
                                                       "per-class IoU")]
    if best is not None:
        parts += [f"<h2>Confusion matrix of the best run ({html.escape(_label(best))})</h2>",
                  _img_tag(out / "confusion.png", "confusion matrix")]
    parts.append("<h2>Predictions</h2>")
    if gal["files"]:
        parts.append(_img_tag(Path(gal["files"][0]), "overlay gallery"))
        parts.append(f"<p class=note>{gallery} images of the {gal.get('split')} split: image, "
                     "ground truth and each variant's prediction (best checkpoint) blended "
                     "over the image in the dataset's palette.</p>")
    else:
        parts.append(f"<p class=skip>gallery skipped: {html.escape(str(gal['skipped']))}</p>")
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts), encoding="utf-8")
    files["report"] = str(out / "report.html")
    return {"dataset": dataset, "runs": ids, "files": files, "gallery_skipped": gal["skipped"],
            "gallery_files": gal["files"]}
