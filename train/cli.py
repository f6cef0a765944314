"""train-encrypted: the ML engineer's command. Thin click wrapper over train.engine.

`classify` and `detect` options are generated from `TrainConfig` / `DetectionConfig`
fields (`config_options`), so a default, a help text or a bound lives once, in
`train.config`. Errors in the input (release, run folder, checkpoint, settings) are one
line on stderr, ``error: <file>: <reason>``, exit status 2, nothing written. A run that
diverges (a loss that is not finite) exits 1. Under ``torchrun`` every process runs the
same command.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from shards.console import command_group
from train.config import DetectionConfig, RunConfig, TrainConfig
from train.errors import TrainError

LAST = "last.pt"  # train.engine.LAST, without importing torch for --help


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


# -- options from config fields ------------------------------------------------------------------

def option_name(f: dataclasses.Field) -> str:
    return f.metadata["option"] or "--" + f.name.replace("_", "-")


def _option(f: dataclasses.Field) -> Any:
    """The click option of one config field (its flag, type, default and help from the field)."""
    meta = f.metadata
    kwargs: dict[str, Any] = {"help": meta["help"] or None, "metavar": meta["metavar"]}
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        # --shards may be a store URL (s3://...), which click.Path would turn into a local folder.
        path_type = str if f.name == "shards" else click.Path(path_type=Path)
        kwargs.update(required=True, type=path_type if meta["path"] else str)
    elif f.default_factory is not dataclasses.MISSING:  # a dict: repeatable KEY=VALUE
        kwargs.update(multiple=True)
    elif isinstance(f.default, bool):
        kwargs.update(is_flag=True, default=f.default)
    else:
        choice = click.Choice(meta["choices"]) if meta["choices"] else str if f.default is None else type(f.default)
        kwargs.update(type=choice, default=f.default, show_default=True)
    return click.option(option_name(f), f.name, **kwargs)


def config_options(config_type: type[RunConfig]):
    """Decorate a command with one option per config field that is not internal."""
    def decorate(fn):
        for f in reversed([f for f in dataclasses.fields(config_type) if not f.metadata["internal"]]):
            fn = _option(f)(fn)
        return fn
    return decorate


def _field_value(f: dataclasses.Field, value: Any) -> Any:
    """A command-line value as the config holds it."""
    if f.default_factory is not dataclasses.MISSING:
        return _parse_model_args(value)
    if f.metadata["nullable"] and isinstance(value, str) and value.lower() == "none":
        return None
    return str(value) if f.metadata["path"] else value


def config_from_command(ctx: click.Context, config_type: type[RunConfig], options: dict[str, Any],
                        resume: bool, quiet: bool) -> RunConfig:
    """The run's config: on --resume, last.pt's, with only the options given on the command line
    (or in the environment) replacing its values; else every option, defaults included."""
    from train.checkpoint import load_checkpoint

    fields = {f.name: f for f in dataclasses.fields(config_type) if f.name in options}
    out = Path(options["out"])
    if resume and (out / LAST).is_file():
        values = dict(load_checkpoint(out / LAST)["config"])
        given = [name for name in fields if ctx.get_parameter_source(name) in
                 (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    else:
        values, given = {}, list(fields)
    values.update({name: _field_value(fields[name], options[name]) for name in given})
    values["progress"] = not quiet
    return config_type.from_dict(values)


def _run_options(fn):
    """--resume, --quiet, --threads: how to run, not what the run is."""
    fn = click.option("--threads", type=click.IntRange(min=1), metavar="N",
                      help="CPU: torch threads per process (default: the cores left beside the processes and "
                           "loader workers; OMP_NUM_THREADS also sets it).")(fn)
    fn = click.option("--quiet", is_flag=True, help="No progress bar (bars are drawn on a terminal only).")(fn)
    fn = click.option("--resume", is_flag=True,
                      help="Continue RUN/last.pt at the step it was written, with its settings; options "
                           "given now replace them where a resume allows.")(fn)
    return fn


# -- commands ------------------------------------------------------------------------------------

@command_group("train-encrypted")
def cli() -> None:
    """Train vision transformers on encrypted shards; never sees a key or a plain image.

    \b
    Example:
      train-encrypted classify --shards ~/release --out runs/vit --epochs 30
      train-encrypted evaluate --shards ~/release --checkpoint runs/vit/best.pt
      torchrun --nproc_per_node 8 $(which train-encrypted) classify --shards ~/release --out runs/ddp
    """


def _train(ctx: click.Context, config_type: type[RunConfig], options: dict[str, Any]) -> dict[str, Any]:
    from train.engine import train

    _setup_logging()
    resume, quiet, threads = options.pop("resume"), options.pop("quiet"), options.pop("threads")
    config = config_from_command(ctx, config_type, options, resume, quiet)
    return train(config, resume=resume, threads=threads)


@cli.command()
@config_options(TrainConfig)
@_run_options
@click.pass_context
def classify(ctx: click.Context, **options: Any) -> None:
    """Train a classifier on a release's train split, evaluating on its val split.

    \b
    Example:
      train-encrypted classify --shards ~/release --out runs/pevit --epochs 30 --amp
      train-encrypted classify --shards ~/release --out runs/pevit --resume
      train-encrypted classify --shards ~/release --out runs/anchor --loss anchor-cosine
    """
    summary = _train(ctx, TrainConfig, options)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best_top1"]
        shown = "no evaluation" if best is None else f"best val top-1 {best:.4f}"
        click.echo(f"trained {summary['epochs']} epochs ({summary['step']} steps, "
                   f"{summary['world_size']} processes): {shown}; run in {options['out']}")


@cli.command()
@config_options(DetectionConfig)
@_run_options
@click.pass_context
def detect(ctx: click.Context, **options: Any) -> None:
    """Train a YOLOS-style detector (MI patch embedding) on a `mix` COCO release.

    \b
    Example:
      train-encrypted detect --shards ~/coco-release --out runs/yolos --epochs 150 --amp
      train-encrypted detect --shards ~/coco-release --out runs/yolos --resume
      train-encrypted evaluate --shards ~/coco-release --checkpoint runs/yolos/best.pt
    """
    summary = _train(ctx, DetectionConfig, options)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(summary, sort_keys=True, default=str))


@cli.command()
@click.option("--shards", required=True, metavar="OUT",
              help="Release folder or store URL, e.g. s3://bucket/release (manifest.json + shards).")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), metavar="RUN/best.pt",
              help="A checkpoint written by classify or detect (best.pt or last.pt).")
@click.option("--split", default="val", show_default=True)
@click.option("--batch-size", type=int, help="Default: the training batch size.")
@click.option("--workers", default=2, show_default=True)
@click.option("--verify-digests", is_flag=True, help="Hash every shard against the manifest first.")
def evaluate(shards: str, checkpoint: Path, split: str, batch_size: int | None, workers: int,
             verify_digests: bool) -> None:
    """Score a checkpoint on a split: prints one JSON line (top-1/top-5, or COCO mAP for detection).

    \b
    Example:
      train-encrypted evaluate --shards ~/release --checkpoint runs/pevit/best.pt --split val
    """
    from shards.reader import load_manifest
    from train.engine import evaluate_checkpoint

    _setup_logging()
    task = load_manifest(shards).task  # the release says which metrics, before the checkpoint is read
    result = evaluate_checkpoint(checkpoint, shards, split, batch_size=batch_size, workers=workers,
                                 verify_digests=verify_digests, task=task)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(result, sort_keys=True))


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), metavar="RUN/best.pt",
              help="A checkpoint written by classify.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--encrypted", is_flag=True,
              help="The images are already encrypted by the data owner (the stored form); else plain "
                   "images, given the keyless part of the cipher here.")
def predict(checkpoint: Path, images: tuple[Path, ...], top_k: int, encrypted: bool) -> None:
    """Classify new images: one JSON line per image with its top-k classes and their names.

    Plain images work for every mode with the model `--model auto` picks (mix is applied here,
    without a key; shuffled models ignore tile order, D4-ViT also tile turns); a model that
    sees what the key decides is refused (see docs/ml-engineer.md).

    \b
    Example:
      train-encrypted predict --checkpoint runs/pevit/best.pt photo1.png photo2.jpg
    """
    from train.predict import Predictor

    _setup_logging()
    predictor = Predictor(checkpoint, encrypted=encrypted)
    for record in predictor.predict(list(images), top_k=top_k):
        click.echo(json.dumps(record, sort_keys=True))


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), metavar="RUN/best.pt",
              help="A checkpoint written by classify or detect.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="MODEL.safetensors",
              help="A .safetensors or .pth file; MODEL.json beside it says how to load it.")
def export(checkpoint: Path, output: Path) -> None:
    """Write a plain timm checkpoint of the model (weights only) and how to load it.

    \b
    Example:
      train-encrypted export --checkpoint runs/pevit/best.pt -o pevit.safetensors
      python -c "import train.models, timm; timm.create_model('pevit_tiny_patch4_32', pretrained=True,
                 pretrained_cfg_overlay=dict(file='pevit.safetensors', num_classes=10), in_chans=1)"
    """
    from train.predict import export_checkpoint

    description = export_checkpoint(checkpoint, output)
    click.echo(json.dumps({"file": str(output), "load": description["load"]}))


def main() -> None:
    cli(prog_name="train-encrypted")


if __name__ == "__main__":
    sys.exit(main())
