"""encrypt-dataset: the data owner's command. Thin click wrapper over encrypt.main.

Every option is checked before OUT is created (geometry by the manifest's own validator,
through `JobSettings`); errors are one line, exit 2, through the shared renderer.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from encrypt.decrypt import decrypt_release
from encrypt.forget import forget_samples
from encrypt.distribute import check_address, load_runtime_env
from encrypt.journal import owner_dir as owner_dir_of
from encrypt.main import check_out_dir, encrypt_dataset, preflight
from encrypt.plan import JobSettings, check_split
from encrypt.risk import risk_line
from encrypt.sources import InputError, list_coco, list_imagefolder
from keys.keystore import open_keystore
from keys.passphrase import PASSPHRASE_HELP, read_passphrase
from shards import storage
from shards.console import command_group
from shards.errors import require
from shards.modes import MODES, NAMES

DEFAULT_MODE = "mix-shuffle"


def keystore_options(fn):
    fn = click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
                      help=PASSPHRASE_HELP)(fn)
    fn = click.option("--keystore", envvar="PATCHVEIL_KEYSTORE", required=True,
                      type=click.Path(file_okay=False, path_type=Path),
                      help="Keystore folder made by `dataset-keys init` (or PATCHVEIL_KEYSTORE).")(fn)
    return fn


def job_options(fn):
    options = [
        click.option("--dataset-id", help="Name the dataset key is derived for (default: the source folder's name)."),
        click.option("--patch", default=16, show_default=True, help="Patch size p (the ViT token size)."),
        click.option("--sub-patch", default=8, show_default=True, help="Sub-patch size s for mix modes."),
        click.option("--size", default=224, show_default=True, help="Side of the square image the cipher sees."),
        click.option("--format", "fmt", type=click.Choice(["jpeg", "png"]), default="jpeg", show_default=True),
        click.option("--quality", default=95, show_default=True, help="JPEG quality (1-100)."),
        click.option("--grayscale", is_flag=True, help="Store one channel (e.g. Fashion-MNIST) instead of RGB."),
        click.option("--shard-samples", default=1000, show_default=True, help="Samples per shard."),
        click.option("--num-cpus", default=os.cpu_count() or 1, show_default=True, type=click.IntRange(min=0),
                     help="Local Ray workers; 0 runs in-process without Ray."),
        click.option("--max-skipped", type=click.FloatRange(0, 1, min_open=True), metavar="FRACTION",
                     help="Refuse the release (nothing signed) when more than this fraction of the images "
                          "is skipped. Always refused: a split left empty."),
        click.option("--ray-address", envvar="RAY_ADDRESS", metavar="HOST:PORT|ray://HOST:PORT|auto",
                     help="Join this Ray cluster instead of starting a local one (default: $RAY_ADDRESS; "
                          "`auto`: the cluster started on this machine). The cluster's CPUs are used; "
                          "--num-cpus only sizes a local Ray."),
        click.option("--ray-runtime-env", metavar="JSON|FILE",
                     help="Ray runtime environment for the workers, inline JSON or a JSON file, so nodes "
                          "need no pre-install, e.g. '{\"py_modules\": [\"encrypt\", \"keys\", \"shards\"], "
                          "\"pip\": [\"numpy\", \"pillow\", \"cryptography\"]}' (docs/data-owner.md)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted job in the same OUT."),
        click.option("--owner-dir", envvar="PATCHVEIL_OWNER_DIR", type=click.Path(file_okay=False, path_type=Path),
                     help="For a URL OUT (s3://...): local root of the owner's private folders (journal, "
                          "lock, reports), OWNER_DIR/<protocol>/<bucket>/<path>.owner (default: "
                          "$PATCHVEIL_OWNER_DIR, else ~/.patchveil/owner). A local OUT keeps OUT.owner beside it."),
        click.option("--rebuild-from", metavar="RELEASE", callback=lambda ctx, param, value:
                     None if value is None else storage.location(value),
                     help="Rebuild this signed release byte for byte (its salt, from the sealed index); "
                          "same dataset and options. Default: a fresh salt, so no two releases share keys."),
        click.option("--quiet", is_flag=True, help="No progress bar (bars are drawn on a terminal only)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _job_settings(**fields) -> JobSettings:
    """The job's settings, refused with the option's name when the manifest would refuse them."""
    facts = MODES.get(fields["mode"])
    if facts is not None and not facts.mixes:
        fields["sub_patch"] = None
    return JobSettings(**fields)


def _check_workers(num_cpus: int, ray_address: str | None, ray_runtime_env: str | None = None):
    """Ray options checked before OUT exists; the runtime environment parsed (None: none given)."""
    if num_cpus > 0 or ray_address:
        require("ray", "encrypt-dataset with --num-cpus > 0 or --ray-address")
    if ray_address:
        check_address(ray_address)
    return load_runtime_env(ray_runtime_env)


def _source_name(src) -> str:
    """The default dataset id: the source folder's name (the last part of a URL)."""
    return storage.name_of(src) if isinstance(src, str) else Path(src).resolve().name


def _use_owner_dir(owner_dir: Path | None) -> None:
    """--owner-dir becomes $PATCHVEIL_OWNER_DIR, which `encrypt.journal.owner_dir` (and so the
    lock, journal and reports) reads for a URL OUT: one rule, however the job is started."""
    if owner_dir is not None:
        os.environ["PATCHVEIL_OWNER_DIR"] = str(owner_dir)


def _warn_mode(mode: str) -> None:
    """Every job says its mode's measured risk (encrypt/measured_risk.json, the benchmarks' output)."""
    click.echo(f"warning: mode {mode}: {risk_line(mode)} (see docs/privacy.md)", err=True)


def _open_keystore(keystore: Path, passphrase_file: Path | None):
    return open_keystore(keystore, read_passphrase(passphrase_file))


def _report(summary, out) -> None:
    click.echo(f"wrote {summary.images_written} images in {summary.shards} shards "
               f"({summary.bytes / 1e6:.1f} MB) to {out} in {summary.seconds:.1f} s "
               f"({summary.images_per_second:.0f} images/s)")
    if summary.resumed_shards:
        click.echo(f"resumed: {summary.resumed_shards} shards were already done and verified")
    for reason, count in sorted(summary.skipped.items()):
        click.echo(f"skipped {count}: {reason}")
    click.echo(f"manifest digest {summary.manifest_digest}; owner report in {owner_dir_of(out)}/")


@command_group("encrypt-dataset")
def cli() -> None:
    """Encrypt an image dataset into signed, keyed WebDataset shards.

    \b
    Example:
      dataset-keys init --keystore ~/pv-keys
      encrypt-dataset imagefolder ~/data/imagenet ~/release --keystore ~/pv-keys
    """


@cli.command()
@click.argument("src", callback=lambda ctx, param, value: storage.location(value))  # a folder or a URL
@click.argument("out", callback=lambda ctx, param, value: storage.location(value))  # a folder or a URL
@keystore_options
@job_options
@click.option("--mode", type=click.Choice(NAMES), default=DEFAULT_MODE, show_default=True,
              help="Cipher (docs/privacy.md measures each). `none` writes plain images for baselines only.")
@click.option("--resize", type=int, help="Shorter side before the centre crop (default: size·8/7).")
@click.option("--views", default=1, show_default=True,
              help="Keyed random-resized-crop + flip views per training image (1: centre crop).")
@click.option("--split", help="Treat SRC/{class}/* as this one split.")
@click.option("--hide-class-names", is_flag=True, help="Keep only the class count in the manifest.")
@click.option("--min-side", type=int, help="Skip images whose shorter side is below this (default: size/4).")
def imagefolder(src, out, keystore, passphrase_file, dataset_id, patch, sub_patch, size, fmt, quality,
                grayscale, shard_samples, num_cpus, max_skipped, ray_address, ray_runtime_env, resume, owner_dir,
                rebuild_from, quiet, mode, resize, views, split, hide_class_names, min_side):
    """Encrypt an ImageFolder tree: SRC/{train,val}/{class}/* or SRC/{class}/*.

    \b
    Example:
      encrypt-dataset imagefolder ~/data/imagenet ~/release --keystore ~/pv-keys \\
          --mode mix-shuffle --views 4 --num-cpus 32
    """
    settings = _job_settings(mode=mode, patch=patch, sub_patch=sub_patch, size=size,
                             resize=round(size * 8 / 7) if resize is None else resize, views=views,
                             format=fmt, quality=quality, channels=1 if grayscale else 3,
                             shard_samples=shard_samples, min_side=size // 4 if min_side is None else min_side)
    split = check_split(split)
    _use_owner_dir(owner_dir)
    runtime_env = _check_workers(num_cpus, ray_address, ray_runtime_env)
    check_out_dir(out, [src], resume)
    listing = list_imagefolder(src, split)
    preflight(listing, settings, out)
    store = _open_keystore(keystore, passphrase_file)
    _warn_mode(mode)  # after every input check: an error stays the only line
    summary = encrypt_dataset(listing, out, store, dataset_id or _source_name(src), settings,
                              workers=num_cpus, ray_address=ray_address, ray_runtime_env=runtime_env,
                              resume=resume,
                              hide_class_names=hide_class_names, progress=not quiet,
                              max_skipped_fraction=max_skipped, rebuild_from=rebuild_from)
    _report(summary, out)


@cli.command()
@click.argument("images", callback=lambda ctx, param, value: storage.location(value))  # a folder or a URL
@click.argument("annotations", callback=lambda ctx, param, value: storage.location(value))
@click.argument("out", callback=lambda ctx, param, value: storage.location(value))  # a folder or a URL
@keystore_options
@job_options
@click.option("--mode", type=click.Choice(NAMES), default="mix", show_default=True,
              help="A mode that keeps patch positions (`mix`, or `none` for baselines): shuffled "
                   "positions cannot carry boxes.")
@click.option("--split", default="train", show_default=True, help="Split name for these images.")
def coco(images, annotations, out, keystore, passphrase_file, dataset_id, patch, sub_patch, size, fmt,
         quality, grayscale, shard_samples, num_cpus, max_skipped, ray_address, ray_runtime_env, resume, owner_dir,
         rebuild_from, quiet, mode, split):
    """Encrypt a COCO detection set: IMAGES folder + instances JSON, letterboxed to --size.

    \b
    Example:
      encrypt-dataset coco ~/coco/train2017 ~/coco/annotations/instances_train2017.json \\
          ~/coco-release --keystore ~/pv-keys --mode mix --size 512
    """
    if not MODES[mode].keeps_positions:
        raise InputError(f"--mode {mode} cannot be used for detection: shuffled patch positions "
                         "cannot carry boxes; use --mode mix")
    settings = _job_settings(mode=mode, patch=patch, sub_patch=sub_patch, size=size, resize=size, views=1,
                             format=fmt, quality=quality, channels=1 if grayscale else 3,
                             shard_samples=shard_samples, task="detection", min_side=1)
    split = check_split(split)
    _use_owner_dir(owner_dir)
    runtime_env = _check_workers(num_cpus, ray_address, ray_runtime_env)
    check_out_dir(out, [images], resume)
    listing = list_coco(images, annotations, split)
    preflight(listing, settings, out)
    store = _open_keystore(keystore, passphrase_file)
    _warn_mode(mode)  # after every input check: an error stays the only line
    summary = encrypt_dataset(listing, out, store, dataset_id or _source_name(images), settings,
                              workers=num_cpus, ray_address=ray_address, ray_runtime_env=runtime_env,
                              resume=resume, progress=not quiet,
                              max_skipped_fraction=max_skipped, rebuild_from=rebuild_from)
    _report(summary, out)


@cli.command()
@click.argument("out", callback=lambda ctx, param, value: storage.location(value))  # a folder or a URL
@click.argument("dest", type=click.Path(path_type=Path))
@keystore_options
@click.option("--ids", multiple=True, metavar="ID[,ID...]",
              help="Only these opaque sample ids (repeat or separate with commas); default: all.")
@click.option("--quiet", is_flag=True, help="No progress bar (bars are drawn on a terminal only).")
def decrypt(out, dest, keystore, passphrase_file, ids, quiet):
    """Decrypt a release made with this keystore into DEST (new or empty) as PNG files named
    by their original paths. `shuffle` comes back pixel-exact (before JPEG losses);
    `mix-shuffle` comes back to the mixed image; `mix` has nothing to decrypt. Logs
    `decrypted` with the count.

    \b
    Example:
      encrypt-dataset decrypt ~/release ~/restored --keystore ~/pv-keys
      encrypt-dataset decrypt ~/release ~/two --keystore ~/pv-keys --ids 3f2a...,9c1d...
    """
    wanted = [i.strip() for item in ids for i in item.split(",") if i.strip()] or None
    store = _open_keystore(keystore, passphrase_file)
    summary = decrypt_release(out, dest, store, ids=wanted, progress=not quiet)
    extra = "" if summary.named_by == "path" else " (no sealed index in the keystore: files are named by sample id)"
    click.echo(f"decrypted {summary.samples} {summary.mode} samples into {summary.dest}{extra}")
    if MODES[summary.mode].mixes:
        click.echo(f"note: {summary.mode} decrypts to the mixed image; the averaging cannot be undone")


@cli.command()
@click.argument("out", callback=lambda ctx, param, value: storage.location(value))  # a folder or a store URL
@keystore_options
@click.option("--path", "paths", multiple=True, required=True, metavar="ORIGINAL_PATH",
              help="Source path relative to the folder that was encrypted, e.g. train/coat/0001.png (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar (bars are drawn on a terminal only).")
def forget(out, keystore, passphrase_file, paths, quiet):
    """Honour a deletion request: remove every sample made from the given source paths,
    rewriting only the shards that hold them, sign a new manifest version and log
    `forgotten`. Hand ML engineers the new version; delete the source files too.

    \b
    Example:
      encrypt-dataset forget ~/release --keystore ~/pv-keys --path train/coat/0001.png
    """
    store = _open_keystore(keystore, passphrase_file)
    summary = forget_samples(out, store, paths, progress=not quiet)
    if not summary.removed:
        click.echo(f"nothing to remove: the {summary.already_absent} sample(s) of these paths are "
                   f"not in {out}; manifest unchanged")
        return
    if summary.resumed:
        click.echo("finished the forget that a crash had interrupted:")
    click.echo(f"removed {summary.removed} sample(s); rewrote {len(summary.shards_rewritten)} shard(s)"
               + (f", dropped {len(summary.shards_dropped)} now-empty shard(s)" if summary.shards_dropped else "")
               + f"; manifest version {summary.version} ({summary.manifest_digest[:16]}…) replaces "
               f"{summary.previous_digest[:16]}…")
    if summary.already_absent:
        click.echo(f"{summary.already_absent} sample(s) were already absent")


def main() -> None:
    cli(prog_name="encrypt-dataset")


if __name__ == "__main__":
    sys.exit(main())
