"""Service-wide settings: command-line flags fall back to these environment variables."""

from __future__ import annotations

import os
import re

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


# --------------------------------------------------------------------------- queue housekeeping
DEFAULT_RETENTION = "7d"
DEFAULT_DEAD_MAX = 10_000
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds in ``text``: a number with an optional unit ``s``, ``m``, ``h``, ``d`` or ``w``
    (``90s``, ``15m``, ``12h``, ``7d``; a bare number is seconds). ValueError names ``what``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text >= 0:
        return float(text)
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smhdw]?)", str(text).strip().lower())
    if not m:
        raise ValueError(f"{what}: expected a duration like 30s, 15m, 12h or 7d, got {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


def retention_seconds(value: str | float | None = None, what: str = "--retention") -> float | None:
    """How long a finished job (record, history, logs, events) is kept: ``value``, else
    ``$FCN_RETENTION``, else 7 days; ``None`` for ``never``. ValueError names the setting."""
    if value is None or value == "":
        value, what = os.environ.get("FCN_RETENTION") or DEFAULT_RETENTION, "FCN_RETENTION"
    if isinstance(value, str) and value.strip().lower() == "never":
        return None
    return parse_duration(value, what)


def dead_max(value: int | str | None = None) -> int:
    """How many dead-lettered jobs are kept (the oldest beyond it are purged): ``value``, else
    ``$FCN_DEAD_MAX``, else 10,000. ValueError names the setting."""
    what = "--dead-max"
    if value is None or value == "":
        value, what = os.environ.get("FCN_DEAD_MAX") or DEFAULT_DEAD_MAX, "FCN_DEAD_MAX"
    try:
        n = int(str(value).strip())
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{what}: expected a whole number >= 0, got {value!r}")
    return n


def decoded_cache_bytes() -> int:
    """Bytes of decoded training/val images each training process keeps in memory
    (``$FCN_DECODED_CACHE_MB``, default 1024; 0 decodes every sample every epoch)."""
    value = os.environ.get("FCN_DECODED_CACHE_MB") or "1024"
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if mb < 0:
        raise ValueError(f"FCN_DECODED_CACHE_MB: expected megabytes >= 0, got {value!r}")
    return int(mb * 2**20)
