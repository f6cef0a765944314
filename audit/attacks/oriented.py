"""Jigsaw solver for tiles of unknown orientation: the attack on the `-orient` modes.

`-orient` modes turn every tile by its own secret element of D4 (the flips and quarter
turns of a square). An attacker then has 8 candidate pictures per tile and must choose one
of them as well as a place. This is the greedy solver of `audit/attacks/jigsaw.py` over
"virtual tiles" (every tile in each of its 8 orientations), after Gallagher (CVPR 2012,
type-2 puzzles) extended from 4 to 8 orientations:

1. Mahalanobis gradient compatibility (plus the edge-prediction term for single-channel
   tiles) of "virtual tile v right of virtual tile u" for all 8N×8N pairs, in chunks;
   "below" is "right of" after a quarter turn of both tiles. Pairs of one tile with itself
   are excluded.
2. Best-to-second-best confidence (`jigsaw.pair_confidence`).
3. Kruskal-style merge of clusters in order of confidence, over the pairs where one side
   is among the other's 16 best partners. Each cluster fixes its tiles' orientations up to
   one turn of the whole cluster; a merge turns the smaller cluster so the pair fits, and
   is refused when tiles would overlap or the cluster outgrow the grid.
4. The largest cluster is placed on the grid; the rest fill the empty cells greedily (cell
   with most placed neighbours first, best tile and orientation there).

The answer is a placement and an orientation per cell; it may be the original picture
turned as a whole, which hides nothing, so `oriented_neighbour_accuracy` scores the best of
the 8 global turns.

`train_turned_attacker` is the learned attack for the same modes: the position-free ViT of
`audit/attacks/learned.py`, trained on public images shuffled *and* turned tile by tile,
with a second head that names each tile's turn; Hungarian placement as there.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from audit.attacks.jigsaw import fill_empty_cells, pair_confidence
from audit.attacks.learned import (PositionAttacker, fit_attacker, hungarian_placement, mix_windows,
                                   public_set, random_windows)
from encrypt.ciphers import (DIHEDRAL, compose, dihedral_matrices, dihedral_relabellings, from_tokens, to_tokens,
                             turn)

# The modes these attacks are for (audit.privacy chooses from these): tiles moved and turned.
APPLIES_TO = ("mix-shuffle-orient",)

__all__ = ["TurnedAttacker", "compose", "draw", "oriented_neighbour_accuracy", "reconstruct_oriented",
           "solve_oriented", "train_turned_attacker", "turned_attack", "upright_picture"]


def _inverse(k):
    table = compose(np.arange(DIHEDRAL)[:, None], np.arange(DIHEDRAL)[None, :])
    return np.argmax(table[k] == 0, axis=-1) if np.ndim(k) else int(np.argmax(table[k] == 0))


def _quarter_to_right() -> int:
    """The element that moves the offset "below" (1, 0) to "right" (0, 1)."""
    mats = dihedral_matrices()
    return next(k for k in range(DIHEDRAL) if tuple(mats[k] @ np.array([1, 0])) == (0, 1))


def _mgc_sides(tiles: np.ndarray, ridge: float = 1.0):
    """Per tile: right edge, left edge, and the gradient statistics beside each."""
    t, c = tiles.shape[1], tiles.shape[-1]
    out = {}
    for name, edge, inner in (("right", tiles[:, :, -1], tiles[:, :, -2]), ("left", tiles[:, :, 0], tiles[:, :, 1])):
        grad = edge - inner
        mean = grad.mean(axis=1)
        centred = grad - mean[:, None]
        cov = np.einsum("ntc,ntd->ncd", centred, centred) / max(t - 1, 1) + ridge * np.eye(c)
        out[name] = (edge, inner, mean, np.linalg.inv(cov))
    return out


def _right_scores(virtual: np.ndarray, chunk: int = 64) -> np.ndarray:
    """(M, M) dissimilarity of "virtual tile j right of virtual tile i" (MGC from both sides).

    Single-channel tiles add the median-scaled edge-prediction error, as the plain solver does.
    """
    m = virtual.shape[0]
    sides = _mgc_sides(virtual)
    r_edge, r_inner, r_mean, r_inv = sides["right"]   # of the left tile of a pair
    l_edge, l_inner, l_mean, l_inv = sides["left"]    # of the right tile of a pair
    mgc = np.empty((m, m))
    pred = np.empty((m, m)) if virtual.shape[-1] == 1 else None
    for s in range(0, m, chunk):
        e = slice(s, s + chunk)
        seam = l_edge[None] - r_edge[e, None]                             # (k, M, t, C)
        d = seam - r_mean[e, None, None]
        score = np.einsum("ijtc,icd,ijtd->ij", d, r_inv[e], d)
        d = -seam - l_mean[None, :, None]
        score += np.einsum("ijtc,jcd,ijtd->ij", d, l_inv, d)
        mgc[e] = score
        if pred is not None:
            forward = np.abs((2 * r_edge[e] - r_inner[e])[:, None] - l_edge[None])
            backward = np.abs((2 * l_edge - l_inner)[None] - r_edge[e, None])
            pred[e] = (forward + backward).sum(axis=(2, 3))
    if pred is None:
        return mgc
    return mgc / max(float(np.median(mgc)), 1e-12) + pred / max(float(np.median(pred)), 1e-12)


def oriented_dissimilarity(tiles: np.ndarray) -> np.ndarray:
    """(2, 8N, 8N): [0][u, v] virtual tile v right of u, [1][u, v] v below u; u = 8·tile + turn.

    Pairs of a tile with itself (in any two turns) are +inf.
    """
    x = np.asarray(tiles, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    n = x.shape[0]
    virtual = np.stack([turn(x, k) for k in range(DIHEDRAL)], axis=1).reshape(n * DIHEDRAL, *x.shape[1:])
    right = _right_scores(virtual)
    # v below u  ⇔  after turning the picture by q, turned v is right of turned u.
    q = _quarter_to_right()
    index = (np.arange(n)[:, None] * DIHEDRAL + compose(q, np.arange(DIHEDRAL))[None]).reshape(-1)
    below = right[np.ix_(index, index)]
    out = np.stack([right, below])
    owner = np.repeat(np.arange(n), DIHEDRAL)
    out[:, owner[:, None] == owner[None, :]] = np.inf
    return out


_STEPS = ((0, 1), (1, 0))


class _Clusters:
    """Union of tiles with a cell and an orientation each, merged by turning whole clusters."""

    def __init__(self, n: int, side: int) -> None:
        self.side = side
        self.cluster = list(range(n))
        self.cell = [(0, 0)] * n
        self.turn = [0] * n
        self.members = {i: [i] for i in range(n)}
        self.occupied = {i: {(0, 0)} for i in range(n)}
        self.box = {i: (0, 0, 0, 0) for i in range(n)}  # row min, row max, col min, col max
        table = compose(np.arange(DIHEDRAL)[:, None], np.arange(DIHEDRAL)[None, :])
        self.compose = table.tolist()
        self.inverse = [int(np.argmax(table[k] == 0)) for k in range(DIHEDRAL)]
        self.mats = [tuple(map(tuple, m)) for m in dihedral_matrices().tolist()]

    def _move(self, k: int, dr: int, dc: int) -> tuple[int, int]:
        (a, b), (c, d) = self.mats[k]
        return a * dr + b * dc, c * dr + d * dc

    def merge(self, i: int, gi: int, j: int, gj: int, step: tuple[int, int]) -> bool:
        """Join j's cluster to i's so that (i turned gi, j turned gj, j at i + step) holds."""
        a, b = self.cluster[i], self.cluster[j]
        if a == b:
            return False
        if len(self.members[a]) < len(self.members[b]):   # move the smaller cluster
            i, gi, j, gj, step, a, b = j, gj, i, gi, (-step[0], -step[1]), b, a
        comp, inv = self.compose, self.inverse
        turn_pair = comp[self.turn[i]][inv[gi]]            # the pair as i's cluster holds it
        j_turn = comp[turn_pair][gj]
        dr, dc = self._move(turn_pair, *step)
        j_cell = (self.cell[i][0] + dr, self.cell[i][1] + dc)
        move = comp[j_turn][inv[self.turn[j]]]              # turns all of j's cluster
        base = self.cell[j]
        moved = {}
        for x in self.members[b]:
            mr, mc = self._move(move, self.cell[x][0] - base[0], self.cell[x][1] - base[1])
            moved[x] = (j_cell[0] + mr, j_cell[1] + mc)
        rows = [c[0] for c in moved.values()]
        cols = [c[1] for c in moved.values()]
        r0, r1, c0, c1 = self.box[a]
        r0, r1, c0, c1 = min(r0, *rows), max(r1, *rows), min(c0, *cols), max(c1, *cols)
        if r1 - r0 + 1 > self.side or c1 - c0 + 1 > self.side:
            return False
        occupied = self.occupied[a]
        if any(c in occupied for c in moved.values()):
            return False
        for x, c in moved.items():
            self.cell[x] = c
            self.turn[x] = comp[move][self.turn[x]]
            self.cluster[x] = a
        occupied.update(moved.values())
        self.members[a] += self.members.pop(b)
        del self.occupied[b], self.box[b]
        self.box[a] = (r0, r1, c0, c1)
        return True


def _candidate_pairs(conf: np.ndarray, dis: np.ndarray, keep: int) -> list[tuple[int, int, int]]:
    """(orientation, u, v) in order of confidence, for pairs where v is among u's `keep` best
    partners or u among v's: the other 8N·8N pairs would only ever be refused or mislaid."""
    out = []
    for o in range(2):
        d = dis[o]
        k = min(keep, d.shape[1] - 1)
        mask = np.zeros(d.shape, dtype=bool)
        rows = np.arange(d.shape[0])[:, None]
        mask[rows, np.argpartition(d, k, axis=1)[:, :k]] = True
        mask[np.argpartition(d, k, axis=0)[:k, :], np.arange(d.shape[1])[None, :]] = True
        mask &= np.isfinite(conf[o])
        u, v = np.nonzero(mask)
        out.append((conf[o][u, v], np.full(u.size, o), u, v))
    score = np.concatenate([c[0] for c in out])
    order = np.argsort(score, kind="stable")
    o, u, v = (np.concatenate([c[i] for c in out])[order].tolist() for i in (1, 2, 3))
    return list(zip(o, u, v))


def _cost(grid: np.ndarray, turns: np.ndarray, dis: np.ndarray) -> float:
    v = grid * DIHEDRAL + turns
    return float(dis[0][v[:, :-1], v[:, 1:]].sum() + dis[1][v[:-1], v[1:]].sum())


def solve_oriented(tiles: np.ndarray, side: int, *, max_offsets: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Place and turn N tiles (N×t×t[×C]) on a side×side grid.

    Returns (placement, turns): placement[p] = index of the tile at cell p (row-major) and
    turns[p] = the D4 element applied to that stored tile to draw it. At most `max_offsets`
    positions of the largest cluster are tried (evenly spread) to bound the time.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4) or tiles.shape[1] != tiles.shape[2]:
        raise ValueError(f"expected square tiles of shape N×t×t[×C], got {tiles.shape}")
    n = tiles.shape[0]
    if side < 1 or n != side * side:
        raise ValueError(f"{n} tiles do not fill a {side}x{side} grid")
    if tiles.shape[1] < 3:
        raise ValueError(f"tiles of {tiles.shape[1]} px are too small to compare edges (need 3)")
    dis = oriented_dissimilarity(tiles)
    conf = pair_confidence(dis)
    clusters = _Clusters(n, side)
    merges = 0
    for o, u, v in _candidate_pairs(conf, dis, keep=16):
        (i, gi), (j, gj) = divmod(u, DIHEDRAL), divmod(v, DIHEDRAL)
        if clusters.merge(i, gi, j, gj, _STEPS[o]):
            merges += 1
            if merges == n - 1:
                break
    core_id = max(clusters.members, key=lambda c: len(clusters.members[c]))
    core = np.array(clusters.members[core_id])
    cells = np.array([clusters.cell[x] for x in core])
    at = cells - cells.min(axis=0)
    height, width = at.max(axis=0) + 1
    offsets = [(r, c) for r in range(side - height + 1) for c in range(side - width + 1)]
    if len(offsets) > max_offsets:
        offsets = [offsets[i] for i in np.linspace(0, len(offsets) - 1, max_offsets).round().astype(int)]
    best, best_cost = None, np.inf
    for r0, c0 in offsets:
        grid = np.full((side, side), -1)
        turns = np.zeros((side, side), dtype=np.int64)
        grid[at[:, 0] + r0, at[:, 1] + c0] = core
        turns[at[:, 0] + r0, at[:, 1] + c0] = [clusters.turn[x] for x in core]
        grid, turns = fill_empty_cells(grid, dis, turns, DIHEDRAL)
        cost = _cost(grid, turns, dis)
        if cost < best_cost:
            best, best_cost = (grid, turns), cost
    return best[0].reshape(-1), best[1].reshape(-1)


def draw(stored: np.ndarray, placement: np.ndarray, turns: np.ndarray, tile: int) -> np.ndarray:
    """The picture a (placement, turns) answer draws from a stored H×W[×C] image."""
    img = np.asarray(stored)
    x = img[..., None] if img.ndim == 2 else img
    rows, cols = x.shape[0] // tile, x.shape[1] // tile
    tokens = to_tokens(x, tile)[placement]
    out = np.stack([turn(tokens[p][None], int(turns[p]))[0] for p in range(len(placement))])
    out = from_tokens(out, rows, cols)
    return out[..., 0] if img.ndim == 2 else out


def upright_picture(picture: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The picture turned as a whole by the D4 element that brings it closest to the original.

    For scoring only: an attacker turns a sideways picture by eye, it hides nothing.
    """
    x = np.asarray(picture)
    squeeze = x.ndim == 2
    x = x[None, ..., None] if squeeze else x[None]
    candidates = [turn(x, k)[0] for k in range(DIHEDRAL)]
    target = np.asarray(original, dtype=np.float64).reshape(candidates[0].shape)
    best = min(candidates, key=lambda c: float(((c.astype(np.float64) - target) ** 2).mean()))
    return best[..., 0] if squeeze else best


def reconstruct_oriented(stored_image: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve a square stored image of shuffled, turned tiles: (picture, placement, turns)."""
    img = np.asarray(stored_image)
    x = img[..., None] if img.ndim == 2 else img
    if x.shape[0] != x.shape[1] or x.shape[0] % tile:
        raise ValueError(f"expected a square image made of {tile} px tiles, got {x.shape[0]}x{x.shape[1]}")
    side = x.shape[0] // tile
    placement, turns = solve_oriented(to_tokens(x, tile), side)
    return draw(img, placement, turns, tile), placement, turns


def oriented_neighbour_accuracy(placement: np.ndarray, turns: np.ndarray, perm: np.ndarray,
                                orientations: np.ndarray, side: int) -> float:
    """Fraction of original right/below adjacencies restored with both tiles upright.

    `perm` and `orientations` are the cipher's: stored tile s came from position perm[s]
    and was turned by orientations[s] (after the shuffle: orientations index stored tiles).
    The best of the 8 turns of the whole answer counts (a turned picture hides nothing).
    """
    placement, turns = np.asarray(placement), np.asarray(turns)
    perm, orientations = np.asarray(perm), np.asarray(orientations)
    origin = perm[placement].reshape(side, side)
    net = compose(turns, orientations[placement]).reshape(side, side)   # upright iff 0
    pairs = 2 * side * (side - 1)
    if pairs == 0:
        return 1.0
    best = 0.0
    for g in range(DIHEDRAL):
        o = turn(origin[None, ..., None], g)[0, ..., 0]
        t = compose(g, turn(net[None, ..., None], g)[0, ..., 0])
        up = t == 0
        right = (o[:, 1:] == o[:, :-1] + 1) & (o[:, :-1] % side != side - 1) & up[:, 1:] & up[:, :-1]
        below = (o[1:, :] == o[:-1, :] + side) & up[1:, :] & up[:-1, :]
        best = max(best, float((right.sum() + below.sum()) / pairs))
    return best


# -- the learned attack on turned tiles ---------------------------------------------------------

class TurnedAttacker(PositionAttacker):
    """PositionAttacker with a second per-tile head: which D4 turn the cipher applied."""

    def __init__(self, tile: int, grid: tuple[int, int], channels: int, **kwargs) -> None:
        super().__init__(tile, grid, channels, **kwargs)
        self.turn_head = nn.Linear(self.head.in_features, DIHEDRAL)

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×C×H×W in 0..1 → (B×N×N position logits, B×N×8 turn logits)."""
        features = self.encoder.forward_features((x - 0.5) / 0.25)
        return self.head(features), self.turn_head(features)


def _turn_batch(tokens: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Turn tokens B×N×C×t×t one by one (turns B×N) with the cipher's own turns.

    A gather by `encrypt.ciphers.dihedral_relabellings`, so the group stays defined once.
    """
    tables = torch.as_tensor(np.stack(dihedral_relabellings(tokens.shape[-1])), device=tokens.device)
    flat = tokens.flatten(-2)
    index = tables[turns][:, :, None, :].expand_as(flat)
    return torch.take_along_dim(flat, index, dim=-1).reshape(tokens.shape)


def train_turned_attacker(public_images: np.ndarray | Sequence[np.ndarray], tile: int, side: int,
                          steps: int, *, mixed_from_patch: int | None = None, batch_size: int = 64,
                          lr: float = 2e-3, dim: int = 96, depth: int = 4, heads: int = 4,
                          flip: bool = False, seed: int = 0) -> TurnedAttacker:
    """Train a TurnedAttacker on public images mixed (optionally), shuffled and turned per tile.

    Same data handling as `learned.train_position_attacker` (windows cut from `public_images`,
    `mixed_from_patch` for the mixing modes); the torch generator is the attacker's own.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if side < 2:
        raise ValueError(f"need a grid of at least 2x2 tiles, got {side}")
    public_images, channels = public_set(public_images)
    plain_tile = mixed_from_patch or tile
    if plain_tile % tile:
        raise ValueError(f"sub-patch {tile} does not divide patch {plain_tile}")
    n = side * side
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TurnedAttacker(tile, (side, side), channels, dim=dim, depth=depth, heads=heads)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        x = random_windows(public_images, side * plain_tile, side * plain_tile, batch_size, gen,
                           flip=flip, align=plain_tile)
        if mixed_from_patch is not None:
            x = mix_windows(x, mixed_from_patch, tile)
        b, c = x.shape[:2]
        tokens = x.reshape(b, c, side, tile, side, tile).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, tile, tile)
        perm = torch.argsort(torch.rand(b, n, generator=gen), dim=1)
        turns = torch.randint(DIHEDRAL, (b, n), generator=gen)
        stored = _turn_batch(torch.take_along_dim(tokens, perm[:, :, None, None, None], dim=1), turns)
        image = stored.reshape(b, side, side, c, tile, tile).permute(0, 3, 1, 4, 2, 5) \
            .reshape(b, c, side * tile, side * tile)
        pos, turn = model.both(image)
        loss = nn.functional.cross_entropy(pos.reshape(-1, n), perm.reshape(-1)) \
            + nn.functional.cross_entropy(turn.reshape(-1, DIHEDRAL), turns.reshape(-1))
        return loss, (pos.argmax(-1) == perm).float().mean()

    model.train_log = fit_attacker(model, steps, lr, step)
    return model


@torch.no_grad()
def turned_attack(model: TurnedAttacker, stored_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(placements N×T, turns N×T) for a batch of shuffled, turned images, in `draw`'s terms.

    Positions by the Hungarian method on the position log-probabilities; each placed tile
    is turned back by the inverse of the turn the model names.
    """
    x = np.asarray(stored_images)
    if x.ndim == 3:
        x = x[..., None]
    side = model.grid[0]
    expect = (side * model.tile, side * model.tile, model.channels)
    if x.shape[1:] != expect:
        raise ValueError(f"stored images of shape {x.shape[1:]} do not fit the attacker (expects {expect})")
    placements, turns = [], []
    for start in range(0, len(x), 128):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + 128])).permute(0, 3, 1, 2).float() / 255
        pos, turn = model.both(chunk)
        log_probs = torch.log_softmax(pos.float(), dim=-1).numpy().astype(np.float64)
        named = turn.argmax(-1).numpy()
        for lp, k in zip(log_probs, named):
            placement = hungarian_placement(lp)
            placements.append(placement)
            turns.append(_inverse(k[placement]))
    return np.stack(placements), np.stack(turns)
