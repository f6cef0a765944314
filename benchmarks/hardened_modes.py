"""Hardened cipher modes: accuracy and privacy of every candidate, the same budget for each row.

The candidates of docs/privacy.md, built from the paper's operations and two more:
  scramble  one per-dataset keyed permutation of the t·t·C values inside every tile
            (a linear patch embedding absorbs it exactly);
  orient    a per-image keyed flip / quarter turn (D4) of every stored tile, read by the
            D4-invariant embedding of train/models/dihedral.py.
Rows: plain, shuffle, mix, mix-shuffle, shuffle-scramble, shuffle-orient,
shuffle-scramble-orient, mix-shuffle-orient. Every keyed draw comes from a throwaway
DatasetKey (keys.derive), as in a release.

Sections (--sections, comma-separated):
  accuracy    Fashion-MNIST at 32 px, patch 4, sub-patch 2; every row trained with the trainer's
              loop (train.engine.train_one_epoch / evaluate, timm AdamW + cosine warm-up as in
              train.engine.train) with the same model size, epochs, batch size and learning
              rate, plain included. "prototype_recognizability": the row's classifier, trained
              on ciphertexts of its own key as anyone can, names each encrypted test image's
              class and a public plain exemplar of that class is shown to the recognizer
              (benchmarks/research/recognize.py) — how much "recognizability" needs no reconstruction at all.
  photos      the five scikit-image photos at 224 px, patch 16, sub-patch 8: the jigsaw solver
              (the oriented solver for turned modes; for scrambled modes the statistics attack
              first, from the five stored images): neighbour accuracy, PSNR, SSIM.
  learned     Fashion-MNIST test images: the position-predicting ViT (with a turn head for
              turned modes) trained on Fashion-MNIST train, Hungarian placement, inversion of
              the mixing; neighbour accuracy, recognizability (chance 0.10) and
              re-identification (each reconstruction picks its own original out of its class,
              audit.metrics.reidentification; chance about 1/50). `plain` and `mix` rows too.
  statistics  how many stored images the statistics attack needs to read a scramble back.
  corpus      the photo attackers trained on a public photo corpus (--corpus folders, e.g. the
              Debian wallpaper packages) instead of 14 skimage photos, scored on the five
              skimage victims: neighbour accuracy, PSNR, SSIM and re-identification among the
              victims and the skimage public photos.
  gallery     Fashion-MNIST re-identification against public galleries of growing size
              (--galleries; distractors from the Fashion-MNIST train images the attacker did
              not train on, same class or any class): by pixel correlation of the learned
              attack's reconstruction, and by the histogram of stored pixel values (no attack
              at all: shuffles and turns keep it); membership AUC of the histogram matcher.
  views       --views K keyed random-resized crops per image (the job's path: plan.sample_key,
              the "crop/train" keyed stream, geometry.random_resized_crop) for mix and
              mix-shuffle: re-identification per view, by any of the K views, and by all K.

Prints one JSON object on stdout, progress on stderr. About an hour on two busy CPU cores:

    python benchmarks/hardened_modes.py [--sections accuracy,photos,learned,statistics]
        [--train 20000] [--epochs 3] [--dim 64] [--depth 4] [--heads 2] [--learned-steps 600]
        [--results encrypt/measured_risk.json]

--results merges each finished section, with this command line and the date, into the file
every encrypt job reads its printed risk from (encrypt/risk.py); nothing there is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from audit.attacks.inversion import deconvolve  # noqa: E402
from audit.attacks.jigsaw import reconstruct  # noqa: E402
from audit.attacks.learned import attack, public_corpus, public_photos, train_position_attacker  # noqa: E402
from audit.attacks.oriented import (draw, oriented_neighbour_accuracy, reconstruct_oriented,  # noqa: E402
                                    train_turned_attacker, turned_attack, upright_picture)
from research.recognize import recognizability, resize_batch, train_recognizer  # noqa: E402
from research.scramble import scramble_length, scramble_tiles  # noqa: E402
from research.statistics_attack import recover_scramble, scramble_accuracy, undo_scramble, upright  # noqa: E402
from audit.metrics import (gallery_reidentification, histogram_similarity, membership_auc,  # noqa: E402
                           neighbour_accuracy, pixel_similarity, psnr, reidentification, ssim)
from conftest import load_fashion_mnist, natural_photos  # noqa: E402
from encrypt import ciphers  # noqa: E402
from keys.derive import DatasetKey  # noqa: E402
from keys.keystream import KeyStream  # noqa: E402

ROWS = ("plain", "shuffle", "mix", "mix-shuffle", "shuffle-scramble", "shuffle-orient",
        "shuffle-scramble-orient", "mix-shuffle-orient")
SECTIONS = ("accuracy", "photos", "learned", "statistics")
EXTRA_SECTIONS = ("corpus", "gallery", "views")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def throwaway_key(name: str) -> DatasetKey:
    return DatasetKey(name, os.urandom(32))  # dropped when the benchmark ends


def scramble_of(key: DatasetKey, tile: int, channels: int) -> np.ndarray:
    """The per-dataset scramble: a permutation from the dataset key's own subkey stream."""
    return np.array(KeyStream(key.subkey("tile-scramble")).permutation(scramble_length(tile, channels)))


def encrypt_row(images: np.ndarray, row: str, key: DatasetKey, split: str, patch: int,
                sub_patch: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(stored images, perms, turns) of a batch N×H×W×C under one row's cipher.

    Order: mix → scramble → shuffle → turn, so mix-shuffle-orient is exactly the shipped mode.
    """
    if row == "plain":
        return images, None, None
    if row == "mix":
        return ciphers.mix(images, patch, sub_patch), None, None
    x = ciphers.mix(images, patch, sub_patch) if row.startswith("mix") else images
    tile = sub_patch if row.startswith("mix") else patch
    tiles = (x.shape[1] // tile) * (x.shape[2] // tile)
    if "scramble" in row:
        x = scramble_tiles(x, scramble_of(key, tile, x.shape[-1]), tile)
    # The encryptor's own derivation (encrypt.ciphers.draw_secrets, which the shipped modes'
    # `secrets` use too), so a shipped row here is the release's cipher, secrets included.
    secrets = [ciphers.draw_secrets(key, split, f"{split}-{i}", tiles, tiles if "orient" in row else 0)
               for i in range(len(images))]
    perms = np.stack([s.perm for s in secrets])
    x = ciphers.shuffle(x, perms, tile)
    turns = None
    if "orient" in row:
        turns = np.stack([s.turns for s in secrets])
        x = ciphers.orient_tiles(x, turns, tile)
    return x, perms, turns


# -- accuracy --------------------------------------------------------------------------------

def build_model(row: str, args) -> torch.nn.Module:
    import timm

    import train.models  # noqa: F401  (registers pevit_*, mivit_*, d4vit_*)

    size = dict(num_classes=10, in_chans=1, depth=args.depth, embed_dim=args.dim, num_heads=args.heads)
    if row == "plain":
        return timm.create_model("vit_tiny_patch16_224", patch_size=4, img_size=32, **size)
    if row == "mix":
        return timm.create_model("mivit_tiny_patch4_32", **size)
    family = "d4vit_tiny_patch16_224" if "orient" in row else "pevit_tiny_patch16_224"
    tile, side = (2, 16) if row.startswith("mix") else (4, 32)
    return timm.create_model(family, patch_size=tile, img_size=side, **size)


def train_row(row: str, train_x, train_y, val_x, val_y, args,
              model: torch.nn.Module | None = None) -> tuple[float, np.ndarray, float]:
    """(top-1, predicted val classes, seconds) for one row, with the trainer's loop
    (`model`: a research row's own, built under torch.manual_seed(0) like build_model's)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from train.engine import evaluate, train_one_epoch
    from train.losses import build_loss

    torch.manual_seed(0)
    model = build_model(row, args) if model is None else model
    criterion, _ = build_loss("ce", 10)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=args.lr, weight_decay=0.05)
    steps = math.ceil(len(train_x) / args.batch_size)
    warmup = min(1, args.epochs - 1)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=args.epochs - warmup,
                                       warmup_epochs=warmup, warmup_prefix=True, warmup_lr=1e-6,
                                       min_lr=1e-6, step_on_epochs=False, updates_per_epoch=steps)

    def transform(images: torch.Tensor, labels: torch.Tensor):
        return (images.float() / 255 - 0.5) / 0.5, labels

    tx = torch.from_numpy(np.ascontiguousarray(train_x)).permute(0, 3, 1, 2)
    vx = torch.from_numpy(np.ascontiguousarray(val_x)).permute(0, 3, 1, 2)
    ty, vy = torch.from_numpy(train_y), torch.from_numpy(val_y)
    started, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(tx), generator=torch.Generator().manual_seed(epoch))
        batches = ((tx[order[i:i + args.batch_size]], ty[order[i:i + args.batch_size]])
                   for i in range(0, len(tx), args.batch_size))
        step = train_one_epoch(model, criterion, batches, transform, optimizer, scheduler,
                               device=torch.device("cpu"), step=step, clip_grad=1.0)["step"]
    result = evaluate(model, criterion, ((vx[i:i + 500], vy[i:i + 500]) for i in range(0, len(vx), 500)),
                      transform, device=torch.device("cpu"))
    with torch.no_grad():
        model.eval()
        predicted = torch.cat([model(transform(vx[i:i + 500], None)[0]).argmax(-1)
                               for i in range(0, len(vx), 500)]).numpy()
    return result["top1"], predicted, time.perf_counter() - started


@torch.no_grad()
def exemplars(recognizer, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class, the public plain image the recognizer is surest of: what an attacker shows
    once a classifier of ciphertexts has named the class (no reconstruction needed)."""
    x = torch.from_numpy(np.ascontiguousarray(images[..., 0])).float().div(255.0)[:, None]
    probs = torch.softmax(recognizer.model(x), dim=-1).numpy()
    return np.stack([images[labels == c][np.argmax(probs[labels == c, c])] for c in range(10)])


def section_accuracy(data, recognizer, args) -> dict:
    train_x, train_y, val_x, val_y = data
    key = throwaway_key("bench-accuracy")
    prototypes = exemplars(recognizer, train_x[:5000], train_y[:5000])
    rows = {}
    for row in args.rows:
        a, _, _ = encrypt_row(train_x, row, key, "train", 4, 2)
        b, _, _ = encrypt_row(val_x, row, key, "val", 4, 2)
        top1, predicted, seconds = train_row(row, a, train_y, b, val_y, args)
        rows[row] = {"top1": round(top1, 4), "seconds": round(seconds, 1),
                     "prototype_recognizability": round(recognizability(recognizer, prototypes[predicted], val_y), 4),
                     "prototype_reidentification": round(reidentification(prototypes[predicted], val_x, val_y)[0], 4)}
        log(f"accuracy {row}: {rows[row]}")
    plain = rows.get("plain", {}).get("top1")
    for name, row in rows.items():
        if plain and name != "plain":
            row["ratio_to_plain"] = round(row["top1"] / plain, 4)
    return {"data": f"Fashion-MNIST {len(train_x)} train / {len(val_x)} test, 32 px, patch 4, sub-patch 2",
            "budget": {"epochs": args.epochs, "dim": args.dim, "depth": args.depth, "heads": args.heads,
                       "batch_size": args.batch_size, "lr": args.lr, "loop": "train.engine.train_one_epoch"},
            "rows": rows, "target_ratio": 0.95}


# -- photos ------------------------------------------------------------------------------------

def _colour_public(size: int) -> np.ndarray:
    from encrypt.geometry import resize_center_crop

    photos = [p for p in public_photos() if min(p.shape[:2]) >= size and np.ptp(p.astype(int)[..., 0] - p[..., 2]) > 0]
    return np.stack([resize_center_crop(p, size, size) for p in photos])


def section_photos(args) -> dict:
    patch, sub, side = 16, 8, 14
    victims = np.stack(list(natural_photos(224).values()))
    key = throwaway_key("bench-photos")
    public = _colour_public(224)
    out = {}
    if "mix" in args.rows:  # positions kept, nothing to place: invert the averaging
        started = time.perf_counter()
        pictures = deconvolve(ciphers.mix(victims, patch, sub), patch, sub)
        out["mix"] = {"attack": "deconvolution",
                      "psnr": round(float(np.mean([psnr(v, p) for v, p in zip(victims, pictures)])), 2),
                      "ssim": round(float(np.mean([ssim(v, p) for v, p in zip(victims, pictures)])), 4),
                      "seconds": round(time.perf_counter() - started, 1)}
        log(f"photos mix: {out['mix']}")
    for row in [r for r in args.rows if r not in ("plain", "mix")]:
        started = time.perf_counter()
        stored, perms, turns = encrypt_row(victims, row, key, "val", patch, sub)
        mixing, oriented = row.startswith("mix"), "orient" in row
        tile = sub if mixing else patch
        extra: dict = {}
        work = stored
        if "scramble" in row:
            truth = scramble_of(key, tile, 3)
            try:
                estimate = recover_scramble(stored, public, tile, oriented=oriented, restarts=4)
                extra["scramble_accuracy"] = round(scramble_accuracy(estimate.perm, truth, tile, 3, oriented), 4)
            except ValueError as exc:
                extra["scramble_accuracy"] = 0.0
                extra["note"] = str(exc)
            if extra["scramble_accuracy"] == 1.0:
                good = upright(estimate, truth, tile, 3)
                work = np.stack([undo_scramble(img, good, tile) for img in stored])
                oriented = False  # undo_scramble has already chosen every tile's turn
                extra["chain"] = "statistics attack, then the jigsaw solver"
            else:
                extra["chain"] = "scramble not recovered from these images: the solver sees scrambled tiles"
        scores = []
        for i, img in enumerate(work):
            if oriented:
                picture, placement, turn = reconstruct_oriented(img, tile)
                neighbour = oriented_neighbour_accuracy(placement, turn, perms[i], turns[i], side)
            else:
                picture, placement = reconstruct(img, tile, (side, side))
                neighbour = neighbour_accuracy(placement, perms[i], (side, side))
            plain_picture = deconvolve(picture[None], patch, sub)[0] if mixing else picture
            if "orient" in row:  # a picture turned as a whole hides nothing: score its best turn
                plain_picture = upright_picture(plain_picture, victims[i])
            value = psnr(victims[i], plain_picture)
            scores.append((neighbour, value if np.isfinite(value) else 99.0, ssim(victims[i], plain_picture)))
        mean = np.mean(scores, axis=0)
        attack_name = ("oriented jigsaw" if oriented else "jigsaw") + (" + deconvolution" if mixing else "")
        if "scramble" in row:
            attack_name = "statistics attack, then " + attack_name
        out[row] = {"attack": attack_name, "neighbour": round(float(mean[0]), 4),
                    "per_image_neighbour": [round(s[0], 4) for s in scores],
                    "psnr": round(float(mean[1]), 2), "ssim": round(float(mean[2]), 4), **extra,
                    "seconds": round(time.perf_counter() - started, 1)}
        log(f"photos {row}: {out[row]}")
    return {"data": "scikit-image astronaut, coffee, chelsea, rocket, immunohistochemistry at 224 px, "
                    "patch 16, sub-patch 8, lossless", "rows": out, "target_neighbour": 0.05}


# -- learned -----------------------------------------------------------------------------------

def _learned_reconstruction(row: str, train_x, victims, key, args) -> tuple[dict, np.ndarray]:
    """The learned attack on one shuffled row: (figures, reconstructions as the attack drew them)."""
    stored, perms, turns = encrypt_row(victims, row, key, "val", 4, 2)
    mixing = row.startswith("mix")
    tile, mixed_from = (2, 4) if mixing else (4, None)
    if "orient" in row:
        model = train_turned_attacker(train_x, tile, 8, args.learned_steps, mixed_from_patch=mixed_from)
        placements, turn = turned_attack(model, stored)
        pictures = np.stack([draw(s, p, t, tile) for s, p, t in zip(stored, placements, turn)])
        neighbour = np.mean([oriented_neighbour_accuracy(p, t, q, k, 8)
                             for p, t, q, k in zip(placements, turn, perms, turns)])
    else:
        model = train_position_attacker(train_x, tile, (8, 8), args.learned_steps, mixed_from_patch=mixed_from)
        placements = attack(model, stored, tile, (8, 8))
        pictures = ciphers.shuffle(stored, placements, tile)
        neighbour = np.mean([neighbour_accuracy(p, q, (8, 8)) for p, q in zip(placements, perms)])
    recon = deconvolve(pictures, 4, 2) if mixing else pictures
    return {"neighbour": round(float(neighbour), 4),
            "public_tile_accuracy": round(model.train_log.tile_accuracy, 4)}, recon


def section_learned(data, recognizer, args) -> dict:
    train_x, _, val_x, val_y = data
    victims, labels = val_x[:args.victims], val_y[:args.victims]
    key = throwaway_key("bench-learned")
    out = {}
    for row in ("plain", "shuffle", "mix", "mix-shuffle", "shuffle-orient", "mix-shuffle-orient"):
        if row not in args.rows:
            continue
        started = time.perf_counter()
        if row == "plain":  # the anchor: the originals themselves
            recon = victims
            out[row] = {}
        elif row == "mix":  # nothing is placed: invert the averaging
            stored, _, _ = encrypt_row(victims, row, key, "val", 4, 2)
            recon = deconvolve(stored, 4, 2)
            out[row] = {}
        else:
            out[row], recon = _learned_reconstruction(row, train_x, victims, key, args)
        out[row]["attack"] = {"plain": "none needed", "mix": "deconvolution"}.get(
            row, ("learned attacker with a turn head" if "orient" in row else "learned position attacker")
            + (" + deconvolution" if row.startswith("mix") else ""))
        turned = "orient" in row  # the picture may be turned as a whole: that hides nothing
        rate, chance = reidentification(recon, victims, labels, any_turn=turned)
        if turned:  # shown to the recognizer upright (chosen against the original: an upper bound)
            recon = np.stack([upright_picture(r, v) for r, v in zip(recon, victims)])
        out[row].update({"reidentification": round(rate, 4),
                         "recognizability": round(recognizability(recognizer, recon, labels), 4),
                         "reidentification_chance": round(chance, 4),
                         "seconds": round(time.perf_counter() - started, 1)})
        log(f"learned {row}: {out[row]}")
    return {"data": f"{len(victims)} Fashion-MNIST test images, attacker trained {args.learned_steps} steps "
                    "on Fashion-MNIST train", "rows": out, "chance": 0.1, "target": 0.15,
            "reidentification": "own original picked out of its class by pixel correlation (audit.metrics)"}


# -- statistics --------------------------------------------------------------------------------

def section_statistics(data, args) -> dict:
    train_x, _, val_x, _ = data
    key = throwaway_key("bench-statistics")
    out: dict = {"fashion-mnist": {}, "photos": {}}
    public = train_x[:500]
    for row in ("shuffle-scramble", "shuffle-scramble-orient"):
        oriented = "orient" in row
        stored, _, _ = encrypt_row(val_x[:50], row, key, "val", 4, 2)
        truth = scramble_of(key, 4, 1)
        found = {}
        for count in (1, 2, 5, 10, 20, 50):
            estimate = recover_scramble(stored[:count], public, 4, oriented=oriented)
            found[count] = round(scramble_accuracy(estimate.perm, truth, 4, 1, oriented), 4)
        out["fashion-mnist"][row] = {"tile": 4, "values": 16, "accuracy_by_images": found}
        log(f"statistics fashion-mnist {row}: {found}")
    victims = np.stack(list(natural_photos(224).values()))
    colour = _colour_public(224)
    for row, tile, counts in (("shuffle-scramble", 16, (1, 2, 3)), ("shuffle-scramble-orient", 8, (2, 5))):
        oriented = "orient" in row
        stored, _, _ = encrypt_row(victims, row, key, "val", tile, tile // 2)
        truth = scramble_of(key, tile, 3)
        found = {}
        for count in counts:
            started = time.perf_counter()
            estimate = recover_scramble(stored[:count], colour, tile, oriented=oriented, restarts=4)
            found[count] = round(scramble_accuracy(estimate.perm, truth, tile, 3, oriented), 4)
            log(f"statistics photos {row} tile {tile}, {count} images: {found[count]} "
                f"({time.perf_counter() - started:.0f} s)")
        out["photos"][f"{row}-tile{tile}"] = {"tile": tile, "values": tile * tile * 3, "accuracy_by_images": found}
    return out


# -- corpus: photo attackers trained on a public photo corpus ------------------------------

def section_corpus(args) -> dict:
    patch, sub, side = 16, 8, 14
    victims = np.stack(list(natural_photos(224).values()))
    from encrypt.geometry import resize_center_crop

    # The gallery the photos are re-identified in: the victims and the skimage public photos
    # (no longer trained on here), so chance is 1/19.
    distractors = [resize_center_crop(p, 224, 224) for p in public_photos() if min(p.shape[:2]) >= 224]
    gallery = np.concatenate([victims, np.stack(distractors)])
    t0 = time.perf_counter()
    public = public_corpus(args.corpus.split(","), max_side=args.corpus_side)
    corpus = {"folders": args.corpus, "photos": len(public), "load_seconds": round(time.perf_counter() - t0, 1)}
    log(f"corpus: {corpus}")
    key = throwaway_key("bench-corpus")
    out: dict = {}

    def scores(recon: np.ndarray, turned: bool) -> dict:
        if turned:
            recon = np.stack([upright_picture(r, v) for r, v in zip(recon, victims)])
        sim = pixel_similarity(recon, gallery, any_turn=turned)
        values = [psnr(v, r) for v, r in zip(victims, recon)]
        return {"psnr": round(float(np.mean([v if np.isfinite(v) else 99.0 for v in values])), 2),
                "ssim": round(float(np.mean([ssim(v, r) for v, r in zip(victims, recon)])), 4),
                "reidentification": round(float(np.mean(np.argmax(sim, axis=1) == np.arange(len(victims)))), 4),
                "reidentification_chance": round(1 / len(gallery), 4)}

    for row in args.rows:
        started = time.perf_counter()
        if row == "plain":
            out[row] = {"attack": "none needed", **scores(victims, False)}
        elif row == "mix":
            out[row] = {"attack": "deconvolution",
                        **scores(deconvolve(ciphers.mix(victims, patch, sub), patch, sub), False)}
        elif row in ("shuffle", "mix-shuffle"):
            mixing = row == "mix-shuffle"
            tile = sub if mixing else patch
            stored, perms, _ = encrypt_row(victims, row, key, "val", patch, sub)
            model = train_position_attacker(public, tile, (side, side), args.corpus_steps, flip=True,
                                             batch_size=args.corpus_batch,
                                             mixed_from_patch=patch if mixing else None)
            for name, refine in (("learned", False), ("learned + solver", True)):
                placements = attack(model, stored, tile, (side, side), refine=refine)
                pictures = ciphers.shuffle(stored, placements, tile)
                recon = deconvolve(pictures, patch, sub) if mixing else pictures
                out[f"{row} ({name})"] = {
                    "attack": name + (" + deconvolution" if mixing else ""),
                    "neighbour": round(float(np.mean([neighbour_accuracy(p, q, (side, side))
                                                      for p, q in zip(placements, perms)])), 4),
                    "public_tile_accuracy": round(model.train_log.tile_accuracy, 4), **scores(recon, False),
                    "seconds": round(time.perf_counter() - started, 1)}  # training included
                log(f"corpus {row} ({name}): {out[f'{row} ({name})']}")
            continue
        elif "orient" in row and row.startswith("mix"):
            stored, perms, turns = encrypt_row(victims, row, key, "val", patch, sub)
            model = train_turned_attacker(public, sub, side, args.corpus_steps, mixed_from_patch=patch, flip=True,
                                          batch_size=args.corpus_batch)
            placements, turn = turned_attack(model, stored)
            pictures = np.stack([draw(s_, p, t, sub) for s_, p, t in zip(stored, placements, turn)])
            out[row] = {"attack": "learned attacker with a turn head + deconvolution",
                        "neighbour": round(float(np.mean([oriented_neighbour_accuracy(p, t, q, k, side) for p, t, q, k
                                                          in zip(placements, turn, perms, turns)])), 4),
                        "public_tile_accuracy": round(model.train_log.tile_accuracy, 4),
                        **scores(deconvolve(pictures, patch, sub), True)}
        else:
            continue
        out[row]["seconds"] = round(time.perf_counter() - started, 1)
        log(f"corpus {row}: {out[row]}")
    return {"data": "scikit-image astronaut, coffee, chelsea, rocket, immunohistochemistry at 224 px, patch 16, "
                    f"sub-patch 8; re-identified among them and {len(distractors)} skimage public photos",
            "corpus": corpus, "steps": args.corpus_steps, "batch_size": args.corpus_batch, "rows": out}


# -- gallery: re-identification against public galleries, by pixels and by histogram -------

def _public_part(images: np.ndarray, row: str) -> np.ndarray:
    """What anyone can compute of a row's cipher without the key: the mixing."""
    return ciphers.mix(images, 4, 2) if row.startswith("mix") else images


def section_gallery(data, args) -> dict:
    train_x, _, val_x, val_y = data
    victims, labels = val_x[:args.victims], val_y[:args.victims]
    full_x, full_y = load_fashion_mnist("train")
    pool_x = resize_batch(full_x[len(train_x):], 32)[..., None]  # never seen by the attacker
    pool_y = full_y[len(train_x):]
    outsiders = pool_x[-args.victims:]  # candidates not in the release, for membership
    pool_x, pool_y = pool_x[:-args.victims], pool_y[:-args.victims]
    key = throwaway_key("bench-gallery")
    sizes = [int(g) for g in args.galleries.split(",")]
    out = {}
    for row in args.rows:
        if row not in ("plain", "shuffle", "mix", "mix-shuffle", "mix-shuffle-orient"):
            continue
        started = time.perf_counter()
        stored, _, _ = encrypt_row(victims, row, key, "val", 4, 2)
        if row == "plain":
            recon, figures = victims, {}
        elif row == "mix":
            recon, figures = deconvolve(stored, 4, 2), {}
        else:
            figures, recon = _learned_reconstruction(row, train_x, victims, key, args)
        turned = "orient" in row
        own = np.diag(pixel_similarity(recon, victims, any_turn=turned))
        pool = pixel_similarity(recon, pool_x, any_turn=turned)
        mine = _public_part(victims, row)
        hist_own = np.diag(histogram_similarity(stored, mine))
        hist_pool = histogram_similarity(stored, _public_part(pool_x, row))
        pixels, hist = {}, {}
        for same in (True, False):
            scope = "same class" if same else "any class"
            pixels[scope] = {g: round(gallery_reidentification(own, pool, labels, pool_y, g, same_class=same)[0], 4)
                             for g in sizes}
            hist[scope] = {g: round(gallery_reidentification(hist_own, hist_pool, labels, pool_y, g, same_class=same)[0], 4)
                           for g in sizes}
        # Membership: does a candidate's histogram match any stored image of the release?
        members = histogram_similarity(mine, stored).max(axis=1)
        strangers = histogram_similarity(_public_part(outsiders, row), stored).max(axis=1)
        out[row] = {**figures,
                    "reidentification_class_of_test": round(reidentification(recon, victims, labels, any_turn=turned)[0], 4),
                    "pixels": pixels, "histogram": hist,
                    "membership_auc": round(membership_auc(members, strangers), 4),
                    # the same multiset of pixel values (integer levels: any difference is ≥ 1/D)
                    "members_exact": round(float(np.mean(members > -0.5 / stored[0].size)), 4),
                    "outsiders_exact": round(float(np.mean(strangers > -0.5 / stored[0].size)), 4),
                    "seconds": round(time.perf_counter() - started, 1)}
        log(f"gallery {row}: {out[row]}")
    return {"data": f"{len(victims)} Fashion-MNIST test images at 32 px; distractors from {len(pool_x)} "
                    f"Fashion-MNIST train images the attacker did not train on; {len(outsiders)} outsiders",
            "galleries": sizes, "chance": {g: round(1 / g, 4) for g in sizes}, "rows": out}


# -- views: K keyed crops of one image in the release --------------------------------------

class _PublicRandom:
    """geometry's RandomSource from an ordinary numpy RNG: the attacker's own crops."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def uniform(self) -> float:
        return float(self.rng.random())

    def randbelow(self, n: int) -> int:
        return int(self.rng.integers(n))


def _crop_bank(images: np.ndarray, size: int) -> np.ndarray:
    """N×B×size×size: each candidate under B crop boxes and flips an attacker tries (the keyed
    crop is unknown to it): the centre crop of a job with one view, then square boxes of
    area 1, 0.75, 0.5, 0.3 and 0.15 of the image on a 3×3 grid of places."""
    from PIL import Image

    h, w = images.shape[1:3]
    boxes = [((w - w * 7 / 8) / 2, (h - h * 7 / 8) / 2, (w + w * 7 / 8) / 2, (h + h * 7 / 8) / 2)]
    for area in (1.0, 0.75, 0.5, 0.3, 0.15):
        side_ = math.sqrt(area) * min(h, w)
        for fy in ((0.5,) if area == 1.0 else (0.0, 0.5, 1.0)):
            for fx in ((0.5,) if area == 1.0 else (0.0, 0.5, 1.0)):
                left, top = fx * (w - side_), fy * (h - side_)
                boxes.append((left, top, left + side_, top + side_))
    out = []
    for img in images:
        pil = Image.fromarray(img[..., 0])
        views = [np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, box=b)) for b in boxes]
        out.append(np.stack(views + [v[:, ::-1] for v in views]))
    return np.stack(out)[..., None]


def section_views(args) -> dict:
    from encrypt.geometry import random_resized_crop, resize_center_crop
    from encrypt.plan import sample_key

    raw_val, labels = load_fashion_mnist("test", args.victims)
    raw_train, _ = load_fashion_mnist("train", args.train)
    raw_val, raw_train = raw_val[..., None], raw_train[..., None]
    key = throwaway_key("bench-views")
    counts = [int(k) for k in args.views.split(",")]
    # The attacker's public training set: the same pipeline (centre crops and random crops)
    # on public images, with its own randomness.
    rng = _PublicRandom(np.random.default_rng(0))
    public = np.stack([resize_center_crop(x, 37, 32) if i % 2 else random_resized_crop(x, 32, rng)
                       for i, x in enumerate(raw_train)])
    bank = _crop_bank(raw_val, 32)
    b = bank.shape[1]
    same_class = labels[:, None] == labels[None, :]
    chance = float(np.mean(1 / same_class.sum(axis=1)))
    out: dict = {}
    for row in args.rows:
        if row not in ("plain", "mix", "mix-shuffle"):
            continue
        model = None
        if row == "mix-shuffle":
            model = train_position_attacker(public, 2, (8, 8), args.learned_steps, mixed_from_patch=4)
        out[row] = {}
        for k in counts:
            started = time.perf_counter()
            views, secrets_of = [], []
            for i, img in enumerate(raw_val):
                rel = f"img{i}.png"
                if k == 1:  # one view: the job's centre crop (--resize 8/7 of --size)
                    views.append(resize_center_crop(img, 37, 32))
                    secrets_of.append(sample_key(key, rel, -1, 1))
                    continue
                for v in range(k):
                    sid = sample_key(key, rel, v, k)
                    views.append(random_resized_crop(img, 32, key.stream("crop/train", sid)))
                    secrets_of.append(sid)
            views = np.stack(views)
            if row == "plain":
                recon = views
            elif row == "mix":
                recon = deconvolve(ciphers.mix(views, 4, 2), 4, 2)
            else:
                secrets = [ciphers.draw_secrets(key, "train", sid, 64, 0) for sid in secrets_of]
                stored = ciphers.shuffle(ciphers.mix(views, 4, 2), np.stack([s.perm for s in secrets]), 2)
                placements = attack(model, stored, 2, (8, 8))
                recon = deconvolve(ciphers.shuffle(stored, placements, 2), 4, 2)
            # Each view against every candidate, at the candidate's best crop box.
            sim = pixel_similarity(recon, bank.reshape(-1, 32, 32, 1)).reshape(len(recon), len(raw_val), b).max(axis=2)
            sim = sim.reshape(len(raw_val), k, len(raw_val))
            sim = np.where(same_class[:, None, :], sim, -np.inf)
            own = np.arange(len(raw_val))
            per_view = np.argmax(sim, axis=2) == own[:, None]
            combined = np.argmax(sim.sum(axis=1), axis=1) == own
            out[row][k] = {"per_view": round(float(per_view.mean()), 4),
                           "any_view": round(float(per_view.any(axis=1).mean()), 4),
                           "any_view_chance": round(1 - (1 - chance) ** k, 4),
                           "all_views_combined": round(float(combined.mean()), 4),
                           "seconds": round(time.perf_counter() - started, 1)}
            log(f"views {row} K={k}: {out[row][k]}")
    return {"data": f"{len(raw_val)} Fashion-MNIST test images (28 px sources) as 32 px views, patch 4, "
                    "sub-patch 2; K=1 is the job's centre crop, K>1 keyed random-resized crops",
            "candidates": "the images' originals of the same class, each under 62 crop boxes and flips",
            "chance": round(chance, 4), "rows": out}


def add_budget_arguments(parser: argparse.ArgumentParser, *, train: int, learned_steps: int) -> None:
    """The data, model and attack budget options every privacy harness shares (same names,
    same meaning), so two harnesses' figures are compared on stated budgets."""
    parser.add_argument("--train", type=int, default=train, help="Fashion-MNIST train images")
    parser.add_argument("--val", type=int, default=2000, help="Fashion-MNIST test images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--learned-steps", type=int, default=learned_steps)
    parser.add_argument("--victims", type=int, default=500, help="Fashion-MNIST images the learned attack sees")
    parser.add_argument("--threads", type=int, default=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    add_budget_arguments(parser, train=20000, learned_steps=600)
    parser.add_argument("--corpus", default="/usr/share/backgrounds,/usr/share/wallpapers",
                        help="comma-separated folders of public photos (corpus section)")
    parser.add_argument("--corpus-steps", type=int, default=600)
    parser.add_argument("--corpus-batch", type=int, default=32)
    parser.add_argument("--corpus-side", type=int, default=320,
                        help="corpus photos shrunk to this shorter side (crops of 224 px cover 70-100 %%)")
    parser.add_argument("--galleries", default="10,50,200,1000", help="gallery sizes (gallery section)")
    parser.add_argument("--views", default="1,2,4", help="views per image (views section)")
    parser.add_argument("--results", type=Path, default=None,
                        help="merge each section into this file (encrypt/measured_risk.json is the one jobs read)")
    args = parser.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    sections = [s for s in args.sections.split(",") if s]
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    data = recognizer = None
    if {"accuracy", "learned", "statistics", "gallery"} & set(sections):
        train_x, train_y = load_fashion_mnist("train", args.train)
        val_x, val_y = load_fashion_mnist("test", args.val)
        data = (resize_batch(train_x, 32)[..., None], train_y, resize_batch(val_x, 32)[..., None], val_y)
    if {"accuracy", "learned"} & set(sections):
        t0 = time.perf_counter()
        recognizer = train_recognizer(data[0], data[1], epochs=2)
        plain = recognizability(recognizer, data[2], data[3])
        report["recognizer"] = {"plain_top1": round(plain, 4), "seconds": round(time.perf_counter() - t0, 1)}
        log(f"recognizer: plain test top-1 {plain:.3f}")

    def record(name: str) -> None:  # each section lands in --results as soon as it is done
        if args.results:
            from results import merge

            sizes = ({"photos": 5, "side": 224} if name == "photos" else
                     {"fashion_mnist_train": int(len(data[0])), "fashion_mnist_test": int(len(data[2]))})
            if name in ("learned", "gallery"):
                sizes["victims"] = args.victims
            extra = {"recognizer": report["recognizer"]} if name in ("accuracy", "learned") else {}
            merge(args.results, f"hardened_modes/{name}", report[name], threads=args.threads, sizes=sizes, **extra)

    if "accuracy" in sections:
        report["accuracy"] = section_accuracy(data, recognizer, args)
        record("accuracy")
    if "photos" in sections:
        report["photos"] = section_photos(args)
        record("photos")
    if "learned" in sections:
        report["learned"] = section_learned(data, recognizer, args)
        record("learned")
    if "statistics" in sections:
        report["statistics"] = section_statistics(data, args)
        record("statistics")
    # corpus and views are measured here, not written to --results (no risk line reads them);
    # gallery is: the risk line states the membership exposure from it.
    if "corpus" in sections:
        report["corpus"] = section_corpus(args)
    if "gallery" in sections:
        report["gallery"] = section_gallery(data, args)
        record("gallery")
    if "views" in sections:
        report["views"] = section_views(args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
