"""Greedy jigsaw solver: put shuffled tiles back in place to measure what a cipher hides.

The `shuffle` cipher is said to be an intractable jigsaw puzzle; this attack checks that
claim. It follows Gallagher (CVPR 2012) and Paikin & Tal (CVPR 2015) for square tiles of
known orientation on a grid of known size:

1. Pairwise dissimilarity of "tile j right of tile i" and "tile j below tile i" for all N×N
   pairs in one broadcast: the Mahalanobis gradient compatibility (MGC) seen from both
   tiles (single-channel tiles add an edge-prediction term). For JPEG with 4:2:0 chroma
   (see `has_subsampled_chroma`) the decoder blends a quarter of the *stored* neighbour's
   chroma into every edge pixel, which breaks plain MGC (at q90 it drops from 0.97 to 0.12
   neighbour accuracy on 16 px tiles of natural photos); there luma is scored like a single
   channel and chroma one pixel in from the edge (0.77–0.82).
2. Confidence of a pair: its dissimilarity over the best rival on either side (the
   best-to-second-best ratio), so mutual best buddies are trusted first.
3. Kruskal-style merge of clusters in order of confidence, refusing merges that would
   overlap tiles or overflow the known grid.
4. The largest cluster is placed on the grid (every offset is tried) and the remaining
   tiles fill the empty slots greedily, the slot with most placed neighbours first.
"""
from __future__ import annotations

import numpy as np

from encrypt.ciphers import from_tokens, to_tokens

# The modes this solver attacks (audit.privacy chooses attacks from these declarations):
# tiles that moved but kept their orientation.
APPLIES_TO = ("shuffle", "mix-shuffle")

# (row step, column step) of the second tile of a pair: 0 = right of, 1 = below.
_STEPS = ((0, 1), (1, 0))
# RGB → Y, Cb, Cr (ITU-R BT.601, as JPEG uses); offsets do not matter for gradients.
_YCBCR = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]])
# Below this ratio of projection residual to chroma detail the chroma plane is a 2× upsample.
_SUBSAMPLED_RATIO = 0.6
# Chroma this flat (RMS of its high-pass, in 0..255 units) carries nothing to test.
_MIN_CHROMA_DETAIL = 0.25


def _mgc(tiles: np.ndarray, inset: int = 0, ridge: float = 1.0) -> np.ndarray:
    """MGC for "tile j right of tile i" (N×N), summed from both tiles' side of the seam.

    Each tile's gradients next to its edge give a mean and covariance; the gradient across
    the seam is scored by its Mahalanobis distance to them. `inset` skips that many pixels
    on each side of the seam (the seam gradient is then taken over 2·inset+1 pixels).
    """
    n, t, _, c = tiles.shape
    left_edge, left_inner = tiles[:, :, -1 - inset], tiles[:, :, -2 - inset]
    right_edge, right_inner = tiles[:, :, inset], tiles[:, :, inset + 1]
    seam = (right_edge[None] - left_edge[:, None]) / (2 * inset + 1)  # (N, N, t, C)
    score = np.zeros((n, n))
    for inner, sign, left_side in ((left_edge - left_inner, 1.0, True),
                                   (right_edge - right_inner, -1.0, False)):
        mean = inner.mean(axis=1)
        centred = inner - mean[:, None]
        cov = np.einsum("ntc,ntd->ncd", centred, centred) / max(t - 1, 1) + ridge * np.eye(c)
        inv = np.linalg.inv(cov)
        if left_side:
            d = sign * seam - mean[:, None, None]
            score += np.einsum("ijtc,icd,ijtd->ij", d, inv, d)
        else:
            d = sign * seam - mean[None, :, None]
            score += np.einsum("ijtc,jcd,ijtd->ij", d, inv, d)
    return score


def _prediction(tiles: np.ndarray) -> np.ndarray:
    """L1 error of extrapolating each seam column linearly from the two columns beside it."""
    left_edge, left_inner = tiles[:, :, -1], tiles[:, :, -2]
    right_edge, right_inner = tiles[:, :, 0], tiles[:, :, 1]
    forward = np.abs((2 * left_edge - left_inner)[:, None] - right_edge[None])
    backward = np.abs((2 * right_edge - right_inner)[None] - left_edge[:, None])
    return (forward + backward).sum(axis=(2, 3))


def _by_median(d: np.ndarray) -> np.ndarray:
    """Scale a dissimilarity so that terms of different units can be added."""
    return d / max(float(np.median(d)), 1e-12)


def _single_channel(tiles: np.ndarray) -> np.ndarray:
    """One channel: MGC alone degenerates to a variance ratio, so add the prediction term."""
    return _by_median(_mgc(tiles)) + _by_median(_prediction(tiles))


def _right_dissimilarity(tiles: np.ndarray, subsampled_chroma: bool) -> np.ndarray:
    if tiles.shape[-1] == 1:
        return _single_channel(tiles)
    if not subsampled_chroma:
        return _mgc(tiles)
    ycc = tiles @ _YCBCR.T
    return _single_channel(ycc[..., :1]) + 0.5 * _by_median(_mgc(ycc[..., 1:], inset=1))


def pairwise_dissimilarity(tiles: np.ndarray, subsampled_chroma: bool = False) -> np.ndarray:
    """(2, N, N) float: [0][i, j] tile j right of tile i, [1][i, j] tile j below tile i.

    Lower is a better fit; the diagonal is +inf. `subsampled_chroma` selects the JPEG 4:2:0
    measure (needs RGB tiles of at least 4 px).
    """
    x = np.asarray(tiles, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if subsampled_chroma and (x.shape[-1] != 3 or x.shape[1] < 4):
        raise ValueError(f"the 4:2:0 measure needs RGB tiles of at least 4 px, got shape {x.shape}")
    out = np.stack([_right_dissimilarity(x, subsampled_chroma),
                    _right_dissimilarity(np.swapaxes(x, 1, 2), subsampled_chroma)])
    idx = np.arange(x.shape[0])
    out[:, idx, idx] = np.inf
    return out


def _upsample_matrix(m: int) -> np.ndarray:
    """libjpeg's "fancy" 2× chroma upsampling along one axis (triangle filter, edges held)."""
    a = np.zeros((2 * m, m))
    k = np.arange(m)
    a[2 * k, k] += 0.75
    a[2 * k, np.maximum(k - 1, 0)] += 0.25
    a[2 * k + 1, k] += 0.75
    a[2 * k + 1, np.minimum(k + 1, m - 1)] += 0.25
    return a


def has_subsampled_chroma(image: np.ndarray) -> bool:
    """Whether an RGB image was decoded from JPEG with 4:2:0 chroma (seen from pixels alone).

    Such chroma is, up to rounding, a 2× upsample of a half-size plane: projecting it onto
    the upsampler's range leaves a residual far below the plane's own detail.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[-1] != 3 or min(img.shape[:2]) < 8:
        return False
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    chroma = (img[:h, :w] @ _YCBCR.T)[..., 1:]
    detail = chroma - 0.25 * (np.roll(chroma, 1, 0) + np.roll(chroma, -1, 0)
                              + np.roll(chroma, 1, 1) + np.roll(chroma, -1, 1))
    detail_rms = float(np.sqrt((detail ** 2).mean()))
    if detail_rms < _MIN_CHROMA_DETAIL:
        return False
    rows, cols = _upsample_matrix(h // 2), _upsample_matrix(w // 2)
    proj_r, proj_c = rows @ np.linalg.pinv(rows), cols @ np.linalg.pinv(cols)
    planes = np.moveaxis(chroma, -1, 0)                     # (2, h, w)
    residual = planes - proj_r @ planes @ proj_c.T
    return float(np.sqrt((residual ** 2).mean())) < _SUBSAMPLED_RATIO * detail_rms


def pair_confidence(dis: np.ndarray) -> np.ndarray:
    """Best-to-second-best ratio: D[i, j] over the best rival partner of i or of j.

    Below 1 only for mutual best buddies; the smaller, the more certain the pair.
    """
    out = np.empty_like(dis)
    for o, d in enumerate(dis):
        two_i = np.partition(d, 1, axis=1)[:, :2]
        rival_i = np.where(d == two_i[:, :1], two_i[:, 1:], two_i[:, :1])
        two_j = np.partition(d, 1, axis=0)[:2, :]
        rival_j = np.where(d == two_j[:1, :], two_j[1:, :], two_j[:1, :])
        out[o] = d / (np.minimum(rival_i, rival_j) + 1e-12)
    return out


def _merge_clusters(conf: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Kruskal-style assembly; returns (cluster id of each tile, its cell in that cluster)."""
    n = conf.shape[1]
    cluster = np.arange(n)
    cell = np.zeros((n, 2), dtype=np.int64)
    cells: dict[int, dict[tuple[int, int], int]] = {i: {(0, 0): i} for i in range(n)}
    box = {i: (0, 0, 0, 0) for i in range(n)}  # row min, row max, col min, col max
    flat = conf.reshape(-1)
    order = np.argsort(flat, kind="stable")
    order = order[np.isfinite(flat[order])]
    merges = 0
    for o, i, j in zip(*(a.tolist() for a in np.unravel_index(order, conf.shape))):
        a, b = cluster[i], cluster[j]
        if a == b:
            continue
        dr, dc = _STEPS[o]
        if len(cells[a]) < len(cells[b]):  # move the smaller cluster
            a, b, i, j, dr, dc = b, a, j, i, -dr, -dc
        shift_r = cell[i, 0] + dr - cell[j, 0]
        shift_c = cell[i, 1] + dc - cell[j, 1]
        (ar0, ar1, ac0, ac1), (br0, br1, bc0, bc1) = box[a], box[b]
        r0, r1 = min(ar0, br0 + shift_r), max(ar1, br1 + shift_r)
        c0, c1 = min(ac0, bc0 + shift_c), max(ac1, bc1 + shift_c)
        if r1 - r0 + 1 > rows or c1 - c0 + 1 > cols:
            continue
        target = cells[a]
        moved = {(r + shift_r, c + shift_c): tile for (r, c), tile in cells[b].items()}
        if not target.keys().isdisjoint(moved):
            continue
        target.update(moved)
        for (r, c), tile in moved.items():
            cell[tile] = (r, c)
            cluster[tile] = a
        del cells[b], box[b]
        box[a] = (r0, r1, c0, c1)
        merges += 1
        if merges == n - 1:
            break
    return cluster, cell


# (offset to the neighbour, orientation, whether the neighbour is the first tile of the pair)
_SIDES = (((0, -1), 0, True), ((0, 1), 0, False), ((-1, 0), 1, True), ((1, 0), 1, False))


def fill_empty_cells(grid: np.ndarray, dis: np.ndarray, turns: np.ndarray | None = None,
                     variants: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Fill empty cells (-1): most placed neighbours first, then the lowest mean dissimilarity.

    `dis[o]` compares tile variants (tile · `variants` + turn); with `variants` > 1 (turned
    tiles, `oriented.py`) each empty cell gets the best remaining tile in its best turn.
    Returns (grid, turns); turns stay 0 when `variants` is 1.
    """
    rows, cols = grid.shape
    grid = grid.copy()
    turns = np.zeros_like(grid) if turns is None else turns.copy()
    placed = np.zeros(dis.shape[1] // variants, dtype=bool)
    placed[grid[grid >= 0]] = True
    while not placed.all():
        free = np.flatnonzero(~placed)
        candidates = (free[:, None] * variants + np.arange(variants)[None]).reshape(-1)
        virtual = np.where(grid >= 0, grid * variants + turns, -1)
        cost = np.zeros((rows, cols, candidates.size))
        count = np.zeros((rows, cols), dtype=np.int64)
        for (dr, dc), o, first in _SIDES:
            neighbour = np.full((rows, cols), -1)
            neighbour[max(-dr, 0):rows - max(dr, 0), max(-dc, 0):cols - max(dc, 0)] = \
                virtual[max(dr, 0):rows - max(-dr, 0), max(dc, 0):cols - max(-dc, 0)]
            has = neighbour >= 0
            d = dis[o][neighbour[has]][:, candidates] if first else dis[o][:, neighbour[has]].T[:, candidates]
            cost[has] += d
            count += has
        empty = grid < 0
        most = count[empty].max()
        slots = np.argwhere(empty & (count == most))
        per_slot = cost[slots[:, 0], slots[:, 1]] / max(most, 1)
        s, k = np.unravel_index(np.argmin(per_slot), per_slot.shape)
        tile, turn = divmod(int(candidates[k]), variants)
        grid[slots[s, 0], slots[s, 1]] = tile
        turns[slots[s, 0], slots[s, 1]] = turn
        placed[tile] = True
    return grid, turns


def _grid_cost(grid: np.ndarray, dis: np.ndarray) -> float:
    return float(dis[0][grid[:, :-1], grid[:, 1:]].sum() + dis[1][grid[:-1], grid[1:]].sum())


def solve_jigsaw(tiles: np.ndarray, grid: tuple[int, int], *, subsampled_chroma: bool = False
                 ) -> np.ndarray:
    """Place N tiles (N×t×t or N×t×t×C) on a rows×cols grid, orientation known.

    Returns placement (int array of N) with placement[r * cols + c] = index of the tile placed
    at (r, c). Pass `subsampled_chroma=True` for tiles cut from a JPEG with 4:2:0 chroma
    (`reconstruct` detects it).
    """
    rows, cols = (int(v) for v in grid)
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4) or tiles.shape[1] != tiles.shape[2]:
        raise ValueError(f"expected square tiles of shape N×t×t[×C], got {tiles.shape}")
    n = tiles.shape[0]
    if rows < 1 or cols < 1 or n != rows * cols:
        raise ValueError(f"{n} tiles do not fill a {rows}x{cols} grid")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if tiles.shape[1] < 3:
        raise ValueError(f"tiles of {tiles.shape[1]} px are too small to compare edges (need 3)")
    dis = pairwise_dissimilarity(tiles, subsampled_chroma)
    cluster, cell = _merge_clusters(pair_confidence(dis), rows, cols)
    ids, sizes = np.unique(cluster, return_counts=True)
    core = np.flatnonzero(cluster == ids[np.argmax(sizes)])
    at = cell[core] - cell[core].min(axis=0)
    height, width = at.max(axis=0) + 1
    best, best_cost = None, np.inf
    for r0 in range(rows - height + 1):
        for c0 in range(cols - width + 1):
            start = np.full((rows, cols), -1)
            start[at[:, 0] + r0, at[:, 1] + c0] = core
            filled, _ = fill_empty_cells(start, dis)
            cost = _grid_cost(filled, dis)
            if cost < best_cost:
                best, best_cost = filled, cost
    return best.reshape(-1)


def reconstruct(shuffled_image: np.ndarray, tile: int, grid: tuple[int, int] | None = None, *,
                subsampled_chroma: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Solve the jigsaw of an H×W[×C] image cut into tile×tile pieces.

    Returns (reconstructed image, placement); placement as in `solve_jigsaw`, over the
    row-major tiles of `shuffled_image`. `subsampled_chroma=None` detects JPEG 4:2:0 input.
    """
    img = np.asarray(shuffled_image)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape H×W or H×W×C, got {img.shape}")
    x = img[..., None] if img.ndim == 2 else img
    if tile < 1 or x.shape[0] % tile or x.shape[1] % tile:
        raise ValueError(f"image {x.shape[0]}x{x.shape[1]} is not divisible by tile {tile}")
    shape = (x.shape[0] // tile, x.shape[1] // tile)
    if grid is not None and tuple(grid) != shape:
        raise ValueError(f"grid {tuple(grid)} does not match a {x.shape[0]}x{x.shape[1]} image "
                         f"of {tile} px tiles ({shape[0]}x{shape[1]})")
    if subsampled_chroma is None:
        subsampled_chroma = has_subsampled_chroma(img)
    tokens = to_tokens(x, tile)
    placement = solve_jigsaw(tokens, shape, subsampled_chroma=subsampled_chroma)
    out = from_tokens(tokens[placement], *shape)
    return (out[..., 0] if img.ndim == 2 else out), placement
