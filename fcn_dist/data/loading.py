"""Ray Data pipeline over prepared shards: ``load(dir, split, ...) -> ray.data.Dataset``.

``read_parquet`` reads the split's shard files (as listed in the manifest, after the cheap
size/row-count check); ``map_batches`` decodes the JPEG/PNG bytes and applies the paired
transform per row. Every output batch has fixed-size tensors, so training workers can call
``ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=...)`` directly:

- ``mode="train"``: random scale, crop/pad to ``crop_size`` (label padding = ignore index),
  horizontal flip, mild colour jitter. The random stream is seeded from ``seed``, the batch's
  first id and a per-process call counter: reproducible for a given execution order, and a new
  augmentation each epoch. Block order is randomised (``randomize_block_order(seed)``); for
  row-level mixing pass ``local_shuffle_buffer_size`` to ``iter_torch_batches``.
- ``mode="eval"``: resize to ``eval_size`` (or ``crop_size`` when ``eval_size`` is None: batches
  must have one size; use :class:`~fcn_dist.data.ShardDataset` to score at original size).

Columns: ``image`` float32 (N, 3, H, W) ImageNet-normalised, ``label`` int64 (N, H, W).
"""

from __future__ import annotations

import functools
import itertools
import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from fcn_dist import fs as fsio
from fcn_dist.data.shards import decode_image_array, decode_label, read_manifest, verify
from fcn_dist.errors import DataError
from fcn_dist.fs import masked
from fcn_dist.spec import size2

_CALLS = itertools.count()  # per-process batch counter: fresh augmentation every epoch


def _size2(v: int | Sequence[int]) -> tuple[int, int]:
    try:
        return size2(v)
    except (TypeError, ValueError) as e:
        raise DataError(str(e)) from None


def transform_batch(
    batch: dict[str, np.ndarray], *, mode: str, crop_size: tuple[int, int], eval_size: tuple[int, int] | None,
    ignore_index: int, seed: int | None, scale_range: tuple[float, float] = (0.5, 2.0),
) -> dict[str, np.ndarray]:
    """Decode + transform one numpy batch of shard rows -> ``{"image", "label"}`` arrays."""
    import torch

    from fcn_dist.data.transforms import eval_transform, train_transform

    torch.set_num_threads(1)  # many small tasks on few cores: no intra-op oversubscription
    t = (train_transform(crop_size, ignore_index, scale_range=scale_range) if mode == "train"
         else eval_transform(eval_size or crop_size))
    images, labels = [], []
    ids = [str(i) for i in batch["id"]]
    with torch.random.fork_rng(devices=[]):
        if mode == "train":
            key = f"{seed}:{ids[0] if ids else ''}:{next(_CALLS)}:{os.getpid() if seed is None else 0}"
            torch.manual_seed(zlib.crc32(key.encode()))
        for img_b, lab_b in zip(batch["image"], batch["label"]):
            img, lab = t(decode_image_array(img_b), decode_label(lab_b))
            images.append(img.numpy())
            labels.append(lab.numpy())
    return {"image": np.stack(images).astype(np.float32), "label": np.stack(labels).astype(np.int64)}


def load(
    path: str | os.PathLike | fsio.Uri,
    split: str,
    *,
    mode: str = "train",
    crop_size: int | Sequence[int] = (256, 256),
    eval_size: int | Sequence[int] | None = None,
    seed: int | None = 0,
    sha256: bool = False,
    batch_size: int = 16,
    num_cpus: float = 0.5,
    scale_range: Sequence[float] = (0.5, 2.0),
) -> Any:
    """A ``ray.data.Dataset`` of one split, decoded and transformed for ``mode`` ("train" or
    "eval"); see the module doc. ``batch_size``/``num_cpus`` tune the ``map_batches`` stage."""
    import ray.data

    if mode not in ("train", "eval"):
        raise DataError(f"mode must be 'train' or 'eval', got {mode!r}")
    m = read_manifest(path)
    verify(m, split, sha256=sha256)
    shards = m.shard_paths(split)
    if not shards:
        raise DataError(f"{masked(m.root)}: split {split!r} has no rows")
    # object storage: every read task opens the shards through the same filesystem (its
    # settings travel with it; credentials come from the task's host), never a local copy
    filesystem, base = fsio.resolve(m.root)
    files = [f"{base}/{p.name}" for p in shards]
    runtime_env = _runtime_env() if isinstance(m.root, fsio.Uri) else None
    ds = ray.data.read_parquet(files, filesystem=filesystem,
                               runtime_env=runtime_env).select_columns(["id", "image", "label"])
    if mode == "train":
        ds = ds.randomize_block_order(seed=seed)
    fn = functools.partial(
        transform_batch, mode=mode, crop_size=_size2(crop_size),
        eval_size=_size2(eval_size) if eval_size is not None else None,
        ignore_index=m.ignore_index, seed=seed, scale_range=(float(scale_range[0]), float(scale_range[1])),
    )
    return ds.map_batches(fn, batch_format="numpy", batch_size=batch_size, num_cpus=num_cpus)


def _runtime_env() -> dict[str, Any] | None:
    """The read tasks' runtime env: the object-store settings of this process (endpoint,
    region, profile and credentials-file locations, never credentials; see
    :data:`fcn_dist.fs.FORWARDED_ENV`), so read tasks on any node find the same store even
    where Ray was started without them. None when none is set (local data)."""
    env = {k: os.environ[k] for k in fsio.FORWARDED_ENV if os.environ.get(k)}
    return {"env_vars": env} if env else None
