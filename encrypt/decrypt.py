"""decrypt_release: the key holder's way from a release back to images.

Each mode's inverse and secrets come from its `encrypt.ciphers.CIPHERS` entry, exactly as the
job drew them: from the release subkey (derivation 2, the salt from the sealed index) or,
for releases made before key separation, the dataset key (derivation 1). `shuffle` samples come back exactly as the cipher saw them (the PNG of a PNG
release equals the resized, cropped source pixel for pixel; a JPEG release carries its
encoding losses). The shuffling mixing modes come back to the mixed image: averaging cannot
be undone. Keyless modes (`mix`, `none`) have nothing to decrypt.
Output files are named by the owner's sealed index (`keys.index`), built in a hidden sibling
of DEST and renamed into place only when every sample is done, and the count is logged as
`decrypted` in the custody log.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
from PIL import Image

from encrypt.ciphers import DerivationError, cipher_of, release_keys
from encrypt.lock import holds_release
from encrypt.sources import InputError
from keys.errors import KeystoreError
from keys.index import load_index
from shards import storage
from shards.console import progress_bar
from shards.manifest import MANIFEST_NAME, Manifest, ManifestError
from shards.reader import iter_samples, sha256_file



def nothing_to_decrypt(mode: str) -> str | None:
    """Why a release of `mode` has nothing to decrypt (a keyless mode), or None."""
    cipher = cipher_of(mode)
    if cipher.decrypt is not None:
        return None
    if not cipher.mode.encrypted:
        return f"mode {mode} stores plain images; nothing to decrypt"
    return (f"mode {mode} keeps no key: the stored image already is the mixed image, and averaging "
            "cannot be undone; nothing to decrypt")


@dataclass
class DecryptSummary:
    samples: int
    dest: Path
    mode: str
    named_by: str  # "path" (from the sealed index) or "id" (no index in the keystore)


def load_owned_manifest(out_dir: Path, keystore) -> Manifest:
    """The release's manifest, checked against one of this keystore's signing keys (any generation)."""
    out_dir = storage.location(out_dir)  # a folder, or a store URL (read through fsspec)
    path = storage.join(out_dir, MANIFEST_NAME)
    if isinstance(out_dir, Path) and not out_dir.is_dir():
        raise InputError(f"{out_dir}: not a release folder")
    manifest = Manifest.load(path)
    ours = {k["public_key"] for k in keystore.signing_keys()}
    if manifest.public_key not in ours:
        raise InputError(f"{path}: signed by a key this keystore does not hold; "
                         "it is not a release of this keystore")
    try:
        manifest.verify(manifest.public_key_bytes)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return manifest


def check_shard_digests(out_dir: Path, manifest: Manifest, names: Iterable[str] | None = None) -> None:
    """Refuse to work from shards that differ from the signed manifest."""
    wanted = None if names is None else set(names)
    for entries in manifest.splits.values():
        for entry in entries:
            if wanted is not None and entry.name not in wanted:
                continue
            path = storage.join(out_dir, entry.name)
            if not (path.is_file() if isinstance(path, Path) else storage.exists(path)):
                raise InputError(f"{path}: listed in the manifest but missing")
            if (sha256_file(path) if isinstance(path, Path) else storage.sha256(path)) != entry.sha256:
                raise InputError(f"{path}: sha256 differs from the signed manifest (damaged or edited); "
                                 "run audit-shards verify")


@holds_release
def decrypt_release(out_dir: Path, dest: Path, keystore, *, ids: Iterable[str] | None = None,
                    progress: bool = True) -> DecryptSummary:
    """Write the decrypted images of a release (or of the samples `ids`) under `dest`."""
    out_dir, dest = storage.location(out_dir), Path(dest)
    manifest = load_owned_manifest(out_dir, keystore)
    cipher = manifest.cipher
    refusal = nothing_to_decrypt(cipher.mode)
    if refusal:
        raise InputError(f"{out_dir}: {refusal}")
    _check_dest(dest, out_dir)
    try:
        keys = release_keys(keystore, manifest)  # derivation 1 or 2, as the signed manifest records
    except DerivationError as exc:
        raise InputError(f"{out_dir}: {exc}") from None
    try:
        index = load_index(keystore, manifest.dataset_id, manifest.dataset_key_id)
    except KeystoreError as exc:
        if "no sealed index" not in exc.reason:
            raise
        index = None
    wanted = None if ids is None else set(ids)
    if wanted is not None and index is not None and wanted - set(index):
        missing = sorted(wanted - set(index))
        raise InputError(f"{out_dir}: {len(missing)} requested id(s) are not samples of this dataset, "
                         f"e.g. {missing[0]}")
    check_shard_digests(out_dir, manifest)

    entry = cipher_of(cipher.mode)
    total = len(wanted) if wanted is not None else sum(e.samples for es in manifest.splits.values() for e in es)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    written: set[str] = set()
    names: set[PurePosixPath] = set()
    try:
        with progress_bar(enabled=progress, total=total, unit="img", desc="decrypt") as bar:
            for split in manifest.splits:
                for sample in iter_samples(out_dir, split, manifest, only=wanted):
                    if sample.key in written:  # else one image would silently overwrite the other
                        raise InputError(f"{out_dir}: sample {sample.key} appears twice in the release; "
                                         "run audit-shards verify")
                    secrets = entry.secrets(keys, split, sample.key, cipher)
                    plain = entry.decrypt(sample.image, secrets, cipher.patch, cipher.sub_patch)
                    name = _output_name(split, sample.key, index, names)
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _save_png(plain, target)
                    written.add(sample.key)
                    bar.update(1)
        if wanted is not None and wanted - written:
            missing = sorted(wanted - written)
            raise InputError(f"{out_dir}: {len(missing)} requested id(s) are not in this release, "
                             f"e.g. {missing[0]}")
        if dest.exists():
            dest.rmdir()  # checked empty above; a rename cannot replace a directory otherwise
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    keystore.log("decrypted", {"dataset_id": manifest.dataset_id, "key_id": manifest.dataset_key_id,
                               "manifest_digest": manifest.digest(), "samples": len(written),
                               "selection": "all" if wanted is None else "ids"})
    return DecryptSummary(len(written), dest, cipher.mode, "id" if index is None else "path")


def _check_dest(dest: Path, out_dir: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest}: destination exists and is not an empty folder")
    if not dest.absolute().parent.is_dir():
        raise InputError(f"{dest}: parent folder does not exist")
    if isinstance(out_dir, str):  # a release in a store: a local DEST cannot be inside it
        return
    if dest.resolve() == out_dir.resolve() or out_dir.resolve() in dest.resolve().parents:
        raise InputError(f"{dest}: destination is inside the release {out_dir}")


def _output_name(split: str, key: str, index: dict | None, taken: set[PurePosixPath]) -> PurePosixPath:
    """`split/rel_path` with a .png suffix (and `.view<k>` for keyed views); the id without an index."""
    if index is None or key not in index:
        name = PurePosixPath(split) / f"{key}.png"
    else:
        entry = index[key]
        rel = PurePosixPath(entry["rel_path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise InputError(f"sample {key}: indexed path is not relative; refusing to write outside DEST")
        if rel.parts[0] != entry["split"]:
            rel = PurePosixPath(entry["split"]) / rel
        stem = rel.stem + (f".view{entry['view']}" if entry["view"] >= 0 else "")
        name = rel.with_name(stem + ".png")
        if name in taken:  # e.g. a.jpg and a.png in one folder
            name = rel.with_name(f"{stem}.{key}.png")
    taken.add(name)
    return name


def _save_png(pixels: np.ndarray, path: Path) -> None:
    image = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    Image.fromarray(np.ascontiguousarray(image)).save(path, "PNG")
