"""Class weights computed from a prepared split's label maps."""

from __future__ import annotations

import os

import numpy as np

from fcn_dist.data.shards import ShardDataset


def median_frequency_weights(data_dir: str | os.PathLike, split: str = "train") -> list[float]:
    """Median-frequency class weights (Eigen & Fergus): ``median(f) / f_c`` where ``f_c`` is the
    pixel count of class c divided by the pixel count of the images where c is present."""
    ds = ShardDataset(data_dir, split)
    k = ds.manifest.num_classes
    counts = np.zeros(k, dtype=np.float64)
    present = np.zeros(k, dtype=np.float64)
    for i in range(len(ds)):
        _, lab = ds.raw(i)
        lab = np.asarray(lab).ravel()
        valid = lab[(lab >= 0) & (lab < k)]
        c = np.bincount(valid.astype(np.int64), minlength=k)[:k]
        counts += c
        present += (c > 0) * valid.size
    freq = np.where(present > 0, counts / np.maximum(present, 1), 0.0)
    seen = freq > 0
    if not seen.any():
        return [1.0] * k
    med = float(np.median(freq[seen]))
    return [float(med / f) if f > 0 else 1.0 for f in freq]
