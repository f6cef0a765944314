"""Learned position attacker: a ViT that sees a bag of shuffled tiles and says where each went.

The paper of the `shuffle` cipher names this its strongest adversary. A small timm
VisionTransformer with no position embedding (so it cannot know where a tile sits in the
stored image, only what the tiles look like together) is trained on public images, disjoint
from the victims, to classify every shuffled tile into one of rows·cols original positions.
The per-tile scores become a placement with the Hungarian method on −log p, so the answer is
always a permutation. An optional refinement lets the jigsaw solver assemble the tiles by
seam compatibility and uses the model only to put its confident blocks in the right place.

Conventions are those of `audit.metrics`: a cipher's perm says shuffled tile i came from
position perm[i]; a placement says placement[p] = the shuffled tile put at position p, so
`encrypt.ciphers.shuffle(shuffled, placement, tile)` draws the reconstruction.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from timm.models.vision_transformer import VisionTransformer
from timm.scheduler import CosineLRScheduler
from torch import nn

from audit.attacks.jigsaw import (has_subsampled_chroma, pair_confidence, pairwise_dissimilarity,
                                  solve_jigsaw)
from encrypt.ciphers import to_tokens

# The modes the position attacker is trained for (audit.privacy chooses from these):
# tiles that moved but kept their orientation.
APPLIES_TO = ("shuffle", "mix-shuffle")

# skimage sample photos an attacker may train on: none of them is a victim of the audit's
# builtin photo set (astronaut, coffee, chelsea/cat, rocket, immunohistochemistry).
PUBLIC_PHOTOS = ("hubble_deep_field", "retina", "colorwheel", "stereo_motorcycle", "camera",
                 "coins", "brick", "grass", "gravel", "moon", "page", "clock", "cell")


def public_photos() -> list[np.ndarray]:
    """The public skimage photos as H×W×3 uint8 (grayscale ones repeated to RGB)."""
    from skimage import data

    out = []
    for name in PUBLIC_PHOTOS:
        loaded = getattr(data, name)()
        for img in (loaded[:2] if isinstance(loaded, tuple) else (loaded,)):
            img = np.asarray(img)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=-1)
            out.append(np.ascontiguousarray(img[..., :3].astype(np.uint8)))
    return out


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def corpus_files(folder: str | Path) -> list[Path]:
    """The distinct photos under `folder`, recursively, sorted.

    Wallpaper packages ship one picture at many sizes in one folder, files named like
    `1920x1080.jpg` (KDE's layout); of those only the largest is kept, so no picture
    counts twice. Vector images (.svg) are not photos and are skipped.
    """
    import re

    sized = re.compile(r"^(\d+)x(\d+)$")
    best: dict[Path, tuple[int, Path]] = {}
    out = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() not in PHOTO_SUFFIXES or not path.is_file():
            continue
        match = sized.match(path.stem)
        if match is None:
            out.append(path)
        else:
            area = int(match[1]) * int(match[2])
            if path.parent not in best or area > best[path.parent][0]:
                best[path.parent] = (area, path)
    return sorted(out + [p for _, p in best.values()])


def public_corpus(folders: Sequence[str | Path], *, max_side: int = 640,
                  min_side: int = 224) -> list[np.ndarray]:
    """A public photo corpus as H×W×3 uint8, each shrunk so its shorter side is ≤ `max_side`.

    For attackers stronger than the 14 skimage photos allow: point it at any folders of
    public pictures (e.g. the Debian wallpaper packages' /usr/share/backgrounds and
    /usr/share/wallpapers). Shrinking keeps the many random crops `random_windows` cuts per
    step cheap; pictures whose shorter side is under `min_side` are dropped.
    """
    from PIL import Image

    out = []
    for folder in folders:
        for path in corpus_files(folder):
            with Image.open(path) as img:
                img = img.convert("RGB")
                scale = max_side / min(img.size)
                if scale < 1:
                    img = img.resize((round(img.width * scale), round(img.height * scale)),
                                     Image.Resampling.BICUBIC, reducing_gap=3.0)
                if min(img.size) >= min_side:
                    out.append(np.asarray(img, dtype=np.uint8).copy())
    if not out:
        raise ValueError(f"no photos of at least {min_side} px under {', '.join(map(str, folders))}")
    return out


def _as_batch(images, what: str) -> np.ndarray:
    """N×H×W or N×H×W×C uint8 → N×H×W×C."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty N×H×W[×C] array, got shape {x.shape}")
    return x


def public_set(public_images: np.ndarray | Sequence[np.ndarray]
               ) -> tuple[np.ndarray | Sequence[np.ndarray], int]:
    """An attacker's public training images as `random_windows` takes them, and their channels.

    A batch (N×H×W[×C]) gets its channel axis; a list of photos of any sizes stays a list.
    """
    first = np.asarray(public_images[0])
    channels = 1 if first.ndim == 2 else first.shape[-1]
    if isinstance(public_images, np.ndarray):
        public_images = _as_batch(public_images, "public images")
    return public_images, channels


def random_windows(images: np.ndarray | Sequence[np.ndarray], height: int, width: int, count: int,
                   generator: torch.Generator, *, flip: bool = False, align: int = 1) -> torch.Tensor:
    """`count` random height×width windows (N×C×H×W float in 0..1) from public images.

    Images of exactly that size are used whole; others give a random crop at a random scale
    (photos), with offsets a multiple of `align` so crops keep a cipher's patch grid.
    `generator` is an ordinary torch RNG: nothing here is keyed.
    """
    pool = list(images) if not isinstance(images, np.ndarray) else images
    index = torch.randint(len(pool), (count,), generator=generator).tolist()
    out = []
    for i in index:
        img = np.asarray(pool[i])
        if img.ndim == 2:
            img = img[..., None]
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
        h, w = t.shape[1:]
        if (h, w) != (height, width):
            # Scale so the window covers 40–100 % of the shorter side (upscaling only images
            # too small for the window), then crop.
            least = max(height / h, width / w)
            scale = least / (0.4 + 0.6 * float(torch.rand((), generator=generator)))
            scale = min(scale, max(least, 1.0))
            nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
            if (nh, nw) != (h, w):
                t = nn.functional.interpolate(t[None], size=(nh, nw), mode="bilinear",
                                              antialias=True, align_corners=False)[0].clamp(0, 1)
            top = int(torch.randint((nh - height) // align + 1, (), generator=generator)) * align
            left = int(torch.randint((nw - width) // align + 1, (), generator=generator)) * align
            t = t[:, top:top + height, left:left + width]
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            t = t.flip(-1)
        out.append(t)
    return torch.stack(out)


def mix_windows(x: torch.Tensor, patch: int, sub_patch: int) -> torch.Tensor:
    """The `mix` cipher on a float batch B×C×H×W, rounded to the 8-bit levels it stores."""
    b, c, h, w = x.shape
    k = patch // sub_patch
    x = x.reshape(b, c, h // patch, k, sub_patch, w // patch, k, sub_patch).mean(dim=(3, 6))
    return torch.round(x.reshape(b, c, h // patch * sub_patch, w // patch * sub_patch) * 255) / 255


def _tokens(x: torch.Tensor, tile: int) -> torch.Tensor:
    """B×C×H×W → B×N×C×tile×tile, row-major tiles."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // tile, tile, w // tile, tile).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, -1, c, tile, tile)


def _image(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of _tokens."""
    b, _, c, t, _ = tokens.shape
    x = tokens.reshape(b, rows, cols, c, t, t).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * t, cols * t)


@dataclass
class TrainLog:
    """Loss and per-tile position accuracy over the last tenth of training (on public data)."""

    loss: float
    tile_accuracy: float


class PositionAttacker(nn.Module):
    """A position-free ViT over the tiles of a shuffled image and a per-tile position head.

    Without position embedding the encoder is permutation-equivariant: it sees the tiles as
    a set, exactly the information the `shuffle` cipher leaves.
    """

    def __init__(self, tile: int, grid: tuple[int, int], channels: int, *, dim: int = 96,
                 depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.tile, self.grid, self.channels = int(tile), (int(grid[0]), int(grid[1])), int(channels)
        rows, cols = self.grid
        self.encoder = VisionTransformer(
            img_size=(rows * tile, cols * tile), patch_size=tile, in_chans=channels, num_classes=0,
            global_pool="", class_token=False, pos_embed="none", embed_dim=dim, depth=depth,
            num_heads=heads, mlp_ratio=2.0)
        self.head = nn.Linear(dim, rows * cols)
        self.train_log: TrainLog | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W in 0..1 → B×N×N logits: [b, i, p] = score of tile i coming from position p."""
        return self.head(self.encoder.forward_features((x - 0.5) / 0.25))


def train_position_attacker(public_images: np.ndarray | Sequence[np.ndarray], tile: int,
                            grid: tuple[int, int], steps: int, *, batch_size: int = 64,
                            lr: float = 2e-3, dim: int = 96, depth: int = 4, heads: int = 4,
                            mixed_from_patch: int | None = None, flip: bool = False,
                            seed: int = 0, device: str = "cpu") -> PositionAttacker:
    """Train a PositionAttacker on public images shuffled with fresh random permutations.

    `public_images` are plain N×H×W[×C] uint8 images of the attacked size, or a list of
    larger photos to crop patch-aligned windows from. For `mix-shuffle` pass
    `mixed_from_patch=patch` and `tile=sub_patch`: windows are cut at the plain size and
    mixed before shuffling, as the cipher does. `flip` adds mirrored windows (for a small
    photo set; not for data whose objects face one way). The result carries `train_log`.
    """
    rows, cols = (int(v) for v in grid)
    if tile < 1 or rows < 1 or cols < 1 or rows * cols < 2:
        raise ValueError(f"need a tile of at least 1 px and a grid of at least 2 tiles, got {tile}, {grid}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    public_images, channels = public_set(public_images)
    n = rows * cols
    plain_tile = tile
    if mixed_from_patch is not None:
        if mixed_from_patch % tile:
            raise ValueError(f"sub-patch {tile} does not divide patch {mixed_from_patch}")
        plain_tile = mixed_from_patch
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PositionAttacker(tile, (rows, cols), channels, dim=dim, depth=depth, heads=heads)
    model.to(device).train()
    def step() -> tuple[torch.Tensor, torch.Tensor]:
        x = random_windows(public_images, rows * plain_tile, cols * plain_tile, batch_size, gen,
                           flip=flip, align=plain_tile)
        if mixed_from_patch is not None:
            x = mix_windows(x, mixed_from_patch, tile)
        perm = torch.argsort(torch.rand(batch_size, n, generator=gen), dim=1)
        tokens = _tokens(x, tile)
        shuffled = _image(torch.take_along_dim(tokens, perm[:, :, None, None, None], dim=1), rows, cols)
        logits = model(shuffled.to(device))
        target = perm.to(device)
        loss = nn.functional.cross_entropy(logits.reshape(-1, n), target.reshape(-1))
        return loss, (logits.argmax(-1) == target).float().mean()

    model.train_log = fit_attacker(model, steps, lr, step)
    return model


def fit_attacker(model: nn.Module, steps: int, lr: float,
                 step: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> TrainLog:
    """The attackers' training loop: AdamW with a cosine schedule and warm-up, `steps` times.

    `step()` draws a fresh batch of public images, encrypted with fresh random secrets, and
    returns (loss, fraction of tiles put in the right place); the log averages both over
    the last tenth of training. Leaves the model in eval mode.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = CosineLRScheduler(opt, t_initial=steps, lr_min=lr / 100, warmup_t=max(1, steps // 20),
                              warmup_lr_init=lr / 100, t_in_epochs=False)
    tail_loss = tail_acc = 0.0
    tail = 0
    for i in range(steps):
        loss, accuracy = step()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(i + 1)
        if i >= steps - max(1, steps // 10):
            tail_loss += float(loss.detach())
            tail_acc += float(accuracy)
            tail += 1
    model.eval()
    return TrainLog(loss=tail_loss / tail, tile_accuracy=tail_acc / tail)


@torch.no_grad()
def position_log_probs(model: PositionAttacker, shuffled_images: np.ndarray,
                       batch_size: int = 256) -> np.ndarray:
    """N×T×T log-probabilities [n, i, p] that shuffled tile i of image n came from position p."""
    x = _as_batch(shuffled_images, "shuffled images")
    rows, cols = model.grid
    expect = (rows * model.tile, cols * model.tile, model.channels)
    if x.shape[1:] != expect:
        raise ValueError(f"shuffled images of shape {x.shape[1:]} do not fit the attacker "
                         f"(expects {expect[0]}x{expect[1]}x{expect[2]})")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(x), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).permute(0, 3, 1, 2)
        logits = model(chunk.float().div(255.0).to(device))
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def hungarian_placement(log_probs: np.ndarray) -> np.ndarray:
    """The placement (placement[p] = tile at p) that maximises Σ log p(tile → position)."""
    tiles, positions = linear_sum_assignment(-np.asarray(log_probs))
    placement = np.empty(len(tiles), dtype=np.int64)
    placement[positions] = tiles
    return placement


def _solver_blocks(solved: np.ndarray, dissimilarity: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    """Positions of the solver's grid grouped into blocks joined by distinct mutual best
    buddies, largest first: the parts of its answer that its own seam evidence vouches for.
    Ties (e.g. two blank tiles, whose seams all score 0) never join a block."""
    trusted = (pair_confidence(dissimilarity) < 1) & (dissimilarity > 0)
    g = solved.reshape(rows, cols)
    parent = np.arange(rows * cols)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for r in range(rows):
        for c in range(cols):
            p = r * cols + c
            if c + 1 < cols and trusted[0][g[r, c], g[r, c + 1]]:
                parent[root(p)] = root(p + 1)
            if r + 1 < rows and trusted[1][g[r, c], g[r + 1, c]]:
                parent[root(p)] = root(p + cols)
    roots = np.array([root(p) for p in range(rows * cols)])
    blocks = [np.flatnonzero(roots == r) for r in np.unique(roots)]
    return sorted(blocks, key=len, reverse=True)


def refine_placement(log_probs: np.ndarray, tiles: np.ndarray, grid: tuple[int, int], *,
                     subsampled_chroma: bool = False) -> np.ndarray:
    """Combine the jigsaw solver (relative layout) with the position model (absolute place).

    The solver assembles the tiles; its blocks of mutual best buddies are kept rigid and
    moved, largest first, to the free offset where the model's Σ log p is highest (the
    solver alone may place a correct block at the wrong offset). Tiles outside any block
    are assigned to the remaining positions by the Hungarian method. Needs tiles ≥ 3 px.
    """
    rows, cols = (int(v) for v in grid)
    n = rows * cols
    log_probs = np.asarray(log_probs)
    solved = solve_jigsaw(tiles, (rows, cols), subsampled_chroma=subsampled_chroma)
    dissimilarity = pairwise_dissimilarity(tiles, subsampled_chroma)
    free = np.ones((rows, cols), dtype=bool)
    placement = np.full(n, -1, dtype=np.int64)
    for block in _solver_blocks(solved, dissimilarity, rows, cols):
        if block.size < 2:
            break
        r, c = np.divmod(block, cols)
        block_tiles = solved[block]
        best, best_score = None, -np.inf
        for dr in range(-int(r.min()), rows - int(r.max())):
            for dc in range(-int(c.min()), cols - int(c.max())):
                if free[r + dr, c + dc].all():
                    score = log_probs[block_tiles, (r + dr) * cols + c + dc].sum()
                    if score > best_score:
                        best, best_score = (r + dr, c + dc), score
        if best is not None:
            free[best] = False
            placement[best[0] * cols + best[1]] = block_tiles
    open_positions = np.flatnonzero(placement < 0)
    if open_positions.size:
        left = np.setdiff1d(np.arange(n), placement[placement >= 0])
        placement[open_positions] = left[hungarian_placement(log_probs[np.ix_(left, open_positions)])]
    return placement


def attack(model: PositionAttacker, shuffled_images: np.ndarray, tile: int, grid: tuple[int, int],
           *, refine: bool = False) -> np.ndarray:
    """Placements (N×rows·cols, each a permutation) for a batch of shuffled images.

    With `refine`, the jigsaw solver's assembly is placed by the model instead
    (`refine_placement`; tiles of at least 3 px, JPEG 4:2:0 input detected per image).
    """
    rows, cols = (int(v) for v in grid)
    if (model.tile, model.grid) != (tile, (rows, cols)):
        raise ValueError(f"attacker was trained for tile {model.tile} on a {model.grid[0]}x{model.grid[1]} "
                         f"grid, asked for tile {tile} on {rows}x{cols}")
    x = _as_batch(shuffled_images, "shuffled images")
    log_probs = position_log_probs(model, x)
    placements = np.stack([hungarian_placement(lp) for lp in log_probs])
    if refine:
        if tile < 3:
            raise ValueError(f"refinement runs the jigsaw solver, which needs tiles of at least 3 px, got {tile}")
        tokens = to_tokens(x, tile)
        placements = np.stack([
            refine_placement(lp, t, (rows, cols), subsampled_chroma=has_subsampled_chroma(img))
            for lp, t, img in zip(log_probs, tokens, x)])
    return placements
