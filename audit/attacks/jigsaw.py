"""Greedy jigsaw solver: put shuffled tiles back in place to measure what a cipher hides.

The paper behind the `shuffle` cipher calls it an intractable jigsaw puzzle; this module is
the attack that checks that claim. It follows Gallagher (CVPR 2012) and Paikin & Tal (CVPR
2015) for square tiles of known orientation and a known grid size:

1. Pairwise dissimilarity for "tile i left of tile j" and "tile i above tile j": the
   Mahalanobis gradient compatibility (MGC) seen from both tiles, plus an edge-prediction
   term. Everything is one broadcast over all N×N pairs of edge columns.
2. Confidence of a pair: its dissimilarity over the best alternative on either side (the
   best-to-second-best ratio), so mutual best buddies come first.
3. Kruskal-style merge of clusters in order of confidence, refusing a merge that would
   overlap tiles or overflow the grid.
4. The largest cluster is placed in the grid; the remaining tiles fill the empty slots
   greedily, most-constrained slot first.
"""
from __future__ import annotations

import numpy as np

from encrypt.ciphers import from_tokens, to_tokens

# Orientations: 0 = j right of i, 1 = j below i.
_STEPS = ((0, 1), (1, 0))


def _edge_dissimilarity(tiles: np.ndarray) -> np.ndarray:
    """D[i, j]: how badly tile j fits directly right of tile i (lower is better).

    MGC from both sides: the gradient across the seam, scored against the distribution of
    the gradients just inside each tile (mean and covariance), plus the L1 error of a
    linear prediction of each seam column from the two columns beside it.
    """
    n, t, _, c = tiles.shape
    left_last = tiles[:, :, -1, :]   # (N, t, C)
    left_prev = tiles[:, :, -2, :]
    right_first = tiles[:, :, 0, :]
    right_next = tiles[:, :, 1, :]

    seam = right_first[None, :, :, :] - left_last[:, None, :, :]  # (N, N, t, C), i→j
    score = np.zeros((n, n))
    for inner, sign, axis in ((left_last - left_prev, 1.0, 0), (right_first - right_next, -1.0, 1)):
        mean = inner.mean(axis=1)                                   # (N, C)
        centred = inner - mean[:, None, :]
        cov = np.einsum("ntc,ntd->ncd", centred, centred) / max(t - 1, 1)
        cov += np.eye(c)[None] * 1.0                                # keep flat tiles invertible
        inv = np.linalg.inv(cov)
        if axis == 0:
            d = sign * seam - mean[:, None, None, :]
            score += np.einsum("ijtc,icd,ijtd->ij", d, inv, d)
        else:
            d = sign * seam - mean[None, :, None, :]
            score += np.einsum("ijtc,jcd,ijtd->ij", d, inv, d)
    np.fill_diagonal(score, np.inf)
    return score


def dissimilarities(tiles: np.ndarray) -> np.ndarray:
    """(2, N, N): [0] j right of i, [1] j below i."""
    x = np.asarray(tiles, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    right = _edge_dissimilarity(x)
    below = _edge_dissimilarity(np.swapaxes(x, 1, 2))
    return np.stack([right, below])


def confidences(dis: np.ndarray) -> np.ndarray:
    """Best-to-second-best ratio of each pair: D[i,j] over the best rival of i or of j."""
    out = np.empty_like(dis)
    for o in range(dis.shape[0]):
        d = dis[o]
        two = np.partition(d, 1, axis=1)[:, :2]           # two best partners of each i (as left)
        rival_i = np.where(d == two[:, :1], two[:, 1:2], two[:, :1])
        two_c = np.partition(d, 1, axis=0)[:2, :]          # two best partners of each j (as right)
        rival_j = np.where(d == two_c[:1, :], two_c[1:2, :], two_c[:1, :])
        out[o] = d / (np.minimum(rival_i, rival_j) + 1e-9)
    return out


def _merge_clusters(conf: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Kruskal-style merge; returns (cluster id per tile, position per tile in its cluster)."""
    n = conf.shape[1]
    cluster = np.arange(n)
    pos = np.zeros((n, 2), dtype=np.int64)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    cells: dict[int, dict[tuple[int, int], int]] = {i: {(0, 0): i} for i in range(n)}
    box = {i: [0, 0, 0, 0] for i in range(n)}  # rmin, rmax, cmin, cmax
    flat = conf.reshape(-1)
    order = np.argsort(flat, kind="stable")
    order = order[np.isfinite(flat[order])]
    o_idx, i_idx, j_idx = np.unravel_index(order, conf.shape)
    merges = 0
    for o, i, j in zip(o_idx.tolist(), i_idx.tolist(), j_idx.tolist()):
        a, b = cluster[i], cluster[j]
        if a == b:
            continue
        if len(members[a]) < len(members[b]):
            a, b = b, a
            dr, dc = -_STEPS[o][0], -_STEPS[o][1]
            i, j = j, i
        else:
            dr, dc = _STEPS[o]
        # Place cluster b so that tile j lands at pos[i] + step.
        shift_r = pos[i, 0] + dr - pos[j, 0]
        shift_c = pos[i, 1] + dc - pos[j, 1]
        ba, bb = box[a], box[b]
        rmin, rmax = min(ba[0], bb[0] + shift_r), max(ba[1], bb[1] + shift_r)
        cmin, cmax = min(ba[2], bb[2] + shift_c), max(ba[3], bb[3] + shift_c)
        if rmax - rmin + 1 > rows or cmax - cmin + 1 > cols:
            continue
        occupied = cells[a]
        if any((r + shift_r, c + shift_c) in occupied for (r, c) in cells[b]):
            continue
        for (r, c), tile in cells[b].items():
            occupied[(r + shift_r, c + shift_c)] = tile
            pos[tile] = (r + shift_r, c + shift_c)
            cluster[tile] = a
        members[a].extend(members.pop(b))
        del cells[b], box[b]
        box[a] = [rmin, rmax, cmin, cmax]
        merges += 1
        if merges == n - 1:
            break
    return cluster, pos


def _fill(grid: np.ndarray, dis: np.ndarray) -> np.ndarray:
    """Fill the empty slots (-1) greedily: most placed neighbours first, then lowest cost."""
    rows, cols = grid.shape
    n = dis.shape[1]
    grid = grid.copy()
    placed = np.zeros(n, dtype=bool)
    placed[grid[grid >= 0]] = True
    # (neighbour offset, orientation, neighbour is the first tile of the pair)
    sides = (((0, -1), 0, True), ((0, 1), 0, False), ((-1, 0), 1, True), ((1, 0), 1, False))
    while not placed.all():
        free = ~placed
        cost = np.zeros((rows, cols, int(free.sum())))
        count = np.zeros((rows, cols), dtype=np.int64)
        for (dr, dc), o, first in sides:
            nb = np.full((rows, cols), -1)
            src = grid[max(dr, 0):rows + min(dr, 0), max(dc, 0):cols + min(dc, 0)]
            nb[max(-dr, 0):rows + min(-dr, 0), max(-dc, 0):cols + min(-dc, 0)] = src
            has = nb >= 0
            d = dis[o][nb[has]][:, free] if first else dis[o][:, nb[has]].T[:, free]
            cost[has] += d
            count += has
        empty = (grid < 0) & (count > 0)
        if not empty.any():
            empty = grid < 0
        best_count = count[empty].max()
        slots = np.argwhere(empty & (count == best_count))
        per = cost[slots[:, 0], slots[:, 1]] / max(best_count, 1)
        s, k = np.unravel_index(np.argmin(per), per.shape)
        tile = np.flatnonzero(free)[k]
        grid[slots[s, 0], slots[s, 1]] = tile
        placed[tile] = True
    return grid


def solve_jigsaw(tiles: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Place N tiles (N×t×t[×C]) on a rows×cols grid.

    Returns placement with placement[r * cols + c] = index of the tile placed at (r, c).
    """
    rows, cols = grid
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4) or tiles.shape[1] != tiles.shape[2]:
        raise ValueError(f"expected tiles of shape N×t×t[×C], got {tiles.shape}")
    n = tiles.shape[0]
    if n != rows * cols:
        raise ValueError(f"{n} tiles do not fill a {rows}x{cols} grid")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if tiles.shape[1] < 2:
        raise ValueError(f"tiles of {tiles.shape[1]} px are too small to compare edges")
    dis = dissimilarities(tiles)
    conf = confidences(dis)
    cluster, pos = _merge_clusters(conf, rows, cols)
    ids, sizes = np.unique(cluster, return_counts=True)
    main = ids[np.argmax(sizes)]
    inside = np.flatnonzero(cluster == main)
    p = pos[inside] - pos[inside].min(axis=0)
    h, w = p.max(axis=0) + 1
    best, best_cost = None, np.inf
    for r0 in range(rows - h + 1):
        for c0 in range(cols - w + 1):
            g = np.full((rows, cols), -1)
            g[p[:, 0] + r0, p[:, 1] + c0] = inside
            g = _fill(g, dis)
            c = _total_cost(g, dis)
            if c < best_cost:
                best, best_cost = g, c
    return best.reshape(-1)


def _total_cost(grid: np.ndarray, dis: np.ndarray) -> float:
    return float(dis[0][grid[:, :-1], grid[:, 1:]].sum() + dis[1][grid[:-1, :], grid[1:, :]].sum())


def reconstruct(shuffled_image: np.ndarray, tile: int, grid: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Solve the jigsaw of an image cut into tile×tile pieces; returns (image, placement)."""
    img = np.asarray(shuffled_image)
    x = img[..., None] if img.ndim == 2 else img
    tokens = to_tokens(x, tile)
    shape = (x.shape[0] // tile, x.shape[1] // tile)
    if grid is not None and tuple(grid) != shape:
        raise ValueError(f"grid {tuple(grid)} does not match a {x.shape[0]}x{x.shape[1]} image of {tile} px tiles")
    placement = solve_jigsaw(tokens, shape)
    out = from_tokens(tokens[placement], *shape)
    return (out[..., 0] if img.ndim == 2 else out), placement
