"""The hardened building blocks on real images: tile turns (D4), tile scrambles, the
mix-shuffle-orient mode through the real job, and the D4-invariant model that reads it."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

import train.models  # noqa: F401  (registers d4vit_*)
from conftest import natural_photos
from shards.modes import MODES
from encrypt import ciphers
from encrypt.cli import cli
from encrypt.decode import decode_image
from encrypt.geometry import resize_center_crop
from encrypt.risk import risk_line
from research.scramble import scramble_length, scramble_tiles, unscramble_tiles
from keys.derive import DatasetKey
from releases import make_keystore, make_release, write_imagefolder, keys_of
from shards.manifest import CipherSpec
from shards.reader import iter_samples
from train.models import DihedralPatchEmbed, model_for_cipher
from train.models.dihedral import turn_tiles

RNG_SEED = 20  # test draws only; production turns come from keys (DatasetKey.orientations)


def obvious_turn(tile: np.ndarray, k: int) -> np.ndarray:
    """D4 element k written the slow way: mirror left-right when k >= 4, then k % 4 quarter turns."""
    out = tile[:, ::-1] if k >= 4 else tile
    for _ in range(k % 4):
        out = np.rot90(out)
    return out


def tiles_of(img: np.ndarray, t: int) -> list[np.ndarray]:
    return [img[r:r + t, c:c + t] for r in range(0, img.shape[0], t) for c in range(0, img.shape[1], t)]


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


def test_orient_turns_each_tile_in_place(photos):
    img = photos["astronaut"]
    turns = np.random.default_rng(RNG_SEED).integers(0, 8, 196)
    enc = ciphers.orient_tiles(img, turns, 16)
    assert enc.shape == img.shape and enc.dtype == np.uint8
    for i, (plain, stored) in enumerate(zip(tiles_of(img, 16), tiles_of(enc, 16))):
        assert np.array_equal(stored, obvious_turn(plain, int(turns[i]))), i
    assert ciphers.unorient_tiles(enc, turns, 16).tobytes() == img.tobytes()


def test_the_eight_turns_are_distinct_and_each_is_undone(photos):
    tile = photos["coffee"][96:112, 96:112]  # a textured 16 px tile
    turned = [ciphers.orient_tiles(tile, [k], 16) for k in range(ciphers.DIHEDRAL)]
    assert len({t.tobytes() for t in turned}) == 8
    for k, t in enumerate(turned):
        assert np.array_equal(ciphers.orient_tiles(t, [ciphers.dihedral_inverse(k)], 16), tile)


def test_orient_batch_takes_one_row_of_turns_per_image(fmnist_small):
    images = np.pad(fmnist_small[0][:20], ((0, 0), (2, 2), (2, 2)))[..., None]  # N×32×32×1
    turns = np.random.default_rng(RNG_SEED).integers(0, 8, (20, 64))
    enc = ciphers.orient_tiles(images, turns, 4)
    for i in (0, 7, 19):
        assert np.array_equal(enc[i], ciphers.orient_tiles(images[i], turns[i], 4))
    assert np.array_equal(ciphers.unorient_tiles(enc, turns, 4), images)
    with pytest.raises(ValueError, match="orientations must lie in 0..7"):
        ciphers.orient_tiles(images[0], np.full(64, 8), 4)
    with pytest.raises(ValueError, match="63 orientations for an image of 64 tiles"):
        ciphers.orient_tiles(images[0], np.zeros(63, int), 4)


def test_scramble_moves_the_same_values_in_every_tile(photos):
    img = photos["rocket"]
    perm = np.random.default_rng(RNG_SEED).permutation(scramble_length(16, 3))
    enc = scramble_tiles(img, perm, 16)
    for plain, stored in list(zip(tiles_of(img, 16), tiles_of(enc, 16)))[::37]:
        assert np.array_equal(stored.reshape(-1), plain.reshape(-1)[perm])
        assert Counter(stored.reshape(-1).tolist()) == Counter(plain.reshape(-1).tolist())
    assert unscramble_tiles(enc, perm, 16).tobytes() == img.tobytes()
    with pytest.raises(ValueError, match="scramble permutation has 10 entries, a 16x16x3 tile has 768"):
        scramble_tiles(img, np.arange(10), 16)


def test_mix_shuffle_orient_is_mix_shuffle_then_turns_and_decrypts_to_the_mixed_image(photos):
    img = photos["chelsea"]
    rng = np.random.default_rng(RNG_SEED)
    perm, turns = rng.permutation(196), rng.integers(0, 8, 196)
    enc = ciphers.encrypt_image(img, "mix-shuffle-orient", perm, 16, 8, turns)
    assert enc.shape == (112, 112, 3)
    assert np.array_equal(enc, ciphers.orient_tiles(ciphers.mix_shuffle(img, perm, 16, 8), turns, 8))
    back = ciphers.decrypt_image(enc, "mix-shuffle-orient", perm, 16, 8, turns)
    assert np.array_equal(back, ciphers.mix(img, 16, 8))
    assert MODES["mix-shuffle-orient"].stored_size((224, 224), 16, 8) == (112, 112)
    assert MODES["mix-shuffle-orient"].draws((224, 224), 16) == (196, 196)
    assert MODES["mix-shuffle"].draws((224, 224), 16) == (196, 0)
    with pytest.raises(ValueError, match="needs the keyed tile orientations"):
        ciphers.encrypt_image(img, "mix-shuffle-orient", perm, 16, 8)


def test_keyed_orientations_are_reproducible_uniform_and_per_sample():
    key = DatasetKey("turns", bytes(range(32)))
    a = key.orientations(4000, "train", "sample-a")
    assert np.array_equal(a, key.orientations(4000, "train", "sample-a"))
    assert not np.array_equal(a, key.orientations(4000, "train", "sample-b"))
    assert not np.array_equal(a, key.orientations(4000, "val", "sample-a"))
    counts = np.bincount(a, minlength=8)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected each
    other = DatasetKey("turns", bytes(range(1, 33)))
    assert np.mean(a == other.orientations(4000, "train", "sample-a")) < 0.2


def test_mix_shuffle_orient_release_through_the_real_job(tmp_path, keystore):
    root = tmp_path / "src"
    files = write_imagefolder(root, {"train": 24})
    out = tmp_path / "release"
    manifest = make_release(out, keystore, root, "mix-shuffle-orient", sub_patch=2, shard_samples=12,
                            dataset_id="fm-orient")
    assert manifest.cipher.mode == "mix-shuffle-orient" and manifest.cipher.stored_size == (16, 16)
    assert manifest.cipher.tile == 2
    key = keys_of(keystore, out)
    by_key = {key.sample_id(rel): path for rel, path in files.items()}
    samples = list(iter_samples(out, "train"))
    assert len(samples) == 24
    for sample in samples:
        plain = resize_center_crop(decode_image(by_key[sample.key], 1), 32, 32)
        perm = key.permutation(64, "train", sample.key)
        turns = key.orientations(64, "train", sample.key)
        expected = ciphers.encrypt_image(plain, "mix-shuffle-orient", perm, 4, 2, turns)
        assert np.array_equal(sample.image, expected)
        assert np.array_equal(ciphers.decrypt_image(sample.image, "mix-shuffle-orient", perm, 4, 2, turns),
                              ciphers.mix(plain, 4, 2))


def test_the_trainer_trains_a_d4vit_on_a_mix_shuffle_orient_release(tmp_path, keystore):
    from train.engine import TrainConfig, train

    root = tmp_path / "src"
    write_imagefolder(root, {"train": 32, "val": 16})
    make_release(tmp_path / "release", keystore, root, "mix-shuffle-orient", sub_patch=2, shard_samples=16,
                 dataset_id="fm-orient-train")
    summary = train(TrainConfig(shards=str(tmp_path / "release"), out=str(tmp_path / "run"), epochs=1,
                                batch_size=16, workers=0, progress=False,
                                model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}))
    assert summary["step"] == 2 and np.isfinite(summary["val"]["loss"])
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"name": "d4vit_tiny_patch16_224"' in config and '"patch_size": 2' in config and '"img_size": 16' in config


def test_manifest_and_model_choice_for_the_new_mode():
    spec = CipherSpec(mode="mix-shuffle-orient", patch=16, sub_patch=8, image_size=(224, 224),
                      stored_size=(112, 112), format="jpeg", quality=95, channels=3)
    name, kwargs = model_for_cipher(spec.to_dict(), 1000, size="small")
    assert name == "d4vit_small_patch16_224"
    assert kwargs == {"num_classes": 1000, "in_chans": 3, "patch_size": 8, "img_size": 112}
    model = timm.create_model(name, device="meta", **kwargs)
    assert isinstance(model.patch_embed, DihedralPatchEmbed) and model.pos_embed is None


def test_d4vit_ignores_tile_order_and_turns_on_encrypted_photos():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        photos = np.stack(list(natural_photos(64).values()))      # 5×64×64×3 real photos
        rng = np.random.default_rng(RNG_SEED)
        perms = np.stack([rng.permutation(64) for _ in range(5)])
        turns = rng.integers(0, 8, (5, 64))
        mixed = ciphers.mix(photos, 8, 4).astype(np.float32)        # 32×32 stored, 4 px tiles
        again = ciphers.orient_tiles(ciphers.shuffle(mixed, perms, 4), turns, 4)
        as_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2) / 255
        name, kwargs = model_for_cipher({"mode": "mix-shuffle-orient", "patch": 8, "sub_patch": 4,
                                         "image_size": 64, "stored_size": 32, "channels": 3}, 10)
        model = timm.create_model(name, depth=2, **kwargs).eval()
        with torch.no_grad():
            a, b = model(as_torch(mixed)), model(as_torch(again))
            c = model(as_torch(ciphers.shuffle(mixed, perms, 4)))
        assert torch.allclose(a, b, atol=1e-4)
        assert torch.allclose(a, c, atol=1e-4)
        # The invariance is the embedding's doing: a plain PEViT embedding sees the turns.
        pevit = timm.create_model("pevit_tiny_patch16_224", depth=2, **kwargs).eval()
        with torch.no_grad():
            assert not torch.allclose(pevit(as_torch(mixed)), pevit(as_torch(again)), atol=1e-3)
        for k in range(8):
            assert torch.equal(turn_tiles(as_torch(mixed), 4, k),
                               as_torch(ciphers.orient_tiles(mixed, np.full(64, k), 4)))
    finally:
        torch.set_num_threads(before)


def test_cli_offers_the_mode_and_refuses_it_for_detection(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["imagefolder", "--help"]).output
    assert "mix-shuffle-orient" in help_text
    images, ann = tmp_path / "images", tmp_path / "instances.json"
    images.mkdir()
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    result = runner.invoke(cli, ["coco", str(images), str(ann), str(tmp_path / "out"), "--keystore",
                                 str(tmp_path / "ks"), "--mode", "mix-shuffle-orient"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot be used for detection" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode, figure", [("mix-shuffle-orient", "of plain top-1"),
                                          ("mix-shuffle", "re-identifies"), ("mix", "membership AUC")])
def test_every_run_prints_its_mode_s_measured_risk(tmp_path, keystore, mode, figure):
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 4})
    args = ["imagefolder", str(root), str(tmp_path / "out"), "--keystore", str(keystore.directory),
            "--size", "32", "--patch", "4", "--sub-patch", "2", "--grayscale", "--num-cpus", "0", "--quiet"]
    result = CliRunner().invoke(cli, args + (["--mode", mode] if mode != "mix-shuffle" else []),
                                env={"PATCHVEIL_PASSPHRASE": "test keystore: correct horse battery 5c1e"})
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith(f"warning: mode {mode}:")]
    # The line is the results file's figures (encrypt/risk.py; tests/test_measured_risk.py checks them).
    assert len(warning) == 1 and risk_line(mode) in warning[0] and figure in warning[0], warning
    assert "docs/privacy.md" in warning[0]
    # A refused run says only its error, no risk line.
    again = CliRunner().invoke(cli, args, env={"PATCHVEIL_PASSPHRASE": "test keystore: correct horse battery 5c1e"})
    assert again.exit_code == 2 and len(again.stderr.splitlines()) == 1, again.stderr


def test_one_d4_group_numpy_and_torch_agree():
    """The group is defined once in numpy (encrypt.ciphers.turn). Two torch users follow it:
    train's D4 embedding has its own `turn_tiles` (train may not import encrypt; the model
    turns whole batches on the GPU), the audit's turned attacker gathers with the numpy
    relabellings. All three must number the 8 elements alike."""
    from audit.attacks.oriented import _turn_batch

    rng = np.random.default_rng(RNG_SEED)
    tiles = rng.integers(0, 256, (2, 6, 5, 5, 3), dtype=np.uint8)          # B×N×t×t×C
    turns = rng.integers(0, ciphers.DIHEDRAL, (2, 6))
    want = np.stack([np.stack([ciphers.turn(tiles[b, n][None], int(turns[b, n]))[0] for n in range(6)])
                     for b in range(2)])
    got = _turn_batch(torch.from_numpy(tiles).permute(0, 1, 4, 2, 3), torch.from_numpy(turns))
    assert torch.equal(got.permute(0, 1, 3, 4, 2), torch.from_numpy(want))
    image = rng.integers(0, 256, (10, 15, 3), dtype=np.uint8)
    for k in range(ciphers.DIHEDRAL):
        as_torch = torch.from_numpy(image).permute(2, 0, 1)[None]
        assert torch.equal(turn_tiles(as_torch, 5, k)[0].permute(1, 2, 0),
                           torch.from_numpy(ciphers.orient_tiles(image, np.full(6, k), 5)))
    # compose is the group's product: turning by b then a equals turning by compose(a, b).
    x = tiles[0, 0]
    for a in range(8):
        for b in range(8):
            assert np.array_equal(ciphers.turn(ciphers.turn(x[None], b), a)[0],
                                  ciphers.turn(x[None], int(ciphers.compose(a, b)))[0])
        assert ciphers.compose(a, ciphers.dihedral_inverse(a)) == 0
