"""Public pretraining: does a run on public images under a throwaway key help the owner's release?

Why: the recipe in docs/ml-engineer.md §8 (encrypt a public data set with a throwaway key of
the same mode and geometry, train on it, fine-tune on the owner's release with
`--init-from RUN/best.pt`) needs no plain private data; this measures what it buys. The
Fashion-MNIST training set is split into two disjoint class-balanced halves (per class, the
k-th image by index goes to the public half when k is even, to the private half when odd;
`--public` / `--private` take the first N/10 of each class's half), the t10k set is the
validation split of both. For each mode, the public half is encrypted under a throwaway
keystore (random passphrase, deleted once the release is written) and the private half under
a separate owner keystore, both through the real job (`encrypt.main.encrypt_dataset`,
in-process; 32 px, patch 4, sub-patch 2 for the mixing modes, PNG, 1 channel). Per mode and
seed, two rows through the real engine (`train.engine.train`), the same fine-tune budget:

- scratch: the private release from random initial weights, `--epochs` epochs;
- pretrained: `--pretrain-epochs` on the public release, then `--epochs` on the private
  release with `init_from=<pretrain run>/best.pt`;
- with `--long-scratch-epochs N`, a control: the private release from scratch for N epochs,
  as many steps as pretraining plus fine-tune (N = public/private × pretrain epochs + epochs),
  so the gain is not just more training.

Prints one JSON object (per row: best and last top-1 per seed, mean, min, max, std, seconds;
per mode: the gain from pretraining and the ratio to plain with the same pretraining, the
issue's goals: shuffle ≥ 0.98, mix-shuffle ≥ 0.97 of plain); progress goes to stderr.

    python benchmarks/pretrain_transfer.py --keep ~/pv-pretrain --public 20000 --private 10000 \\
        --val-limit 5000 --pretrain-epochs 3 --epochs 3 --seeds 0,1,2

That run (the figures in docs/ml-engineer.md §8) took about 38 CPU minutes on one core.

`--keep` keeps releases and finished runs (each run folder gets `result.json`): a second
process with the same options reuses them, so modes can run as separate processes, one
after the other.
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

GOALS = {"shuffle": 0.98, "mix-shuffle": 0.97, "mix": 0.97, "mix-shuffle-orient": 0.97}
OWNER_PASSPHRASE = b"benchmark owner passphrase, a data owner's stand-in"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def split_halves(labels: np.ndarray, public: int, private: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the public and the private half: disjoint, class-balanced, fixed (no keys, no RNG).

    Per class, its images in index order alternate public, private, public, ...; each half
    then keeps the first n/10 of every class (the remainder to the first classes).
    """
    classes = np.unique(labels)
    halves = []
    for which, total in ((0, public), (1, private)):
        per, extra = divmod(total, len(classes))
        picked = []
        for i, c in enumerate(classes):
            mine = np.flatnonzero(labels == c)[which::2]
            want = per + (1 if i < extra else 0)
            if want > len(mine):
                raise SystemExit(f"class {c}: {len(mine)} images in its half, {want} wanted")
            picked.append(mine[:want])
        halves.append(np.sort(np.concatenate(picked)))
    assert not set(halves[0]) & set(halves[1])
    return halves[0], halves[1]


def write_imagefolder(root: Path, images: np.ndarray, labels: np.ndarray, index: np.ndarray,
                      val: tuple[np.ndarray, np.ndarray]) -> None:
    from conftest import FMNIST_CLASSES

    for split, (imgs, labs, ids) in (("train", (images[index], labels[index], index)),
                                     ("val", (val[0], val[1], np.arange(len(val[1]))))):
        for cls in FMNIST_CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for img, lab, i in zip(imgs, labs, ids):
            Image.fromarray(img).save(root / split / FMNIST_CLASSES[lab] / f"{i:05d}.png", compress_level=1)


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--public", type=int, default=20000, help="public-half training images (≤ 30000)")
    parser.add_argument("--private", type=int, default=10000, help="private-half training images (≤ 30000)")
    parser.add_argument("--val-limit", type=int, default=5000, help="first N of the t10k set")
    parser.add_argument("--modes", default="none,shuffle,mix-shuffle", help="comma-separated; none: plain")
    parser.add_argument("--seeds", default="0,1", help="comma-separated run seeds")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune and scratch epochs (the same budget)")
    parser.add_argument("--long-scratch-epochs", type=int, default=0,
                        help="also train the private release from scratch for this many epochs: the control "
                             "with as many steps as pretraining + fine-tune (public/private x pretrain epochs "
                             "+ epochs); 0: skip")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--keep", type=Path,
                        help="keep releases and runs here instead of a temp folder; what is already "
                             "there (same options) is reused")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per run")
    args = parser.parse_args()
    modes = args.modes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    torch.set_num_threads(args.threads)

    from conftest import load_fashion_mnist
    from encrypt.main import encrypt_dataset
    from encrypt.plan import JobSettings
    from encrypt.sources import list_imagefolder
    from keys.keystore import create_keystore
    from shards.modes import MODES
    from train.engine import TrainConfig, train

    work = args.keep or Path(tempfile.mkdtemp(prefix="pv-pretrain-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        sizes = f"pub{args.public}-priv{args.private}-val{args.val_limit}"
        sources = {"public": work / f"fmnist-public-{sizes}", "private": work / f"fmnist-private-{sizes}"}
        if not all((p / "val").exists() for p in sources.values()):
            images, labels = load_fashion_mnist("train")
            val = load_fashion_mnist("test", limit=args.val_limit)
            public, private = split_halves(labels, args.public, args.private)
            for half, index in (("public", public), ("private", private)):
                shutil.rmtree(sources[half], ignore_errors=True)
                tmp = sources[half].with_name(sources[half].name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                write_imagefolder(tmp, images, labels, index, val)
                tmp.rename(sources[half])
        owner = None
        releases: dict[tuple[str, str], Path] = {}
        for mode in modes:
            settings = JobSettings(mode=mode, patch=4, sub_patch=2 if MODES[mode].mixes else None,
                                   size=32, resize=32, views=1, format="png", quality=95, channels=1,
                                   shard_samples=2000, min_side=8)
            for half in ("public", "private"):
                out = work / f"release-{mode}-{half}-{sizes}"
                releases[mode, half] = out
                if (out / "manifest.json").exists():
                    continue
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                if half == "public":  # a throwaway key: random passphrase, keystore deleted after
                    folder = Path(tempfile.mkdtemp(prefix="pv-throwaway-"))
                    try:
                        store = create_keystore(folder / "keystore", secrets.token_hex(24).encode())
                        encrypt_dataset(list_imagefolder(sources[half]), out, store, f"fmnist-public-{mode}",
                                        settings, progress=False)
                    finally:
                        shutil.rmtree(folder, ignore_errors=True)
                else:
                    owner = owner or create_keystore(work / f"ks-owner-{time.time_ns()}", OWNER_PASSPHRASE)
                    encrypt_dataset(list_imagefolder(sources[half]), out, owner, f"fmnist-private-{mode}",
                                    settings, progress=False)
                log(f"release {mode} {half}: {time.perf_counter() - t0:.0f} s")

        def run(name: str, shards: Path, epochs: int, seed: int, init_from: str | None = None,
                eval_every: int = 1) -> dict:
            out = work / name
            done = out / "result.json"
            if done.exists():
                result = json.loads(done.read_text())
                log(f"{name}: reused {json.dumps(result)}")
                return result
            shutil.rmtree(out, ignore_errors=True)
            config = TrainConfig(shards=str(shards), out=str(out), init_from=init_from,
                                 model_kwargs={"depth": args.depth, "embed_dim": args.dim,
                                               "num_heads": args.heads},
                                 epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                 eval_every=eval_every, workers=args.workers, progress=False,
                                 log_every=10**9)
            t0 = time.perf_counter()
            summary = train(config)
            result = {"best_top1": round(summary["best_top1"], 4), "last_top1": round(summary["val"]["top1"], 4),
                      "seconds": round(time.perf_counter() - t0, 1)}
            done.write_text(json.dumps(result) + "\n")
            log(f"{name}: {json.dumps(result)}")
            return result

        budget = f"e{args.epochs}-p{args.pretrain_epochs}-d{args.depth}-w{args.dim}-h{args.heads}-" \
                 f"b{args.batch_size}-lr{args.lr:g}-{sizes}"
        raw: dict[str, dict[str, dict[int, dict]]] = {}
        for mode in modes:
            raw[mode] = {"scratch": {}, "pretrain": {}, "pretrained": {}, "scratch_long": {}}
            for seed in seeds:
                raw[mode]["scratch"][seed] = run(f"run-{mode}-scratch-s{seed}-{budget}", releases[mode, "private"],
                                                 args.epochs, seed)
                pre_name = f"run-{mode}-pretrain-s{seed}-{budget}"
                # the public run is evaluated once, after its last epoch: best.pt is then its end point
                raw[mode]["pretrain"][seed] = run(pre_name, releases[mode, "public"], args.pretrain_epochs, seed,
                                                  eval_every=args.pretrain_epochs)
                raw[mode]["pretrained"][seed] = run(f"run-{mode}-finetune-s{seed}-{budget}",
                                                    releases[mode, "private"], args.epochs, seed,
                                                    init_from=str(work / pre_name / "best.pt"))
                if args.long_scratch_epochs:
                    raw[mode]["scratch_long"][seed] = run(
                        f"run-{mode}-scratch{args.long_scratch_epochs}-s{seed}-{budget}", releases[mode, "private"],
                        args.long_scratch_epochs, seed)

        rows: dict[str, dict] = {}
        for mode in modes:
            row: dict = {}
            for kind in ("scratch", "pretrain", "pretrained", "scratch_long"):
                per = raw[mode][kind]
                if not per:
                    continue
                best = [per[s]["best_top1"] for s in seeds]
                row[kind] = {"best_top1": best, "last_top1": [per[s]["last_top1"] for s in seeds],
                             "seconds": [per[s]["seconds"] for s in seeds], **spread(best)}
            row["gain_from_pretraining"] = round(row["pretrained"]["mean"] - row["scratch"]["mean"], 4)
            if "scratch_long" in row:  # the same number of steps, all on the private release
                row["gain_over_equal_steps"] = round(row["pretrained"]["mean"] - row["scratch_long"]["mean"], 4)
            rows[mode] = row
        plain = next((m for m in modes if not MODES[m].encrypted), None)  # the baseline row
        if plain:
            for mode, row in rows.items():
                if mode == plain:
                    continue
                for kind in [k for k in ("scratch", "pretrained", "scratch_long") if k in row]:
                    row[f"{kind}_ratio_to_plain"] = round(row[kind]["mean"] / rows[plain][kind]["mean"], 4)
                if mode in GOALS:
                    row["goal"] = GOALS[mode]
                    row["goal_met_pretrained"] = row["pretrained_ratio_to_plain"] >= GOALS[mode]
                    row["goal_met_scratch"] = row["scratch_ratio_to_plain"] >= GOALS[mode]
        print(json.dumps({
            "data": f"Fashion-MNIST train split by class into a public half ({args.public}) and a private half "
                    f"({args.private}); val: first {args.val_limit} of t10k; 32 px, patch 4, sub-patch 2 "
                    "for mixing modes, PNG, 1 channel; public under a throwaway key, private under the owner's",
            "budget": {"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs, "depth": args.depth,
                       "dim": args.dim, "heads": args.heads, "batch_size": args.batch_size, "lr": args.lr,
                       "threads": args.threads, "workers": args.workers},
            "seeds": seeds,
            "metric": "best_top1 on val (the mean over seeds is what ratios and gains use)",
            "rows": rows,
            "goals": {m: GOALS[m] for m in modes if m in GOALS},
            "seconds_total": round(time.perf_counter() - started, 1),
        }, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
