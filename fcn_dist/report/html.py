"""``report.html`` and :func:`plot`, which writes every figure of a report and the page that
embeds them (self-contained: images inline, opens offline)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path
from typing import Any, Callable, Sequence

from fcn_dist.errors import FcnError
from fcn_dist.report.compare import ID_COLUMNS, compare, display_rows
from fcn_dist.report.gallery import plot_gallery
from fcn_dist.report.plots import plot_confusion, plot_curves, plot_per_class_iou, run_label
from fcn_dist.spec import variant_order
from fcn_dist.store import ResultsStore, scored_on

_NEVER = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)  # sorts a run never finished first


def _latest_per_run(rows: list[dict]) -> list[dict]:
    """A run written twice (a retried final write) counts once: keep its latest row."""
    best: dict[str, dict] = {}
    for r in rows:
        cur = best.get(r["run_id"])
        key = r.get("finished_at") or _NEVER
        if cur is None or key >= (cur.get("finished_at") or key):
            best[r["run_id"]] = r
    return list(best.values())


def select_runs(st: ResultsStore, dataset: str | None, backbone: str | None,
                run_ids: Sequence[str] | None) -> tuple[str | None, list[dict]]:
    """The runs a report shows: given ids, else the latest run per (variant, backbone) of
    ``dataset`` (default: the dataset of the most recently finished run)."""
    cols = ["run_id", "variant", "backbone", "dataset", "status", "miou", "pixel_accuracy",
            "mean_accuracy", "fwiou", "eval_split", "eval_is_selection", "per_class_iou",
            "class_names", "confusion_matrix", "best_checkpoint", "spec", "finished_at"]
    rows = _latest_per_run(st.runs(columns=cols).to_pylist())
    if run_ids:
        wanted = set(run_ids)
        rows = [r for r in rows if any((r["run_id"] or "").startswith(w) for w in wanted)]
    else:
        if backbone:
            rows = [r for r in rows if r["backbone"] == backbone]
        if dataset is None and rows:
            dataset = max(rows, key=lambda r: r["finished_at"] or _NEVER)["dataset"]
        rows = [r for r in rows if r["dataset"] == dataset]
        latest: dict[tuple, dict] = {}
        for r in sorted(rows, key=lambda r: r["finished_at"] or _NEVER):
            latest[(r["variant"], r["backbone"])] = r
        rows = list(latest.values())
    rows.sort(key=lambda r: (r["backbone"] or "", variant_order(r["variant"]), r["variant"] or ""))
    return dataset, rows


def _splits_label(runs: list[dict]) -> str:
    """The scored splits of ``runs`` for a heading, e.g. ``val (used for selection)``."""
    labels = dict.fromkeys(scored_on(r.get("eval_split"), r.get("eval_is_selection")) for r in runs)
    return "scored on " + " / ".join(labels)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_compare(rows: list[dict]) -> str:
    headers, cells = display_rows(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in cells:
        tds = []
        for i, c in enumerate(row):
            best = c.endswith("*")
            text = html.escape(c.rstrip("*"))
            cls = ' class="num"' if i >= len(ID_COLUMNS) else ""
            tds.append(f"<td{cls}>{'<b>' + text + ' ★</b>' if best else text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p class=note>★ best in its column (per dataset and scored split): highest metric "
            "and img/s, lowest params, GFLOPs and train time. “scored on”: the split of the "
            "final score; “val (used for selection)” means the dataset has no test split and "
            "the score is on the split that chose the checkpoint, not a held-out one.</p>")


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
    """Write ``curves.png``, ``per_class_iou.png``, ``confusion.png`` (best run by final mIoU),
    the overlay gallery (``gallery`` images; see :func:`plot_gallery`) and ``report.html``
    (all images embedded, the compare table) into ``out_dir``.

    Runs shown: ``run_ids`` if given, else the latest run per (variant, backbone) of
    ``dataset`` (default: the dataset of the most recently finished run). Returns
    ``{"dataset", "runs", "files": {name: path}, "gallery_skipped": reason or None}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    st = store if isinstance(store, ResultsStore) else ResultsStore(store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset, runs = select_runs(st, dataset, backbone, run_ids)
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
             f"<h2>Final scores ({html.escape(_splits_label(runs))}) and cost</h2>",
             _html_compare(rows),
             "<h2>Training curves</h2>", _img_tag(out / "curves.png", "training curves"),
             "<p class=note>solid: train, dashed: validation; mIoU and pixel accuracy per epoch "
             "on the validation split.</p>",
             f"<h2>Per-class IoU ({html.escape(_splits_label(runs))})</h2>",
             _img_tag(out / "per_class_iou.png",
                                                       "per-class IoU")]
    if best is not None:
        parts += [f"<h2>Confusion matrix of the best run ({html.escape(run_label(best))})</h2>",
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
