"""Sharded data: sources -> Parquet shards + manifest (``prepare``), checks (``verify``),
readers (``load`` -> Ray Dataset for training, ``ShardDataset`` -> torch Dataset).

See :mod:`fcn_dist.data.sources` for the sources, splits and bad-input rules,
:mod:`fcn_dist.data.shards` for the on-disk format, :mod:`fcn_dist.data.transforms` for the
paired transforms and :mod:`fcn_dist.data.loading` for the Ray Data pipeline.
"""

from fcn_dist.data.class_weights import median_frequency_weights
from fcn_dist.data.loading import load
from fcn_dist.data.shards import FORMAT_VERSION, Manifest, ShardDataset, read_manifest, verify
from fcn_dist.data.sources import SOURCES, prepare

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "SOURCES",
    "ShardDataset",
    "load",
    "median_frequency_weights",
    "prepare",
    "read_manifest",
    "verify",
]
