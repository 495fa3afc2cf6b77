"""The one table renderer: headers + rows as aligned text, markdown, csv or json.

Used by the compare table, ``fcn-results runs|epochs|query`` (Arrow tables) and ``fcn-jobs``.
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any, Sequence

from fcn_dist.errors import FcnError

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("table", "markdown", "csv", "json")


def check_format(fmt: str) -> None:
    """Raise :class:`FcnError` unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise FcnError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _text(v: Any) -> str:
    """A cell for reading: ``-`` for missing, 6 significant digits for floats."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def _raw(v: Any) -> str:
    """A cell for csv: empty for missing, floats exactly (``repr``)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table", *,
           numeric: Sequence[bool] | None = None, note: str | None = None) -> str:
    """Render ``rows`` under ``headers`` as ``table`` (aligned text; ``numeric`` columns
    right-aligned), ``markdown``, ``csv`` or ``json`` (a list of objects keyed by header).

    Cells that are not strings are formatted here (``-``/empty for None, floats to 6 digits in
    text, exactly in csv); ``note`` is a footnote line under the table and markdown forms.
    """
    check_format(fmt)
    if fmt == "json":
        return json.dumps([dict(zip(headers, r)) for r in rows], indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(headers)
        w.writerows([_raw(v) for v in r] for r in rows)
        return buf.getvalue()
    right = list(numeric) if numeric is not None else [False] * len(headers)
    cells = [[_text(v) for v in r] for r in rows]
    if fmt == "markdown":
        def md(vals: Sequence[str]) -> str:
            return "| " + " | ".join(v.replace("|", "\\|") for v in vals) + " |"

        lines = [md(headers), "|" + "|".join("---:" if n else "---" for n in right) + "|"]
        lines += [md(r) for r in cells]
        if note:
            lines += ["", note]  # a paragraph of its own
        return "\n".join(lines) + "\n"
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(vals, widths, right)).rstrip()

    lines = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def format_table(tbl: "pa.Table", fmt: str = "table") -> str:
    """Render any Arrow table (e.g. a :func:`~fcn_dist.report.query` result) with
    :func:`render`."""
    cols = tbl.column_names
    return render(cols, list(zip(*(tbl.column(c).to_pylist() for c in cols))), fmt)
