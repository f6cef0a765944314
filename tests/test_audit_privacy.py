"""`audit-shards privacy` end to end: real photos and a real release in, a report out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from audit.privacy import privacy_command
from conftest import natural_photos
from shards.modes import MODES
from encrypt.ciphers import unshuffle
from releases import make_keystore, make_release, write_imagefolder, keys_of

PASSPHRASE = b"test keystore: correct horse battery 5c1e"


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(privacy_command, list(args), env=env)


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_builtin_shuffle_report_shows_the_jigsaw_restores_the_photos(tmp_path):
    out = tmp_path / "report"
    result = run("--mode", "shuffle", "--builtin", "--size", "96", "--attacks", "jigsaw", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "privacy.json").read_text())
    assert report["cipher"] == {"mode": "shuffle", "patch": 16, "sub_patch": None, "size": 96, "channels": 3}
    assert report["best_attack"] == "jigsaw" and len(report["images"]) == 5
    assert report["summary"]["jigsaw"]["neighbour"] >= 0.9  # 16 px shuffle of real photos does not hold
    assert report["summary"]["jigsaw"]["reidentification"] == 1.0  # each picture is its own photo again
    assert report["summary"]["jigsaw"]["reidentification_chance"] == 0.2
    photos = natural_photos(96)
    for entry in report["images"]:
        original = png(out / entry["files"]["original"])
        assert original.shape == (96, 96, 3)  # the job's resampling: near, not equal, to the test's own crop
        assert np.abs(original.astype(int) - photos[entry["name"]]).mean() < 4
        best = png(out / entry["files"]["best"])
        if entry["attacks"]["jigsaw"]["direct"] == 1.0:
            assert np.array_equal(best, original)
        assert not np.array_equal(png(out / entry["files"]["encrypted"]), original)
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 15 and "astronaut" in page
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temp folder left behind


def test_turned_mixed_tiles_hold_where_mix_shuffle_leaks(tmp_path):
    scores = {}
    for mode in ("mix-shuffle", "mix-shuffle-orient"):
        out = tmp_path / mode
        result = run("--mode", mode, "--builtin", "--size", "128", "--limit", "3", "--attacks", "jigsaw,inversion",
                     "--out", str(out))
        assert result.exit_code == 0, result.output
        scores[mode] = json.loads((out / "privacy.json").read_text())["summary"]["jigsaw"]
        assert png(out / "img" / "000-encrypted.png").shape == (128, 128, 3)  # stored 64 px, shown at 128
    assert scores["mix-shuffle-orient"]["neighbour"] <= 0.05
    assert scores["mix-shuffle-orient"]["neighbour"] < scores["mix-shuffle"]["neighbour"]


def test_learned_attacker_runs_on_turned_tiles(tmp_path):
    out = tmp_path / "report"
    result = run("--mode", "mix-shuffle-orient", "--builtin", "--size", "64", "--limit", "2",
                 "--attacks", "learned", "--learned-steps", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "privacy.json").read_text())
    learned = report["summary"]["learned"]
    assert 0.0 <= learned["neighbour"] <= 1.0 and learned["psnr"] > 0
    assert report["learned_steps"] == 2
    assert report["public_photos"] == "skimage"


def test_learned_attacker_trains_on_a_public_photo_folder(tmp_path):
    """--public-photos: the attacker's corpus is a folder the user names (no path built in)."""
    from skimage import data

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("camera", "coins", "brick"):
        Image.fromarray(getattr(data, name)()).save(corpus / f"{name}.png")
    out = tmp_path / "report"
    result = run("--mode", "mix-shuffle", "--builtin", "--size", "64", "--limit", "2", "--attacks", "learned",
                 "--learned-steps", "2", "--public-photos", str(corpus), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "privacy.json").read_text())
    assert report["public_photos"] == [str(corpus)] and "learned" in report["summary"]


def test_images_folder_with_a_broken_file_is_one_line_and_writes_nothing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, img in list(natural_photos(64).items())[:2]:
        Image.fromarray(img).save(folder / f"{name}.png")
    (folder / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    out = tmp_path / "report"
    line = one_error_line(run("--mode", "shuffle", "--images", str(folder), "--size", "64", "--out", str(out)))
    assert "zz-broken.jpg" in line and "not a readable image" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "shuffle", "--builtin", "--images", "x"], "exactly one of --images DIR and --builtin"),
    (["--builtin"], "say what to attack"),
    (["--mode", "shuffle", "--builtin", "--attacks", "jigsaw,psychic"], "psychic not among"),
    (["--mode", "mix", "--builtin", "--sub-patch", "5"], "--sub-patch: 5 must be smaller than and divide the patch 16"),
    (["--mode", "shuffle", "--builtin", "--size", "100"], "--size: 100x100 is not divisible by the patch 16"),
    (["--shards", "nowhere", "--source", "x"], "--shards needs --keystore"),
])
def test_bad_usage_is_one_line_exit_2(tmp_path, args, message):
    assert message in one_error_line(run(*args, "--out", str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


def test_existing_report_is_never_overwritten(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("owner's notes")
    assert "not empty" in one_error_line(run("--mode", "shuffle", "--builtin", "--out", str(out)))
    assert (out / "keep.txt").read_text() == "owner's notes"


def test_owner_release_is_attacked_and_scored_with_the_owner_key(tmp_path_factory, tmp_path):
    keystore = make_keystore(tmp_path_factory, PASSPHRASE)
    src = tmp_path / "src"
    files = write_imagefolder(src, {"train": 12})
    shards = tmp_path / "release"
    make_release(shards, keystore, src, "shuffle", shard_samples=12, dataset_id="fm-audit")
    out = tmp_path / "report"
    env = {"PATCHVEIL_PASSPHRASE": PASSPHRASE.decode()}
    result = run("--shards", str(shards), "--keystore", str(keystore.directory), "--source", str(src),
                 "--resize", "32", "--attacks", "jigsaw", "--limit", "4", "--out", str(out), env=env)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "privacy.json").read_text())
    assert report["cipher"]["mode"] == "shuffle" and report["cipher"]["channels"] == 1
    assert len(report["images"]) == 4
    key = keys_of(keystore, shards)
    by_key = {key.sample_id(rel): path for rel, path in files.items()}
    for entry in report["images"]:
        assert entry["name"] in by_key  # opaque sample keys, never source paths
        scores = entry["attacks"]["jigsaw"]
        assert 0.0 <= scores["neighbour"] <= 1.0 and 0.0 <= scores["direct"] <= 1.0
        # The original is what the cipher saw: the stored image unshuffled with the owner's key.
        perm = key.permutation(MODES["shuffle"].draws((32, 32), 4)[0], "train", entry["name"])
        stored = png(out / entry["files"]["encrypted"])
        assert np.array_equal(png(out / entry["files"]["original"]), unshuffle(stored[..., None], perm, 4)[..., 0])
    text = (out / "privacy.json").read_text() + (out / "index.html").read_text()
    assert not any(Path(rel).name in text for rel in files)
    wrong = run("--shards", str(shards), "--keystore", str(keystore.directory), "--source", str(tmp_path),
                "--out", str(tmp_path / "r2"), env=env)
    assert "source image of sample" in one_error_line(wrong)
    assert not (tmp_path / "r2").exists()
