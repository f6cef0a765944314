"""Every bad option is refused before anything is written, the same way by all four commands.

Each case feeds one bad value to the real command and expects exit 2, a single
``error: ...`` line naming the option, and no OUT folder afterwards (the old code wrote every
shard, the sealed index and a custody entry before noticing some of these).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from releases import SAMPLE

PASSPHRASE = "cli options test: correct horse battery 7d2e"
SAMPLE_GEOMETRY = ["--size", "32", "--resize", "32", "--patch", "4", "--sub-patch", "2", "--grayscale",
                   "--format", "png", "--num-cpus", "0"]


@pytest.fixture(scope="module")
def keystore(tmp_path_factory) -> Path:
    from keys.keystore import create_keystore

    path = tmp_path_factory.mktemp("ks") / "keystore"
    create_keystore(path, PASSPHRASE.encode())
    return path


def _env(keystore: Path) -> dict[str, str]:
    return {"PATCHVEIL_KEYSTORE": str(keystore), "PATCHVEIL_PASSPHRASE": PASSPHRASE}


def _custody_bytes(keystore: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(keystore.rglob("*")) if p.is_file())


BAD_IMAGEFOLDER = [
    (["--mode", "mix", "--patch", "4", "--sub-patch", "4"], "--sub-patch"),
    (["--mode", "mix-shuffle", "--patch", "4", "--sub-patch", "3"], "--sub-patch"),
    (["--quality", "0", "--format", "jpeg"], "--quality"),
    (["--quality", "1000"], "--quality"),
    (["--split", "a/b"], "--split"),
    (["--split", ".."], "--split"),
    (["--patch", "0"], "--patch"),
    (["--size", "0"], "--size"),
    (["--size", "30"], "--size"),
    (["--resize", "16"], "--resize"),
    (["--shard-samples", "0"], "--shard-samples"),
    (["--num-cpus", "-3"], "--num-cpus"),
    (["--views", "0"], "--views"),
    (["--min-side", "-1"], "--min-side"),
    (["--max-skipped", "2"], "--max-skipped"),
    (["--mode", "rot13"], "--mode"),
]


@pytest.mark.parametrize("extra,option", BAD_IMAGEFOLDER, ids=[" ".join(a) for a, _ in BAD_IMAGEFOLDER])
def test_bad_imagefolder_option_is_refused_before_out_exists(tmp_path, keystore, extra, option):
    from encrypt.cli import cli

    out = tmp_path / "release"
    before = _custody_bytes(keystore)
    result = CliRunner().invoke(cli, ["imagefolder", str(SAMPLE), str(out), *SAMPLE_GEOMETRY, *extra],
                                env=_env(keystore))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() and not Path(f"{out}.owner").exists()
    assert _custody_bytes(keystore) == before  # no dataset-derived or used-for-job entry


BAD_COCO = [
    (["--mode", "shuffle"], "--mode"),
    (["--patch", "0"], "--patch"),
    (["--split", "x y"], "--split"),
    (["--sub-patch", "8"], "--sub-patch"),
]


@pytest.mark.parametrize("extra,option", BAD_COCO, ids=[" ".join(a) for a, _ in BAD_COCO])
def test_bad_coco_option_is_refused_before_out_exists(tmp_path, keystore, extra, option):
    from canvas_coco import write_canvas_coco
    from conftest import load_fashion_mnist
    from encrypt.cli import cli

    items, labels = load_fashion_mnist("train", limit=20)
    images, annotations = write_canvas_coco(tmp_path / "coco", items, labels, images=4, canvas=64)
    out = tmp_path / "release"
    result = CliRunner().invoke(cli, ["coco", str(images), str(annotations), str(out), "--size", "64",
                                      "--patch", "8", "--sub-patch", "4", "--num-cpus", "0", *extra],
                                env=_env(keystore))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], result.stderr
    assert not out.exists()


def test_good_options_still_run(tmp_path, keystore):
    """The refusals above are not a blanket no: the sample geometry encrypts and signs."""
    from encrypt.cli import cli

    out = tmp_path / "release"
    result = CliRunner().invoke(cli, ["imagefolder", str(SAMPLE), str(out), *SAMPLE_GEOMETRY,
                                      "--mode", "mix-shuffle", "--shard-samples", "500", "--quiet"],
                                env=_env(keystore))
    assert result.exit_code == 0, result.output
    assert "wrote 2500 images" in result.stdout
    assert (out / "manifest.json").is_file()


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _code_under_test() -> dict[str, str]:
    """PYTHONPATH when set, so an installed entry point runs this checkout's code, not the
    installed one (whose older format readers would meet this checkout's keystore files)."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


@pytest.mark.parametrize("command", ["dataset-keys", "encrypt-dataset", "train-encrypted", "audit-shards"])
def test_every_command_has_version(command):
    from importlib.metadata import version

    done = subprocess.run([_bin(command), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{command} (patchveil) {version('patchveil')}"


@pytest.mark.parametrize("command,args", [
    ("dataset-keys", ["info", "--keystore", "{missing}"]),
    ("encrypt-dataset", ["decrypt", "{missing}", "{dest}", "--keystore", "{missing}"]),
    ("train-encrypted", ["evaluate", "--shards", "{missing}", "--checkpoint", "{missing}/best.pt"]),
    ("audit-shards", ["verify", "{missing}", "--public-key", "{missing}/identity.json"]),
])
def test_one_renderer_for_every_command(tmp_path, command, args):
    """A missing input gives the same shape everywhere: one `error: <path>: <reason>` line, exit 2."""
    missing = tmp_path / "no-such-folder"
    argv = [a.format(missing=missing, dest=tmp_path / "dest") for a in args]
    done = subprocess.run([_bin(command), *argv], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PATCHVEIL_PASSPHRASE": PASSPHRASE,
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and str(missing) in lines[0], lines[0]


def test_progress_bars_stay_out_of_logs(tmp_path, keystore):
    """stderr that is not a terminal gets no progress bar, so no carriage returns in logs."""
    out = tmp_path / "release"
    done = subprocess.run([_bin("encrypt-dataset"), "imagefolder", str(SAMPLE), str(out), *SAMPLE_GEOMETRY,
                           "--mode", "shuffle", "--shard-samples", "1000"],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", **_env(keystore), "OMP_NUM_THREADS": "1",
                               **_code_under_test()})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "shard/s" not in done.stderr
    assert "wrote 2500 images" in done.stdout


def test_training_disk_error_is_one_line_naming_the_file(tmp_path, keystore):
    """A file system error while training (here: the run folder cannot be made) is one line
    naming the path, exit 2, not a traceback."""
    from releases import make_release
    from keys.keystore import open_keystore

    release = tmp_path / "release"
    make_release(release, open_keystore(keystore, PASSPHRASE.encode()), shard_samples=1000)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = subprocess.run([_bin("train-encrypted"), "classify", "--shards", str(release),
                           "--out", str(blocker / "run"), "--epochs", "1", "--quiet"],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(blocker) in errors[0], done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]  # the last word, after the log lines
    assert "Traceback" not in done.stderr
