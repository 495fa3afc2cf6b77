"""Parquet shards + ``manifest.json``: writing (atomic), checking and reading.

Layout of a prepared dataset directory::

    DIR/manifest.json              written last; its presence marks a complete dataset
    DIR/{split}-{k:05d}.parquet    rows: id (string), image (binary, encoded JPEG/PNG),
                                   label (binary, PNG of class indices), height, width (int32)

The manifest holds the classes, palette, ignore index, per-split counts, every shard file with
its row count, byte size and sha256, the source and its options, the preparation summary and
``format_version``.

Writing is atomic: everything goes into a hidden temp directory next to the target
(``.NAME.tmp-XXXX``), the manifest is written last, and the directory is renamed onto the
target at the end. A crash leaves either the old dataset or the new one, never a half-written
directory that looks complete (a leftover temp dir has no manifest and a dotted name).

On object storage (``--out s3://bucket/prefix``) there is no directory to rename: an existing
dataset's manifest is deleted first, the shards are uploaded under the target prefix, and the
manifest is uploaded last, so the dataset is complete exactly when its manifest is there.
Reading goes through the same pyarrow filesystem (:func:`fcn_dist.fs.resolve`).

Opening a dataset checks the shards cheaply (byte size and Parquet row count against the
manifest); ``verify(dir, sha256=True)`` also recomputes the sha256. Any mismatch raises
:class:`~fcn_dist.errors.DataError` naming the shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.utils.data
from PIL import Image

from fcn_dist import fs as fsio
from fcn_dist.errors import DataError
from fcn_dist.fs import Location, Uri, masked

FORMAT = "fcn_dist.shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("label", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
    ]
)
ROW_GROUP_ROWS = 32  # small row groups: ShardDataset reads one group per random access


# --------------------------------------------------------------------------- encode / decode
def encode_label(label: np.ndarray) -> bytes:
    """A (H, W) integer label map as PNG bytes (8-bit, or 16-bit when values exceed 255)."""
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"label must be 2-D, got shape {arr.shape}")
    buf = io.BytesIO()
    if arr.size and (arr.max() > 255 or arr.min() < 0):
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError("label values must lie in 0..65535")
        Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG")
    else:
        Image.fromarray(arr.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def decode_label(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) integer array (uint8 or int32 for 16-bit labels)."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.array(im)
    return arr if arr.dtype == np.uint8 else arr.astype(np.int32)


def encode_png(image: Image.Image) -> bytes:
    """A PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Encoded image bytes -> PIL RGB image (fully loaded)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB") if im.mode != "RGB" else im.copy()


def decode_image_array(data: bytes) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 array (writable: torch.from_numpy shares it)."""
    return np.array(decode_image(data))


# --------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """The parsed ``manifest.json`` of a prepared dataset."""

    root: Location  # a local Path or a fcn_dist.fs.Uri
    classes: list[str]
    palette: list[list[int]] | None
    ignore_index: int
    splits: dict[str, int]
    shards: dict[str, list[dict[str, Any]]]  # split -> [{file, rows, bytes, sha256}]
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created: str | None = None

    @property
    def num_classes(self) -> int:
        """Number of real classes (the ignore index is not one of them)."""
        return len(self.classes)

    def shard_paths(self, split: str) -> list[Location]:
        """Absolute paths (or URIs) of ``split``'s shard files, in order."""
        self._check_split(split)
        return [self.root / s["file"] for s in self.shards[split]]

    def _check_split(self, split: str) -> None:
        if split not in self.shards:
            raise DataError(f"{masked(self.root)}: no split {split!r} (has {', '.join(sorted(self.shards)) or 'none'})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``manifest.json`` (no ``root``)."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "created": self.created,
            "source": self.source,
            "options": self.options,
            "classes": self.classes,
            "num_classes": self.num_classes,
            "palette": self.palette,
            "ignore_index": self.ignore_index,
            "splits": self.splits,
            "shards": self.shards,
            "summary": self.summary,
        }


def read_manifest(path: str | os.PathLike | Uri) -> Manifest:
    """Read ``DIR/manifest.json`` (DIR a local path or a URI); DataError if it is missing,
    malformed or of another format."""
    root = fsio.location(path)
    mpath = root / MANIFEST
    if isinstance(root, Path) and not root.is_dir():
        raise DataError(f"{root}: no such dataset directory (prepare one with `fcn-data prepare`)")
    try:
        text = fsio.read_text(mpath)
    except FileNotFoundError:
        if not fsio.is_dir(root):
            raise DataError(f"{masked(root)}: no such dataset directory (prepare one with "
                            "`fcn-data prepare`)") from None
        raise DataError(f"{masked(mpath)}: missing; {masked(root)} is not a prepared dataset (or "
                        "its preparation did not finish)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{masked(mpath)}: unreadable manifest ({e})") from None
    try:
        d = json.loads(text)
    except ValueError as e:
        raise DataError(f"{masked(mpath)}: unreadable manifest ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise DataError(f"{masked(mpath)}: not an fcn_dist shard manifest")
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{masked(mpath)}: format_version {version!r} unsupported (this code reads {FORMAT_VERSION})")
    try:
        return Manifest(
            root=root,
            classes=list(d["classes"]),
            palette=d.get("palette"),
            ignore_index=int(d["ignore_index"]),
            splits={k: int(v) for k, v in d["splits"].items()},
            shards={k: list(v) for k, v in d["shards"].items()},
            source=str(d.get("source", "")),
            options=dict(d.get("options") or {}),
            summary=dict(d.get("summary") or {}),
            format_version=version,
            created=d.get("created"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{masked(mpath)}: malformed manifest ({e!r})") from None


def _sha256(path: Location) -> str:
    h = hashlib.sha256()
    with fsio.open_input(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parquet_file(path: Location) -> pq.ParquetFile:
    """A ``ParquetFile`` over a local shard or one on object storage."""
    if isinstance(path, Path):
        return pq.ParquetFile(path)
    filesystem, p = fsio.resolve(path)
    with fsio.storage_errors(path):
        return pq.ParquetFile(p, filesystem=filesystem)


def verify(
    path: str | os.PathLike | Uri | Manifest, split: str | None = None, *, sha256: bool = False
) -> dict[str, Any]:
    """Check a dataset's shards against its manifest: existence, byte size and Parquet row
    count always; sha256 when asked. ``split=None`` checks every split.

    Returns ``{"shards": n, "rows": n, "bytes": n, "sha256": bool}``; raises DataError naming
    the first bad shard."""
    m = path if isinstance(path, Manifest) else read_manifest(path)
    splits = [split] if split is not None else sorted(m.shards)
    n_shards = n_rows = n_bytes = 0
    sizes = dict(fsio.listdir(m.root))  # one listing, not a request per shard
    for sp in splits:
        m._check_split(sp)
        total = 0
        for s in m.shards[sp]:
            p = m.root / s["file"]
            shown = masked(p)
            if s["file"] not in sizes:
                raise DataError(f"shard {shown}: missing (listed in {masked(m.root / MANIFEST)})")
            size = sizes[s["file"]]
            if size != int(s["bytes"]):
                raise DataError(f"shard {shown}: {size} bytes, manifest says {s['bytes']} (truncated or modified)")
            try:
                rows = parquet_file(p).metadata.num_rows
            except fsio.StorageError:
                raise
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
                raise DataError(f"shard {shown}: not a readable Parquet file ({e})") from None
            if rows != int(s["rows"]):
                raise DataError(f"shard {shown}: {rows} rows, manifest says {s['rows']}")
            if sha256 and _sha256(p) != s["sha256"]:
                raise DataError(f"shard {shown}: sha256 mismatch (file corrupted or modified)")
            total += rows
            n_shards += 1
            n_bytes += size
        if total != m.splits.get(sp, -1):
            raise DataError(f"{masked(m.root)}: split {sp!r} has {total} rows in its shards, manifest says {m.splits.get(sp)}")
        n_rows += total
    return {"shards": n_shards, "rows": n_rows, "bytes": n_bytes, "sha256": sha256}


# --------------------------------------------------------------------------- writing
class ShardWriter:
    """Writes rows per split into Parquet shards in a temp dir; ``commit`` writes the manifest
    and renames the temp dir onto the target. Use as a context manager: an exception removes
    the temp dir and leaves the target untouched. On object storage the shards go straight
    under the target prefix and the manifest is uploaded last (see the module doc)."""

    def __init__(self, out: str | os.PathLike | Uri, *, shard_size: int = 256, overwrite: bool = False):
        if shard_size < 1:
            raise DataError(f"shard size must be >= 1, got {shard_size}")
        self.out = fsio.location(out)
        self.overwrite = overwrite
        self.shard_size = shard_size
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self.shards: dict[str, list[dict[str, Any]]] = {}
        self.counts: dict[str, int] = {}
        self._done = False
        if isinstance(self.out, Uri):
            if fsio.listdir(self.out) and not overwrite:
                raise DataError(f"{masked(self.out)}: already exists; pass --overwrite to replace it")
            # the old dataset stops being complete before any of its shards is replaced
            fsio.delete(self.out / MANIFEST)
            self.tmp: Location = self.out
            self._written: list[str] = []
            return
        if self.out.exists() and not overwrite:
            if any(self.out.iterdir()) if self.out.is_dir() else True:
                raise DataError(f"{self.out}: already exists; pass --overwrite to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    def add(self, split: str, row: dict[str, Any]) -> None:
        """Queue one row (id, image, label, height, width) for ``split``; flushes full shards."""
        buf = self._buffers.setdefault(split, [])
        buf.append(row)
        self.counts[split] = self.counts.get(split, 0) + 1
        if len(buf) >= self.shard_size:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self._buffers.get(split) or []
        if not rows:
            return
        entries = self.shards.setdefault(split, [])
        name = f"{split}-{len(entries):05d}.parquet"
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        path = self.tmp / name
        if isinstance(path, Uri):
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="none")
            data = buf.getvalue().to_pybytes()
            fsio.write_bytes(path, data)
            self._written.append(name)
            entries.append({"file": name, "rows": len(rows), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        else:
            pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, compression="none")
            entries.append({"file": name, "rows": len(rows), "bytes": path.stat().st_size,
                            "sha256": _sha256(path)})
        self._buffers[split] = []

    def commit(self, manifest: Manifest) -> Manifest:
        """Flush, write the manifest last, rename the temp dir onto the target."""
        for split in list(self._buffers):
            self._flush(split)
        order = list(manifest.splits) + [s for s in self.shards if s not in manifest.splits]
        self.shards = {s: self.shards.get(s, []) for s in order}  # declared splits, even if empty
        manifest.shards = self.shards
        manifest.splits = {s: self.counts.get(s, 0) for s in self.shards}
        text = json.dumps(manifest.to_dict(), indent=2) + "\n"
        if isinstance(self.out, Uri):
            keep = set(self._written) | {MANIFEST}
            for name, _ in fsio.listdir(self.out):  # shards of a replaced, larger dataset
                if name not in keep:
                    fsio.delete(self.out / name)
            fsio.write_text(self.out / MANIFEST, text)
            self._done = True
            manifest.root = self.out
            return manifest
        (self.tmp / MANIFEST).write_text(text)
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        self._done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        manifest.root = self.out
        return manifest

    def abort(self) -> None:
        """Remove the temp dir (on object storage: the shards written so far); the target is
        left as it was (on object storage: without a manifest, so not a dataset)."""
        self._done = True
        if isinstance(self.tmp, Uri):
            for name in self._written:
                with contextlib.suppress(fsio.StorageError):
                    fsio.delete(self.tmp / name)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- reading
class ShardDataset(torch.utils.data.Dataset):
    """A ``torch.utils.data.Dataset`` over one split's shards (single-process eval, tests).

    ``ds[i] -> (image float32 (3, H, W), label int64 (H, W))`` after ``transform`` (a paired
    transform from :mod:`fcn_dist.data.transforms`; default: original size, normalised).
    ``ds.raw(i) -> (PIL RGB image, np label)`` at the original size. ``ds.ids``, ``ds.manifest``.
    ``keep_decoded`` bytes of decoded pairs are kept in memory for later epochs.
    Shards are checked (size, rows; sha256 when ``sha256=True``) on open. Reads one small row
    group per access; safe with DataLoader workers (files are opened per process).
    """

    def __init__(
        self,
        path: str | os.PathLike | Uri,
        split: str,
        transform: Callable[[Any, Any], Any] | None = None,
        *,
        sha256: bool = False,
        keep_decoded: int = 0,
    ):
        self.manifest = read_manifest(path)
        self.split = split
        verify(self.manifest, split, sha256=sha256)
        if transform is None:
            from fcn_dist.data.transforms import eval_transform

            transform = eval_transform(None)
        self.transform = transform
        self._paths = self.manifest.shard_paths(split)
        self._index: list[tuple[int, int, int]] = []  # (shard, row group, row in group)
        ids: list[str] = []
        for si, p in enumerate(self._paths):
            pf = parquet_file(p)
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                self._index.extend((si, g, r) for r in range(n))
            ids.extend(pf.read(columns=["id"]).column("id").to_pylist())
        self.ids: list[str] = ids
        self._files: dict[int, pq.ParquetFile] = {}
        self._pid = os.getpid()
        self._cache: tuple[tuple[int, int], pa.Table] | None = None
        # decoded pairs kept for the next epochs, up to ``keep_decoded`` bytes: a random order
        # reads a whole row group per sample, and decoding costs the training threads' time
        self.keep_decoded = keep_decoded
        self._decoded: dict[int, tuple[Image.Image, np.ndarray]] = {}
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self._index)

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_files"], d["_cache"], d["_decoded"], d["_decoded_bytes"] = {}, None, {}, 0
        return d

    def _row(self, i: int) -> dict[str, Any]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        si, g, r = self._index[i]
        if self._pid != os.getpid():
            self._files, self._cache, self._pid = {}, None, os.getpid()
        if self._cache is None or self._cache[0] != (si, g):
            pf = self._files.get(si)
            if pf is None:
                pf = self._files[si] = parquet_file(self._paths[si])
            self._cache = ((si, g), pf.read_row_group(g))
        t = self._cache[1]
        return {c: t.column(c)[r].as_py() for c in ("id", "image", "label", "height", "width")}

    def raw(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """The i-th image (PIL RGB) and label map (np.ndarray) at their stored size (shared
        with later calls when kept decoded: transforms copy, never write into them)."""
        hit = self._decoded.get(i)
        if hit is not None:
            return hit
        row = self._row(i)
        pair = decode_image(row["image"]), decode_label(row["label"])
        size = pair[0].width * pair[0].height * len(pair[0].getbands()) + pair[1].nbytes
        if self._decoded_bytes + size <= self.keep_decoded:
            self._decoded[i] = pair
            self._decoded_bytes += size
        return pair

    def __getitem__(self, i: int):
        image, label = self.raw(i)
        return self.transform(image, label)
