"""Where a release lives: a local folder, or any fsspec URL (`s3://`, `gs://`, `file://`, ...).

Why one module: every command used `pathlib.Path(OUT)`, which turns `s3://bucket/r` into the
local folder `s3:/bucket/r`. Every place that names, lists, reads or writes a release's
files asks this module instead, so a URL stays a URL and a local path keeps the exact code
path (atomic rename, fsync, no-follow opens) it had.

A *location* is a `Path` (local, also what `file://` URLs become) or a `str` URL of another
protocol. Object stores have no rename, so publishing there is: each shard is written to a
local temporary file and uploaded whole (an object appears complete or not at all), the
manifest is uploaded last, and readers and the auditor trust only the shards a signed
manifest lists. Credentials and endpoints come from each filesystem's own environment and
config (AWS_* variables, ~/.aws, fsspec's FSSPEC_<PROTOCOL>_<KWARG> variables), never argv.
fsspec is imported only for URLs, so local work does not pay for it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Union

from shards.common import atomic_write_bytes
from shards.errors import ContractError, MissingExtra

Location = Union[Path, str]

LOCAL_PROTOCOLS = ("file", "local")
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
"""The package each store's fsspec backend lives in (named when it is missing)."""
READ_BLOCK = 8 << 20
"""Bytes per ranged GET when a shard is read from a store: big enough that a sequential tar
scan costs few requests, small enough that workers do not each hold a whole shard."""


def is_url(value: str | os.PathLike) -> bool:
    """True for `proto://...` of a non-local protocol (a store the job cannot rename in)."""
    if isinstance(value, Path):
        return False
    text = os.fspath(value)
    proto, sep, _ = text.partition("://")
    return bool(sep) and proto.isascii() and proto.replace("+", "").replace("-", "").isalnum() \
        and proto.lower() not in LOCAL_PROTOCOLS


def location(value: str | os.PathLike) -> Location:
    """A release/source path as given: a URL string stays one, `file://` and paths become Path."""
    if is_url(value):
        return os.fspath(value).rstrip("/")
    text = os.fspath(value)
    for proto in LOCAL_PROTOCOLS:
        if text.startswith(proto + "://"):
            return Path(text[len(proto) + 3:])
    return Path(text)


def join(base: Location, name: str) -> Location:
    """`base/name` for either kind of location."""
    base = location(base)
    return base / name if isinstance(base, Path) else f"{base}/{name}"


def name_of(loc: Location) -> str:
    return Path(loc).name if isinstance(loc, Path) else loc.rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; configured from the environment only.

    A protocol whose fsspec backend is missing (s3fs for s3://) is one line naming the extra."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise MissingExtra("fsspec", f"the release URL {url}", "s3") from None
    try:
        return url_to_fs(url)
    except ImportError as exc:
        proto = url.partition("://")[0].lower()
        module = BACKENDS.get(proto, getattr(exc, "name", None) or proto)
        raise MissingExtra(module, f"the release URL {url}", "s3" if proto in ("s3", "s3a") else module) from None
    except ValueError as exc:  # an unknown protocol
        raise ContractError(url, f"not a storage URL fsspec knows ({exc})") from None


def exists(loc: Location) -> bool:
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.exists()
    fs, path = filesystem(loc)
    return fs.exists(path)


def list_names(base: Location) -> list[tuple[str, str]]:
    """(name, kind) of what sits directly in `base`, sorted; kind is "file", "folder" or "other".

    Empty for a base that does not exist (a store has no empty folders).
    """
    base = location(base)
    if isinstance(base, Path):
        if not base.is_dir():
            return []
        out = []
        for p in sorted(base.iterdir(), key=lambda p: p.name):
            kind = "other" if p.is_symlink() else "folder" if p.is_dir() else "file" if p.is_file() else "other"
            out.append((p.name, kind))
        return out
    fs, path = filesystem(base)
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if e["name"].rstrip("/") == path.rstrip("/"):
            continue
        out.append((name, "folder" if e.get("type") == "directory" else "file"))
    return sorted(out)


def find_files(base: str) -> list[str]:
    """Every file below a URL folder, as paths relative to it (posix), from one recursive
    listing (`fs.find`: the store's paginated list, no request per folder)."""
    fs, path = filesystem(base)
    root = path.rstrip("/") + "/"
    return sorted(p[len(root):] for p in fs.find(path) if p.startswith(root))


def size(loc: Location) -> int:
    """Bytes in a file; FileNotFoundError when absent."""
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.stat().st_size
    fs, path = filesystem(loc)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(loc)
    return int(info["size"])


def open_read(loc: Location) -> IO[bytes]:
    """A seekable binary reader: a local file, or the store's ranged reads through a read-ahead
    buffer (streaming, no temp copy of the shard on disk)."""
    loc = location(loc)
    if isinstance(loc, Path):
        return open(loc, "rb")
    fs, path = filesystem(loc)
    return fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead")


def read_bytes(loc: Location, limit: int | None = None) -> bytes:
    with open_read(loc) as f:
        return f.read() if limit is None else f.read(limit)


def sha256(loc: Location) -> str:
    digest = hashlib.sha256()
    with open_read(loc) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes(loc: Location, data: bytes, mode: int = 0o644) -> None:
    """Whole-or-nothing: a local atomic rename, or one PUT (an object appears complete or not)."""
    loc = location(loc)
    if isinstance(loc, Path):
        atomic_write_bytes(loc, data, mode)
        return
    fs, path = filesystem(loc)
    fs.pipe_file(path, data)


def remove(loc: Location) -> None:
    """Remove a file if present."""
    loc = location(loc)
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    fs, path = filesystem(loc)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def makedirs(loc: Location) -> None:
    loc = location(loc)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)
        return
    fs, path = filesystem(loc)
    fs.makedirs(path, exist_ok=True)  # a no-op on object stores, a folder elsewhere


@contextlib.contextmanager
def staging_dir(out: Location) -> Iterator[Path]:
    """Where a worker writes a shard before `publish`: OUT itself when local (the writer's
    rename is the publish), else a private temp folder removed afterwards."""
    out = location(out)
    if isinstance(out, Path):
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="patchveil-shard-") as tmp:
        yield Path(tmp)


def publish(local_file: Path, out: Location) -> None:
    """Upload a finished local file into OUT under its own name (nothing to do when OUT is local)."""
    out = location(out)
    if isinstance(out, Path):
        return
    fs, path = filesystem(out)
    fs.put_file(os.fspath(local_file), f"{path}/{local_file.name}")


def owner_root() -> Path:
    """Root of the data owner's local folders for URL releases: $PATCHVEIL_OWNER_DIR or
    ~/.patchveil/owner (the journal, lock and reports need a real local disk)."""
    root = os.environ.get("PATCHVEIL_OWNER_DIR", "").strip()
    return Path(root).expanduser() if root else Path.home() / ".patchveil" / "owner"


def owner_dir_for_url(url: str) -> Path:
    """`<owner root>/<protocol>/<bucket>/<path>.owner` for a URL release."""
    proto, _, rest = url.rstrip("/").partition("://")
    parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"{url}: a release URL needs a bucket or folder")
    parts[-1] += ".owner"
    return owner_root().joinpath(proto.lower(), *parts)
