"""How much of an image an attack recovered: tile placement accuracy and pixel fidelity.

Conventions shared by every attack:
- `perm` is the cipher's permutation: shuffled token i = original token perm[i]
  (`encrypt.ciphers.shuffle`), so shuffled tile i belongs at original position perm[i].
- `placement` is an attack's answer: placement[p] = index of the shuffled tile it put at
  position p (row-major, p = r * cols + c).
The original position of the tile placed at p is therefore perm[placement[p]].
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _as_permutation(values, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, "
                         f"got shape {arr.shape} dtype {arr.dtype}")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries, expected {n}")
    if not np.array_equal(np.sort(arr), np.arange(arr.size)):
        raise ValueError(f"{name} is not a permutation of 0..{arr.size - 1}")
    return arr.astype(np.intp)


def recovered_positions(placement, perm) -> np.ndarray:
    """Original position of the tile placed at each position: perm[placement]."""
    perm = _as_permutation(perm, "perm")
    placement = _as_permutation(placement, "placement", perm.size)
    return perm[placement]


def direct_accuracy(placement, perm) -> float:
    """Fraction of positions holding the tile that was there in the original image."""
    origin = recovered_positions(placement, perm)
    return float(np.mean(origin == np.arange(origin.size)))


def neighbour_accuracy(placement, perm, grid: tuple[int, int]) -> float:
    """Fraction of the original right and below adjacencies found anywhere in the result.

    Translation-invariant: a correctly assembled block counts in full even when shifted.
    """
    rows, cols = (int(v) for v in grid)
    origin = recovered_positions(placement, perm)
    if origin.size != rows * cols:
        raise ValueError(f"{origin.size} tiles do not fill a {rows}x{cols} grid")
    pairs = rows * (cols - 1) + (rows - 1) * cols
    if pairs == 0:
        return 1.0
    g = origin.reshape(rows, cols)
    # A pair (left, right) is a true adjacency iff right == left + 1 within one original row.
    right = (g[:, 1:] == g[:, :-1] + 1) & (g[:, :-1] % cols != cols - 1)
    below = g[1:, :] == g[:-1, :] + cols
    return float((right.sum() + below.sum()) / pairs)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected H×W or H×W×C images, got shape {a.shape}")
    data_range = 255.0 if a.dtype == np.uint8 and b.dtype == np.uint8 else 1.0
    return a.astype(np.float64), b.astype(np.float64), data_range


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (uint8: peak 255, else 1.0); inf for equal images."""
    x, y, data_range = _check_pair(a, b)
    if np.array_equal(x, y):
        return float("inf")
    return float(peak_signal_noise_ratio(x, y, data_range=data_range))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (mean over the image, colour channels averaged), 1.0 when equal."""
    x, y, data_range = _check_pair(a, b)
    side = min(x.shape[0], x.shape[1])
    if side < 3:
        raise ValueError(f"images of {x.shape[0]}x{x.shape[1]} are too small for SSIM (need 3x3)")
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(x, y, data_range=data_range, win_size=win,
                                       channel_axis=-1 if x.ndim == 3 else None))


def reidentification(reconstructions: np.ndarray, originals: np.ndarray, labels: np.ndarray, *,
                     any_turn: bool = False) -> tuple[float, float]:
    """(rate, chance) of picking each image's own original out of its class by its reconstruction.

    Recognizing the *class* of an image needs no reconstruction (labels are public, and a
    classifier of ciphertexts names it); what a cipher can hide is the *instance*. For each
    reconstruction, the originals of the same class are ranked by Pearson correlation of the
    pixels and the top one must be its own. Chance is the mean of 1 / (images in the class):
    a class exemplar shown for every image of a class (no reconstruction) scores about that.
    `any_turn`: a reconstruction may be flipped or turned as a whole (the `-orient` modes);
    each candidate is scored by its best match over the 8 flips and quarter turns, so the
    turn is found without looking at the answer.
    """
    recon = np.asarray(reconstructions, dtype=np.float64)
    orig = np.asarray(originals, dtype=np.float64)
    labels = np.asarray(labels)
    if recon.shape != orig.shape or recon.ndim < 3:
        raise ValueError(f"expected matching batches of images, got {recon.shape} and {orig.shape}")
    if labels.shape != (len(orig),):
        raise ValueError(f"expected {len(orig)} labels, got shape {labels.shape}")

    def standardised(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        flat = flat - flat.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(flat, axis=1, keepdims=True)
        return flat / np.where(norm > 0, norm, 1.0)

    if any_turn and recon.shape[1] != recon.shape[2]:
        raise ValueError(f"any_turn needs square images, got {recon.shape[1]}x{recon.shape[2]}")
    turned = [recon]
    if any_turn:
        flipped = recon[:, :, ::-1]
        turned = [np.rot90(x, k, axes=(1, 2)) for x in (recon, flipped) for k in range(4)]
    target = standardised(orig).T
    correlation = np.max([standardised(x) @ target for x in turned], axis=0)
    same_class = labels[:, None] == labels[None, :]
    correlation[~same_class] = -np.inf
    hits = np.argmax(correlation, axis=1) == np.arange(len(orig))
    class_sizes = same_class.sum(axis=1)
    return float(hits.mean()), float(np.mean(1.0 / class_sizes))


def _standardised(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norm > 0, norm, 1.0)


def pixel_similarity(queries: np.ndarray, candidates: np.ndarray, *, any_turn: bool = False,
                     chunk: int = 4096) -> np.ndarray:
    """Q×C Pearson correlation of pixels, as `reidentification` ranks by; with `any_turn` the
    best over the 8 flips and quarter turns of each query (a picture turned as a whole)."""
    q = np.asarray(queries)
    turned = [q]
    if any_turn:
        if q.shape[1] != q.shape[2]:
            raise ValueError(f"any_turn needs square images, got {q.shape[1]}x{q.shape[2]}")
        turned = [np.rot90(x, k, axes=(1, 2)) for x in (q, q[:, :, ::-1]) for k in range(4)]
    turned = [_standardised(x) for x in turned]
    out = np.empty((len(q), len(candidates)), dtype=np.float32)
    for start in range(0, len(candidates), chunk):
        c = _standardised(candidates[start:start + chunk]).T
        out[:, start:start + chunk] = np.max([t @ c for t in turned], axis=0)
    return out


def histogram_signature(images: np.ndarray) -> np.ndarray:
    """Each image's sorted pixel values per channel (N×H·W·C float32).

    Shuffling tiles, turning them, or any other rearrangement of pixels leaves this exactly
    as it was: it is what a membership attacker can compare without placing a single tile.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    return np.sort(x.reshape(len(x), -1, x.shape[-1]), axis=1).reshape(len(x), -1)


def histogram_similarity(queries: np.ndarray, candidates: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Q×C minus the mean squared difference of `histogram_signature`s (the squared
    2-Wasserstein distance of the pixel distributions): 0 for the same multiset of values."""
    a = histogram_signature(queries).astype(np.float64)  # float64: equal multisets give 0 exactly
    aa = (a * a).sum(axis=1)[:, None]
    out = np.empty((len(a), len(candidates)), dtype=np.float64)
    for start in range(0, len(candidates), chunk):
        b = histogram_signature(candidates[start:start + chunk]).astype(np.float64)
        d = aa + (b * b).sum(axis=1)[None, :] - 2 * a @ b.T
        out[:, start:start + chunk] = -np.maximum(d, 0) / a.shape[1]
    return out


def gallery_reidentification(own: np.ndarray, pool: np.ndarray, labels: np.ndarray,
                             pool_labels: np.ndarray, size: int, *, same_class: bool = True,
                             seed: int = 0) -> tuple[float, float]:
    """(rate, chance) of each query's own original beating `size` − 1 public distractors.

    A real attacker ranks against a public gallery of thousands, not a test set's class of
    fifty. `own[q]` is query q's similarity to its own original, `pool[q, j]` to public image
    j (any similarity: higher is closer; the originals must not be in the pool). For each
    query `size` − 1 distractors are drawn without replacement (from its class with
    `same_class`, else from all), with `seed`; a tie with k distractors counts 1/(k+1).
    Chance is 1/size.
    """
    own = np.asarray(own, dtype=np.float64)
    pool = np.asarray(pool, dtype=np.float64)
    labels, pool_labels = np.asarray(labels), np.asarray(pool_labels)
    if pool.shape != (len(own), len(pool_labels)) or labels.shape != own.shape:
        raise ValueError(f"expected {len(own)} labels and a {len(own)}×{len(pool_labels)} pool, "
                         f"got {labels.shape} and {pool.shape}")
    if size < 1:
        raise ValueError(f"gallery size must be at least 1, got {size}")
    rng = np.random.default_rng(seed)
    hits = np.empty(len(own))
    for q in range(len(own)):
        eligible = np.flatnonzero(pool_labels == labels[q]) if same_class else np.arange(len(pool_labels))
        if len(eligible) < size - 1:
            raise ValueError(f"the pool holds {len(eligible)} eligible distractors, a gallery of {size} needs {size - 1}")
        scores = pool[q, rng.choice(eligible, size - 1, replace=False)]
        hits[q] = 0.0 if (scores > own[q]).any() else 1.0 / (1 + int((scores == own[q]).sum()))
    return float(hits.mean()), 1.0 / size


def membership_auc(member_scores: np.ndarray, outsider_scores: np.ndarray) -> float:
    """Probability that a random member of a release scores above a random outsider (ties
    half): 0.5 means the attacker cannot tell whether a candidate image is in the release."""
    m = np.asarray(member_scores, dtype=np.float64)[:, None]
    o = np.asarray(outsider_scores, dtype=np.float64)[None, :]
    return float(((m > o).sum() + 0.5 * (m == o).sum()) / (m.size * o.size))
