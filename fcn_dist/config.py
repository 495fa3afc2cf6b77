"""Service-wide settings: command-line flags fall back to these environment variables."""

from __future__ import annotations

import os

from fcn_dist.fs import Location, location

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REDIS_PREFIX = "fcn:"


def redis_url(value: str | None = None) -> str:
    """The Redis URL: ``value`` if given, else ``$FCN_REDIS_URL``, else the local default."""
    return value or os.environ.get("FCN_REDIS_URL") or DEFAULT_REDIS_URL


def redis_ca(value: str | None = None) -> str | None:
    """CA file that verifies a ``rediss://`` (TLS) server: ``value``, else ``$FCN_REDIS_CA``; a
    URL's own ``ssl_ca_certs=`` query parameter wins over both."""
    return value or os.environ.get("FCN_REDIS_CA") or None


def redis_prefix(value: str | None = None) -> str:
    """The queue's key prefix: ``value`` if given, else ``$FCN_REDIS_PREFIX``, else ``fcn:``."""
    return value or os.environ.get("FCN_REDIS_PREFIX") or DEFAULT_REDIS_PREFIX


def store_path(value: str | os.PathLike | None = None) -> Location:
    """The results store root: ``value``, else ``$FCN_STORE``, else ``./results``; a URI
    (``s3://bucket/prefix``) gives a :class:`~fcn_dist.fs.Uri`, a path an absolute Path."""
    return location(value or os.environ.get("FCN_STORE") or "results")


def data_path(value: str | os.PathLike | None = None) -> Location:
    """The prepared-data root: ``value``, else ``$FCN_DATA``, else ``./data`` (path or URI)."""
    return location(value or os.environ.get("FCN_DATA") or "data")


def runs_path(value: str | os.PathLike | None = None) -> Location:
    """Where Ray Train keeps run directories and checkpoints: ``value``, else ``$FCN_RUNS``,
    else ``<store>/ray`` (path or URI)."""
    v = value or os.environ.get("FCN_RUNS")
    return location(v) if v else store_path() / "ray"
