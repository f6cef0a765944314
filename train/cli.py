"""train-encrypted: the ML engineer's command. Thin click wrapper over train.engine.

Errors in the input (release, run folder, checkpoint, settings) are one line on stderr,
``error: <file>: <reason>``, exit status 2, nothing written. A run that diverges (a loss
that is not finite) exits 1. Under ``torchrun`` every process runs the same command.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from shards.console import command_group
from train.errors import TrainError

LOSSES = ("ce", "anchor-euclidean", "anchor-cosine")
ANCHORS = ("simplex", "orthogonal")


def _setup_logging() -> None:
    """Progress notes on stderr from the process that writes the run (rank 0) only."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)


def _parse_model_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON when they parse (2, 0.1, true, [1,2]) else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise TrainError(f"--model-arg {pair!r}", "expected KEY=VALUE, e.g. depth=6")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@command_group("train-encrypted")
def cli() -> None:
    """Train vision transformers on encrypted shards; never sees a key or a plain image.

    \b
    Example:
      train-encrypted classify --shards ~/release --out runs/vit --epochs 30
      train-encrypted evaluate --shards ~/release --checkpoint runs/vit/best.pt
      torchrun --nproc_per_node 8 $(which train-encrypted) classify --shards ~/release --out runs/ddp
    """


# (option name, TrainConfig field): options a resumed run takes from last.pt unless given.
_CONFIG_OPTIONS = {
    "model": "model", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "min_lr": "min_lr",
    "clip_grad": "clip_grad", "loss": "loss", "anchors": "anchors", "anchor_scale": "anchor_scale",
    "label_smoothing": "label_smoothing", "hflip": "hflip", "color_jitter": "color_jitter",
    "mixup": "mixup", "cutmix": "cutmix", "token_drop": "token_drop", "amp": "amp",
    "workers": "workers", "shuffle_buffer": "shuffle_buffer", "seed": "seed",
    "train_split": "train_split", "val_split": "val_split", "verify_digests": "verify_digests",
    "log_every": "log_every", "checkpoint_every": "checkpoint_every", "model_args": "model_kwargs",
}


@cli.command()
@click.option("--shards", required=True, type=click.Path(path_type=Path), metavar="OUT",
              help="Release folder (manifest.json + shards) from encrypt-dataset.")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="Run folder: metrics.jsonl, last.pt, best.pt, config.json.")
@click.option("--model", default="auto", show_default=True,
              help="auto / tiny / small / base: the model that fits the release's cipher; "
                   "or any timm model name.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Extra timm.create_model keyword, repeatable: --model-arg depth=6 --model-arg drop_path_rate=0.1.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=128, show_default=True, help="Per process.")
@click.option("--lr", default=5e-4, show_default=True, help="Peak AdamW learning rate.")
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--warmup-epochs", default=1, show_default=True, help="Linear warm-up before the cosine decay.")
@click.option("--min-lr", default=1e-6, show_default=True)
@click.option("--clip-grad", default=1.0, show_default=True, help="Gradient norm clip (0: off).")
@click.option("--loss", type=click.Choice(LOSSES), default="ce", show_default=True)
@click.option("--anchors", type=click.Choice(ANCHORS), default="simplex", show_default=True,
              help="Anchor choice for the anchor losses: maximal separation or orthogonality.")
@click.option("--anchor-scale", default=10.0, show_default=True, help="Softmax sharpness of the anchor losses.")
@click.option("--label-smoothing", default=0.0, show_default=True)
@click.option("--hflip", default=0.5, show_default=True,
              help="Probability of a flip that commutes with the cipher (per token for shuffled shards).")
@click.option("--color-jitter", default=0.0, show_default=True)
@click.option("--mixup", default=0.0, show_default=True, help="Mixup Beta alpha (0: off).")
@click.option("--cutmix", default=0.0, show_default=True, help="Token-cutmix Beta alpha (0: off).")
@click.option("--token-drop", default=0.0, show_default=True, help="Fraction of tokens zeroed.")
@click.option("--amp", is_flag=True, help="bf16 autocast on CUDA (CPU stays float32).")
@click.option("--resume", is_flag=True, help="Continue RUN/last.pt at the step it was written.")
@click.option("--workers", default=2, show_default=True, help="DataLoader workers per process.")
@click.option("--shuffle-buffer", default=1000, show_default=True, help="Samples in the shuffle buffer.")
@click.option("--seed", default=0, show_default=True)
@click.option("--train-split", default="train", show_default=True)
@click.option("--val-split", default="val", show_default=True, help="Split evaluated after each epoch; none: no evaluation.")
@click.option("--verify-digests", is_flag=True, help="Hash every shard against the manifest before training.")
@click.option("--log-every", default=50, show_default=True, help="Steps between metrics.jsonl lines.")
@click.option("--checkpoint-every", default=0, show_default=True,
              help="Also write last.pt every N steps inside an epoch (0: at epoch ends only).")
@click.option("--quiet", is_flag=True, help="No progress bar (bars are drawn on a terminal only).")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU: torch threads per process (default: the cores left beside the processes and loader "
                   "workers; OMP_NUM_THREADS also sets it).")
@click.pass_context
def classify(ctx: click.Context, shards: Path, out: Path, resume: bool, quiet: bool, **options: Any) -> None:
    """Train a classifier on a release's train split, evaluating on its val split.

    \b
    Example:
      train-encrypted classify --shards ~/release --out runs/pevit --epochs 30 --amp
      train-encrypted classify --shards ~/release --out runs/pevit --resume
      train-encrypted classify --shards ~/release --out runs/anchor --loss anchor-cosine
    """
    from train.checkpoint import load_checkpoint
    from train.engine import LAST, TrainConfig, train

    _setup_logging()
    threads = options.pop("threads")
    options["model_args"] = _parse_model_args(options["model_args"])
    if options["val_split"].lower() == "none":
        options["val_split"] = None
    given = {name for name in _CONFIG_OPTIONS
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    if resume and (out / LAST).is_file():
        fields = dict(load_checkpoint(out / LAST)["config"])
    else:
        fields = {}
        given = set(_CONFIG_OPTIONS)
    fields.update({_CONFIG_OPTIONS[name]: options[name] for name in given})
    fields.update(shards=str(shards), out=str(out), progress=not quiet)
    config = TrainConfig.from_dict(fields)
    summary = train(config, resume=resume, threads=threads)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best_top1"]
        shown = "no evaluation" if best is None else f"best val top-1 {best:.4f}"
        click.echo(f"trained {summary['epochs']} epochs ({summary['step']} steps, "
                   f"{summary['world_size']} processes): {shown}; run in {out}")


@cli.command()
@click.option("--shards", required=True, type=click.Path(path_type=Path), metavar="OUT",
              help="Detection release (encrypt-dataset coco ... --mode mix).")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="Run folder: config.json, metrics.jsonl, last.pt, best.pt.")
@click.option("--model", default="auto", show_default=True,
              help="auto, a size (nano, tiny, small, base) or a registered yolos_* name.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Extra model keyword, e.g. depth=4 (repeatable).")
@click.option("--det-tokens", default=100, show_default=True, help="Detection tokens (max objects per image).")
@click.option("--epochs", default=50, show_default=True)
@click.option("--batch-size", default=16, show_default=True, help="Per process.")
@click.option("--lr", default=2.5e-4, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--hflip", default=0.5, show_default=True, help="Probability of a horizontal flip (boxes follow).")
@click.option("--amp", is_flag=True, help="bf16 autocast on CUDA (CPU stays float32).")
@click.option("--resume", is_flag=True, help="Continue RUN/last.pt at the step it was written.")
@click.option("--workers", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--val-split", default="val", show_default=True, help="Split evaluated (COCO mAP); none: no evaluation.")
@click.option("--verify-digests", is_flag=True, help="Hash every shard against the manifest first.")
@click.option("--quiet", is_flag=True, help="No progress bar (bars are drawn on a terminal only).")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU: torch threads per process (default: the cores left beside the processes and loader "
                   "workers; OMP_NUM_THREADS also sets it).")
def detect(shards: Path, out: Path, model: str, model_args: tuple[str, ...], det_tokens: int, epochs: int,
           batch_size: int, lr: float, weight_decay: float, hflip: float, amp: bool, resume: bool,
           workers: int, seed: int, val_split: str, verify_digests: bool, quiet: bool,
           threads: int | None) -> None:
    """Train a YOLOS-style detector (MI patch embedding) on a `mix` COCO release.

    \b
    Example:
      train-encrypted detect --shards ~/coco-release --out runs/yolos --epochs 150 --amp
      train-encrypted evaluate --shards ~/coco-release --checkpoint runs/yolos/best.pt
    """
    from train.detection_engine import DetectionConfig, fit_detection

    _setup_logging()
    config = DetectionConfig(
        shards=str(shards), out=str(out), model=model, model_kwargs=_parse_model_args(model_args),
        num_det_tokens=det_tokens, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        hflip=hflip, amp=amp, workers=workers, seed=seed,
        val_split=None if val_split.lower() == "none" else val_split, verify_digests=verify_digests,
        progress=not quiet)
    summary = fit_detection(config, resume=resume, threads=threads)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, sort_keys=True, default=str))


@cli.command()
@click.option("--shards", required=True, type=click.Path(path_type=Path), metavar="OUT",
              help="Release folder (manifest.json + shards).")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), metavar="RUN/best.pt",
              help="A checkpoint written by classify (best.pt or last.pt).")
@click.option("--split", default="val", show_default=True)
@click.option("--batch-size", type=int, help="Default: the training batch size.")
@click.option("--workers", default=2, show_default=True)
@click.option("--verify-digests", is_flag=True, help="Hash every shard against the manifest first.")
def evaluate(shards: Path, checkpoint: Path, split: str, batch_size: int | None, workers: int,
             verify_digests: bool) -> None:
    """Score a checkpoint on a split: prints one JSON line (top-1/top-5, or COCO mAP for detection).

    \b
    Example:
      train-encrypted evaluate --shards ~/release --checkpoint runs/pevit/best.pt --split val
    """
    from shards.reader import load_manifest
    from train.engine import evaluate_checkpoint

    _setup_logging()
    if load_manifest(shards).task == "detection":
        from train.detection_engine import evaluate_detection_checkpoint as evaluate_checkpoint
    result = evaluate_checkpoint(checkpoint, shards, split, batch_size=batch_size, workers=workers,
                                 verify_digests=verify_digests)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(result, sort_keys=True))


def main() -> None:
    cli(prog_name="train-encrypted")


if __name__ == "__main__":
    sys.exit(main())
