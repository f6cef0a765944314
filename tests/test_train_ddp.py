"""Two-process DDP on CPU: `torchrun --nproc_per_node 2` over gloo, on a real release."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from releases import make_keystore, make_release, write_imagefolder
from train.checkpoint import load_checkpoint
from train.cli import cli
from train.engine import evaluate_checkpoint

BATCH = 16  # per process


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("src") / "fmnist"
    write_imagefolder(source, {"train": 480, "val": 120})
    out = tmp_path_factory.mktemp("rel") / "shuffle"
    make_release(out, make_keystore(tmp_path_factory), source, shard_samples=60)  # 8 + 2 shards
    return out


@pytest.fixture(scope="module")
def ddp_run(release, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("runs") / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "train.cli", "classify", "--shards", str(release), "--out", str(out),
               "--epochs", "2", "--batch-size", str(BATCH), "--lr", "3e-3", "--warmup-epochs", "0",
               "--workers", "1", "--log-every", "5", "--quiet", "--model-arg", "embed_dim=32",
               "--model-arg", "depth=2", "--model-arg", "num_heads=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return out, done


def epochs(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "epoch"]


def test_both_ranks_train_the_same_number_of_batches(ddp_run):
    run, done = ddp_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout
    per_rank = 480 // (BATCH * 2)
    records = epochs(run)
    assert [r["batches_per_rank"] for r in records] == [[per_rank, per_rank]] * 2
    assert [r["train_samples"] for r in records] == [2 * per_rank * BATCH] * 2
    assert records[-1]["step"] == 2 * per_rank  # one optimiser step per global batch
    assert records[1]["train_loss"] < records[0]["train_loss"]
    settings = json.loads((run / "config.json").read_text())
    assert settings["world_size"] == 2 and settings["steps_per_epoch"] == per_rank


def test_ddp_evaluation_counts_every_sample_once(ddp_run, release):
    run, _ = ddp_run
    best = max(epochs(run), key=lambda r: r["val_top1"])
    assert best["val_samples"] == 120  # each rank scored its own val shard, summed over gloo
    torch.set_num_threads(1)
    alone = evaluate_checkpoint(run / "best.pt", release, "val")  # one process, both shards
    assert (alone["top1"], alone["top5"], alone["samples"]) == (best["val_top1"], best["val_top5"], 120)


def test_last_checkpoint_holds_each_ranks_generators_and_needs_two_processes(ddp_run, release):
    run, _ = ddp_run
    last = load_checkpoint(run / "last.pt")
    assert last["world_size"] == 2 and len(last["rng"]) == 2
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])  # ranks augment differently
    result = CliRunner().invoke(cli, ["classify", "--shards", str(release), "--out", str(run), "--resume"])
    assert result.exit_code == 2
    assert "written by 2 processes; resume with the same number (now 1)" in result.output
