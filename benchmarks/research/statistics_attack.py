"""Ciphertext-only recovery of a per-dataset tile scramble from pixel statistics.

`-scramble` modes reorder the t·t·C values inside every tile by one secret permutation, the
same for every tile of every image of a release. A linear patch embedding absorbs it, which
is why accuracy holds; but a fixed permutation leaves the statistics of natural images
intact, only relabelled, and an attacker who holds many stored images reads it back:

1. Correlate every pair of value slots over all tiles of all stored images (each tile's
   mean removed, so brightness does not swamp the structure). In natural images a value
   correlates most with the same channel one pixel away (~0.95 on photos).
2. Split the slots into the C channels: two proposals, spectral clustering of the
   4-nearest-slot graph and the slots sorted by their mean value (each channel has its
   own mean over a release).
3. Lay each channel out on the t×t grid so that the correlation summed over grid edges is
   largest: Laplacian eigenmaps of nearest-neighbour graphs give starting layouts, scipy's
   FAQ quadratic assignment against the grid adjacency refines them, the best one wins;
   so does the channel proposal whose groups lay out best.
4. Put the channels on one common orientation (edges sit at the same pixel in every
   channel) and name them by the mean and spread of their values against the attacker's
   own plain (public) photos.

`-scramble-orient` modes also turn every stored tile by a per-image D4 element, which
averages the correlation over the 8 turns. Step 0 undoes that first: expectation-
maximisation of one Gaussian model of the scrambled tile over the 8 turned views of every
tile (multi-reference alignment), from several random starts, keeping the most likely;
each tile's most likely view lines all tiles up on one common (unknown) turn.

The answer is the permutation up to one global flip or turn of the tile: every image comes
back turned the same way, which hides nothing (`scramble_accuracy` scores modulo that).
`undo_scramble` then gives the attacker plain tiles in their stored order, i.e. a `shuffle`
release, open to the jigsaw solver.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment, quadratic_assignment

from encrypt.ciphers import DIHEDRAL, dihedral_relabellings, from_tokens, to_tokens

__all__ = ["ScrambleEstimate", "align_turns", "dihedral_relabellings", "recover_scramble",
           "scramble_accuracy", "tile_correlation", "undo_scramble", "upright"]


@dataclass(frozen=True)
class ScrambleEstimate:
    """An attacker's estimate of a scramble permutation and how well it fits the public statistics."""

    perm: np.ndarray        # same convention as encrypt.ciphers.scramble_tiles: stored value k = plain value perm[k]
    score: float            # mean correlation over the recovered grid edges (higher: surer)
    tiles: int              # tiles with texture the estimate was made from
    oriented: bool = False  # made for (and undone with) per-tile turns


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


def scramble_accuracy(estimate: np.ndarray, perm: np.ndarray, tile: int, channels: int,
                      oriented: bool = False) -> float:
    """Fraction of value slots placed right, under the best single global turn of the tile.

    With `oriented`, also under the best common turn of the stored tiles (alignment finds
    the tiles' turns only up to one shared element).
    """
    estimate, perm = np.asarray(estimate), np.asarray(perm)
    return max(_hits(estimate, g[perm], tile, channels, oriented)
               for g in dihedral_relabellings(tile, channels))


def _nearest(corr: np.ndarray, k: int) -> np.ndarray:
    """Symmetric 0/1 graph joining each slot to its k most correlated slots."""
    c = corr.copy()
    np.fill_diagonal(c, -np.inf)
    idx = np.argsort(-c, axis=1)[:, :k]
    graph = np.zeros_like(c)
    graph[np.repeat(np.arange(len(c)), k), idx.ravel()] = 1.0
    return np.maximum(graph, graph.T)


def _channel_groups(corr: np.ndarray, slot_means: np.ndarray, channels: int) -> list[list[np.ndarray]]:
    """Proposals for splitting slots into `channels` equal groups, the same channel in each.

    Spectral clustering of the 4-nearest-slot graph (each slot's strongest partners are the
    same channel one pixel away), and slots sorted by their mean value (each channel has
    its own mean over a release, since tiles from everywhere pass through every slot).
    `recover_scramble` keeps the proposal whose groups lay out best on the grid.
    """
    n = corr.shape[0]
    if channels == 1:
        return [[np.arange(n)]]
    by_mean = np.argsort(slot_means, kind="stable").reshape(channels, n // channels)
    return [_spectral_groups(_nearest(corr, 4), channels), [np.sort(g) for g in by_mean]]


def _spectral_groups(graph: np.ndarray, channels: int) -> list[np.ndarray]:
    """Equal-size spectral clustering (cluster centres assigned by the Hungarian method)."""
    n = graph.shape[0]
    size = n // channels
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


def _turned_views(values: np.ndarray, tile: int, channels: int) -> np.ndarray:
    """(M, 8, V): every tile's values under each of the 8 turns of the stored tile."""
    return np.stack([values[:, g] for g in dihedral_relabellings(tile, channels)], axis=1)


def align_turns(values: np.ndarray, tile: int, channels: int, *, restarts: int = 10,
                iterations: int = 60, seed: int = 0) -> np.ndarray:
    """EM alignment of tiles turned by unknown D4 elements: the chosen view (0..7) per tile.

    `values` are M×V tile values (mean removed). One Gaussian N(0, Σ) models the scrambled
    tile; the E-step weighs each tile's 8 views by their likelihood, the M-step refits Σ.
    Random starts (an ordinary generator: the attacker's own, nothing keyed) break the
    symmetry; the start with the highest likelihood wins.
    """
    views = _turned_views(values, tile, channels)
    m, _, v = views.shape
    flat = views.reshape(m * 8, v)
    gen = np.random.default_rng(seed)
    best, best_ll = None, -np.inf
    for _ in range(restarts):
        pick = gen.integers(0, 8, m)
        chosen = views[np.arange(m), pick]
        sigma = chosen.T @ chosen / m
        for _ in range(iterations):
            sigma += 1e-3 * np.trace(sigma) / v * np.eye(v)
            quad = -0.5 * ((flat @ np.linalg.inv(sigma)) * flat).sum(axis=1).reshape(m, 8)
            weights = np.exp(quad - quad.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            scaled = flat * np.sqrt(weights.reshape(-1, 1))
            new = scaled.T @ scaled / m
            done = np.allclose(new, sigma, rtol=1e-4, atol=1e-6)
            sigma = new
            if done:
                break
        sigma += 1e-3 * np.trace(sigma) / v * np.eye(v)
        quad = -0.5 * ((flat @ np.linalg.inv(sigma)) * flat).sum(axis=1).reshape(m, 8)
        top = quad.max(axis=1)
        loglik = float((top + np.log(np.exp(quad - top[:, None]).sum(axis=1))).sum()
                       - 0.5 * m * np.linalg.slogdet(sigma)[1])
        if loglik > best_ll:
            best, best_ll = quad.argmax(axis=1), loglik
    return best


def _correlation(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean(axis=0)
    cov = centred.T @ centred
    scale = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
    return cov / scale[:, None] / scale[None, :]


def _centred_tiles(images: np.ndarray, tile: int, min_std: float) -> np.ndarray:
    values = _tile_values(images, tile)
    values -= values.mean(axis=1, keepdims=True)
    return values[values.std(axis=1) > min_std]


def _common_turn(values: np.ndarray, layouts: list[np.ndarray], tile: int) -> list[np.ndarray]:
    """Turn every channel's layout to agree with the first one.

    Each channel's own tile mean is removed, so what is left is local structure (edges),
    which sits at the same pixel in every channel: the right turn maximises the correlation
    of channel c with channel 0 cell by cell.
    """
    if len(layouts) == 1:
        return layouts
    turns = dihedral_relabellings(tile)
    planes = []
    for layout in layouts:
        plane = values[:, layout]
        planes.append(plane - plane.mean(axis=1, keepdims=True))
    out = [layouts[0]]
    for c in range(1, len(layouts)):
        scores = [float((planes[0] * planes[c][:, g]).sum()) for g in turns]
        out.append(layouts[c][turns[int(np.argmax(scores))]])
    return out


def _channel_names(stored: np.ndarray, public: np.ndarray, tile: int, layouts: list[np.ndarray],
                   min_std: float) -> list[int]:
    """Which plain channel each group is: match mean and spread of its values to public photos'."""
    if len(layouts) == 1:
        return [0]
    stored_values = _tile_values(stored, tile)
    public_values = _tile_values(public, tile)
    channels = len(layouts)
    public_channels = [public_values[:, c::channels] for c in range(channels)]
    signature = lambda v: np.array([v.mean(), v.std()])
    target = np.stack([signature(v) for v in public_channels])
    mine = np.stack([signature(stored_values[:, layout]) for layout in layouts])
    cost = ((mine[:, None, :] - target[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    names = [0] * channels
    for r, c in zip(rows, cols):
        names[r] = int(c)
    return names


def recover_scramble(stored_images: np.ndarray, public_images: np.ndarray, tile: int, *,
                     oriented: bool = False, restarts: int = 10, min_std: float = 1.0,
                     seed: int = 0) -> ScrambleEstimate:
    """Estimate a release's scramble permutation from its stored images alone.

    `stored_images`: N×H×W[×C] uint8 images of one release (tiles in any order, the scramble
    the same in all; with `oriented`, each tile also turned by its own D4 element).
    `public_images`: plain images of the same kind (the attacker's own), used only to name
    the channels (colour photos for RGB). Tiles flatter than `min_std` (empty
    background) carry nothing and are left out. Score the result with `scramble_accuracy`,
    use it with `undo_scramble`.
    """
    stored = np.asarray(stored_images)
    public = np.asarray(public_images)
    for what, batch in (("stored", stored), ("public", public)):
        if batch.ndim not in (3, 4) or batch.shape[0] == 0:
            raise ValueError(f"expected a batch N×H×W[×C] of {what} images, got shape {batch.shape}")
    channels = 1 if stored.ndim == 3 else stored.shape[-1]
    public_channels = 1 if public.ndim == 3 else public.shape[-1]
    if channels != public_channels:
        raise ValueError(f"stored images have {channels} channels, public images {public_channels}")
    raw = _tile_values(stored, tile)
    values = raw - raw.mean(axis=1, keepdims=True)
    values = values[values.std(axis=1) > min_std]
    if len(values) < 2:
        raise ValueError(f"only {len(values)} tiles with any texture among {len(stored)} stored images")
    if oriented:
        pick = align_turns(values, tile, channels, restarts=restarts, seed=seed)
        values = _turned_views(values, tile, channels)[np.arange(len(values)), pick]
    cipher_corr = _correlation(values)
    cells = tile * tile
    edges = _grid_graph(tile) > 0
    best_fit, layouts = -np.inf, []
    for groups in _channel_groups(cipher_corr, raw.mean(axis=0), channels):
        proposal = []  # per channel group: the slot at each grid cell
        for group in groups:
            cell_of = _layout(cipher_corr[np.ix_(group, group)], tile)
            order = np.empty(cells, dtype=np.intp)
            order[cell_of] = group
            proposal.append(order)
        fit = float(np.mean([cipher_corr[np.ix_(o, o)][edges].mean() for o in proposal]))
        if fit > best_fit:
            best_fit, layouts = fit, proposal
    layouts = _common_turn(values, layouts, tile)
    names = _channel_names(stored, public, tile, layouts, min_std)
    perm = np.empty(cells * channels, dtype=np.intp)
    for c, layout in enumerate(layouts):
        perm[layout] = np.arange(cells) * channels + names[c]
    return ScrambleEstimate(perm=perm, score=best_fit, tiles=len(values), oriented=oriented)


def _roughness(tiles: np.ndarray) -> np.ndarray:
    """Sum of squared differences between neighbouring pixels of each (..., t, t, C) tile."""
    return ((np.diff(tiles, axis=-3) ** 2).sum(axis=(-3, -2, -1))
            + (np.diff(tiles, axis=-2) ** 2).sum(axis=(-3, -2, -1)))


def undo_scramble(stored_image: np.ndarray, estimate: ScrambleEstimate, tile: int) -> np.ndarray:
    """The attacker's plain-looking image: every tile unscrambled by the estimate, in place.

    For an oriented estimate each tile's turn is chosen as the one whose unscrambled tile is
    smoothest: only the right turn gives a natural tile, the 7 others stay scrambled.
    """
    img = np.asarray(stored_image)
    x = img[..., None] if img.ndim == 2 else img
    rows, cols, channels = x.shape[0] // tile, x.shape[1] // tile, x.shape[-1]
    values = to_tokens(x, tile).reshape(rows * cols, -1)
    inverse = np.empty_like(estimate.perm)
    inverse[estimate.perm] = np.arange(estimate.perm.size)
    if estimate.oriented:
        views = _turned_views(values, tile, channels)                         # (N, 8, V)
        plain = views[..., inverse].reshape(rows * cols, DIHEDRAL, tile, tile, channels)
        pick = _roughness(plain.astype(np.float64)).argmin(axis=1)
        tiles = plain[np.arange(rows * cols), pick]
    else:
        tiles = values[:, inverse].reshape(rows * cols, tile, tile, channels)
    out = from_tokens(tiles, rows, cols)
    return out[..., 0] if img.ndim == 2 else out


def upright(estimate: ScrambleEstimate, perm: np.ndarray, tile: int, channels: int) -> ScrambleEstimate:
    """The estimate turned by the global turn that fits the true permutation best.

    For scoring only: an attacker would turn the picture by eye; the auditor knows the truth.
    """
    perm = np.asarray(perm)
    best, best_hits = estimate.perm, -1.0
    for g in dihedral_relabellings(tile, channels):
        inverse = np.empty_like(g)
        inverse[g] = np.arange(g.size)
        candidate = inverse[estimate.perm]
        hits = _hits(candidate, perm, tile, channels, estimate.oriented)
        if hits > best_hits:
            best, best_hits = candidate, hits
    return ScrambleEstimate(perm=best, score=estimate.score, tiles=estimate.tiles, oriented=estimate.oriented)


def _hits(estimate: np.ndarray, perm: np.ndarray, tile: int, channels: int, oriented: bool) -> float:
    stored_turns = dihedral_relabellings(tile, channels) if oriented else [np.arange(perm.size)]
    return max(float(np.mean(estimate == perm[h])) for h in stored_turns)
