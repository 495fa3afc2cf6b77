"""Reports over the results store (:mod:`fcn_dist.store`).

- :func:`compare` -> one dict per run; :func:`format_compare` renders it as ``table``,
  ``markdown``, ``csv`` or ``json`` with the best value of each column marked.
- :func:`query` runs DuckDB SQL over the views ``epochs`` and ``runs``; :func:`format_table`
  renders any Arrow table in the same four formats (:mod:`fcn_dist.report.tables`).
- :func:`plot` writes ``curves.png``, ``per_class_iou.png``, ``confusion.png``, the overlay
  gallery (``gallery.png`` + ``overlays/*.png``) and a self-contained ``report.html``.
"""

from fcn_dist.report.compare import COMPARE_COLUMNS, compare, format_compare, short_run_id
from fcn_dist.report.gallery import plot_gallery
from fcn_dist.report.html import plot
from fcn_dist.report.plots import plot_confusion, plot_curves, plot_per_class_iou
from fcn_dist.report.query import query
from fcn_dist.report.tables import FORMATS, format_table, render

__all__ = [
    "COMPARE_COLUMNS",
    "FORMATS",
    "compare",
    "format_compare",
    "format_table",
    "plot",
    "plot_confusion",
    "plot_curves",
    "plot_gallery",
    "plot_per_class_iou",
    "query",
    "render",
    "short_run_id",
]
