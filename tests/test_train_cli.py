"""train-encrypted on real releases: kill -9 and resume, evaluate, and one-line bad input.

The interrupted runs are separate processes (killed with SIGKILL); the reference and the
resumed runs go through click in this process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from releases import make_keystore, make_release, write_imagefolder
from train.checkpoint import load_checkpoint
from train.cli import cli

TINY = ["--model-arg", "embed_dim=32", "--model-arg", "depth=2", "--model-arg", "num_heads=2"]
# 480 training images, 15 steps of 32 per epoch: small enough to run three times.
RUN = ["--epochs", "2", "--batch-size", "32", "--lr", "3e-3", "--warmup-epochs", "0", "--workers", "1",
       "--log-every", "1", "--quiet", *TINY]
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # one thread, as in this process: the same float results


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "fmnist"
    write_imagefolder(root, {"train": 480, "val": 120})
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory, keystore, source) -> Path:
    out = tmp_path_factory.mktemp("rel") / "shuffle"
    make_release(out, keystore, source, shard_samples=60)
    return out


def classify(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train.cli", "classify", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(release, tmp_path_factory) -> Path:
    """A run nobody interrupted (in this process)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    result = CliRunner().invoke(cli, ["classify", "--shards", str(release), "--out", str(out), *RUN])
    assert result.exit_code == 0, result.output
    return out


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def logged(run: Path) -> tuple[list, list]:
    steps = [(r["step"], r["loss"], r["lr"]) for r in records(run) if r["event"] == "train"]
    epochs = [(r["epoch"], r["val_loss"], r["val_top1"], r["val_top5"]) for r in records(run)
              if r["event"] == "epoch"]
    return steps, epochs


@pytest.mark.parametrize("checkpoint_every", [4, 0], ids=["mid-epoch", "epoch-end"])
def test_kill_9_then_resume_logs_the_same_losses_step_for_step(release, reference, tmp_path, checkpoint_every):
    out = tmp_path / "run"
    proc = classify("--shards", str(release), "--out", str(out), *RUN,
                    "--checkpoint-every", str(checkpoint_every))
    deadline = time.monotonic() + 240
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    stopped = load_checkpoint(out / "last.pt")
    assert 0 < stopped["step"] < 30, "the run was not interrupted"
    if checkpoint_every:
        assert stopped["batch_in_epoch"] > 0  # resumes inside an epoch
    else:
        assert stopped["batch_in_epoch"] == 0 and stopped["step"] == 15

    resumed = CliRunner().invoke(cli, ["classify", "--shards", str(release), "--out", str(out), "--resume",
                                       "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert "trained 2 epochs (30 steps" in resumed.output
    assert logged(out) == logged(reference)  # every step's loss and lr, every epoch's val metrics
    assert len(logged(out)[0]) == 30
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_evaluate_prints_the_recorded_val_metrics(release, reference):
    result = CliRunner().invoke(cli, ["evaluate", "--shards", str(release), "--checkpoint",
                                      str(reference / "best.pt"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    best = max((r for r in records(reference) if r["event"] == "epoch"), key=lambda r: r["val_top1"])
    assert (scored["top1"], scored["top5"], scored["samples"]) == (best["val_top1"], best["val_top5"], 120)
    assert scored["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CASES = ["missing-manifest", "edited-manifest", "tampered-shard", "other-cipher", "not-a-checkpoint",
         "run-exists", "nothing-to-resume", "changed-settings", "unknown-model", "bad-model-arg"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(release, reference, source, keystore, tmp_path, case):
    out = tmp_path / "new-run"
    args = ["classify", "--shards", str(release), "--out", str(out), *RUN]
    expect = ""
    if case == "missing-manifest":
        (tmp_path / "empty").mkdir()
        args[2], expect = str(tmp_path / "empty"), "manifest.json: not found"
    elif case == "edited-manifest":
        copy = tmp_path / "copy"
        shutil.copytree(release, copy)
        text = (copy / "manifest.json").read_text()  # a valid manifest, only the signature knows
        (copy / "manifest.json").write_text(text.replace('"trouser"', '"trousers"'))
        args[2], expect = str(copy), "signature"
    elif case == "tampered-shard":
        copy = tmp_path / "copy"
        shutil.copytree(release, copy)
        _flip_a_byte(copy / "train-000002.tar")
        args[2], expect = str(copy), "train-000002.tar: sha256"
        args.append("--verify-digests")
    elif case == "other-cipher":
        mixed = tmp_path / "mixed"
        make_release(mixed, keystore, source, mode="mix", sub_patch=2, shard_samples=60, dataset_id="fm-mix")
        args = ["evaluate", "--shards", str(mixed), "--checkpoint", str(reference / "best.pt")]
        expect = "best.pt: trained on shuffle p=4 32x32 1ch shards, this release is mix p=4 s=2"
    elif case == "not-a-checkpoint":
        (tmp_path / "notes.pt").write_text("not a checkpoint")
        args = ["evaluate", "--shards", str(release), "--checkpoint", str(tmp_path / "notes.pt")]
        expect = "notes.pt: not a readable checkpoint"
    elif case == "run-exists":
        out = reference
        args[4], expect = str(reference), "already holds a run"
    elif case == "nothing-to-resume":
        args.append("--resume")
        expect = "last.pt: not found, nothing to resume"
    elif case == "changed-settings":
        out = tmp_path / "continued"
        shutil.copytree(reference, out)
        args = ["classify", "--shards", str(release), "--out", str(out), "--resume", "--lr", "0.1"]
        expect = "last.pt: lr was 0.003, now 0.1"
    elif case == "unknown-model":
        args += ["--model", "no_such_vit"]
        expect = "'no_such_vit' is not a timm model"
    elif case == "bad-model-arg":
        args += ["--model-arg", "depth"]
        expect = "--model-arg 'depth': expected KEY=VALUE"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) if out.exists() else None

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expect in lines[0]
    after = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) if out.exists() else None
    assert after == before  # nothing written


@pytest.mark.parametrize("command", ["classify", "detect"])
def test_the_options_are_the_config_fields_with_their_defaults(command):
    """The CLI is generated from the config: every field an engineer sets is an option, with the
    field's own default; `progress` alone is set another way (--quiet)."""
    import dataclasses

    from train.config import DetectionConfig, TrainConfig

    config_type = {"classify": TrainConfig, "detect": DetectionConfig}[command]
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    params = {p.name: p for p in cli.commands[command].params}
    assert {n for n, f in fields.items() if f.metadata["internal"]} == {"progress"}
    assert set(params) - {"resume", "quiet", "threads"} == set(fields) - {"progress"}
    for name, f in fields.items():
        if f.default is not dataclasses.MISSING and name != "progress":
            assert params[name].default == f.default, name
    assert "--det-tokens" in params["num_det_tokens"].opts if command == "detect" else True
    assert params["model_kwargs"].opts == ["--model-arg"] and params["model_kwargs"].multiple
