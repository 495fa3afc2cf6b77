"""The Parquet results store: two append-only tables, ``epochs/`` and ``runs/``.

Layout (the root is ``FCN_STORE``, see :func:`fcn_dist.config.store_path`)::

    <root>/epochs/ep-<run_id>-e<first>[-<last>]-<uuid>.parquet   one file per append_epochs call
    <root>/runs/run-<run_id>-<uuid>.parquet                      one file per finished run
    <root>/<table>/compact-<uuid>.parquet                        written by ResultsStore.compact
    <root>/<table>/.tmp-*                                        in-flight writes (never read)

Schema (``SCHEMA_VERSION = 2``; every file carries ``fcn_dist.schema_version`` in its metadata
and a ``schema_version`` column). Version 2 added ``eval_split``, ``eval_is_selection`` and
``eval_size`` to ``runs``; files of older versions stay readable (their missing columns read as
null: unknown):

### `epochs` — one row per epoch (validation metrics at the end of the epoch)

| column | type | meaning |
|---|---|---|
| schema_version | int32 | schema version the row was written with |
| run_id | string | unique id of the training run (required) |
| job_id | string | queue job id (null when run without the queue) |
| variant | string | `32s`, `16s` or `8s` |
| backbone | string | e.g. `vgg16` |
| dataset | string | dataset name (the manifest's source or the data dir name) |
| epoch | int32 | epoch number (required) |
| train_loss | double | mean training loss over the epoch |
| val_loss | double | mean validation loss |
| miou | double | validation mean IoU in [0, 1] |
| pixel_accuracy | double | validation pixel accuracy |
| mean_accuracy | double | validation mean class accuracy |
| fwiou | double | validation frequency-weighted IoU |
| train_miou | double | training mIoU (optional) |
| train_pixel_accuracy | double | training pixel accuracy (optional) |
| lr | double | learning rate at the end of the epoch |
| epoch_seconds | double | wall time of the epoch (train + val) |
| images_per_second | double | training throughput, all workers |
| step_seconds | double | median training step time (data fetch included; the epoch's first step left out) |
| world_size | int32 | number of training workers |
| device | string | e.g. `cuda`, `cpu` |
| timestamp | timestamp[us, UTC] | when the row was written (default: now) |

### `runs` — one row per finished run (the final score of the best checkpoint)

| column | type | meaning |
|---|---|---|
| schema_version | int32 | schema version |
| run_id, job_id, variant, backbone, dataset | string | as in `epochs` |
| name | string | the spec's name |
| status | string | e.g. `succeeded`, `failed`, `interrupted` |
| miou, pixel_accuracy, mean_accuracy, fwiou | double | final score of the best checkpoint on `eval_split` |
| eval_split | string | the split the final score was taken on (`test`; `val` when the dataset has none) |
| eval_is_selection | bool | `eval_split` is the split that chose the best checkpoint: not a held-out score |
| eval_size | string | network input at validation and the final score: `native` or `HxW` |
| per_class_iou | string (JSON object) | `{"class": IoU, ...}`; `json.loads` / DuckDB `per_class_iou->>'cat'` |
| class_names | list<string> | class names in label order |
| confusion_matrix | list<list<int64>> | confusion matrix of the final score, rows = true class, cols = predicted |
| num_classes | int32 | number of classes |
| params | int64 | trainable + frozen parameters of the model |
| gflops_per_image | double | forward GFLOPs for one image at the eval size (native: the first image's) |
| epochs | int32 | epochs trained |
| best_epoch | int32 | epoch of the best checkpoint |
| best_val_miou | double | val mIoU of the best checkpoint |
| train_seconds | double | wall time of training |
| images_per_second | double | mean training throughput |
| world_size | int32 | number of training workers |
| device | string | e.g. `cuda`, `cpu` |
| best_checkpoint | string | path of the best checkpoint directory |
| run_dir | string | the run's directory |
| spec | string (JSON) | the job spec (`JobSpec.to_json()`) |
| versions | string (JSON) | library versions (python, torch, torchvision, ray, pyarrow, fcn_dist) |
| error | string | error message of a failed run |
| started_at, finished_at | timestamp[us, UTC] | run start / end |

Writes are atomic: each write is a *new* file, written under a dot-prefixed temporary name in
the same directory, fsynced, then renamed into place (``os.replace``); no file is ever
rewritten. Readers (this class, pandas ``read_parquet(dir)``, ``pyarrow.dataset``) only see
complete files: pyarrow skips ``.``/``_`` prefixed names, and temp names do not end in
``.parquet`` so globs like DuckDB's ``read_parquet('runs/*.parquet')`` skip them too. On object
storage (a ``s3://...`` root) a file is uploaded straight under its final name: an object
becomes visible whole when its upload completes, so there is no temp name and no rename.

Compaction merges many small files into one ``compact-*.parquet`` whose Parquet metadata lists
the merged file names (``fcn_dist.compacted_from``); the sources are deleted afterwards.
:class:`ResultsStore` readers drop every file listed by a compacted file that is present, and
retry when a file vanishes or a new compacted file appears during a read, so they never count a
row twice nor miss one. External readers that glob the directory may briefly (between the
compacted file's rename and the deletion of its sources, milliseconds) see both. Compaction
locks with ``flock`` locally and with a lock object on object storage (see
``ResultsStore._remote_lock``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import re
import sys
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fcn_dist import fs as fsio
from fcn_dist.fs import Location, Uri, masked

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: runs.eval_split, eval_is_selection, eval_size
TABLES = ("epochs", "runs")
COMPACT_PREFIX = "compact-"
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 24 * 3600
_META_VERSION = b"fcn_dist.schema_version"
_META_TABLE = b"fcn_dist.table"
_META_SOURCES = b"fcn_dist.compacted_from"
_TS = pa.timestamp("us", tz="UTC")

_ID_FIELDS = [
    pa.field("schema_version", pa.int32()),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("job_id", pa.string()),
    pa.field("variant", pa.string()),
    pa.field("backbone", pa.string()),
    pa.field("dataset", pa.string()),
]

EPOCH_SCHEMA = pa.schema(
    _ID_FIELDS
    + [
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("train_loss", pa.float64()),
        pa.field("val_loss", pa.float64()),
        pa.field("miou", pa.float64()),
        pa.field("pixel_accuracy", pa.float64()),
        pa.field("mean_accuracy", pa.float64()),
        pa.field("fwiou", pa.float64()),
        pa.field("train_miou", pa.float64()),
        pa.field("train_pixel_accuracy", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("epoch_seconds", pa.float64()),
        pa.field("images_per_second", pa.float64()),
        pa.field("step_seconds", pa.float64()),
        pa.field("world_size", pa.int32()),
        pa.field("device", pa.string()),
        pa.field("timestamp", _TS),
    ],
    metadata={_META_VERSION: str(SCHEMA_VERSION).encode(), _META_TABLE: b"epochs"},
)

RUN_SCHEMA = pa.schema(
    _ID_FIELDS
    + [
        pa.field("name", pa.string()),
        pa.field("status", pa.string()),
        pa.field("miou", pa.float64()),
        pa.field("pixel_accuracy", pa.float64()),
        pa.field("mean_accuracy", pa.float64()),
        pa.field("fwiou", pa.float64()),
        pa.field("eval_split", pa.string()),
        pa.field("eval_is_selection", pa.bool_()),
        pa.field("eval_size", pa.string()),
        pa.field("per_class_iou", pa.string()),
        pa.field("class_names", pa.list_(pa.string())),
        pa.field("confusion_matrix", pa.list_(pa.list_(pa.int64()))),
        pa.field("num_classes", pa.int32()),
        pa.field("params", pa.int64()),
        pa.field("gflops_per_image", pa.float64()),
        pa.field("epochs", pa.int32()),
        pa.field("best_epoch", pa.int32()),
        pa.field("best_val_miou", pa.float64()),
        pa.field("train_seconds", pa.float64()),
        pa.field("images_per_second", pa.float64()),
        pa.field("world_size", pa.int32()),
        pa.field("device", pa.string()),
        pa.field("best_checkpoint", pa.string()),
        pa.field("run_dir", pa.string()),
        pa.field("spec", pa.string()),
        pa.field("versions", pa.string()),
        pa.field("error", pa.string()),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
    ],
    metadata={_META_VERSION: str(SCHEMA_VERSION).encode(), _META_TABLE: b"runs"},
)

SCHEMAS = {"epochs": EPOCH_SCHEMA, "runs": RUN_SCHEMA}
_JSON_FIELDS = {"per_class_iou", "spec", "versions"}
_REQUIRED = {"epochs": ("run_id", "epoch"), "runs": ("run_id",)}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def scored_on(eval_split: str | None, eval_is_selection: bool | None) -> str:
    """THE label of the split a final score was taken on, from a run's ``eval_split`` and
    ``eval_is_selection``: ``test``, ``val (used for selection)`` when it is the split that
    chose the checkpoint (not a held-out score), ``unknown`` for rows written before schema 2."""
    if not eval_split:
        return "unknown"
    if eval_is_selection is None:
        return f"{eval_split} (selection unknown)"
    return f"{eval_split} (used for selection)" if eval_is_selection else eval_split


class StoreWarning(UserWarning):
    """A store file was skipped (unreadable, incompatible) or a read could not settle."""


class _Vanished(Exception):
    """A file disappeared during a read (a compaction ran): retry with a fresh listing."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results (for the ``versions`` column)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("fcn-dist", "torch", "torchvision", "ray", "torchmetrics", "pyarrow", "numpy"):
        with contextlib.suppress(Exception):
            out[dist] = metadata.version(dist)
    return out


def _plain(value: Any) -> Any:
    """numpy / torch scalars and arrays -> Python objects."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _to_ts(value: Any) -> _dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(float(value), tz=_dt.timezone.utc)
    if isinstance(value, str):
        ts = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return ts if ts.tzinfo else ts.replace(tzinfo=_dt.timezone.utc)
    raise ValueError(f"not a timestamp: {value!r}")


def _json_text(key: str, value: Any, row: Mapping[str, Any]) -> str | None:
    if value is None or isinstance(value, str):
        return value
    value = _plain(value)
    if key == "per_class_iou" and isinstance(value, (list, tuple)):
        names = row.get("class_names") or [str(i) for i in range(len(value))]
        value = dict(zip(map(str, names), value))
    if isinstance(value, Mapping):
        value = {str(k): _plain(v) for k, v in value.items()}
        value = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in value.items()}
    return json.dumps(value, default=str)


def rows_to_table(table: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Validate and convert row dicts into a table with the current schema of ``table``.

    Missing columns become null; unknown columns raise ``ValueError`` (a typo would otherwise
    lose data silently). Dicts are accepted for the JSON columns, numpy/torch values anywhere.
    """
    schema = SCHEMAS[table]
    names = set(schema.names)
    rows = list(rows)
    now = _dt.datetime.now(_dt.timezone.utc)
    cols: dict[str, list] = {n: [] for n in schema.names}
    for i, row in enumerate(rows):
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"{table} row {i}: unknown column(s) {sorted(unknown)}; "
                             f"known: {schema.names}")
        for req in _REQUIRED[table]:
            if row.get(req) is None:
                raise ValueError(f"{table} row {i}: column {req!r} is required")
        for f in schema:
            v = row.get(f.name)
            if f.name == "schema_version":
                v = SCHEMA_VERSION
            elif f.name in _JSON_FIELDS:
                v = _json_text(f.name, v, row)
            elif pa.types.is_timestamp(f.type):
                v = _to_ts(v)
                if v is None and f.name in ("timestamp", "finished_at"):
                    v = now
            else:
                v = _plain(v)
                if pa.types.is_string(f.type) and v is not None:
                    v = str(v)
            cols[f.name].append(v)
    if table == "runs":
        cols["versions"] = [v if v is not None else json.dumps(library_versions())
                            for v in cols["versions"]]
    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _safe(text: str, limit: int = 48) -> str:
    return _SAFE.sub("_", str(text)).lstrip("._")[:limit] or "x"


def _to_expression(filters: Any) -> pc.Expression | None:
    """``{"col": value | [values]}`` (ANDed) or a pyarrow Expression -> Expression."""
    if filters is None or isinstance(filters, pc.Expression):
        return filters
    expr = None
    for col, val in dict(filters).items():
        if isinstance(val, (list, tuple, set, frozenset)):
            e = pc.field(col).isin(list(val))
        elif val is None:
            e = pc.field(col).is_null()
        else:
            e = pc.field(col) == val
        expr = e if expr is None else expr & e
    return expr


class ResultsStore:
    """The Parquet results store rooted at ``root`` (``epochs/`` and ``runs/`` under it): a
    local directory or an object-storage URI (``s3://bucket/prefix``, see :mod:`fcn_dist.fs`).

    Safe to use from many processes and hosts sharing the store: writers only add files;
    readers see whole files only; ``compact`` takes a lock per table (``flock`` locally, a
    lock object on object storage).
    """

    #: live small (not yet compacted) files per table that trigger an automatic compaction
    AUTO_COMPACT_FILES = {"runs": 64, "epochs": 256}
    #: compacted files per table above which an automatic compaction merges them all
    MAX_COMPACTED_FILES = 8
    #: object storage: a compaction lock object older than this is stale (its holder died)
    REMOTE_LOCK_SECONDS = 600.0
    #: object storage: wait after writing the lock object before reading it back; two
    #: compactors that both saw no lock and wrote theirs within this window see the same
    #: (last) writer's token, so only one goes on
    REMOTE_LOCK_SETTLE = 1.0

    def __init__(self, root: str | os.PathLike | Uri | None = None, *, auto_compact: bool = True):
        from fcn_dist.config import store_path

        self.root: Location = store_path(root)
        self.auto_compact = auto_compact
        self._sources_cache: dict[str, frozenset[str]] = {}
        self._bad: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ResultsStore({masked(self.root)!r})"

    @property
    def remote(self) -> bool:
        """Whether the store is on object storage."""
        return isinstance(self.root, Uri)

    def table_dir(self, table: str) -> Location:
        """Directory (or prefix) of ``table`` ("epochs" or "runs")."""
        if table not in SCHEMAS:
            raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        return self.root / table

    def _names(self, d: Location) -> list[tuple[str, int]]:
        """``(name, size)`` of the files in ``d``."""
        return fsio.listdir(d)

    def _fs_paths(self, d: Location, names: Iterable[str]) -> tuple[Any, list[str]]:
        filesystem, base = fsio.resolve(d)
        return filesystem, [f"{base}/{n}" for n in names]

    # ----------------------------------------------------------------------------- writes
    def append_epochs(self, rows: Iterable[Mapping[str, Any]]) -> Location | None:
        """Append epoch rows (one dict per epoch) as one new file; returns its path."""
        tbl = rows_to_table("epochs", rows)
        if tbl.num_rows == 0:
            return None
        run_ids = tbl.column("run_id").unique().to_pylist()
        ep = tbl.column("epoch")
        lo, hi = pc.min(ep).as_py(), pc.max(ep).as_py()
        stem = f"ep-{_safe(run_ids[0])}-e{lo:05d}" + (f"-{hi:05d}" if hi != lo else "")
        path = self._write("epochs", tbl, stem)
        self._maybe_compact("epochs")
        return path

    def append_epoch(self, row: Mapping[str, Any]) -> Location | None:
        """Append one epoch row."""
        return self.append_epochs([row])

    def write_run(self, row: Mapping[str, Any]) -> Location:
        """Write the final row of a run as one new file; returns its path.

        ``versions`` defaults to :func:`library_versions`, ``finished_at`` to now.
        """
        tbl = rows_to_table("runs", [row])
        path = self._write("runs", tbl, f"run-{_safe(row['run_id'])}")
        self._maybe_compact("runs")
        return path

    def _maybe_compact(self, table: str) -> None:
        """Keep reads fast: once a table holds ``AUTO_COMPACT_FILES`` small files, merge them
        (only if no other process is compacting; never raises)."""
        if not self.auto_compact:
            return
        try:
            names = [n for n, _ in self._names(self.table_dir(table))
                     if n.endswith(".parquet") and n[0] not in "._"]
            small = sum(not n.startswith(COMPACT_PREFIX) for n in names)
            if small < self.AUTO_COMPACT_FILES[table]:
                return
            merge_all = len(names) - small >= self.MAX_COMPACTED_FILES
            self.compact(table, include_compacted=merge_all, blocking=False)
        except Exception as exc:  # the write itself succeeded; compaction can wait
            log.warning("automatic compaction of %s failed: %s", table, exc)

    def _write(self, table: str, tbl: pa.Table, stem: str, metadata: dict | None = None) -> Location:
        d = self.table_dir(table)
        name = f"{stem}-{uuid.uuid4().hex[:16]}.parquet"
        if metadata:
            tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), **metadata})
        final = d / name
        if isinstance(d, Uri):
            # an object appears whole when its upload completes (PUT, or the completion of a
            # multipart upload): written straight under its final name, no rename
            filesystem, path = fsio.resolve(final)
            with fsio.storage_errors(final), filesystem.open_output_stream(path) as out:
                pq.write_table(tbl, out, compression="zstd")
            return final
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{TMP_PREFIX}{name}.partial"  # dot-prefixed and not *.parquet: never read
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(tbl, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(d)
        return final

    # ------------------------------------------------------------------------------ reads
    def epochs(self, filters: Any = None, columns: list[str] | None = None) -> pa.Table:
        """All epoch rows (``filters``: ``{"col": value or [values]}`` or a pyarrow
        Expression; ``columns``: projection)."""
        return self.read("epochs", filters=filters, columns=columns)

    def runs(self, filters: Any = None, columns: list[str] | None = None) -> pa.Table:
        """All run rows (same arguments as :meth:`epochs`)."""
        return self.read("runs", filters=filters, columns=columns)

    def read(self, table: str, filters: Any = None, columns: list[str] | None = None,
             attempts: int = 8) -> pa.Table:
        """A consistent snapshot of ``table`` with the current schema (older files are
        unified: missing columns null). Unreadable files are skipped with a StoreWarning."""
        schema = SCHEMAS[table]
        if columns is not None:
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise ValueError(f"unknown {table} column(s) {unknown}")
        expr = _to_expression(filters)
        d = self.table_dir(table)
        out_schema = schema if columns is None else pa.schema([schema.field(c) for c in columns],
                                                             metadata=schema.metadata)
        last: pa.Table | None = None
        for _ in range(attempts):
            try:
                files, compacts = self._snapshot(d)
                last = self._scan(d, files, schema, columns, expr)
            except _Vanished:
                continue
            # a compaction that finished during the scan may have deleted files the listing
            # missed; a new compacted file is the only way that can happen, so check for one
            if self._compacts_now(d) - compacts:
                continue
            return last
        warnings.warn(f"{masked(d)}: files kept changing during {attempts} read attempts; the "
                      "table may be incomplete", StoreWarning, stacklevel=2)
        return last if last is not None else out_schema.empty_table()

    def files(self, table: str) -> list[Location]:
        """The live data files of ``table`` (compaction sources excluded)."""
        d = self.table_dir(table)
        for _ in range(8):
            try:
                return [d / n for n in self._snapshot(d)[0]]
            except _Vanished:
                continue
        return []

    def _compacts_now(self, d: Location) -> set[str]:
        return {n for n, _ in self._names(d) if n.startswith(COMPACT_PREFIX)
                and n.endswith(".parquet")}

    def _snapshot(self, d: Location) -> tuple[list[str], set[str]]:
        """(live data files, compacted files seen); sources of compacted files are dropped."""
        entries = self._names(d)
        names = sorted(n for n, _ in entries if n.endswith(".parquet") and n[0] not in "._")
        compacts = {n for n in names if n.startswith(COMPACT_PREFIX)}
        covered: set[str] = set()
        for c in compacts:
            src = self._sources(d / c)
            if src is not None:
                covered |= src
        live = [n for n in names if n not in covered]
        with self._lock:
            bad = set(self._bad)
        if bad:
            sizes = dict(entries)
            live = [n for n in live if (n, sizes.get(n, -1)) not in bad]
        return live, compacts

    def _sources(self, path: Location) -> frozenset[str] | None:
        key = str(path)
        if key in self._sources_cache:
            return self._sources_cache[key]
        filesystem, p = fsio.resolve(path)
        try:
            with fsio.storage_errors(path):
                meta = pq.read_schema(p, filesystem=filesystem).metadata or {}
        except FileNotFoundError:
            raise _Vanished() from None
        except fsio.StorageError:
            raise
        except Exception as exc:  # a broken compacted file: treat as unreadable, keep sources
            warnings.warn(f"skipping unreadable compacted file {masked(path)}: {exc}", StoreWarning,
                          stacklevel=4)
            return None
        src = frozenset(json.loads(meta.get(_META_SOURCES, b"[]")))
        self._sources_cache[key] = src
        return src

    def _scan(self, d: Location, files: list[str], schema: pa.Schema, columns, expr) -> pa.Table:
        out_schema = schema if columns is None else pa.schema([schema.field(c) for c in columns],
                                                             metadata=schema.metadata)
        if not files:
            return out_schema.empty_table()
        filesystem, paths = self._fs_paths(d, files)
        try:
            with fsio.storage_errors(d):
                return self._scan_paths(paths, schema, columns, expr, filesystem)
        except FileNotFoundError:
            raise _Vanished() from None
        except fsio.StorageError:
            raise
        except (pa.ArrowException, OSError, ValueError):
            pass  # some file is broken or incompatible: find it file by file
        parts = []
        for name, p in zip(files, paths):
            try:
                parts.append(self._scan_paths([p], schema, columns, expr, filesystem))
            except FileNotFoundError:
                raise _Vanished() from None
            except (pa.ArrowException, OSError, ValueError) as exc:
                try:
                    size = fsio.size(d / name)
                except FileNotFoundError:
                    raise _Vanished() from None
                warnings.warn(f"skipping unreadable store file {masked(d / name)}: {exc}",
                              StoreWarning, stacklevel=4)
                with self._lock:
                    self._bad.add((name, size))
        if not parts:
            return out_schema.empty_table()
        return pa.concat_tables(parts)

    @staticmethod
    def _scan_paths(paths: list[str], schema: pa.Schema, columns, expr, filesystem=None) -> pa.Table:
        # an explicit schema unifies older files: missing columns read as null, compatible
        # types are cast; discovery is skipped, so 10k small files cost one footer read each
        dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
        # many tiny local files scan faster on one thread (measured: 3.3 s vs 5.3 s for 10k
        # files); remote ones wait on the network, where threads overlap the round trips
        threads = len(paths) <= 16 or not isinstance(filesystem, pafs.LocalFileSystem)
        return dataset.to_table(columns=columns, filter=expr, use_threads=threads)

    # ------------------------------------------------------------------------- compaction
    def compact(self, table: str, min_files: int = 2, *, include_compacted: bool = True,
                blocking: bool = True) -> dict:
        """Merge the live files of ``table`` into one ``compact-*.parquet``, atomically.

        Runs under an exclusive lock per table (locally ``flock`` on ``.compact.lock``; on
        object storage a ``.compact.lock`` object, see :meth:`_remote_lock`); with
        ``blocking=False`` it returns ``{"skipped": "locked"}`` if another compaction holds
        it. First deletes leftovers of an interrupted compaction (sources listed by a
        compacted file), then writes the merged file (its metadata lists its sources) and
        deletes the sources. ``include_compacted=False`` merges only the small files. Returns
        a summary dict.
        """
        d = self.table_dir(table)
        if isinstance(d, Uri):
            with self._remote_lock(d, blocking) as held:
                if not held:
                    return {"table": table, "skipped": "locked"}
                return self._compact_locked(table, d, min_files, include_compacted)
        import fcntl

        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".compact.lock", "a+") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                return {"table": table, "skipped": "locked"}
            try:
                return self._compact_locked(table, d, min_files, include_compacted)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _remote_lock(self, d: Uri, blocking: bool):
        """A compaction lock on object storage, which has no flock: a ``.compact.lock`` object
        holding a random token and its time. Taken when none is there (or it is older than
        ``REMOTE_LOCK_SECONDS``: its holder died); after ``REMOTE_LOCK_SETTLE`` seconds the
        object is read back and only the compactor whose token it holds goes on (two that
        raced both read the last writer's). Yields whether the lock is held."""
        import time

        lock = d / ".compact.lock"
        token = uuid.uuid4().hex
        deadline = time.time() + self.REMOTE_LOCK_SECONDS

        def holder() -> dict | None:
            try:
                held = json.loads(fsio.read_text(lock))
            except (FileNotFoundError, ValueError):
                return None
            return held if time.time() - float(held.get("time", 0)) < self.REMOTE_LOCK_SECONDS else None

        while True:
            if holder() is None:
                fsio.write_text(lock, json.dumps({"token": token, "time": time.time()}))
                time.sleep(self.REMOTE_LOCK_SETTLE)
                now = holder()
                if now is not None and now.get("token") == token:
                    break
            if not blocking or time.time() > deadline:
                yield False
                return
            time.sleep(self.REMOTE_LOCK_SETTLE)
        try:
            yield True
        finally:
            now = holder()
            if now is not None and now.get("token") == token:
                fsio.delete(lock)

    def _compact_locked(self, table: str, d: Location, min_files: int,
                        include_compacted: bool = True) -> dict:
        entries = self._names(d)
        names = sorted(n for n, _ in entries if n.endswith(".parquet") and n[0] not in "._")
        compacts = [n for n in names if n.startswith(COMPACT_PREFIX)]
        covered: set[str] = set()
        for c in compacts:
            src = self._sources(d / c)
            if src:
                covered |= src
        removed_leftovers = 0
        for n in names:
            if n in covered:
                with contextlib.suppress(FileNotFoundError):
                    fsio.delete(d / n)
                    removed_leftovers += 1
        if isinstance(d, Path):
            # temp files of writers that crashed mid-write (live writers finish in well under a
            # day); object storage has none: an unfinished upload is never an object
            now = _dt.datetime.now().timestamp()
            for n in os.listdir(d):
                if n.startswith(TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if now - os.stat(d / n).st_mtime > STALE_TMP_SECONDS:
                            os.unlink(d / n)
        live = [n for n in names if n not in covered]
        summary = {"table": table, "files_before": len(live), "leftovers_removed": removed_leftovers,
                   "rows": 0, "file": None}
        if not include_compacted:
            live = [n for n in live if not n.startswith(COMPACT_PREFIX)]
        if len(live) < min_files:
            summary["files_after"] = summary["files_before"]
            return summary
        schema = SCHEMAS[table]
        filesystem, paths = self._fs_paths(d, live)
        parts, sources = [], []
        try:  # one scan of all the sources; file by file only to single out a broken one
            with fsio.storage_errors(d):
                parts, sources = [self._scan_paths(paths, schema, None, None, filesystem)], live
        except fsio.StorageError:
            raise
        except Exception:
            parts, sources = [], []
        for n, p in ([] if sources else zip(live, paths)):
            try:
                parts.append(self._scan_paths([p], schema, None, None, filesystem))
                sources.append(n)
            except Exception as exc:  # leave broken files where they are
                warnings.warn(f"compact: leaving unreadable file {masked(d / n)}: {exc}",
                              StoreWarning, stacklevel=3)
        if len(sources) < min_files:
            summary["files_after"] = summary["files_before"]
            return summary
        merged = pa.concat_tables(parts)
        sort = [("run_id", "ascending")] + ([("epoch", "ascending")] if table == "epochs" else [])
        merged = merged.sort_by(sort)
        path = self._write(table, merged, COMPACT_PREFIX.rstrip("-"),
                           metadata={_META_SOURCES: json.dumps(sources).encode()})
        for n in sources:
            with contextlib.suppress(FileNotFoundError):
                fsio.delete(d / n)
        if isinstance(d, Path):
            _fsync_dir(d)
        summary.update(rows=merged.num_rows, file=str(path),
                       files_after=len(live) - len(sources) + 1)
        return summary


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
