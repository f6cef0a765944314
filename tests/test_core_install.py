"""The command lines on a core install (`pip install patchveil`, no extras), for real.

Each command runs in a subprocess where torch, torchvision, timm, scipy, skimage, ray and
pycocotools cannot be imported (tests/core_install.py). `audit-shards verify` must work there
and never import them (the auditor's tool needs only the core); a command that does need an
extra must say which one, in one line, with exit status 2, before it writes anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from core_install import EXTRA_MODULES, heavy_imports, run_core, run_tracked
from releases import make_keystore, make_release, write_imagefolder

PASSPHRASE = b"Core-Install-Otter-4471"
MODEL_MODULES = {"torch", "torchvision", "timm", "scipy", "skimage"}


@pytest.fixture(scope="module")
def owner(tmp_path_factory) -> dict[str, Path]:
    """A real release of Fashion-MNIST (shuffle, PNG, 3 shards), its identity and custody log."""
    base = tmp_path_factory.mktemp("core")
    write_imagefolder(base / "src", {"train": 24, "val": 12})
    store = make_keystore(tmp_path_factory, PASSPHRASE)
    make_release(base / "release", store, base / "src", shard_samples=12, dataset_id="fm-core")
    (base / "identity.json").write_text(json.dumps(store.public_identity()))
    return {"src": base / "src", "release": base / "release", "identity": base / "identity.json",
            "log": store.custody.path, "keystore": store.directory}


def verify_args(owner: dict[str, Path]) -> list[str]:
    return ["audit-shards", "verify", str(owner["release"]), "--public-key", str(owner["identity"]),
            "--custody-log", str(owner["log"])]


def one_error_line(result) -> str:
    """The single stderr line of a failed command (and nothing on stdout)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


# -- the simulation itself -----------------------------------------------------------------

def test_the_simulated_core_install_cannot_find_any_extra():
    probe = ("import importlib.util, json\n"
             f"mods = {list(EXTRA_MODULES)!r}\n"
             "found = [m for m in mods if importlib.util.find_spec(m) is not None]\n"
             "try:\n    import torch\nexcept ModuleNotFoundError as exc:\n    missing = exc.name\n"
             "else:\n    missing = None\n"
             "import numpy, PIL, click, cryptography, webdataset, tqdm\n"
             "print(json.dumps({'found': found, 'missing': missing}))\n")
    result = run_core(["python", "-c", probe])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"found": [], "missing": "torch"}
    assert "numpy" in result.modules and not heavy_imports(result.modules)


# -- audit-shards verify: core only ---------------------------------------------------------

def test_audit_verify_passes_on_a_core_install(owner):
    result = run_core(verify_args(owner))
    assert result.returncode == 0, result.stderr
    assert "verified: 5 of 5 checks passed" in result.stdout
    assert "audit.verify" in result.modules          # the record is real...
    assert heavy_imports(result.modules) == set()    # ...and holds no extra


@pytest.mark.parametrize("args", [["--help"], ["verify", "--help"], "verify"])
def test_audit_verify_and_help_import_no_model_library_even_when_installed(owner, args):
    """On the full install too: start-up must not pay for torch, timm, scipy or skimage."""
    result = run_tracked(verify_args(owner) if args == "verify" else ["audit-shards", *args])
    assert result.returncode == 0, result.stderr
    assert {m.partition(".")[0] for m in result.modules} & MODEL_MODULES == set()


@pytest.mark.parametrize("command", ["audit-shards", "dataset-keys", "encrypt-dataset", "train-encrypted"])
def test_every_command_shows_its_help_on_a_core_install(command):
    result = run_core([command, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {command} ")
    assert not heavy_imports(result.modules)


def test_audit_help_lists_privacy_with_its_short_help_without_importing_it():
    result = run_core(["audit-shards", "--help"])
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(listed) == {"privacy", "verify"}
    assert "Attack a cipher on real images" in listed["privacy"]
    assert "audit.privacy" not in result.modules


def test_the_listed_short_help_is_the_privacy_commands_own():
    """The stored short help cannot drift from the command's docstring, and the lazy command
    still loads and runs its own --help on a full install."""
    from audit.cli import LAZY_COMMANDS, cli
    from audit.privacy import privacy_command

    assert privacy_command.help.splitlines()[0] == LAZY_COMMANDS["privacy"].short_help
    result = CliRunner().invoke(cli, ["privacy", "--help"])
    assert result.exit_code == 0, result.output
    assert "--attacks" in result.output and "--learned-steps" in result.output


# -- commands that need an extra: one line naming it, exit 2, nothing written ---------------

def test_audit_privacy_on_a_core_install_names_the_audit_extra(tmp_path):
    report = tmp_path / "report"
    result = run_core(["audit-shards", "privacy", "--mode", "shuffle", "--builtin", "--out", str(report)])
    line = one_error_line(result)
    assert result.returncode == 2
    assert 'pip install "patchveil[audit]"' in line
    assert not report.exists()


def test_train_classify_on_a_core_install_names_the_train_extra(owner, tmp_path):
    run = tmp_path / "run"
    result = run_core(["train-encrypted", "classify", "--shards", str(owner["release"]), "--out", str(run),
                       "--epochs", "1", "--quiet"])
    line = one_error_line(result)
    assert result.returncode == 2
    assert 'pip install "patchveil[train]"' in line


def test_encrypt_with_ray_workers_on_a_core_install_names_the_encrypt_extra(owner, tmp_path):
    out = tmp_path / "release"
    result = run_core(["encrypt-dataset", "imagefolder", str(owner["src"]), str(out), "--num-cpus", "2",
                       "--keystore", str(owner["keystore"]), "--grayscale", "--size", "32", "--patch", "4",
                       "--sub-patch", "2", "--format", "png", "--shard-samples", "12", "--quiet"],
                      env={"PATCHVEIL_PASSPHRASE": PASSPHRASE.decode()})
    line = one_error_line(result)
    assert result.returncode == 2
    assert 'pip install "patchveil[encrypt]"' in line
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == []  # no journal or owner report beside it either
