"""The mode table (shards.modes) is the contract: every piece a mode needs, checked per row.

Parametrised over the table, so a new row fails here until it has its cipher entry, a model
family, an attack, its place in the CLI, the demo and the docs — and an old row fails if its
keyed draws or its ciphertext change (existing releases must still decrypt).
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

import train.models  # noqa: F401  (registers the families)
import train.models.yolos  # noqa: F401  (declares the detectors)
from audit.privacy import ATTACKS, attack_cases, attacks_for, encrypt_cases, privacy_command
from conftest import REPO, load_fashion_mnist, natural_photos
from encrypt.ciphers import CIPHERS, cipher_of, mix
from encrypt.cli import cli as encrypt_cli
from encrypt.decode import decode_image
from encrypt.geometry import resize_center_crop
from encrypt.plan import JobSettings, SettingsError
from keys.derive import DatasetKey
from releases import make_keystore, make_release, write_imagefolder, keys_of
from shards.manifest import CipherSpec
from shards.modes import CIPHER_MODES, MODES, NAMES
from shards.reader import iter_samples
from train.data import Augmentation, BatchTransform, open_release, stack_images
from train.models import model_for_cipher
from train.models.registry import family_for

KEY = DatasetKey("pinned", bytes(range(32)))
PATCH, SUB = 4, 2


def _sub(mode: str) -> int | None:
    return SUB if MODES[mode].mixes else None


def _spec(mode: str, h: int, w: int, channels: int, patch: int = PATCH, sub: int | None = SUB) -> CipherSpec:
    return CipherSpec.for_image(mode, patch, sub if MODES[mode].mixes else None, (h, w), "png", None, channels)


def _expected_back(mode: str, plain: np.ndarray, patch: int, sub: int | None) -> np.ndarray:
    """What a key holder gets back: the plain image, or the mixed one (averaging is lossy)."""
    return mix(plain, patch, sub) if MODES[mode].mixes else plain


# -- the table and the cipher entries --------------------------------------------------------

@pytest.mark.parametrize("mode", NAMES)
def test_every_mode_has_one_cipher_entry_consistent_with_its_facts(mode):
    entry = cipher_of(mode)
    assert entry.mode is MODES[mode]
    assert (entry.decrypt is not None) == MODES[mode].keyed  # keyless modes have nothing to undo
    assert MODES[mode].encrypted == (mode in CIPHER_MODES)


def test_cipher_entries_are_exactly_the_table():
    assert list(CIPHERS) == list(NAMES)


@pytest.mark.parametrize("mode", NAMES)
@pytest.mark.parametrize("source", ["fashion-mnist", "photos"])
def test_round_trip_on_real_images(mode, source):
    if source == "fashion-mnist":
        images = [img[..., None] for img in load_fashion_mnist("test", limit=4)[0]]  # 28 px: 7×7 tiles
        patch, sub = 4, 2
    else:
        images = list(natural_photos(64).values())[:3]
        patch, sub = 16, 8
    entry = cipher_of(mode)
    for i, plain in enumerate(images):
        h, w, c = plain.shape
        spec = _spec(mode, h, w, c, patch, sub)
        secrets = entry.secrets(KEY, "train", f"{source}-{i}", spec)
        stored = entry.encrypt(plain, secrets, spec.patch, spec.sub_patch)
        assert stored.shape[:2] == spec.stored_size and stored.dtype == np.uint8
        if MODES[mode].keyed:
            back = entry.decrypt(stored, secrets, spec.patch, spec.sub_patch)
            assert np.array_equal(back, _expected_back(mode, plain, spec.patch, spec.sub_patch))
            assert not np.array_equal(back, stored)
        elif not MODES[mode].encrypted:
            assert np.array_equal(stored, plain)


# Today's derivation and ciphertext, computed with the code before the table existed
# (fixed key, 32×32×3 image, patch 4, sub-patch 2, sample "train"/"sample-7"): a release
# made by any earlier version must still decrypt, so these may never change. Rows are
# only ever added.
_PIN_IMAGE = (np.arange(32 * 32 * 3, dtype=np.uint32) * 2654435761 % 251).astype(np.uint8).reshape(32, 32, 3)
PINNED_CIPHERTEXT = {
    "shuffle": "c73726c150bb412f",
    "mix": "a02402a107ed66f6",
    "mix-shuffle": "dd7dc112e256cdbf",
    "mix-shuffle-orient": "077e23286674735c",
    "none": "d860ccb209e80df5",
}
PINNED_DRAWS = {  # (split, sample, tokens): (sha256[:16] of the int64 permutation, of the turns)
    ("train", "sample-7", 64): ("1be8ffb3d5853cb3", "984fe2126f647769"),
    ("val", "abc", 196): ("a59d861640cab080", "e08e60aee133eda0"),
}


def _h(x) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("mode", sorted(PINNED_CIPHERTEXT))
def test_existing_modes_keep_their_derivation_and_ciphertext(mode):
    assert mode in MODES, "a mode of earlier releases left the table: those releases would not load"
    entry = cipher_of(mode)
    spec = _spec(mode, 32, 32, 3)
    secrets = entry.secrets(KEY, "train", "sample-7", spec)
    assert _h(entry.encrypt(_PIN_IMAGE, secrets, spec.patch, spec.sub_patch)) == PINNED_CIPHERTEXT[mode]


@pytest.mark.parametrize(("split", "sample", "tokens"), sorted(PINNED_DRAWS))
def test_keyed_draws_are_pinned(split, sample, tokens):
    perm, turns = PINNED_DRAWS[(split, sample, tokens)]
    assert _h(np.asarray(KEY.permutation(tokens, split, sample), dtype=np.int64)) == perm
    assert _h(np.asarray(KEY.orientations(tokens, split, sample), dtype=np.int64)) == turns


# -- a real release per mode: stored size, the job's secrets, a training step ------------------

@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract-src")
    return root, write_imagefolder(root, {"train": 16})


@pytest.mark.parametrize("mode", NAMES)
def test_release_matches_the_table_and_trains(mode, keystore, source, tmp_path):
    root, files = source
    out = tmp_path / "release"
    manifest = make_release(out, keystore, root, mode, sub_patch=_sub(mode), shard_samples=16,
                            dataset_id=f"contract-{mode}")
    spec = manifest.cipher
    assert spec.stored_size == MODES[mode].stored_size((32, 32), PATCH, _sub(mode))
    assert spec == JobSettings(mode=mode, patch=PATCH, sub_patch=_sub(mode), size=32, resize=32, views=1,
                               format="png", quality=95, channels=1, shard_samples=16).cipher_spec()
    # The job drew each sample's secrets with the entry's own `secrets`, as decrypt and the audit do.
    key = keys_of(keystore, out)
    by_key = {key.sample_id(rel): path for rel, path in files.items()}
    entry = cipher_of(mode)
    samples = list(iter_samples(out, "train"))
    for sample in samples:
        assert sample.image.shape[:2] == spec.stored_size
        plain = resize_center_crop(decode_image(by_key[sample.key], 1), 32, 32)
        secrets = entry.secrets(key, "train", sample.key, spec)
        assert np.array_equal(sample.image, entry.encrypt(plain, secrets, spec.patch, spec.sub_patch))

    release = open_release(out)
    name, kwargs = model_for_cipher(release.cipher.to_dict(), release.manifest.num_classes)
    torch.manual_seed(0)
    model = timm.create_model(name, depth=1, **kwargs)
    transform = BatchTransform(release.cipher, release.manifest.num_classes, (0.5,), (0.5,),
                               augment=Augmentation(hflip=1.0))
    images = stack_images([s.image for s in samples[:8]])
    labels = torch.tensor([s.label for s in samples[:8]])
    x, y = transform(images, labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("mode", NAMES)
def test_model_families_declare_every_mode(mode):
    assert family_for("classification", mode) is not None, f"no model family declares {mode}"
    # Detection needs boxes where the tokens were: a detector exactly for position-keeping modes.
    assert (family_for("detection", mode) is not None) == MODES[mode].keeps_positions


# -- the audit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", NAMES)
def test_privacy_audit_runs(mode):
    images = [(name, img[:32, :32]) for name, img in list(natural_photos(32).items())[:2]]
    cases = encrypt_cases(images, mode, PATCH, _sub(mode), DatasetKey("audit", bytes(32)))
    if MODES[mode].encrypted:
        assert attacks_for(mode), f"no attack module declares {mode}"
    attack_cases(cases, mode, PATCH, _sub(mode), ATTACKS, learned_steps=2)
    for case in cases:
        assert case.results and all(np.isfinite(v) for r in case.results.values() for v in r.values())


# -- the command lines, the demo and the docs --------------------------------------------------

def _choices(command, option: str) -> tuple[str, ...]:
    param = next(p for p in command.params if p.name == option)
    return tuple(param.type.choices)


def test_command_lines_accept_exactly_the_table():
    assert _choices(encrypt_cli.commands["imagefolder"], "mode") == NAMES
    assert _choices(encrypt_cli.commands["coco"], "mode") == NAMES
    assert _choices(privacy_command, "mode") == NAMES
    with pytest.raises(SettingsError, match="--mode: expected one of"):
        JobSettings(mode="rot13", patch=4, sub_patch=None, size=32, resize=32, views=1, format="png",
                    quality=95, channels=1, shard_samples=16)
    result = CliRunner().invoke(encrypt_cli, ["imagefolder", "a", "b", "--keystore", "k", "--mode", "rot13"])
    assert result.exit_code == 2 and "rot13" in result.output


@pytest.mark.parametrize("mode", NAMES)
def test_cli_coco_accepts_exactly_the_position_keeping_modes(mode, tmp_path):
    result = CliRunner().invoke(encrypt_cli, ["coco", str(tmp_path / "none"), str(tmp_path / "none.json"),
                                              str(tmp_path / "out"), "--keystore", str(tmp_path / "ks"),
                                              "--mode", mode, "--sub-patch", "2", "--patch", "4"])
    refused = "cannot be used for detection" in result.output
    assert refused != MODES[mode].keeps_positions, result.output


def test_demo_runs_every_cipher_of_the_table():
    spec = importlib.util.spec_from_file_location("demo", REPO / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert tuple(demo.MODES) == CIPHER_MODES


@pytest.mark.parametrize("doc", ["privacy.md", "data-owner.md", "ml-engineer.md"])
@pytest.mark.parametrize("mode", NAMES)
def test_docs_name_every_mode(doc, mode):
    assert f"`{mode}`" in (REPO / "docs" / doc).read_text(), f"docs/{doc} does not name `{mode}`"


# -- nobody else spells modes ------------------------------------------------------------------

_NAMES_RE = "|".join(re.escape(m) for m in sorted(NAMES, key=len, reverse=True))
_NOT_PIL = r"(?<!img\.)"  # PIL's Image.mode ("L", "RGB") is no cipher mode
CHAINS = [
    re.compile(_NOT_PIL + r"\bmode\s*(==|!=)\s*['\"]"),                  # if mode == "mix"
    re.compile(r"(?<!for )" + _NOT_PIL + r"\bmode\s+(not\s+)?in\s+\(\s*['\"]"),  # mode in ("mix", ...)
    re.compile(_NOT_PIL + r"\bmode\w*\.startswith\("),                    # mode.startswith("mix")
    re.compile(r"['\"](shuffle|mix|orient)['\"]\s+in\s+[\w.]*mode\b"),     # "shuffle" in cipher.mode
]
TUPLE = re.compile(rf"\(\s*['\"]({_NAMES_RE})['\"]\s*,\s*['\"]({_NAMES_RE})['\"]")  # ("shuffle", "mix", ...)
# Where mode names may stand: the table, and the per-mode declarations beside each piece.
DECLARATIONS = ("APPLIES_TO = (", "declare_family(")
# Benchmarks pick which modes to measure (a tuple there is a measurement plan), but branch on
# facts; hardened_modes.py's rows are research ciphers, most of them not modes at all.
PLANS = {"benchmarks"}
OWN_RESEARCH_ROWS = {"benchmarks/hardened_modes.py"}


def test_no_mode_chains_outside_the_table():
    bad = []
    for package in ("shards", "keys", "encrypt", "train", "audit", "examples", "benchmarks"):
        patterns = CHAINS + ([] if package in PLANS else [TUPLE])
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "shards/modes.py" or rel in OWN_RESEARCH_ROWS:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if any(d in code for d in DECLARATIONS):
                    continue
                if any(pattern.search(code) for pattern in patterns):
                    bad.append(f"{rel}:{number}: {line.strip()}")
    assert bad == []


def test_the_chain_detector_sees_chains():
    for line in ('if mode == "mix":', 'x = mode in ("shuffle", "mix")', 'mode.startswith("mix")',
                 '"shuffle" in cipher.mode', 'MODES = ("shuffle", "mix", "mix-shuffle")'):
        assert any(p.search(line) for p in CHAINS + [TUPLE]), line
    assert not any(p.search('if img.mode in ("L", "RGB"):') for p in CHAINS + [TUPLE])
