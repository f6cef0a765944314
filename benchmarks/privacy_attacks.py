"""Attack every cipher mode and measure what comes back: the privacy table of the project.

For each mode (shuffle, mix, mix-shuffle) on (a) Fashion-MNIST test images in the project's
small geometry (32 px, patch 4, sub-patch 2) and (b) the skimage photos (224 px, patch 16,
sub-patch 8), every applicable attack runs on images encrypted with a throwaway key:
- jigsaw: the greedy solver (audit/attacks/jigsaw.py), tiles of at least 3 px;
- learned: the position-predicting ViT trained on public images, Hungarian placement;
- learned+solver: the same, refined with the solver's blocks (tiles of at least 3 px);
- inversion of mix: nearest / bicubic / tile upsampling, deconvolution, learned upsampler;
  for mix-shuffle every placement attack is followed by both inversions.
Reported per attack: direct and neighbour accuracy (placement attacks), PSNR and SSIM of the
reconstruction against the original, and recognizability (top-1 of a CNN trained on plain
Fashion-MNIST train; chance 0.10), and "exact": the fraction of images restored bit for bit
(their PSNR is infinite and left out of the mean). "best" is the attack with the highest
mean SSIM (bounded, so exact images count fully).
Public training data: Fashion-MNIST train split; skimage photos other than the victims.
Prints one JSON object on stdout (progress on stderr). Several minutes on two CPU cores:

    python benchmarks/privacy_attacks.py [--fmnist-images 500] [--learned-steps 1200] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from audit.attacks.inversion import deconvolve, invert, train_upsampler, upsample  # noqa: E402
from audit.attacks.jigsaw import reconstruct  # noqa: E402
from audit.attacks.learned import attack, public_photos, train_position_attacker  # noqa: E402
from audit.metrics import direct_accuracy, neighbour_accuracy, psnr, ssim  # noqa: E402
from research.recognize import recognizability, resize_batch, train_recognizer  # noqa: E402
from conftest import load_fashion_mnist, natural_photos  # noqa: E402
from encrypt.ciphers import CIPHERS, Secrets  # noqa: E402
from shards.modes import CIPHER_MODES, MODES  # noqa: E402
from keys.derive import DatasetKey  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def throwaway_permutations(count: int, n: int) -> np.ndarray:
    key = DatasetKey("audit", os.urandom(32))  # discarded after the run
    return np.array([key.permutation(n, "test", f"sample-{i}") for i in range(count)])


class Victims:
    """One data set in one geometry: plain images, labels (or None), and what is public."""

    def __init__(self, name: str, plain: np.ndarray, labels: np.ndarray | None, public,
                 patch: int, sub_patch: int) -> None:
        self.name, self.plain, self.labels, self.public = name, plain, labels, public
        self.patch, self.sub_patch = patch, sub_patch
        side = plain.shape[1]
        self.grid = (side // patch, side // patch)
        self.perms = throwaway_permutations(len(plain), self.grid[0] * self.grid[1])


def score(v: Victims, recon: np.ndarray, recognizer, placements=None, tile_grid=None) -> dict:
    """The metrics of one attack's reconstructions (plain geometry) of all victims."""
    out: dict = {}
    if placements is not None:
        out["direct"] = float(np.mean([direct_accuracy(p, q) for p, q in zip(placements, v.perms)]))
        out["neighbour"] = float(np.mean([neighbour_accuracy(p, q, tile_grid)
                                          for p, q in zip(placements, v.perms)]))
    if recon is not None:
        values = np.array([psnr(a, b) for a, b in zip(v.plain, recon)])
        # Exact reconstructions have infinite PSNR: count them, average the others.
        out["exact"] = float(np.mean(np.isinf(values)))
        if np.isfinite(values).any():
            out["psnr"] = float(values[np.isfinite(values)].mean())
        out["ssim"] = float(np.mean([ssim(a, b) for a, b in zip(v.plain, recon)]))
        if recognizer is not None:
            out["recognizability"] = recognizability(recognizer, recon, v.labels)
    return {k: round(x, 4) for k, x in out.items()}


def placement_attacks(v: Victims, encrypted: np.ndarray, tile: int, learned_model) -> dict:
    """name → (placements, reconstruction in the stored geometry)."""
    results = {}
    if tile >= 3:
        t0 = time.perf_counter()
        placements = np.stack([reconstruct(img, tile, v.grid)[1] for img in encrypted])
        results["jigsaw"] = placements
        log(f"{v.name}: jigsaw on {len(encrypted)} images, tile {tile}: {time.perf_counter() - t0:.0f}s")
    results["learned"] = attack(learned_model, encrypted, tile, v.grid)
    if tile >= 3:
        t0 = time.perf_counter()
        results["learned+solver"] = attack(learned_model, encrypted, tile, v.grid, refine=True)
        log(f"{v.name}: learned+solver, tile {tile}: {time.perf_counter() - t0:.0f}s")
    return {name: (p, shuffle(encrypted, p, tile)) for name, p in results.items()}


def run_dataset(v: Victims, recognizer, args) -> dict:
    p, s = v.patch, v.sub_patch
    channels = v.plain.shape[-1]
    rows = {"plain": score(v, v.plain, recognizer)} if recognizer is not None else {}
    steps = args.learned_steps if v.labels is not None else args.photo_learned_steps
    photos = v.labels is None  # a small public photo set: crops at random scales, mirrored
    big = dict(batch_size=16, dim=128, depth=4, heads=4, flip=True) if photos else \
        dict(batch_size=64, dim=96, depth=4, heads=4)
    t0 = time.perf_counter()
    learned_shuffle = train_position_attacker(v.public, p, v.grid, steps, **big)
    log(f"{v.name}: position attacker (tile {p}) {steps} steps: {time.perf_counter() - t0:.0f}s, "
        f"public tile accuracy {learned_shuffle.train_log.tile_accuracy:.3f}")
    t0 = time.perf_counter()
    learned_mixed = train_position_attacker(v.public, s, v.grid, steps, mixed_from_patch=p, **big)
    log(f"{v.name}: position attacker (mixed, tile {s}) {steps} steps: {time.perf_counter() - t0:.0f}s, "
        f"public tile accuracy {learned_mixed.train_log.tile_accuracy:.3f}")
    t0 = time.perf_counter()
    up_steps = args.upsampler_steps if v.labels is not None else args.photo_upsampler_steps
    window = None if v.labels is not None else 64
    upsampler = train_upsampler(v.public, p, s, up_steps, window=window, flip=photos,
                                batch_size=16 if photos else 32)
    log(f"{v.name}: upsampler {up_steps} steps: {time.perf_counter() - t0:.0f}s")

    out: dict = {"geometry": {"size": int(v.plain.shape[1]), "patch": p, "sub_patch": s,
                              "channels": int(channels), "images": int(len(v.plain))},
                 "plain": rows.get("plain"), "modes": {}}
    for mode in (m for m in CIPHER_MODES if not MODES[m].turns):  # turned tiles: hardened_modes.py
        facts = MODES[mode]
        encrypted = CIPHERS[mode].encrypt(v.plain, Secrets(v.perms), p, s)
        stored_view = upsample(encrypted, p, s, "nearest") if facts.mixes else encrypted
        attacks: dict = {}
        if not facts.mixes:
            for name, (placements, recon) in placement_attacks(v, encrypted, p, learned_shuffle).items():
                attacks[name] = score(v, recon, recognizer, placements, v.grid)
        elif not facts.shuffles:
            for method in ("nearest", "bicubic", "tile"):
                attacks[f"upsample-{method}"] = score(v, upsample(encrypted, p, s, method), recognizer)
            attacks["deconvolve"] = score(v, deconvolve(encrypted, p, s), recognizer)
            attacks["learned-upsampler"] = score(v, invert(upsampler, encrypted), recognizer)
        else:
            for name, (placements, mixed) in placement_attacks(v, encrypted, s, learned_mixed).items():
                placed = score(v, None, None, placements, v.grid)
                for inv_name, recon in (("deconvolve", deconvolve(mixed, p, s)),
                                        ("learned-upsampler", invert(upsampler, mixed))):
                    attacks[f"{name}+{inv_name}"] = {**placed, **score(v, recon, recognizer)}
        skipped = {}
        if facts.shuffles and facts.tile(p, s) < 3:
            skipped = {name: "tiles under 3 px: the solver compares edge gradients"
                       for name in ("jigsaw", "learned+solver")}
        best = max(attacks, key=lambda k: attacks[k]["ssim"])
        out["modes"][mode] = {"stored": score(v, stored_view, recognizer), "attacks": attacks,
                              "best": best, **({"not_applicable": skipped} if skipped else {})}
        log(f"{v.name} {mode}: best {best} {attacks[best]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fmnist-images", type=int, default=500, help="Fashion-MNIST test images attacked")
    parser.add_argument("--public-images", type=int, default=60000, help="Fashion-MNIST train images public")
    parser.add_argument("--learned-steps", type=int, default=1200, help="position attacker steps (Fashion-MNIST)")
    parser.add_argument("--photo-learned-steps", type=int, default=600, help="position attacker steps (photos)")
    parser.add_argument("--upsampler-steps", type=int, default=400, help="learned upsampler steps (Fashion-MNIST)")
    parser.add_argument("--photo-upsampler-steps", type=int, default=200, help="learned upsampler steps (photos)")
    parser.add_argument("--recognizer-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    train_x, train_y = load_fashion_mnist("train", args.public_images)
    test_x, test_y = load_fashion_mnist("test", args.fmnist_images)
    train_x, test_x = resize_batch(train_x, 32), resize_batch(test_x, 32)  # encrypt's --size 32 --resize 32
    t0 = time.perf_counter()
    recognizer = train_recognizer(train_x, train_y, epochs=args.recognizer_epochs)
    log(f"recognizer: {time.perf_counter() - t0:.0f}s, plain test top-1 "
        f"{recognizability(recognizer, test_x, test_y):.3f}")
    fmnist = Victims("fashion-mnist", test_x[..., None], test_y, train_x, patch=4, sub_patch=2)
    photos = Victims("photos", np.stack(list(natural_photos(224).values())), None, public_photos(),
                     patch=16, sub_patch=8)
    report = {
        "chance_recognizability": 0.1,
        "settings": vars(args),
        "fashion-mnist": run_dataset(fmnist, recognizer, args),
        "photos": run_dataset(photos, None, args),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
