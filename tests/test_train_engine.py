"""train.engine on a real release of Fashion-MNIST: it learns, it records, it scores again.

Tiny models (2 blocks, 32 wide) on 32 px shards with 4 px tokens, a few epochs on the
2000 training images of the shipped sample, evaluated on its 500 held-out images.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from releases import SAMPLE, make_keystore, make_release
from train.checkpoint import load_checkpoint
from train.engine import TrainConfig, evaluate_checkpoint, train

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
CHANCE = 0.1  # ten balanced classes


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


@pytest.fixture(scope="module")
def release(tmp_path_factory, keystore) -> Path:
    out = tmp_path_factory.mktemp("rel") / "shuffle"
    make_release(out, keystore)
    return out


def config(release: Path, out: Path, **kw) -> TrainConfig:
    base = dict(shards=str(release), out=str(out), model_kwargs=TINY, epochs=2, batch_size=32, lr=3e-3,
                warmup_epochs=0, workers=0, log_every=5, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture(scope="module")
def ce_run(release, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "ce"
    return out, train(config(release, out))


def test_a_short_run_learns_held_out_fashion_mnist(ce_run):
    run, summary = ce_run
    epochs = records(run, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"] < math.log(10) + 0.1
    assert epochs[-1]["val_loss"] < math.log(10)
    assert summary["val"]["samples"] == 500 and epochs[-1]["val_samples"] == 500
    assert summary["best_top1"] >= 2 * CHANCE, summary  # measured 0.32 at this budget
    assert summary["step"] == 2 * (2000 // 32) == epochs[-1]["step"]

    steps = records(run, "train")
    assert [s["step"] for s in steps] == list(range(5, 125, 5))
    lrs = [s["lr"] for s in steps]
    assert lrs[0] == pytest.approx(3e-3, rel=0.01) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < 3e-4  # the cosine has nearly reached min_lr by the last step

    settings = json.loads((run / "config.json").read_text())
    assert settings["model"]["name"] == "pevit_tiny_patch4_32"
    assert settings["model"]["kwargs"]["in_chans"] == 1 and settings["release"]["encrypted"] is True
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv",
                                                     "metrics.jsonl", "tb"]


def test_checkpoints_hold_what_resume_and_evaluation_need(ce_run):
    run, summary = ce_run
    last = load_checkpoint(run / "last.pt")
    assert (last["epoch"], last["batch_in_epoch"], last["step"]) == (2, 0, summary["step"])
    assert {"optimizer", "scheduler", "rng", "weights"} <= set(last)
    assert len(last["rng"]) == 1 and last["world_size"] == 1
    best = load_checkpoint(run / "best.pt")
    assert "optimizer" not in best and "rng" not in best
    assert best["val"]["top1"] == summary["best_top1"]
    assert best["release"]["cipher"]["mode"] == "shuffle" and best["release"]["num_classes"] == 10


def test_evaluate_checkpoint_reproduces_the_recorded_val_metrics(ce_run, release):
    run, _ = ce_run
    best_epoch = max(records(run, "epoch"), key=lambda e: e["val_top1"])
    scored = evaluate_checkpoint(run / "best.pt", release, "val", workers=2)
    assert scored["samples"] == best_epoch["val_samples"] == 500
    assert scored["top1"] == best_epoch["val_top1"] and scored["top5"] == best_epoch["val_top5"]
    assert scored["loss"] == pytest.approx(best_epoch["val_loss"], rel=1e-5)
    assert scored["epoch"] == best_epoch["epoch"]


@pytest.mark.parametrize("loss, extra, floor", [
    ("anchor-euclidean", {}, 2 * CHANCE),
    # mixup + token cutmix + colour jitter + token drop through the same loop, orthogonal anchors
    ("anchor-cosine", {"mixup": 0.2, "cutmix": 0.2, "color_jitter": 0.2, "token_drop": 0.05,
                       "anchors": "orthogonal"}, 1.5 * CHANCE),
], ids=["euclidean", "cosine-augmented"])
def test_anchor_losses_train_through_the_same_engine(release, tmp_path, loss, extra, floor):
    summary = train(config(release, tmp_path / "run", loss=loss, **extra))
    epochs = records(tmp_path / "run", "epoch")
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert summary["best_top1"] >= floor, summary  # measured 0.35 and 0.27
    anchors = load_checkpoint(tmp_path / "run" / "best.pt")["criterion"]["anchors"]
    assert anchors.shape == (10, 10)
    cosines = torch.nn.functional.normalize(anchors, dim=1) @ torch.nn.functional.normalize(anchors, dim=1).T
    off_diagonal = cosines[~torch.eye(10, dtype=torch.bool)]
    expected = 0.0 if extra.get("anchors") == "orthogonal" else -1 / 9  # orthogonal / regular simplex
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, expected), atol=1e-5)


def test_the_plain_baseline_goes_through_the_same_engine(tmp_path, keystore, caplog):
    release = tmp_path / "plain"
    manifest = make_release(release, keystore, SAMPLE, mode="none", dataset_id="fm-plain")
    assert manifest.cipher.encrypted is False
    with caplog.at_level(logging.WARNING, logger="train"):
        summary = train(config(release, tmp_path / "run", epochs=1))
    assert any("baseline" in r.getMessage() for r in caplog.records)
    settings = json.loads((tmp_path / "run" / "config.json").read_text())
    assert settings["model"]["name"].startswith("vit_tiny_")  # a plain timm ViT, position embedding kept
    assert settings["release"]["encrypted"] is False
    weights = load_checkpoint(tmp_path / "run" / "best.pt")["weights"]
    assert weights["pos_embed"].shape == (1, 1 + 8 * 8, 32)
    assert summary["best_top1"] >= 1.5 * CHANCE, summary  # measured 0.25 after this one epoch


def test_the_logged_lr_is_the_one_rule_s_value_for_each_step(ce_run, release):
    """`lr` in a `train` line is the lr that step used, from `train.engine.lr_schedule` (the rule
    detection shares: tests/test_train_detection.py)."""
    from train.engine import lr_schedule

    run, _ = ce_run
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    scheduler = lr_schedule(optimizer, config(release, run), steps_per_epoch=2000 // 32)
    expected = {}
    for done in range(124):
        scheduler.step_update(num_updates=done)
        expected[done + 1] = optimizer.param_groups[0]["lr"]
    steps = records(run, "train")
    assert [s["lr"] for s in steps] == pytest.approx([expected[s["step"]] for s in steps], rel=1e-12)
