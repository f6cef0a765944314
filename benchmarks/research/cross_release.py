"""Two releases of one image: what an attacker holding both can do beyond the weaker one.

Each release draws from its own subkey (keys.derive.ReleaseKey: HKDF of the dataset key,
bound to the release's settings and a fresh salt), so its permutations are independent of
every other release's. What two releases share is the image, and with it the content of
every tile: matching tiles across the releases by content gives the attacker only the
correspondence of tiles, i.e. the same puzzle again. `pair_placement` is that attack: solve
the weaker release, carry its placement to the other through matched tiles.
"""
from __future__ import annotations

import numpy as np

from encrypt import ciphers
from encrypt.plan import JobSettings
from shards.manifest import CipherSpec


def release(dataset_key, mode: str, patch: int, sub_patch: int | None, size: int, channels: int, salt: bytes):
    """(release key, cipher spec) of one release, bound by the job's own binding
    (`JobSettings.release_binding`) of a PNG centre-crop release at this geometry."""
    settings = JobSettings(mode=mode, patch=patch, sub_patch=sub_patch, size=size, resize=size, views=1,
                           format="png", quality=95, channels=channels, shard_samples=1)
    return dataset_key.release_key(settings.release_binding(), salt), settings.cipher_spec()


def encrypt(images: np.ndarray, keys, spec: CipherSpec, paths: list[str]) -> tuple[np.ndarray, list]:
    """(stored images, secrets) of a batch under one release: sample ids, secrets and cipher
    exactly as the encryptor draws them (keyed_secrets, CIPHERS)."""
    cipher = ciphers.cipher_of(spec.mode)
    secrets = [ciphers.keyed_secrets(keys, "train", keys.sample_id(p), spec) for p in paths]
    stored = np.stack([cipher.encrypt(img, s, spec.patch, spec.sub_patch) for img, s in zip(images, secrets)])
    return stored, secrets


def equal_positions(perms_a: np.ndarray, perms_b: np.ndarray) -> float:
    """Fraction of (image, position) where two releases put the same tile: 1/n if independent."""
    return float(np.mean(np.asarray(perms_a) == np.asarray(perms_b)))


def match_tiles(tiles_from: np.ndarray, tiles_to: np.ndarray) -> np.ndarray:
    """For each tile of `tiles_to` (T×...), its tile of `tiles_from`: the one-to-one matching of
    least total squared difference (identical tiles are interchangeable, any order will do)."""
    from scipy.optimize import linear_sum_assignment

    a = tiles_from.reshape(len(tiles_from), -1).astype(np.float64)
    b = tiles_to.reshape(len(tiles_to), -1).astype(np.float64)
    d = (b * b).sum(1)[:, None] + (a * a).sum(1)[None, :] - 2 * b @ a.T
    rows, cols = linear_sum_assignment(d)
    return cols[np.argsort(rows)]


def pair_placement(placement_weak: np.ndarray, tiles_weak: np.ndarray, tiles_other: np.ndarray) -> np.ndarray:
    """The other release's placement from the weak release's solution: position p gets the
    other release's tile whose content matches the weak tile placed at p.

    `tiles_weak` are the weak release's stored tiles as the other release would store them
    (e.g. mixed when the other mixes); placement[p] = stored tile index at position p.
    """
    to_weak = match_tiles(tiles_other, tiles_weak)  # weak tile index -> other tile index
    return to_weak[np.asarray(placement_weak)]
