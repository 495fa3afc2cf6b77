"""Local paths and object-storage URIs: one place resolves a location to a pyarrow filesystem.

``FCN_DATA``, ``FCN_RUNS``, ``FCN_STORE`` and a spec's ``data``/``store`` may be local paths
(the default) or URIs such as ``s3://bucket/prefix`` (anything
``pyarrow.fs.FileSystem.from_uri`` resolves: ``gs://``, ``hdfs://``, ``s3://`` with
``?endpoint_override=...``). S3-compatible servers (MinIO, Ceph, R2, moto) are reached through
the standard settings: ``AWS_ENDPOINT_URL``, ``AWS_*`` credentials, ``~/.aws/config``.

A local location is a :class:`pathlib.Path`, a remote one a :class:`Uri` (a small immutable
path-like: ``/``, ``name``, ``parent``). ``resolve(loc) -> (FileSystem, path)`` is the only
place a filesystem is made (cached per scheme and bucket; the bucket is checked once). Storage
failures become one-line :class:`StorageError` s naming the URI with credentials masked
(:func:`masked`); no message, log line, job record or run row carries a secret.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import threading
import uuid
from pathlib import Path, PurePosixPath
from typing import Iterator, Union
from urllib.parse import parse_qsl, urlencode, urlsplit

from fcn_dist.errors import FcnError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_PARAMS = {"secret_key", "access_key", "session_token", "secret", "token", "password",
                  "credentials"}
#: non-secret settings the training processes need to find the object store; the trainer
#: forwards those set here to its Ray workers and tasks (credentials never travel: each host
#: has its own, from its environment, ~/.aws or an instance role)
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
                 "GOOGLE_APPLICATION_CREDENTIALS")


class StorageError(FcnError):
    """An object store cannot be reached or refuses (endpoint, credentials, bucket); the message
    names the URI with its credentials masked."""


def is_uri(value: object) -> bool:
    """True for ``scheme://...`` strings and :class:`Uri` s (``file://`` included)."""
    return isinstance(value, Uri) or (isinstance(value, str) and bool(_SCHEME.match(value)))


class Uri:
    """An object-storage location ``scheme://bucket/key/prefix[?options]``, immutable.

    ``uri / "part"`` joins (normalised: ``..`` is resolved lexically, never above the bucket),
    ``name``, ``parent``, ``parts`` (of the key), ``str()`` the full URI (with any credentials:
    use :func:`masked` for messages). It has no ``__fspath__``, so it is never taken for a
    local path by accident.
    """

    __slots__ = ("scheme", "netloc", "key", "query")

    def __init__(self, text: str | "Uri"):
        if isinstance(text, Uri):
            self.scheme, self.netloc, self.key, self.query = text.scheme, text.netloc, text.key, text.query
            return
        parts = urlsplit(str(text))
        if not parts.scheme or not parts.netloc and parts.scheme != "file":
            raise StorageError(f"{masked(text)}: not a storage URI (scheme://bucket/prefix)")
        self.scheme = parts.scheme.lower()
        self.netloc = parts.netloc
        key = posixpath.normpath("/" + parts.path).lstrip("/")
        self.key = "" if key == "." else key
        self.query = parts.query

    def _with_key(self, key: str) -> "Uri":
        u = Uri(self)
        key = posixpath.normpath("/" + key).lstrip("/")
        u.key = "" if key == "." else key
        return u

    def __truediv__(self, other: str | os.PathLike) -> "Uri":
        other = str(other)
        if is_uri(other) or other.startswith("/"):
            raise ValueError(f"cannot join {other!r} onto {masked(self)}")
        return self._with_key(f"{self.key}/{other}")

    @property
    def bucket(self) -> str:
        """The bucket (or host) without credentials."""
        return self.netloc.rpartition("@")[2]

    @property
    def name(self) -> str:
        return posixpath.basename(self.key) or self.bucket

    @property
    def parent(self) -> "Uri":
        return self._with_key(posixpath.dirname(self.key))

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.key.split("/") if p)

    def is_relative_to(self, root: "Uri") -> bool:
        """Same scheme, bucket and options, and the key at or below ``root``'s key."""
        if (self.scheme, self.bucket, self.query) != (root.scheme, root.bucket, root.query):
            return False
        return not root.key or self.key == root.key or self.key.startswith(root.key + "/")

    def relative_to(self, root: "Uri") -> PurePosixPath:
        if not self.is_relative_to(root):
            raise ValueError(f"{masked(self)} is not under {masked(root)}")
        return PurePosixPath(self.key[len(root.key):].lstrip("/") or ".")

    def __str__(self) -> str:
        q = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.netloc}/{self.key}{q}"

    def __repr__(self) -> str:
        return f"Uri({masked(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Uri) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


Location = Union[Path, Uri]


def location(value: str | os.PathLike | Uri) -> Location:
    """A :class:`Uri` for ``scheme://`` text, else the absolute local :class:`Path`."""
    if isinstance(value, Uri):
        return value
    if is_uri(value):
        return Uri(str(value))
    return Path(value).expanduser().resolve()


def masked(value: object) -> str:
    """``value`` as text for messages: a URI's user:secret@ and secret query options masked."""
    text = str(value)
    if not is_uri(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe="/:*")
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return out + (f"?{query}" if query else "")


def public(value: object) -> str:
    """``value`` as text to store (a run row, a job record): a URI without its user:secret@
    and secret query options (still a working URI: the reader's own credentials apply);
    anything else as it is."""
    text = str(value)
    if not is_uri(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in _SECRET_PARAMS], safe="/:")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _mask_secrets(text: str) -> str:
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# --------------------------------------------------------------------------- filesystems
_FILESYSTEMS: dict[tuple[str, str, str], tuple[object, str]] = {}
_CHECKED: set[tuple[str, str, str]] = set()
_LOCK = threading.Lock()


def resolve(loc: str | os.PathLike | Uri, *, check: bool = True) -> tuple[object, str]:
    """``(pyarrow FileSystem, path on it)`` for a local path or a URI.

    Remote filesystems are made once per (scheme, bucket, options) in this process with
    ``FileSystem.from_uri``; the first use checks that the bucket is there (``check``), so a
    wrong endpoint, wrong credentials or a missing bucket fail at once, naming the URI."""
    import pyarrow.fs as pafs

    loc = location(loc)
    if isinstance(loc, Path):
        return pafs.LocalFileSystem(), str(loc)
    key = (loc.scheme, loc.netloc, loc.query)
    with _LOCK:
        cached = _FILESYSTEMS.get(key)
    if cached is None:
        base = Uri(loc)._with_key("")
        with storage_errors(base):
            fs, base_path = pafs.FileSystem.from_uri(str(base))
        cached = (fs, base_path.rstrip("/"))
        with _LOCK:
            _FILESYSTEMS[key] = cached
    fs, base_path = cached
    if check and key not in _CHECKED:
        base = Uri(loc)._with_key("")
        with storage_errors(base):
            info = fs.get_file_info(base_path or "/")
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{masked(base)}: bucket {loc.bucket!r} does not exist "
                               "(create it, or fix the URI)")
        with _LOCK:
            _CHECKED.add(key)
    path = f"{base_path}/{loc.key}" if loc.key else base_path
    return fs, path


def forget_filesystems() -> None:
    """Drop the cached filesystems (tests that change AWS_* settings in one process)."""
    with _LOCK:
        _FILESYSTEMS.clear()
        _CHECKED.clear()


def describe(exc: BaseException) -> str:
    """One line saying what a storage failure means, secrets masked."""
    text = " ".join(str(exc).split())
    low = text.lower()
    if "network_connection" in low or "could not connect" in low or "couldn't connect" in low \
            or "could not resolve" in low or "curlcode" in low:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        what = f"cannot reach the storage endpoint{f' {endpoint}' if endpoint else ''}"
    elif any(w in low for w in ("access_denied", "access denied", "invalidaccesskeyid",
                                "signaturedoesnotmatch", "invalid_access_key", "forbidden",
                                "http status 403", "the aws access key id")):
        what = "access denied: check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
    elif "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low:
        what = "the bucket does not exist"
    else:
        return _mask_secrets(text[:400])
    return f"{what} ({_mask_secrets(text[:200])})"


@contextlib.contextmanager
def storage_errors(loc: object) -> Iterator[None]:
    """Turn storage failures (``OSError`` s, pyarrow's I/O errors included, other than a
    missing file) inside the block into a one-line :class:`StorageError` naming ``loc``
    (masked). Local paths pass errors through unchanged: their messages already name the
    file. Bad contents (``ArrowInvalid``: not Parquet) are not storage failures: they pass."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as e:
        if not is_uri(loc):
            raise
        raise StorageError(f"{masked(loc)}: {describe(e)}") from None


# --------------------------------------------------------------------------- file operations
def _info(loc: Location):
    fs, path = resolve(loc)
    with storage_errors(loc):
        return fs.get_file_info(path)


def exists(loc: str | os.PathLike | Uri) -> bool:
    """Whether a file or directory (a prefix holding objects) is at ``loc``."""
    import pyarrow.fs as pafs

    loc = location(loc)
    if isinstance(loc, Path):
        return loc.exists()
    return _info(loc).type != pafs.FileType.NotFound


def is_file(loc: str | os.PathLike | Uri) -> bool:
    import pyarrow.fs as pafs

    loc = location(loc)
    if isinstance(loc, Path):
        return loc.is_file()
    return _info(loc).type == pafs.FileType.File


def is_dir(loc: str | os.PathLike | Uri) -> bool:
    """A directory; on object storage: a prefix that holds at least one object."""
    import pyarrow.fs as pafs

    loc = location(loc)
    if isinstance(loc, Path):
        return loc.is_dir()
    return _info(loc).type == pafs.FileType.Directory


def size(loc: str | os.PathLike | Uri) -> int:
    """Size in bytes; FileNotFoundError if there is no file."""
    import pyarrow.fs as pafs

    loc = location(loc)
    if isinstance(loc, Path):
        return loc.stat().st_size
    info = _info(loc)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(masked(loc))
    return int(info.size)


def listdir(loc: str | os.PathLike | Uri) -> list[tuple[str, int]]:
    """``(name, size)`` of the files directly in ``loc`` (empty if there is none)."""
    import pyarrow.fs as pafs

    loc = location(loc)
    if isinstance(loc, Path):
        try:
            entries = list(os.scandir(loc))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            try:  # a file removed since the scan (a compaction's sources) is just not there
                if e.is_file():
                    out.append((e.name, e.stat().st_size))
            except FileNotFoundError:
                continue
        return out
    fs, path = resolve(loc)
    with storage_errors(loc):
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [(i.base_name, int(i.size or 0)) for i in infos if i.type == pafs.FileType.File]


def read_bytes(loc: str | os.PathLike | Uri) -> bytes:
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.read_bytes()
    fs, path = resolve(loc)
    with storage_errors(loc), fs.open_input_stream(path) as f:
        return f.read()


def read_text(loc: str | os.PathLike | Uri) -> str:
    return read_bytes(loc).decode()


def open_input(loc: str | os.PathLike | Uri):
    """A seekable binary file (pyarrow's random-access file for remote locations)."""
    loc = location(loc)
    if isinstance(loc, Path):
        return open(loc, "rb")
    fs, path = resolve(loc)
    with storage_errors(loc):
        return fs.open_input_file(path)


def write_bytes(loc: str | os.PathLike | Uri, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a part:
    locally a dot-temp file in the same directory renamed into place; on object storage one
    upload (an object appears whole when its upload completes)."""
    loc = location(loc)
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        tmp = loc.parent / f".{loc.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, loc)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs, path = resolve(loc)
    with storage_errors(loc), fs.open_output_stream(path) as f:
        f.write(data)


def write_text(loc: str | os.PathLike | Uri, text: str) -> None:
    write_bytes(loc, text.encode())


def delete(loc: str | os.PathLike | Uri) -> None:
    """Delete a file if it is there."""
    loc = location(loc)
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    fs, path = resolve(loc)
    with contextlib.suppress(FileNotFoundError), storage_errors(loc):
        fs.delete_file(path)


def delete_tree(loc: str | os.PathLike | Uri) -> None:
    """Delete a directory (prefix) and everything under it, if it is there."""
    import shutil

    loc = location(loc)
    if isinstance(loc, Path):
        shutil.rmtree(loc, ignore_errors=True)
        return
    fs, path = resolve(loc)
    with contextlib.suppress(FileNotFoundError), storage_errors(loc):
        fs.delete_dir(path)


def makedirs(loc: str | os.PathLike | Uri) -> None:
    """Create a local directory (object storage has no directories: nothing to do)."""
    loc = location(loc)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)
