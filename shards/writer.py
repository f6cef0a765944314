"""Write one WebDataset shard with reproducible bytes, atomically.

Every tar header field that could vary between runs or leak something is fixed: mtime 0,
uid/gid 0, one user/group name, mode 0444, the USTAR format, and member names made only of
the opaque sample id and the member type. So the same samples in the same order give the
same sha256, whichever machine or worker writes them. The headers are built here (only the
name and size vary; `ustar_header`), byte for byte what the stdlib's tarfile writes for
these fields (a test holds the two equal): tarfile's generic path was a tenth of the job's
time per image, and the bytes no longer depend on the Python version. The shard is written to a hidden
temporary name in the output directory and renamed only when complete, so a crash never
leaves a half shard under a real name. A disk error while writing (`File too large`, `No
space left on device`, ...) is raised with the shard's path as its file name, so the one line
a command prints says which shard in which folder failed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tarfile
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Iterator

from shards.common import canonical_json, fsync_directory, shard_name  # noqa: F401  (shard_name: re-export)
from shards.manifest import ShardEntry

KEY_PATTERN = re.compile(r"^[0-9a-f]{8,64}(_v[0-9]{1,6})?$")
IMAGE_MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
TAR_OWNER = "patchveil"
TAR_MODE = 0o444
TAR_MTIME = 0
SHARD_FILE_MODE = 0o644
BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks: a tar is padded to whole records, as tar -b20 does
TEMP_PATTERN = re.compile(r"^\..+\.tar\.[^.]+\.tmp$")
"""Names of temporary shards (`.{name}.{random}.tmp`): a leftover one marks an interrupted write."""


def _octal(value: int, width: int) -> bytes:
    """A USTAR number field: zero-padded octal digits and a NUL, as tarfile's `itn`."""
    return b"%0*o\0" % (width - 1, value)


def _field(text: str, width: int) -> bytes:
    """A USTAR text field: the bytes, NUL-padded, as tarfile's `stn`."""
    return text.encode("ascii").ljust(width, b"\0")


_HEAD_AFTER_NAME = _octal(TAR_MODE, 8) + _octal(0, 8) + _octal(0, 8)  # mode, uid, gid
_HEAD_TAIL = (_octal(TAR_MTIME, 12) + b" " * 8 + tarfile.REGTYPE + b"\0" * 100 + tarfile.POSIX_MAGIC
              + _field(TAR_OWNER, 32) + _field(TAR_OWNER, 32) + b"\0" * (8 + 8 + 155 + 12))
"""Everything after the size field: mtime, the checksum as blanks, type, linkname, magic,
owner names, device numbers, prefix and the block's padding."""
_CHECKSUM_AT = 148


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte header of a regular member with this writer's fixed fields."""
    if len(name) > 100 or not name.isascii():
        raise ValueError(f"member name {name!r:.120} does not fit a USTAR header")
    if not 0 <= size < 8 ** 11:
        raise ValueError(f"member size {size} does not fit a USTAR header")
    head = _field(name, 100) + _HEAD_AFTER_NAME + _octal(size, 12) + _HEAD_TAIL
    checksum = b"%06o\0 " % sum(head)  # the sum with the checksum field read as blanks
    return head[:_CHECKSUM_AT] + checksum + head[_CHECKSUM_AT + 8:]


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Give an OSError that names no file the shard's path (errno and type are kept)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            exc.filename = os.fspath(path)
        raise


class _HashingFile:
    """Hashes and counts bytes on their way to disk, so close() need not read the shard back."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class ShardWriter:
    """One shard, written sample by sample; use it as a context manager.

    `close()` (or leaving the `with` block normally) fsyncs, renames the shard into place and
    returns its ShardEntry. An exception inside the `with` block removes the temporary file.
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, index: int) -> None:
        self.out_dir = Path(out_dir)
        self.name = shard_name(split, index)
        self.path = self.out_dir / self.name
        if not self.out_dir.is_dir():
            raise NotADirectoryError(f"{self.out_dir}: output directory does not exist")
        with _naming(self.path):
            fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{self.name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._keys: set[str] = set()
        self._entry: ShardEntry | None = None
        self._aborted = False
        # The WebDataset layout (members `key.ext`, sorted by ext) written without webdataset:
        # importing it imports torch when it is installed, which would cost every encryption
        # worker seconds and hundreds of MB for nothing.
        self._hashing = _HashingFile(self._file)

    @property
    def samples(self) -> int:
        """Samples written so far."""
        return len(self._keys)

    def write(self, key: str, image: bytes, ext: str, cls: int | None = None,
              meta: dict[str, Any] | None = None) -> None:
        """Append one sample: `key.{jpg|png}`, then `key.cls` (decimal) and `key.json` (canonical)."""
        if self._entry is not None or self._aborted:
            raise ValueError(f"{self.name}: the writer is already closed")
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise ValueError(f"{self.name}: sample key {key!r:.80} is not an opaque id "
                             "(8-64 lowercase hex digits, optionally _v<N>)")
        if key in self._keys:
            raise ValueError(f"{self.name}: sample key {key} is written twice")
        if ext not in IMAGE_MAGIC:
            raise ValueError(f"{self.name}: sample {key}: image type {ext!r:.20} is not one of jpg, png")
        data = bytes(image)
        if not data.startswith(IMAGE_MAGIC[ext]):
            raise ValueError(f"{self.name}: sample {key}: the image bytes are not a {ext} file")
        sample: dict[str, Any] = {"__key__": key, ext: data}
        if cls is not None:
            if isinstance(cls, bool) or not isinstance(cls, int) or cls < 0:
                raise ValueError(f"{self.name}: sample {key}: class index {cls!r:.20} "
                                 "is not a non-negative integer")
            sample["cls"] = str(cls).encode("ascii")
        if meta is not None:
            if not isinstance(meta, dict):
                raise ValueError(f"{self.name}: sample {key}: meta must be a dict")
            try:
                sample["json"] = canonical_json(meta)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self.name}: sample {key}: meta is not JSON-serialisable ({e})") from None
        with _naming(self.path):
            for ext_name in sorted(k for k in sample if k != "__key__"):
                self._add_member(f"{key}.{ext_name}", sample[ext_name])
        self._keys.add(key)

    def _add_member(self, name: str, data: bytes) -> None:
        self._hashing.write(ustar_header(name, len(data)))
        self._hashing.write(data)
        if len(data) % BLOCK:
            self._hashing.write(b"\0" * (BLOCK - len(data) % BLOCK))

    def _finish_tar(self) -> None:
        """Two zero blocks end the archive; zeros then fill the last record (tarfile's close)."""
        end = self._hashing.size + 2 * BLOCK
        self._hashing.write(b"\0" * (2 * BLOCK + (-end) % RECORD))

    def close(self) -> ShardEntry:
        """Finish the tar, fsync, rename it to its final name and describe it for the manifest."""
        if self._entry is not None:
            return self._entry
        if self._aborted:
            raise ValueError(f"{self.name}: the write was aborted")
        try:
            with _naming(self.path):
                self._finish_tar()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.chmod(self._tmp, SHARD_FILE_MODE)
                os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_directory(self.out_dir)
        self._entry = ShardEntry(name=self.name, sha256=self._hashing.sha256.hexdigest(),
                                 bytes=self._hashing.size, samples=len(self._keys))
        return self._entry

    def abort(self) -> None:
        """Drop the shard: close everything and remove the temporary file."""
        if self._entry is not None or self._aborted:
            return
        self._aborted = True
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and not self._aborted:
            self.close()
        else:
            self.abort()
