"""verify_release: the auditor's five checks of a release, with only the owner's public identity.

1. ``manifest-signature`` — the manifest's Ed25519 signature, under a key the exported
   identity lists (or that a verified custody log handed over to by rotation), never merely
   the key the manifest names.
2. ``shard-files`` — every listed shard exists as a regular file (a symbolic link is refused:
   it could point anywhere, and the manifest is not read through one either), nothing
   unlisted sits beside them, and each shard's sha256, size and sample count match the manifest.
   A format-2 manifest also signs `_info.json` (timm's split list): its sha256 must match and
   its content must say what the manifest says (`shards.info`); unsigned, it is a stray file.
3. ``sample-contents`` — every sample: its key exactly the job's opaque id (24 lowercase hex,
   `keys.derive.SAMPLE_ID_HEX`; a hex-encoded file name is longer) and unique across all
   shards (a duplicate would train twice and decrypt to one file; `audit.keyset` keeps this
   check's memory bounded), only image + cls + json members, the image decodes to the size
   and channels the cipher says, carries no EXIF/ICC/XMP/text/comment chunk and nothing after
   its end, and its json holds no path- or file-name-like text.
4. ``custody-log`` — hash chain, signatures, key hand-overs and time order of the log, and an
   entry (``used-for-job``, or ``forgotten`` for a later version) citing this manifest's digest.
5. ``key-id`` — the manifest's dataset key id belongs to the identity: listed with a commitment
   that hashes to it (or recorded in the verified custody log).
6. ``checkpoint`` (only with a checkpoint the auditor kept) — ``CheckpointCheck``: the custody
   log extends it, so nothing the auditor has seen was cut, rewritten or forked.

Shards are read once each, as a stream of 512-byte tar blocks hashed on the way, one sample in
memory at a time, and sample keys spill to sorted temporary runs (``audit.keyset``), so memory
does not grow with the release. Tar parsing is done here with
``tarfile.TarInfo.frombuf`` rather than ``shards.reader``: the auditor needs every raw member
byte (metadata chunks), and the hash and the contents from the same single read.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import json
import re
import stat
import struct
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from PIL import Image

from audit.keyset import SampleKeys
from keys.checkpoint import Checkpoint, log_origin, verify_signatures
from keys.custody import GENESIS, ChainReport, identity_signing_keys, line_hash, signing_key_id, verify_chain
from keys.derive import SAMPLE_ID_HEX, dataset_key_id_from_commitment
from shards.console import progress_bar
from shards import storage
from shards.info import INFO_NAME, info_problems
from shards.manifest import MANIFEST_NAME, Manifest, ManifestError
from shards.reader import STORAGE_EXTENSION
from shards.writer import TEMP_PATTERN

CHECKS = ("manifest-signature", "shard-files", "sample-contents", "custody-log", "key-id")
CHECKPOINT = "checkpoint"    # a sixth check, run only when the auditor gives a checkpoint
MAX_PROBLEMS = 20            # listed per check; the rest are counted
MAX_MEMBER_BYTES = 64 << 20  # a member larger than this is reported, not read into memory
PROGRESS_MIN_BYTES = 256 << 20
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_CHUNK = 1 << 20

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_ALLOWED = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
PNG_NAMES = {b"eXIf": "EXIF", b"iCCP": "ICC profile", b"iTXt": "international text (XMP?)",
             b"tEXt": "text", b"zTXt": "compressed text", b"tIME": "timestamp"}
JPEG_ALLOWED = {0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD, 0xDA}  # SOF0-2, DHT, DQT, DRI, SOS
JPEG_NAMES = {0xE1: "APP1 (EXIF or XMP)", 0xE2: "APP2 (ICC profile)", 0xED: "APP13 (IPTC)",
              0xFE: "COM (comment)", 0xEE: "APP14 (Adobe)"}
_PATH_LIKE = re.compile(r"[/\\]|^~|^[A-Za-z]:|://")
_FILE_NAME_LIKE = re.compile(r"[\w-]\.[A-Za-z][A-Za-z0-9]{1,4}$")
_NAME_KEY = re.compile(r"file|path|url|uri|name|dir", re.IGNORECASE)
OPAQUE_KEY = re.compile(rf"^[0-9a-f]{{{SAMPLE_ID_HEX}}}$")
"""Exactly what the job writes (`keys.derive.DatasetKey.sample_id`); the writer's own pattern is looser."""


@dataclass
class CheckResult:
    name: str
    status: str                  # "pass", "fail" or "skip"
    summary: str
    problems: list[str] = field(default_factory=list)
    more: int = 0                # problems found beyond the listed ones

    def problem(self, text: str) -> None:
        self.status = "fail"
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.more += 1


@dataclass
class VerifyReport:
    release: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "ok": self.ok, "failed": self.failed,
                "checks": [asdict(c) for c in self.checks]}


def verify_release(out_dir: str | Path, identity: dict[str, Any], *,
                   custody_log: str | Path | None = None, progress: bool | None = None,
                   checkpoint: Checkpoint | None = None) -> VerifyReport:
    """Run the five checks (six with ``checkpoint``, which needs ``custody_log``). ``identity``
    is the owner's exported public identity (already read with ``keys.custody.read_identity``);
    ``checkpoint`` one the auditor kept (``keys.checkpoint.parse_checkpoint``). ``progress``:
    None shows a bar for large releases."""
    if checkpoint is not None and custody_log is None:
        raise ValueError("a checkpoint is checked against a custody log: give custody_log too")
    out_dir = storage.location(out_dir)  # a folder, or a store URL read through fsspec
    identity_keys = {kid: key.public_bytes_raw() for kid, key in identity_signing_keys(identity).items()}
    results = {name: CheckResult(name, "pass", "") for name in CHECKS}

    chain = None
    if custody_log is None:
        results["custody-log"] = CheckResult("custody-log", "skip", "no --custody-log given")
    else:
        chain = verify_chain(custody_log, identity)

    manifest = None
    try:
        if isinstance(out_dir, Path) and (out_dir / MANIFEST_NAME).is_symlink():
            raise ManifestError(f"{MANIFEST_NAME} is a symbolic link, not a file of the release")
        manifest = Manifest.load(storage.join(out_dir, MANIFEST_NAME))
    except ManifestError as exc:
        for name in ("manifest-signature", "shard-files", "sample-contents", "key-id"):
            results[name].problem(f"no readable manifest: {exc}")
    if manifest is not None:
        _check_signature(manifest, identity_keys, chain, results["manifest-signature"])
        _check_shards(out_dir, manifest, results["shard-files"], results["sample-contents"], progress)
        _check_key_id(manifest, identity, chain, results["key-id"])
    if chain is not None:
        _check_custody(chain, manifest, Path(custody_log), results["custody-log"])
    checks = [results[name] for name in CHECKS]
    if checkpoint is not None and chain is not None:
        checks.append(CheckpointCheck(checkpoint, identity_keys).run(Path(custody_log), chain))
    return VerifyReport(str(out_dir), checks)


# -- 1. manifest signature -----------------------------------------------------------------

def _check_signature(manifest: Manifest, identity_keys: dict[str, bytes], chain: ChainReport | None,
                     result: CheckResult) -> None:
    if manifest.signature is None or manifest.public_key_bytes is None:
        result.problem("the manifest is not signed")
        return
    named = manifest.public_key_bytes
    signer = signing_key_id(named)
    handed_over = chain.signing_keys if chain is not None and chain.ok else {}
    if identity_keys.get(signer) == named:
        source = "the exported identity"
    elif handed_over.get(signer) == named:
        source = "a rotation recorded in the verified custody log"
    else:
        result.problem(f"signed by {signer}, a key the exported identity does not list "
                       "(edited and re-signed by someone else?)")
        return
    try:
        manifest.verify(named)
    except ManifestError as exc:
        result.problem(str(exc))
        return
    result.summary = f"Ed25519 signature valid under {signer} (from {source})"


# -- 2 and 3. shard files and their samples, in one pass per shard -------------------------

@dataclass
class _ShardStats:
    sha256: str = ""
    size: int = 0
    samples: int = 0


def _check_info(out_dir: Path, manifest: Manifest, files: CheckResult) -> None:
    """timm's `_info.json`: a regular file (no link), with the signed sha256, saying what the manifest says."""
    if isinstance(out_dir, str):  # a store: objects, no links
        try:
            data = storage.read_bytes(storage.join(out_dir, INFO_NAME), MAX_MEMBER_BYTES + 1)
        except FileNotFoundError:
            files.problem(f"{INFO_NAME}: missing (the manifest signs one)")
            return
        except OSError as exc:
            files.problem(f"{INFO_NAME}: cannot be read ({exc.strerror or type(exc).__name__})")
            return
        for problem in info_problems(data, manifest):
            files.problem(problem)
        return
    try:
        fd = os.open(out_dir / INFO_NAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        files.problem(f"{INFO_NAME}: a symbolic link, not a file of the release" if exc.errno == errno.ELOOP
                      else f"{INFO_NAME}: missing (the manifest signs one)" if exc.errno == errno.ENOENT
                      else f"{INFO_NAME}: cannot be read ({exc.strerror})")
        return
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            files.problem(f"{INFO_NAME}: not a regular file")
            return
        data = f.read(MAX_MEMBER_BYTES + 1)
    for problem in info_problems(data, manifest):
        files.problem(problem)


def _compare(name: str, entry, stats: _ShardStats, files: CheckResult) -> None:
    if stats.size != entry.bytes:
        files.problem(f"{name}: size {stats.size} bytes, the manifest says {entry.bytes}")
    if stats.sha256 != entry.sha256:
        files.problem(f"{name}: sha256 {stats.sha256[:16]}… differs from the manifest's "
                      f"{entry.sha256[:16]}…")
    if stats.samples != entry.samples:
        files.problem(f"{name}: {stats.samples} samples, the manifest says {entry.samples}")


def _check_shards(out_dir: Path, manifest: Manifest, files: CheckResult, contents: CheckResult,
                  progress: bool | None) -> None:
    listed = {e.name: e for entries in manifest.splits.values() for e in entries}
    if manifest.info_sha256 is not None:
        _check_info(out_dir, manifest, files)
    for name, _ in storage.list_names(out_dir):
        if name == MANIFEST_NAME or name in listed:
            continue
        if name == INFO_NAME and manifest.info_sha256 is not None:
            continue  # checked above
        if TEMP_PATTERN.match(name):
            files.problem(f"{name}: temporary file left by an interrupted write")
        elif name.lower().endswith(".tar"):
            files.problem(f"{name}: shard present but not listed in the manifest")
        else:
            files.problem(f"{name}: not part of the release (only manifest.json, {INFO_NAME} when "
                          "the manifest signs one, and listed shards belong)")

    total = sum(e.bytes for e in listed.values())
    show = (total >= PROGRESS_MIN_BYTES) if progress is None else progress
    checked = samples = 0
    keys = SampleKeys()
    with progress_bar(enabled=show, total=total, unit="B", unit_scale=True, desc="verify") as bar:
        for number, (name, entry) in enumerate(listed.items()):
            if isinstance(out_dir, str):  # a store: stream the object through ranged reads
                try:
                    with storage.open_read(storage.join(out_dir, name)) as f:
                        stats = _scan_shard(f, name, manifest, contents, files, bar.update,
                                            lambda key, n=number: keys.add(key, n))
                except FileNotFoundError:
                    files.problem(f"{name}: missing")
                    continue
                except OSError as exc:
                    files.problem(f"{name}: cannot be read ({exc.strerror or type(exc).__name__})")
                    continue
                checked += 1
                samples += stats.samples
                _compare(name, entry, stats, files)
                continue
            path = out_dir / name
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError as exc:
                files.problem(f"{name}: a symbolic link, not a file of the release" if exc.errno == errno.ELOOP
                              else f"{name}: missing" if exc.errno == errno.ENOENT
                              else f"{name}: cannot be read ({exc.strerror})")
                continue
            with open(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    files.problem(f"{name}: not a regular file")
                    continue
                stats = _scan_shard(f, name, manifest, contents, files, bar.update,
                                    lambda key, n=number: keys.add(key, n))
            checked += 1
            samples += stats.samples
            _compare(name, entry, stats, files)
    names = list(listed)
    for key, shards in keys.duplicates():
        contents.problem(f"sample {key} is in {len(shards)} shards ({', '.join(names[i] for i in shards)}); "
                         "a sample key must be unique in the release")
    files.summary = (f"{checked} of {len(listed)} listed shards read, {total / 1e6:.1f} MB; "
                     "sha256, sizes and counts compared"
                     + (f"; {INFO_NAME} as signed" if manifest.info_sha256 is not None else ""))
    cipher = manifest.cipher
    contents.summary = (f"{samples} samples: opaque keys unique across shards, allowed members only, "
                        f"{cipher.stored_size[0]}x{cipher.stored_size[1]}x{cipher.channels} "
                        f"{STORAGE_EXTENSION[cipher.format]} images without metadata, no names in json")


class _HashingReader:
    """Reads a file front to back, hashing every byte, and reports progress."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], Any]) -> None:
        self._f, self._on_bytes = f, on_bytes
        self.sha256, self.size = hashlib.sha256(), 0

    def read(self, n: int) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.size += len(data)
        self._on_bytes(len(data))
        return data

    def skip(self, n: int) -> int:
        """Read and hash n bytes without keeping them; returns how many there were."""
        done = 0
        while done < n:
            chunk = self.read(min(_CHUNK, n - done))
            if not chunk:
                break
            done += len(chunk)
        return done

    def rest_is_zero(self) -> bool:
        zero = True
        for chunk in iter(lambda: self.read(_CHUNK), b""):
            zero = zero and chunk.count(0) == len(chunk)
        return zero


def _scan_shard(f: BinaryIO, shard: str, manifest: Manifest, contents: CheckResult, files: CheckResult,
                on_bytes: Callable[[int], Any], on_key: Callable[[str], Any]) -> _ShardStats:
    """Hash and check one open shard; `on_key` gets each well-formed key once (the cross-shard check)."""
    stats = _ShardStats()
    reader = _HashingReader(f, on_bytes)
    seen: set[str] = set()
    key, members = None, {}
    for name, data in _tar_members(reader, shard, files):
        member_key, _, ext = name.partition(".")
        if member_key != key:
            if key is not None:
                stats.samples += 1
                _check_sample(shard, key, members, manifest, contents)
            if member_key in seen:
                contents.problem(f"{shard}: sample {member_key[:64]} appears in two places")
            elif OPAQUE_KEY.match(member_key):
                on_key(member_key)
            seen.add(member_key)
            key, members = member_key, {}
        if ext in members:
            contents.problem(f"{shard}: sample {key[:64]} has two .{ext[:20]} members")
        members[ext] = data
    if key is not None:
        stats.samples += 1
        _check_sample(shard, key, members, manifest, contents)
    reader.skip(1 << 62)  # hash whatever _tar_members left unread
    stats.sha256, stats.size = reader.sha256.hexdigest(), reader.size
    return stats


def _tar_members(reader: _HashingReader, shard: str, files: CheckResult) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of each regular member; data None when the member is too large to hold.

    Strict: whatever follows the last member must be the all-zero end of the archive, a bad
    header checksum is corruption (``tarfile`` itself would just stop there quietly).
    """
    while True:
        offset = reader.size
        header = reader.read(_BLOCK)
        if len(header) < _BLOCK:
            files.problem(f"{shard}: truncated (no end-of-archive marker)")
            return
        if header == _ZERO_BLOCK:
            if not reader.rest_is_zero():
                files.problem(f"{shard}: data after the end-of-archive marker at byte {offset}")
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            files.problem(f"{shard}: corrupt tar header at byte {offset} ({exc})")
            return
        padded = -(-info.size // _BLOCK) * _BLOCK
        if not info.isreg():
            files.problem(f"{shard}: member {info.name[:80]!r} is not a regular file")
            if reader.skip(padded) < padded:
                files.problem(f"{shard}: truncated inside member {info.name[:80]!r}")
                return
            continue
        if info.size > MAX_MEMBER_BYTES:
            files.problem(f"{shard}: member {info.name[:80]!r} is {info.size} bytes, too large for a sample")
            data = None
            got = reader.skip(info.size)
        else:
            data = reader.read(info.size)
            got = len(data)
        if got < info.size or reader.skip(padded - info.size) < padded - info.size:
            files.problem(f"{shard}: truncated inside member {info.name[:80]!r}")
            return
        yield info.name, data


def _check_sample(shard: str, key: str, members: dict[str, bytes | None], manifest: Manifest,
                  result: CheckResult) -> None:
    where = f"{shard}: sample {key[:64]}"
    if not OPAQUE_KEY.match(key):
        result.problem(f"{shard}: sample key {key[:64]!r} is not an opaque id "
                       f"(exactly {SAMPLE_ID_HEX} lowercase hex digits, as the job writes)")
    cipher = manifest.cipher
    image_ext = STORAGE_EXTENSION[cipher.format]
    unknown = sorted(set(members) - {image_ext, "cls", "json"})
    if unknown:
        result.problem(f"{where}: member .{unknown[0][:20]} is not allowed (only {image_ext}, cls, json)")
    if manifest.task == "classification" and "cls" not in members:
        result.problem(f"{where}: no cls member")
    if manifest.task == "detection" and "json" not in members:
        result.problem(f"{where}: no json member")
    image = members.get(image_ext)
    if image_ext not in members:
        result.problem(f"{where}: no .{image_ext} image")
    elif image is not None:  # None: too large to hold, reported under shard-files
        for problem in (_png_problems if image_ext == "png" else _jpeg_problems)(image):
            result.problem(f"{where}: {problem}")
        problem = _decode_problem(image, image_ext, cipher.stored_size, cipher.channels)
        if problem:
            result.problem(f"{where}: {problem}")
    if members.get("cls") is not None:
        text = members["cls"].decode("ascii", "replace")
        if not (text.isascii() and text.isdigit()) or int(text) >= manifest.num_classes:
            result.problem(f"{where}: cls {text[:20]!r} is not a class index below {manifest.num_classes}")
    if members.get("json") is not None:
        for problem in _json_problems(members["json"]):
            result.problem(f"{where}: json {problem}")


def _decode_problem(data: bytes, ext: str, size: tuple[int, int], channels: int) -> str | None:
    fmt = "PNG" if ext == "png" else "JPEG"
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            if (img.height, img.width) != tuple(size):
                return f"image is {img.height}x{img.width}, the cipher says {size[0]}x{size[1]}"
            if img.mode != ("L" if channels == 1 else "RGB"):
                return f"image mode {img.mode}, the cipher says {channels} channel(s)"
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"the {ext} image does not decode ({str(exc)[:80]})"
    return None


def _png_problems(data: bytes) -> list[str]:
    """Every chunk beyond pixels (IHDR, PLTE, IDAT, IEND) and any byte after IEND."""
    if not data.startswith(PNG_SIGNATURE):
        return ["image is not a PNG file"]
    problems, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if kind not in PNG_ALLOWED:
            label = PNG_NAMES.get(kind, "metadata")
            problems.append(f"PNG chunk {kind.decode('latin-1')!r} ({label}) is not allowed")
        if kind == b"IEND":
            if end != len(data):
                problems.append(f"{len(data) - end} bytes after the PNG end chunk")
            return problems
        pos = end
    return problems + ["PNG ends without an IEND chunk"]


def _jpeg_problems(data: bytes) -> list[str]:
    """Every segment beyond the JFIF header, tables, frame and scans, and any byte after EOI."""
    if not data.startswith(b"\xff\xd8"):
        return ["image is not a JPEG file"]
    problems, pos, n = [], 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return problems + [f"malformed JPEG at byte {pos}"]
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            if pos + 2 != n:
                problems.append(f"{n - pos - 2} bytes after the JPEG end marker")
            return problems
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xE0:
            if not segment.startswith(b"JFIF\x00"):
                problems.append("JPEG APP0 segment other than JFIF (thumbnail?) is not allowed")
        elif marker not in JPEG_ALLOWED:
            label = JPEG_NAMES.get(marker, f"marker 0x{marker:02X}")
            problems.append(f"JPEG segment {label} is not allowed")
        pos += 2 + length
        if marker == 0xDA:  # entropy-coded scan: skip to the next real marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return problems + ["JPEG ends without an end marker"]
                follower = data[pos + 1]
                if follower == 0x00 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
                    pos += 1 if follower == 0xFF else 2
                    continue
                break
    return problems + ["JPEG ends without an end marker"]


def _json_problems(raw: bytes) -> list[str]:
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return ["member is not valid JSON"]
    if not isinstance(meta, dict):
        return ["member is not a JSON object"]
    problems: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if _NAME_KEY.search(key):
                    problems.append(f"field {where}{key!r} names a file, path or URL")
                if _PATH_LIKE.search(key) or _FILE_NAME_LIKE.search(key):
                    problems.append(f"field name {key[:60]!r} looks like a path or file name")
                walk(item, f"{where}{key}.")
        elif isinstance(value, list):
            for item in value:
                walk(item, where)
        elif isinstance(value, str) and (_PATH_LIKE.search(value) or _FILE_NAME_LIKE.search(value)):
            problems.append(f"value {value[:60]!r} at {where.rstrip('.') or 'top level'} "
                            "looks like a path or file name")

    walk(meta, "")
    return problems


# -- 4. custody log ------------------------------------------------------------------------

def _check_custody(chain: ChainReport, manifest: Manifest | None, path: Path, result: CheckResult) -> None:
    for problem in chain.problems:
        result.problem(problem)
    if manifest is None:
        result.problem("no readable manifest, so no digest to look for")
        return
    digest = manifest.digest()
    vouching = [e for e in chain.entries if e["event"] in ("used-for-job", "forgotten")
                and e["details"].get("manifest_digest") == digest]
    if not vouching:
        result.problem(f"no used-for-job or forgotten entry records this manifest's digest {digest[:16]}…")
        return
    entry = vouching[-1]
    if entry["details"].get("key_id") != manifest.dataset_key_id or \
            entry["details"].get("dataset_id") != manifest.dataset_id:
        result.problem(f"entry {entry['seq']} records this digest for another dataset key")
    destroyed = [e for e in chain.entries if e["event"] == "destroyed"
                 and manifest.dataset_key_id in e["details"].get("key_ids", [])]
    note = f"; its dataset key was destroyed at entry {destroyed[0]['seq']}" if destroyed else ""
    result.summary = (f"{len(chain.entries)} entries in {path.name}: chain, signatures and time order "
                      f"valid; {entry['event']} entry {entry['seq']} records this manifest{note}")


# -- 5. key id -----------------------------------------------------------------------------

def _check_key_id(manifest: Manifest, identity: dict[str, Any], chain: ChainReport | None,
                  result: CheckResult) -> None:
    key_id, dataset_id = manifest.dataset_key_id, manifest.dataset_id
    sources = [("the exported identity", d) for d in identity.get("datasets") or []
               if isinstance(d, dict) and d.get("key_id") == key_id]
    if chain is not None and chain.ok:
        sources += [(f"custody entry {e['seq']}", e["details"]) for e in chain.entries
                    if e["event"] == "dataset-derived" and e["details"].get("key_id") == key_id]
    for source, listed in sources:
        commitment = listed.get("commitment")
        try:
            matches = isinstance(commitment, str) and dataset_key_id_from_commitment(commitment) == key_id
        except ValueError:
            matches = False
        if not matches:
            result.problem(f"{source} lists {key_id} with a commitment that does not hash to it")
        elif listed.get("dataset_id") != dataset_id:
            result.problem(f"{source} lists {key_id} for dataset {listed.get('dataset_id')!r}, "
                           f"not {dataset_id!r}")
        else:
            result.summary = f"{key_id} is the key of dataset {dataset_id!r} in {source}"
            return
    if not result.problems:
        result.problem(f"key id {key_id} of dataset {dataset_id!r} is not among the identity's datasets"
                       + ("" if chain is not None else " (a newer identity or --custody-log may list it)"))


# -- 6. checkpoint -------------------------------------------------------------------------

@dataclass
class CheckpointCheck:
    """Policy: the custody log must extend the checkpoint the auditor kept.

    The checkpoint must be the owner's (a valid signature by a key of the identity, or one a
    verified log handed over to, in office at that size) and of this log (origin); the log
    must have at least its size, its first ``size`` lines must link and the last of them hash
    to its head. Each failure is named first in its problem: ``bad signature``, ``unknown
    key``, ``another log``, ``retired key``, ``truncated``, ``rewritten`` (the chain no longer
    verifies), ``forked`` (a validly signed log with another history of the same entries).
    """

    checkpoint: Checkpoint
    identity_keys: dict[str, bytes]

    def run(self, log_path: Path, chain: ChainReport) -> CheckResult:
        result = CheckResult(CHECKPOINT, "pass", "")
        cp = self.checkpoint
        keys = {**self.identity_keys, **(chain.signing_keys if chain.ok else {})}
        signer, problems = verify_signatures(cp, keys)
        for problem in problems:
            result.problem(problem)
        lines = _log_lines(log_path)
        root = chain.entries[0]["key_id"] if chain.entries else None
        if root is not None and cp.origin != log_origin(root):
            result.problem(f"another log: the checkpoint is of {cp.origin}, this log is {log_origin(root)}")
        if result.problems:
            return result
        if len(lines) < cp.size:
            result.problem(f"truncated: the log has {len(lines)} entries, the checkpoint you kept attests "
                           f"{cp.size}: entries {len(lines)} to {cp.size - 1} were cut")
            return result
        broken = _prefix_break(lines[:cp.size])
        if broken is not None or line_hash(lines[cp.size - 1]) != cp.head:
            where = f"entry {broken}" if broken is not None else f"entry {cp.size - 1}"
            if chain.ok:
                result.problem(f"forked: {where} differs from the checkpoint's head {cp.head[:16]}…, yet "
                               f"the log verifies: the owner's key signed two histories of the first "
                               f"{cp.size} entries")
            else:
                result.problem(f"rewritten: {where} differs from the checkpoint's head {cp.head[:16]}…: "
                               f"the first {cp.size} entries were changed after the checkpoint")
            return result
        in_office = _key_in_office(chain.entries[:cp.size])
        if in_office is not None and signer != in_office:
            result.problem(f"retired key: signed by {signer}, but {in_office} was the signing key in "
                           f"office at entry {cp.size - 1}")
            return result
        grown = len(lines) - cp.size
        result.summary = (f"the log extends the checkpoint of {cp.size} entries signed by {signer}"
                          + (f" ({grown} entries added since)" if grown else " (unchanged since)"))
        return result


def _log_lines(path: Path) -> list[bytes]:
    """The log's complete lines (a torn last line is the custody-log check's to report)."""
    try:
        return path.read_bytes().split(b"\n")[:-1]
    except OSError:
        return []


def _prefix_break(lines: list[bytes]) -> int | None:
    """The first line whose ``prev`` is not the hash of the line before it (None: all link)."""
    prev = GENESIS
    for index, line in enumerate(lines):
        try:
            entry = json.loads(line)
            linked = isinstance(entry, dict) and entry.get("prev") == prev
        except ValueError:
            linked = False
        if not linked:
            return index
        prev = line_hash(line)
    return None


def _key_in_office(entries: list[dict[str, Any]]) -> str | None:
    """The signing key after these entries: the creator's, then each rotation's new key."""
    active = entries[0]["key_id"] if entries else None
    for entry in entries:
        if entry["event"] == "rotated":
            active = entry["details"].get("new_key_id", active)
    return active
