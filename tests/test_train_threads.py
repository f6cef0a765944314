"""CPU thread counts: the policy in `train.threads`, and the real engine and CLI applying it.

The policy is checked as a function over (cores, processes, workers, environment); the
engine, the detection engine, evaluation and `train-encrypted classify` are run on a tiny
real release and must log the choice and leave torch with that many threads. The test
session runs with one torch thread (conftest); every test here restores what it changed.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from releases import make_keystore, make_release, write_imagefolder
from train.data import ShardLoader, one_torch_thread, open_release
from train.engine import TrainConfig, evaluate_checkpoint, train
from train.threads import (
    ENV,
    FLAG,
    ThreadChoice,
    available_cores,
    cpu_threads,
    local_processes,
    setup_cpu_threads,
)

REPO = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
CORES = available_cores()


@pytest.fixture
def torch_threads():
    """Restore torch's thread count after the test (conftest holds the session at one)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_omp_env(monkeypatch):
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


# -- the policy ------------------------------------------------------------------------------

@pytest.mark.parametrize("cores, processes, workers, expected", [
    (2, 1, 2, 1),     # the docs recipe on this project's 2-core machine (was 2 threads + 2 workers)
    (2, 1, 0, 2),     # no workers: both cores compute
    (2, 1, 1, 1),
    (4, 1, 2, 2),
    (16, 1, 2, 14),   # the workers' cores are left to them, the rest computes
    (16, 4, 1, 3),    # torchrun: 4 processes x (3 threads + 1 worker) = 16
    (16, 8, 2, 1),    # 8 processes x 2 workers fill the node: one thread each
    (64, 8, 4, 4),
    (1, 1, 0, 1),
    (4, 1, 8, 1),     # more workers than cores: never below one thread
    (8, 16, 0, 1),    # more processes than cores
])
def test_the_automatic_choice_leaves_a_core_per_worker_and_shares_the_rest(cores, processes, workers, expected):
    choice = cpu_threads(cores, processes, workers, env={})
    assert (choice.threads, choice.source, choice.kept) == (expected, "auto", False)
    assert (choice.cores, choice.processes, choice.workers) == (cores, processes, workers)


def test_the_automatic_choice_never_oversubscribes_when_the_cores_allow():
    for cores, processes, workers in itertools.product(range(1, 65), range(1, 9), range(0, 9)):
        threads = cpu_threads(cores, processes, workers, env={}).threads
        assert threads >= 1
        if processes * (workers + 1) <= cores:  # one thread each is possible
            assert processes * (threads + workers) <= cores, (cores, processes, workers)
            # and no core is left idle that a thread per process could use
            assert processes * (threads + 1 + workers) > cores, (cores, processes, workers)
        else:
            assert threads == 1


def test_the_automatic_choice_only_lowers_what_the_process_already_has():
    kept = cpu_threads(16, 1, 0, env={}, current=1)  # e.g. torch.set_num_threads(1) in a benchmark
    assert (kept.threads, kept.kept) == (1, True)
    lowered = cpu_threads(2, 1, 2, env={}, current=2)  # torch's default on 2 cores
    assert (lowered.threads, lowered.kept) == (1, False)
    same = cpu_threads(4, 1, 2, env={}, current=2)
    assert (same.threads, same.kept) == (2, False)


@pytest.mark.parametrize("value, expected", [("3", 3), ("1", 1), (" 4 ", 4), ("4,2", 4)])
def test_omp_num_threads_in_the_environment_wins(value, expected):
    choice = cpu_threads(2, 1, 2, env={"OMP_NUM_THREADS": value})
    assert (choice.threads, choice.source) == (expected, ENV)
    # torch read it at start-up; in a process that changed it since, the count in force is reported
    assert cpu_threads(2, 1, 2, env={"OMP_NUM_THREADS": value}, current=1).threads == 1


@pytest.mark.parametrize("value", ["", "0", "-2", "many"])
def test_an_unusable_omp_num_threads_is_ignored(value):
    choice = cpu_threads(2, 1, 0, env={"OMP_NUM_THREADS": value})
    assert (choice.threads, choice.source) == (2, "auto")


def test_an_explicit_thread_count_wins_over_everything():
    choice = cpu_threads(2, 1, 2, requested=5, env={"OMP_NUM_THREADS": "3"}, current=1)
    assert (choice.threads, choice.source) == (5, FLAG)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        cpu_threads(2, 1, 2, requested=0, env={})
    with pytest.raises(ValueError):
        cpu_threads(0, 1, 0, env={})


def test_processes_on_this_node_come_from_torchrun():
    assert local_processes({}) == 1
    assert local_processes({"LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "16"}) == 4  # 4 of 16 on this node
    assert local_processes({"WORLD_SIZE": "3"}) == 3
    assert local_processes({"LOCAL_WORLD_SIZE": "x"}) == 1


def test_cores_are_the_ones_this_process_may_use():
    if hasattr(os, "sched_getaffinity"):
        assert CORES == len(os.sched_getaffinity(0))
    else:
        assert CORES == (os.cpu_count() or 1)


def test_the_choice_is_said_in_one_line():
    assert cpu_threads(2, 1, 2, env={}).line() == (
        "cpu: 2 cores, 1 process, 2 loader workers -> 1 torch thread per process "
        "(set --threads or OMP_NUM_THREADS to change)")
    assert cpu_threads(16, 8, 1, env={}).line() == (
        "cpu: 16 cores, 8 processes, 1 loader worker each -> 1 torch thread per process "
        "(set --threads or OMP_NUM_THREADS to change)")
    assert cpu_threads(4, 1, 0, requested=3, env={}).line().endswith("-> 3 torch threads per process (--threads 3)")
    assert cpu_threads(4, 1, 0, env={"OMP_NUM_THREADS": "2"}).line().endswith("(OMP_NUM_THREADS in the environment)")
    assert "already set lower" in cpu_threads(16, 1, 0, env={}, current=1).line()
    assert "\n" not in ThreadChoice(1, "auto", 1, 1, 0).line()


def test_nothing_changes_off_the_cpu(torch_threads, caplog):
    torch.set_num_threads(3)
    with caplog.at_level(logging.INFO, logger="train"):
        assert setup_cpu_threads(torch.device("cuda", 0), 2) is None
        assert setup_cpu_threads("cuda", 2, requested=1) is None
    assert torch.get_num_threads() == 3
    assert not [r for r in caplog.records if r.getMessage().startswith("cpu:")]


def test_setup_applies_the_choice_on_the_cpu(torch_threads, no_omp_env, caplog):
    torch.set_num_threads(CORES + 2)  # a fresh process's default may exceed the cores it may use
    with caplog.at_level(logging.INFO, logger="train"):
        choice = setup_cpu_threads("cpu", 1)
    assert choice == cpu_threads(CORES, 1, 1, env={})
    assert torch.get_num_threads() == choice.threads == max(1, CORES - 1)
    assert choice.line() in caplog.text
    setup_cpu_threads(torch.device("cpu"), 1, requested=3)
    assert torch.get_num_threads() == 3


# -- the real engine, evaluation, loader workers and CLI on a tiny real release ------------------

@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """Real Fashion-MNIST, shuffle cipher: 3 train shards and 1 val shard of 32."""
    root = tmp_path_factory.mktemp("src") / "fmnist"
    write_imagefolder(root, {"train": 96, "val": 32})
    out = tmp_path_factory.mktemp("rel") / "shuffle"
    make_release(out, make_keystore(tmp_path_factory), root, shard_samples=32)
    return out


def _config(release: Path, out: Path, **kw) -> TrainConfig:
    settings = dict(shards=str(release), out=str(out), epochs=1, batch_size=32, lr=3e-3, warmup_epochs=0,
                    workers=1, model_kwargs=TINY, progress=False)
    settings.update(kw)
    return TrainConfig(**settings)


def _cpu_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("cpu:")]


def test_training_and_evaluation_set_and_log_the_thread_count(release, tmp_path, torch_threads, no_omp_env,
                                                               caplog):
    torch.set_num_threads(CORES + 1)  # as a fresh process might start (torch counts cores, not affinity)
    with caplog.at_level(logging.INFO, logger="train"):
        summary = train(_config(release, tmp_path / "run"))
    assert summary["step"] == 3
    auto = cpu_threads(CORES, 1, 1, env={})
    assert torch.get_num_threads() == auto.threads == max(1, CORES - 1)
    assert _cpu_lines(caplog) == [auto.line()]

    caplog.clear()
    wanted = auto.threads + 1  # differs from the automatic choice
    with caplog.at_level(logging.INFO, logger="train"):
        scores = evaluate_checkpoint(tmp_path / "run" / "best.pt", release, "val", workers=1, threads=wanted)
    assert scores["samples"] == 32
    assert torch.get_num_threads() == wanted
    assert _cpu_lines(caplog) == [f"cpu: {CORES} core{'s' if CORES > 1 else ''}, 1 process, 1 loader worker "
                                  f"-> {wanted} torch threads per process (--threads {wanted})"]


def test_a_resumed_run_applies_the_policy_too(release, tmp_path, torch_threads, no_omp_env, caplog):
    torch.set_num_threads(1)
    train(_config(release, tmp_path / "run"))
    torch.set_num_threads(CORES + 1)
    with caplog.at_level(logging.INFO, logger="train"):  # the run is done: nothing left but the choice
        assert train(_config(release, tmp_path / "run", workers=0), resume=True)["step"] == 3
    assert torch.get_num_threads() == CORES  # no workers: every core computes
    assert _cpu_lines(caplog) == [cpu_threads(CORES, 1, 0, env={}).line()]


def test_detection_training_and_evaluation_apply_the_policy(tmp_path, tmp_path_factory, fmnist_small,
                                                             torch_threads, no_omp_env, caplog):
    from canvas_coco import write_canvas_coco
    from encrypt.main import encrypt_dataset
    from encrypt.plan import JobSettings
    from encrypt.sources import list_coco
    from train.engine import DetectionConfig, evaluate_detection_checkpoint, fit_detection

    items, labels = fmnist_small
    image_dir, ann_path = write_canvas_coco(tmp_path / "canvas", items, labels, images=16, canvas=64)
    settings = JobSettings(mode="mix", patch=8, sub_patch=4, size=64, resize=64, views=1, format="png", quality=95,
                           channels=1, shard_samples=8, task="detection", min_side=1)
    rel = tmp_path / "rel"
    encrypt_dataset(list_coco(image_dir, ann_path), rel, make_keystore(tmp_path_factory), "canvas", settings,
                    progress=False)
    config = DetectionConfig(shards=str(rel), out=str(tmp_path / "run"), model="nano", num_det_tokens=10,
                             epochs=1, batch_size=8, workers=1, val_split="train", progress=False,
                             model_kwargs={"depth": 1})
    torch.set_num_threads(CORES + 1)
    with caplog.at_level(logging.INFO, logger="train"):
        summary = fit_detection(config)
    assert summary["step"] == 2
    auto = cpu_threads(CORES, 1, 1, env={})
    assert torch.get_num_threads() == auto.threads
    assert _cpu_lines(caplog) == [auto.line()]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train"):
        evaluate_detection_checkpoint(tmp_path / "run" / "best.pt", rel, "train", workers=0, threads=2)
    assert torch.get_num_threads() == 2
    assert _cpu_lines(caplog)[0].endswith("(--threads 2)")


class _ThreadsInWorker(ShardLoader):
    """Labels replaced by the torch thread count of the process that decoded the sample."""

    def convert(self, sample):
        return sample[0], torch.get_num_threads()


def test_loader_workers_run_one_torch_thread_each(release, torch_threads):
    torch.set_num_threads(2)
    loader = _ThreadsInWorker(open_release(release, ["train"]), "train", batch_size=32, train=True, workers=2)
    counts = {int(v) for _, labels in loader.epoch(0) for v in labels}
    assert counts == {1}
    assert torch.get_num_threads() == 2  # the training process keeps its own
    one_torch_thread(0)  # the worker_init_fn itself
    assert torch.get_num_threads() == 1


def _fresh_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "WORLD_SIZE")}
    return env | extra


def _cli(args: list[str], env_extra: dict[str, str]) -> tuple[int, str]:
    """`train-encrypted` in a fresh process (torch's own default thread count); its torch threads after."""
    code = ("import sys, torch; from train.cli import cli; cli.main(sys.argv[1:], standalone_mode=False); "
            "print('threads', torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code, *args], env=_fresh_env(env_extra), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    threads = int(done.stdout.strip().splitlines()[-1].split()[1])
    lines = [line for line in done.stderr.splitlines() if line.startswith("cpu:")]
    assert len(lines) == 1, done.stderr[-2000:]
    return threads, lines[0]


def _torch_default_threads() -> int:
    """What torch starts with in a fresh process here (it counts physical cores, not affinity)."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                          env=_fresh_env({}), capture_output=True, text=True, check=True, timeout=300)
    return int(done.stdout.strip())


@pytest.mark.parametrize("extra, env, source", [
    ([], {}, "auto"),
    ([], {"OMP_NUM_THREADS": "1"}, ENV),
    (["--threads", "3"], {"OMP_NUM_THREADS": "1"}, FLAG),
])
def test_the_cli_logs_and_uses_its_choice(release, tmp_path, extra, env, source):
    args = ["classify", "--shards", str(release), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "32", "--warmup-epochs", "0", "--workers", "1", "--val-split", "none", "--quiet",
            *[a for k, v in TINY.items() for a in ("--model-arg", f"{k}={v}")], *extra]
    threads, line = _cli(args, env)
    current = _torch_default_threads() if source == "auto" else None
    choice = cpu_threads(CORES, 1, 1, requested=3 if source == FLAG else None, env=env, current=current)
    assert line == choice.line()
    assert threads == choice.threads == {"auto": min(max(1, CORES - 1), current or 1), ENV: 1, FLAG: 3}[source]
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "epoch"
