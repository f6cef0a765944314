"""Ciphertext-only recovery of a per-dataset tile scramble from pixel statistics.

`scramble` modes reorder the t·t·C values inside every tile by one secret permutation, the
same for every tile of every image of a release. A linear patch embedding absorbs it, which
is why accuracy holds; but a fixed permutation leaves the statistics of natural images
intact, only relabelled, and an attacker who holds many stored images can read it back:

1. Correlate every pair of value slots over all tiles of all stored images (each tile's
   mean removed, so brightness does not swamp the structure). In natural images a value
   correlates most with the same channel one pixel away (~0.95 on photos).
2. Split the slots into the C channels: spectral clustering of that correlation, with
   equal group sizes enforced by an assignment (the Hungarian method).
3. Lay each channel out on the t×t grid so that the correlation summed over grid edges is
   largest: Laplacian eigenmaps of nearest-neighbour graphs give starting layouts, scipy's
   FAQ quadratic assignment against the grid adjacency refines them, the best one wins.
4. Put the channels on one common orientation and give them their names: of the D4 turns
   of each layout and the C! channel orders, keep the one that best matches the public
   correlation of all t·t·C slots.

The answer is the permutation up to one global flip or turn of the tile (the statistics of
natural images are nearly symmetric under D4): every image comes back turned the same way,
which hides nothing. `scramble_accuracy` scores it modulo that symmetry. With the scramble
undone the release is a plain `shuffle` release again, open to the jigsaw solver.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment, quadratic_assignment

from encrypt.ciphers import DIHEDRAL, to_tokens, _turn

__all__ = ["ScrambleEstimate", "dihedral_relabellings", "recover_scramble", "scramble_accuracy",
           "tile_correlation"]


@dataclass(frozen=True)
class ScrambleEstimate:
    """An attacker's estimate of a scramble permutation and how well it fits the public statistics."""

    perm: np.ndarray        # same convention as encrypt.ciphers.scramble_tiles: stored value k = plain value perm[k]
    score: float            # mean correlation agreement with the public statistics (higher is better)
    tiles: int              # tiles the estimate was made from


def _tile_values(images: np.ndarray, tile: int) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected a batch N×H×W[×C] of stored images, got shape {x.shape}")
    tokens = to_tokens(x, tile)
    return tokens.reshape(-1, tile * tile * x.shape[-1]).astype(np.float64)


def tile_correlation(images: np.ndarray, tile: int) -> np.ndarray:
    """Correlation of every pair of value slots over all tiles, each tile's mean removed first."""
    values = _tile_values(images, tile)
    values -= values.mean(axis=1, keepdims=True)
    values -= values.mean(axis=0)
    cov = values.T @ values
    scale = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
    return cov / scale[:, None] / scale[None, :]


def dihedral_relabellings(tile: int, channels: int) -> list[np.ndarray]:
    """The 8 permutations of a tile's value slots made by turning the tile (D4), channels kept."""
    idx = np.arange(tile * tile * channels).reshape(1, tile, tile, channels)
    return [np.ascontiguousarray(_turn(idx, k)[0]).reshape(-1) for k in range(DIHEDRAL)]


def scramble_accuracy(estimate: np.ndarray, perm: np.ndarray, tile: int, channels: int) -> float:
    """Fraction of value slots placed right, under the best single global turn of the tile."""
    estimate, perm = np.asarray(estimate), np.asarray(perm)
    return max(float(np.mean(estimate == g[perm])) for g in dihedral_relabellings(tile, channels))


def _nearest(corr: np.ndarray, k: int) -> np.ndarray:
    """Symmetric 0/1 graph joining each slot to its k most correlated slots."""
    c = corr.copy()
    np.fill_diagonal(c, -np.inf)
    idx = np.argsort(-c, axis=1)[:, :k]
    graph = np.zeros_like(c)
    graph[np.repeat(np.arange(len(c)), k), idx.ravel()] = 1.0
    return np.maximum(graph, graph.T)


def _channel_groups(corr: np.ndarray, channels: int) -> list[np.ndarray]:
    """Split slots into `channels` equal groups: spectral clustering of the 4-nearest graph.

    Each slot's strongest partners are the same channel one pixel away, so that graph is
    nearly C disjoint grids. Equal sizes are enforced by assigning slots to cluster centres
    with the Hungarian method.
    """
    n = corr.shape[0]
    if channels == 1:
        return [np.arange(n)]
    size = n // channels
    graph = _nearest(corr, 4)
    inv = 1.0 / np.sqrt(np.clip(graph.sum(axis=1), 1e-12, None))
    _, vectors = np.linalg.eigh(inv[:, None] * graph * inv[None, :])
    embed = vectors[:, -channels:]
    embed = embed / np.clip(np.linalg.norm(embed, axis=1, keepdims=True), 1e-12, None)
    # Farthest-point start, then k-means rounds whose assignment keeps the groups equal.
    centres = [embed[0]]
    for _ in range(channels - 1):
        centres.append(embed[np.argmin(np.max(embed @ np.stack(centres).T, axis=1))])
    centres = np.stack(centres)
    label = np.zeros(n, dtype=np.intp)
    for _ in range(20):
        cost = -embed @ centres.T                                   # (n, channels)
        rows, cols = linear_sum_assignment(np.repeat(cost, size, axis=1))
        label[rows] = cols // size
        new = np.stack([embed[label == c].mean(axis=0) for c in range(channels)])
        new /= np.clip(np.linalg.norm(new, axis=1, keepdims=True), 1e-12, None)
        if np.allclose(new, centres):
            break
        centres = new
    return [np.flatnonzero(label == c) for c in range(channels)]


def _grid_graph(tile: int) -> np.ndarray:
    """0/1 adjacency of the tile×tile grid (4-neighbours), cells row-major."""
    n = tile * tile
    graph = np.zeros((n, n))
    cell = np.arange(n).reshape(tile, tile)
    for a, b in ((cell[:, :-1], cell[:, 1:]), (cell[:-1, :], cell[1:, :])):
        graph[a.ravel(), b.ravel()] = graph[b.ravel(), a.ravel()] = 1.0
    return graph


def _eigenmap_layouts(graph: np.ndarray, tile: int, angles: int = 16) -> list[np.ndarray]:
    """Layout guesses (cell of each slot) from the Laplacian eigenmap of a slot graph.

    On a grid graph the 2nd and 3rd eigenvectors are cos(π(x+½)/t) and cos(π(y+½)/t) up to
    a rotation inside their (nearly equal) eigenspace: each trial angle undoes one rotation,
    arccos straightens the cosines and the Hungarian method snaps slots to cells.
    """
    laplacian = np.diag(graph.sum(axis=1)) - graph
    _, vectors = np.linalg.eigh(laplacian)
    cells = np.stack(np.divmod(np.arange(tile * tile), tile), axis=1).astype(np.float64)
    out = []
    for angle in np.linspace(0.0, np.pi, angles, endpoint=False):
        c, s = np.cos(angle), np.sin(angle)
        coords = vectors[:, 1:3] @ np.array([[c, -s], [s, c]])
        coords = coords / np.clip(np.abs(coords).max(axis=0), 1e-12, None)
        coords = np.arccos(np.clip(coords, -1.0, 1.0)) / np.pi * tile - 0.5
        rows, cols = linear_sum_assignment(((coords[:, None, :] - cells[None]) ** 2).sum(-1))
        layout = np.empty(tile * tile, dtype=np.intp)
        layout[rows] = cols
        out.append(layout)
    return out


def _layout(corr: np.ndarray, tile: int) -> np.ndarray:
    """Cell of each slot of one channel: maximise the correlation summed over grid edges.

    Eigenmap guesses from several nearest-neighbour graphs start scipy's FAQ quadratic
    assignment against the grid adjacency; the highest objective wins.
    """
    grid = _grid_graph(tile)
    n = tile * tile
    best, best_score = None, -np.inf
    for k in (3, 4, 6, 8):
        graph = _nearest(corr, k)
        for weighted in (graph, graph * np.clip(corr, 0.0, None) ** 8):
            guesses = _eigenmap_layouts(weighted, tile)
            scores = [float((corr * grid[np.ix_(g, g)]).sum()) for g in guesses]
            start = guesses[int(np.argmax(scores))]
            p0 = np.zeros((n, n))
            p0[np.arange(n), start] = 1.0
            result = quadratic_assignment(corr, grid, method="faq",
                                          options={"maximize": True, "P0": p0, "maxiter": 100})
            for layout in (start, np.asarray(result.col_ind, dtype=np.intp)):
                score = float((corr * grid[np.ix_(layout, layout)]).sum())
                if score > best_score:
                    best, best_score = layout, score
    return best


def _agreement(perm: np.ndarray, cipher_corr: np.ndarray, public_corr: np.ndarray) -> float:
    return float(np.mean(cipher_corr * public_corr[np.ix_(perm, perm)]))


def recover_scramble(stored_images: np.ndarray, public_images: np.ndarray, tile: int) -> ScrambleEstimate:
    """Estimate a release's scramble permutation from its stored images alone.

    `stored_images`: N×H×W[×C] uint8 images of one release (any tile order, the scramble
    the same in all). `public_images`: plain images of the same kind (the attacker's own),
    used only to name the channels and put them on one orientation. Returns the estimate;
    score it with `scramble_accuracy` or undo it with `encrypt.ciphers.unscramble_tiles`.
    """
    stored = np.asarray(stored_images)
    public = np.asarray(public_images)
    channels = 1 if stored.ndim == 3 else stored.shape[-1]
    public_channels = 1 if public.ndim == 3 else public.shape[-1]
    if channels != public_channels:
        raise ValueError(f"stored images have {channels} channels, public images {public_channels}")
    cipher_corr = tile_correlation(stored, tile)
    public_corr = tile_correlation(public, tile)
    cells = tile * tile
    layouts = []  # per channel group: the slot at each grid cell
    for group in _channel_groups(cipher_corr, channels):
        cell_of = _layout(cipher_corr[np.ix_(group, group)], tile)
        order = np.empty(cells, dtype=np.intp)
        order[cell_of] = group
        layouts.append(order)
    turns = [np.ascontiguousarray(_turn(np.arange(cells).reshape(1, tile, tile, 1), k)[0]).reshape(-1)
             for k in range(DIHEDRAL)]
    best, best_score = None, -np.inf
    for names in itertools.permutations(range(channels)):
        for orient in itertools.product(range(DIHEDRAL), repeat=channels - 1):
            perm = np.empty(cells * channels, dtype=np.intp)
            for c, layout in enumerate(layouts):
                turned = layout if c == 0 else layout[turns[orient[c - 1]]]
                perm[turned] = np.arange(cells) * channels + names[c]
            score = _agreement(perm, cipher_corr, public_corr)
            if score > best_score:
                best, best_score = perm, score
    rows, cols = stored.shape[1] // tile, stored.shape[2] // tile
    return ScrambleEstimate(perm=best, score=best_score, tiles=len(stored) * rows * cols)
