"""`audit-shards privacy`: attack a cipher on real images and report what comes back.

Two ways in:
- a mode and some images (`--images DIR` or the built-in photos): each image is encrypted
  here with a throwaway key (made, used and dropped in memory), exactly as the job does;
- an owner's release (`--shards OUT --keystore DIR --source SRC`): the stored images are
  attacked as an ML engineer holds them, and the owner's key says what the truth was.

Either way the originals come from the encryptor's own `encrypt.prepare.prepare_pixels` (EXIF
turn, alpha, palette, resampling, crop), so every score compares against the picture the
cipher really saw.

Attacks per mode: each attack module declares the modes it applies to (`APPLIES_TO`) and
`RUNNERS` below picks from those declarations: `jigsaw` (the greedy solver; the oriented
solver for turned tiles; tiles of at least 3 px), `learned` (position-predicting ViT
trained here on public photos; for turned tiles it also names each tile's turn),
`inversion` (of the mixing: deconvolution with a smoothness prior). Mixing modes chain a
placement attack with the inversion. Every reconstruction is scored against the original:
direct and neighbour accuracy of the placement, PSNR and SSIM of the picture (an exact
reconstruction's PSNR is written as 99 dB, JSON having no infinity; for `-orient` modes
the picture is first turned as a whole to its best fit, since a sideways picture hides nothing).

REPORT/privacy.json holds every number; REPORT/index.html shows a table and, per image,
original | encrypted | best reconstruction (PNG files in REPORT/img). The report is built
in a temporary folder beside REPORT and renamed into place when complete.
"""
from __future__ import annotations

import html
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
from PIL import Image

from audit.attacks import inversion, jigsaw, learned, oriented
from audit.attacks.inversion import deconvolve
from audit.attacks.jigsaw import reconstruct
from audit.attacks.oriented import (draw, oriented_neighbour_accuracy, reconstruct_oriented,
                                    train_turned_attacker, turned_attack, upright_picture)
from audit.metrics import direct_accuracy, neighbour_accuracy, psnr, reidentification, ssim
from encrypt.ciphers import DerivationError, cipher_of, release_keys, shuffle
from encrypt.prepare import DecodeError, prepare_pixels
from audit.errors import AuditError
from keys.passphrase import PASSPHRASE_HELP
from shards.console import Command
from shards.manifest import CipherSpec, ManifestError
from shards.modes import NAMES, mode_of

ATTACKS = ("jigsaw", "learned", "inversion")
BUILTIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MIN_AUDIT_SIDE = 16  # px: a smaller source holds too little to attack

__all__ = ["ATTACKS", "RUNNERS", "Case", "PrivacyError", "attack_cases", "attacks_for", "builtin_images", "cases_from_release",
           "encrypt_cases", "load_images", "privacy_command", "write_report"]


class PrivacyError(AuditError):
    """Bad input for a privacy audit: one line naming the file and the reason."""


@dataclass
class Case:
    """One attacked image: the original (cipher geometry), what is stored, and the truth."""

    name: str
    original: np.ndarray                    # H×W×C uint8, the image the cipher saw
    stored: np.ndarray                      # what an ML engineer holds
    perm: np.ndarray | None = None          # the cipher's tile permutation (keyed modes)
    orientations: np.ndarray | None = None  # the cipher's tile turns (-orient modes)
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    pictures: dict[str, np.ndarray] = field(default_factory=dict)
    as_drawn: dict[str, np.ndarray] = field(default_factory=dict)  # before any turn chosen by the answer


# -- images in ---------------------------------------------------------------------------------

def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def builtin_images(size: int) -> list[tuple[str, np.ndarray]]:
    """The scikit-image photos the project's audits use, RGB, prepared as the job would (resize = size)."""
    from skimage import data

    return [(name, prepare_pixels(_png(np.asarray(getattr(data, name)())), size=size, resize=size, channels=3))
            for name in BUILTIN_PHOTOS]


def load_images(folder: Path, size: int, limit: int) -> list[tuple[str, np.ndarray]]:
    """Up to `limit` images of a folder (sorted by name), RGB, prepared as the job would (resize = size)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrivacyError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise PrivacyError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [(path.name, _original(path, size, size, 3, min_side=MIN_AUDIT_SIDE)) for path in files[:limit]]


def _original(path: Path, size: int, resize: int, channels: int, min_side: int = 0) -> np.ndarray:
    """What the cipher saw of this file: the encryptor's own `prepare_pixels`, errors as PrivacyError."""
    try:
        return prepare_pixels(path, size=size, resize=resize, channels=channels, min_side=min_side)
    except DecodeError as exc:
        reason = str(exc)
        raise PrivacyError(f"{path}: {reason}" if reason.startswith("too small")
                           else f"{path}: not a readable image ({reason})") from None


def encrypt_cases(images: list[tuple[str, np.ndarray]], mode: str, patch: int, sub_patch: int | None,
                  dataset_key) -> list[Case]:
    """Encrypt images as the job would, under `dataset_key` (a keys.derive.DatasetKey)."""
    cases = []
    cipher = cipher_of(mode)
    for i, (name, img) in enumerate(images):
        spec = _spec(mode, patch, sub_patch, img.shape[0], img.shape[1])
        secrets = cipher.secrets(dataset_key, "audit", f"audit-{i}", spec)
        stored = cipher.encrypt(img, secrets, patch, sub_patch)
        cases.append(Case(name, img, stored, secrets.perm, secrets.turns))
    return cases


def cases_from_release(shards: Path, keystore, source: Path, limit: int, resize: int | None) -> tuple[list[Case], Any]:
    """The first `limit` samples of a release with their originals (from SRC) and true keys.

    Samples are named by their opaque keys; the owner's index maps them to source files.
    Keyed crop views (`--views`) are skipped: only centre crops can be redrawn from SRC.
    The true keys are drawn as the manifest's derivation says (`encrypt.ciphers.release_keys`).
    """
    from keys.index import load_index
    from shards.reader import iter_samples, load_manifest

    manifest = load_manifest(shards)
    cipher = manifest.cipher
    if manifest.task != "classification":
        raise PrivacyError(f"{shards}: a {manifest.task} release; the privacy audit attacks classification releases")
    try:
        key = release_keys(keystore, manifest)  # the derivation the manifest records, the index's salt
    except DerivationError as exc:
        raise PrivacyError(f"{shards}: {exc}") from None
    index = load_index(keystore, manifest.dataset_id, manifest.dataset_key_id)
    h, w = cipher.image_size
    scheme = cipher_of(cipher.mode)
    cases: list[Case] = []
    for split in manifest.splits:
        for sample in iter_samples(shards, split, manifest):
            if len(cases) >= limit:
                return cases, cipher
            entry = index.get(sample.key)
            if entry is None:
                raise PrivacyError(f"{shards}: sample {sample.key} is not in the owner's index of this keystore")
            if entry.get("view", -1) >= 0:
                continue  # a keyed random crop: its original geometry cannot be redrawn here
            path = Path(source) / entry["rel_path"]
            if not path.is_file():
                raise PrivacyError(f"{path}: source image of sample {sample.key} not found under --source")
            original = _original(path, h, resize or round(h * 8 / 7), cipher.channels)  # encrypt-dataset's default
            secrets = scheme.secrets(key, split, sample.key, cipher)
            cases.append(Case(sample.key, original, sample.image, secrets.perm, secrets.turns))
    return cases, cipher


# -- attacks -----------------------------------------------------------------------------------

def _public_photos(channels: int, folders: tuple[Path, ...] = ()) -> list[np.ndarray]:
    """The learned attackers' training photos: the skimage ones, or the given corpus folders."""
    from audit.attacks.learned import public_corpus, public_photos

    photos = public_corpus(folders) if folders else public_photos()
    if channels == 1:
        photos = [np.asarray(Image.fromarray(p).convert("L"))[..., None] for p in photos]
    return photos


def _placement_scores(case: Case, placement: np.ndarray, grid: tuple[int, int]) -> dict[str, float]:
    return {"direct": direct_accuracy(placement, case.perm),
            "neighbour": neighbour_accuracy(placement, case.perm, grid)}


def _picture_scores(case: Case, picture: np.ndarray) -> dict[str, float]:
    value = psnr(case.original, picture)
    return {"psnr": value if np.isfinite(value) else 99.0, "ssim": ssim(case.original, picture)}


@dataclass
class _Setting:
    """What every attack of one audit shares: the geometry and how a picture is finished."""

    patch: int
    sub_patch: int | None
    tile: int
    side: int
    mixing: bool
    oriented: bool
    attacks: tuple[str, ...]
    learned_steps: int
    log: Callable[[str], None]
    public_folders: tuple[Path, ...] = ()

    @property
    def grid(self) -> tuple[int, int]:
        return (self.side, self.side)

    def finish(self, case: Case, name: str, tiles_picture: np.ndarray, scores: dict[str, float]) -> None:
        """Invert the mixing (mixing modes), turn upright (turned modes), score and keep."""
        picture = deconvolve(tiles_picture[None], self.patch, self.sub_patch)[0] if self.mixing else tiles_picture
        picture = picture.reshape(case.original.shape)
        case.as_drawn[name] = picture
        if self.oriented:  # the answer may be the whole picture turned, which hides nothing
            picture = upright_picture(picture, case.original)
        case.results[name] = {**scores, **_picture_scores(case, picture)}
        case.pictures[name] = picture


def _jigsaw(cases: list[Case], s: _Setting) -> None:
    for case in cases:
        picture, placement = reconstruct(case.stored, s.tile, s.grid)
        s.finish(case, "jigsaw", picture, _placement_scores(case, placement, s.grid))


def _jigsaw_oriented(cases: list[Case], s: _Setting) -> None:
    for case in cases:
        picture, placement, turns = reconstruct_oriented(case.stored, s.tile)
        scores = {"neighbour": oriented_neighbour_accuracy(placement, turns, case.perm, case.orientations, s.side)}
        s.finish(case, "jigsaw", picture, scores)


_LEARNED = dict(batch_size=16, dim=96, depth=4, heads=4, flip=True)


def _stored_batch(cases: list[Case], s: _Setting) -> np.ndarray:
    return np.stack([c.stored.reshape(s.side * s.tile, s.side * s.tile, -1) for c in cases])


def _learned(cases: list[Case], s: _Setting) -> None:
    public = _public_photos(cases[0].original.shape[-1], s.public_folders)
    model = learned.train_position_attacker(public, s.tile, s.grid, s.learned_steps,
                                            mixed_from_patch=s.patch if s.mixing else None, **_LEARNED)
    for case, placement in zip(cases, learned.attack(model, _stored_batch(cases, s), s.tile, s.grid)):
        s.finish(case, "learned", shuffle(case.stored, placement, s.tile), _placement_scores(case, placement, s.grid))


def _learned_oriented(cases: list[Case], s: _Setting) -> None:
    public = _public_photos(cases[0].original.shape[-1], s.public_folders)
    model = train_turned_attacker(public, s.tile, s.side, s.learned_steps,
                                  mixed_from_patch=s.patch if s.mixing else None, **_LEARNED)
    placements, turns = turned_attack(model, _stored_batch(cases, s))
    for case, placement, turn in zip(cases, placements, turns):
        scores = {"neighbour": oriented_neighbour_accuracy(placement, turn, case.perm, case.orientations, s.side)}
        s.finish(case, "learned", draw(case.stored, placement, turn, s.tile), scores)


def _inversion(cases: list[Case], s: _Setting) -> None:
    for case in cases:
        s.finish(case, "inversion", case.stored, {})


@dataclass(frozen=True)
class Runner:
    """One way to run an attack (`--attacks` name) on the modes its module declares."""

    attack: str
    modes: tuple[str, ...]
    run: Callable[[list[Case], _Setting], None]
    min_tile: int = 1  # the jigsaw solvers compare edge gradients: tiles of at least 3 px


RUNNERS = (
    Runner("jigsaw", jigsaw.APPLIES_TO, _jigsaw, min_tile=3),
    Runner("jigsaw", oriented.APPLIES_TO, _jigsaw_oriented, min_tile=3),
    Runner("learned", learned.APPLIES_TO, _learned),
    Runner("learned", oriented.APPLIES_TO, _learned_oriented),
    Runner("inversion", inversion.APPLIES_TO, _inversion),
)


def attacks_for(mode: str) -> list[Runner]:
    """The runners whose attack modules declare `mode`, in report order."""
    return [runner for runner in RUNNERS if mode in runner.modes]


def attack_cases(cases: list[Case], mode: str, patch: int, sub_patch: int | None, attacks: tuple[str, ...],
                 *, learned_steps: int = 400, log=lambda message: None,
                 public_folders: tuple[Path, ...] = ()) -> None:
    """Run every applicable attack on every case; fills `case.results` and `case.pictures`."""
    facts = mode_of(mode)
    if not facts.encrypted:
        for case in cases:
            case.results["stored"] = _picture_scores(case, case.stored)
            case.pictures["stored"] = case.as_drawn["stored"] = case.stored
        return
    tile = facts.tile(patch, sub_patch)
    setting = _Setting(patch, sub_patch, tile, cases[0].original.shape[0] // patch, facts.mixes, facts.turns,
                       attacks, learned_steps, log, tuple(public_folders))
    for runner in attacks_for(mode):
        if runner.attack not in attacks or tile < runner.min_tile:
            continue
        started = time.perf_counter()
        runner.run(cases, setting)
        if runner.attack == "learned":
            log(f"learned attacker ({learned_steps} steps) on {len(cases)} images: "
                f"{time.perf_counter() - started:.0f} s")
        elif runner.attack == "jigsaw":
            log(f"jigsaw on {len(cases)} images: {time.perf_counter() - started:.0f} s")


def _best(case: Case) -> str | None:
    """The attack whose picture is closest to the original (highest PSNR)."""
    scored = [k for k in case.results if "psnr" in case.results[k]]
    return max(scored, key=lambda k: case.results[k]["psnr"]) if scored else None


def summarise(cases: list[Case]) -> dict[str, dict[str, float]]:
    """Mean of every metric per attack over the cases, and re-identification among them.

    `reidentification`: how often an attack's picture is closer (pixel correlation, over
    every flip and quarter turn of the picture) to its own original than to any other image
    tested; chance is 1 / images. Needs at least two images.
    """
    names = sorted({name for case in cases for name in case.results})
    out = {}
    for name in names:
        rows = [case.results[name] for case in cases if name in case.results]
        out[name] = {metric: round(float(np.mean([r[metric] for r in rows])), 4)
                     for metric in sorted(rows[0])}
        drawn = [case for case in cases if name in case.as_drawn]
        if len(drawn) >= 2 and len(drawn) == len(cases):
            rate, chance = reidentification(np.stack([c.as_drawn[name] for c in drawn]),
                                            np.stack([c.original for c in drawn]), np.zeros(len(drawn)),
                                            any_turn=True)
            out[name].update(reidentification=round(rate, 4), reidentification_chance=round(chance, 4))
    return out


# -- report out --------------------------------------------------------------------------------

def _display(img: np.ndarray, size: int) -> Image.Image:
    """An image as a PIL picture of the plain size (stored mixed images are blown up)."""
    x = np.asarray(img)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    pil = Image.fromarray(x.astype(np.uint8))
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.NEAREST)
    return pil


def write_report(out: Path, cases: list[Case], meta: dict[str, Any]) -> dict[str, Any]:
    """Write privacy.json, index.html and img/*.png into a temp folder, then rename it to `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrivacyError(f"{out}: report folder exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (staging / "img").mkdir()
        size = cases[0].original.shape[0]
        images = []
        for i, case in enumerate(cases):
            best = _best(case)
            files = {}
            for label, img in (("original", case.original), ("encrypted", case.stored),
                               ("best", case.pictures.get(best) if best else None)):
                if img is None:
                    continue
                files[label] = f"img/{i:03d}-{label}.png"
                _display(img, size).save(staging / files[label], optimize=True)
            images.append({"name": case.name, "best": best, "attacks": {
                k: {m: round(float(v), 4) for m, v in r.items()} for k, r in case.results.items()},
                "files": files})
        summary = summarise(cases)
        best_overall = max(summary, key=lambda k: summary[k].get("psnr", -1.0)) if summary else None
        report = {**meta, "summary": summary, "best_attack": best_overall, "images": images}
        (staging / "privacy.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        (staging / "index.html").write_text(_html(report))
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _html(report: dict[str, Any]) -> str:
    e = html.escape
    cipher = report["cipher"]
    metrics = ("direct", "neighbour", "psnr", "ssim", "reidentification")
    rows = "".join(
        f"<tr><td>{e(name)}</td>" + "".join(f"<td>{s.get(m, '–')}</td>" for m in metrics) + "</tr>"
        for name, s in report["summary"].items())
    gallery = "".join(
        f"<tr><td>{e(img['name'])}</td>"
        + "".join(f"<td><img src=\"{e(img['files'][k])}\" width=\"160\"></td>" if k in img["files"] else "<td></td>"
                  for k in ("original", "encrypted", "best"))
        + f"<td>{e(img['best'] or '–')}</td></tr>" for img in report["images"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>patchveil privacy audit: {e(cipher['mode'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd}}</style>
</head><body>
<h1>Privacy audit: mode <code>{e(cipher['mode'])}</code></h1>
<p>patch {cipher['patch']}, sub-patch {cipher['sub_patch']}, size {cipher['size']}, {len(report['images'])} images
({e(report['source'])}). Best attack: <b>{e(str(report['best_attack']))}</b>.
Neighbour accuracy: fraction of the original tile adjacencies the attack restored (0 hides all);
PSNR/SSIM: closeness of its picture to the original.</p>
<table><tr><th>attack</th>{''.join(f'<th>{m}</th>' for m in metrics)}</tr>{rows}</table>
<h2>Gallery: original | encrypted | best reconstruction</h2>
<table><tr><th>image</th><th>original</th><th>encrypted</th><th>best reconstruction</th><th>by</th></tr>{gallery}</table>
</body></html>
"""


# -- the command -------------------------------------------------------------------------------

def _parse_attacks(value: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(a.strip() for a in value.split(",") if a.strip()))
    unknown = [a for a in chosen if a not in ATTACKS]
    if unknown or not chosen:
        raise PrivacyError(f"--attacks: {', '.join(unknown) or 'none given'} not among {', '.join(ATTACKS)}")
    return chosen


_OPTION_OF_FIELD = {"mode": "--mode", "patch": "--patch", "sub_patch": "--sub-patch", "image_size": "--size"}


def _spec(mode: str, patch: int, sub_patch: int | None, h: int, w: int) -> CipherSpec:
    """The cipher's geometry, checked by the manifest's own validator (a refusal names the option)."""
    try:
        return CipherSpec.for_image(mode, patch, sub_patch, (h, w), "png", None, 3)
    except ManifestError as exc:
        field, _, reason = str(exc).partition(": ")
        raise PrivacyError(f"{_OPTION_OF_FIELD.get(field, field)}: {reason}") from None


def _check_geometry(mode: str, patch: int, sub_patch: int | None, size: int) -> None:
    _spec(mode, patch, sub_patch, size, size)
    if size // patch < 2:
        raise PrivacyError(f"--size {size} with --patch {patch} leaves fewer than 2x2 tiles to shuffle")


@click.command("privacy", cls=Command)
@click.option("--mode", type=click.Choice(NAMES), help="Cipher to attack (with --images/--builtin).")
@click.option("--patch", default=16, show_default=True, help="Patch size p.")
@click.option("--sub-patch", default=8, show_default=True, help="Sub-patch size s (mixing modes).")
@click.option("--size", default=224, show_default=True, help="Side of the square image the cipher sees.")
@click.option("--images", type=click.Path(path_type=Path), help="Folder of images to encrypt and attack.")
@click.option("--builtin", is_flag=True, help="Use the scikit-image photos (astronaut, coffee, ...).")
@click.option("--shards", type=click.Path(path_type=Path), help="An owner's release to attack instead.")
@click.option("--keystore", type=click.Path(file_okay=False, path_type=Path),
              help="With --shards: the owner's keystore (the truth for scoring).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help=PASSPHRASE_HELP)
@click.option("--source", type=click.Path(path_type=Path), help="With --shards: the folder that was encrypted.")
@click.option("--resize", type=int, help="With --shards: the shorter side the job resized to (default: size·8/7).")
@click.option("--attacks", "attack_list", default=",".join(ATTACKS), show_default=True,
              help="Comma-separated attacks to run.")
@click.option("--limit", default=8, show_default=True, help="Most images to attack.")
@click.option("--learned-steps", default=400, show_default=True, help="Training steps of the learned attacker.")
@click.option("--public-photos", "public_folders", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of public photos the learned attacker trains on (repeatable; default: 14 "
                   "skimage photos). E.g. /usr/share/backgrounds from Debian's wallpaper packages.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder (new or empty).")
def privacy_command(mode, patch, sub_patch, size, images, builtin, shards, keystore, passphrase_file, source,
                    resize, attack_list, limit, learned_steps, public_folders, out) -> None:
    """Attack a cipher on real images: REPORT/privacy.json and an HTML/PNG gallery.

    \b
    Examples:
      audit-shards privacy --mode mix-shuffle --builtin --out report/
      audit-shards privacy --mode shuffle --images ~/photos --attacks jigsaw --out report/
      audit-shards privacy --shards ~/release --keystore ~/pv-keys --source ~/data/imagenet --out report/
    """
    _run(mode, patch, sub_patch, size, images, builtin, shards, keystore, passphrase_file, source,
         resize, attack_list, limit, learned_steps, out, public_folders)


def _run(mode, patch, sub_patch, size, images, builtin, shards, keystore, passphrase_file, source,
         resize, attack_list, limit, learned_steps, out, public_folders=()) -> None:
    started = time.perf_counter()
    attacks = _parse_attacks(attack_list)
    if limit < 1:
        raise PrivacyError(f"--limit must be at least 1, got {limit}")
    if learned_steps < 1:
        raise PrivacyError(f"--learned-steps must be at least 1, got {learned_steps}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrivacyError(f"{out}: report folder exists and is not empty")

    def log(message: str) -> None:
        click.echo(message, err=True)

    if shards is not None:
        if mode or images or builtin:
            raise PrivacyError("--shards audits a release as made: drop --mode, --images and --builtin")
        if keystore is None or source is None:
            raise PrivacyError("--shards needs --keystore (the truth) and --source (the originals)")
        if not Path(shards).is_dir():
            raise PrivacyError(f"{shards}: not a release folder")
        from keys.keystore import open_keystore
        from keys.passphrase import read_passphrase

        store = open_keystore(keystore, read_passphrase(passphrase_file))
        cases, cipher = cases_from_release(shards, store, source, limit, resize)
        if not cases:
            raise PrivacyError(f"{shards}: the release holds no samples")
        mode, patch, sub_patch, size = cipher.mode, cipher.patch, cipher.sub_patch, cipher.image_size[0]
        origin = f"release {Path(shards).name}"
    else:
        if mode is None:
            raise PrivacyError("say what to attack: --mode with --images DIR or --builtin, or --shards")
        if bool(images) == bool(builtin):
            raise PrivacyError("give exactly one of --images DIR and --builtin")
        sub_patch = sub_patch if mode_of(mode).mixes else None
        _check_geometry(mode, patch, sub_patch, size)
        pictures = builtin_images(size)[:limit] if builtin else load_images(images, size, limit)
        from keys.derive import DatasetKey

        throwaway = DatasetKey("privacy-audit", os.urandom(32))  # dropped when this function returns
        cases = encrypt_cases(pictures, mode, patch, sub_patch, throwaway)
        del throwaway
        origin = "builtin photos" if builtin else f"images {Path(images).name}"
    log(f"attacking {len(cases)} images, mode {mode}, attacks {', '.join(attacks)}")
    attack_cases(cases, mode, patch, sub_patch, attacks, learned_steps=learned_steps, log=log,
                 public_folders=tuple(public_folders))
    meta = {"tool": "audit-shards privacy", "source": origin,
            "cipher": {"mode": mode, "patch": patch, "sub_patch": sub_patch, "size": size,
                       "channels": int(cases[0].original.shape[-1])},
            "attacks": list(attacks), "learned_steps": learned_steps,
            "public_photos": [str(f) for f in public_folders] or "skimage",
            "seconds": round(time.perf_counter() - started, 1)}
    report = write_report(out, cases, meta)
    for name, scores in report["summary"].items():
        click.echo(f"{name:<10} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    click.echo(f"best attack: {report['best_attack']}; report in {out}/index.html")
