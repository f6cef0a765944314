"""How many torch threads a CPU training process uses: never more busy threads than cores.

Why: torch's intra-op pool starts one OpenMP thread per core in every process, and every
DataLoader worker decoding shards needs a core of its own. A 2-core machine training with
2 loader workers so ran 2 compute threads beside 2 busy workers; OpenMP threads that wait
for a preempted sibling spin and lose most of their time: one epoch of the small
Fashion-MNIST recipe in docs/ml-engineer.md took 82 s by default and 18 s with
OMP_NUM_THREADS=1. The same happens with several training processes on one node
(torchrun), each starting a full-width pool.

The policy (`cpu_threads`): on a node with C usable cores (`os.sched_getaffinity`), P
training processes (LOCAL_WORLD_SIZE under torchrun) and W busy loader workers per process
(each with one torch thread: torch sets it, and `train.data` says so again in its
worker_init_fn), every process gets T = max(1, (C - P*W) // P) torch threads, so that
P*T + P*W <= C whenever C allows it. An explicit choice wins: `threads` (`--threads N`),
else OMP_NUM_THREADS in the environment (torch read it at start-up; it is left as it is).
The automatic choice only ever lowers the current count, so a process that already chose
fewer threads (`torch.set_num_threads`, as the test suite and the benchmarks do) keeps them.

On a GPU nothing is changed: the host threads only feed the device.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ThreadChoice", "available_cores", "cpu_threads", "local_processes", "setup_cpu_threads"]

AUTO, FLAG, ENV = "auto", "--threads", "OMP_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    """The torch threads per training process, why, and what the choice was made for."""

    threads: int
    source: str  # AUTO, FLAG ("--threads") or ENV ("OMP_NUM_THREADS")
    cores: int
    processes: int
    workers: int  # busy loader workers per process
    kept: bool = False  # AUTO only: the process already had fewer threads, left as they were

    def line(self) -> str:
        """One log line: `cpu: 2 cores, 1 process, 2 loader workers -> 1 torch thread per process (...)`."""
        def n(count: int, word: str, plural: str = "s") -> str:
            return f"{count} {word}{'' if count == 1 else plural}"

        workers = n(self.workers, "loader worker") + (" each" if self.processes > 1 else "")
        head = (f"cpu: {n(self.cores, 'core')}, {n(self.processes, 'process', 'es')}, "
                f"{workers} -> {n(self.threads, 'torch thread')} per process")
        if self.source == FLAG:
            return f"{head} (--threads {self.threads})"
        if self.source == ENV:
            return f"{head} (OMP_NUM_THREADS in the environment)"
        kept = "already set lower in this process; " if self.kept else ""
        return f"{head} ({kept}set --threads or OMP_NUM_THREADS to change)"


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one, else the CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def local_processes(env: Mapping[str, str] | None = None) -> int:
    """Training processes on this node: LOCAL_WORLD_SIZE (torchrun), else WORLD_SIZE, else 1."""
    env = os.environ if env is None else env
    for name in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        value = _positive_int(env.get(name))
        if value is not None:
            return value
    return 1


def _positive_int(value: str | None) -> int | None:
    """`value` as a count >= 1 (OMP_NUM_THREADS may list nested levels, "4,2": the first), else None."""
    if value is None:
        return None
    try:
        number = int(value.split(",")[0].strip())
    except ValueError:
        return None
    return number if number >= 1 else None


def cpu_threads(cores: int, processes: int, workers: int, *, requested: int | None = None,
                env: Mapping[str, str] | None = None, current: int | None = None) -> ThreadChoice:
    """Torch threads per training process for `cores` usable cores (the policy in the module doc).

    `processes`: training processes on this node; `workers`: busy loader workers per process;
    `requested`: an explicit count (`--threads`), which wins; else a valid OMP_NUM_THREADS in
    `env` (default os.environ) wins; `current`: the process's thread count now, which the
    automatic choice never raises (None: no limit).
    """
    if cores < 1 or processes < 1 or workers < 0:
        raise ValueError(f"need cores >= 1, processes >= 1, workers >= 0; got {cores}, {processes}, {workers}")
    facts = {"cores": cores, "processes": processes, "workers": workers}
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return ThreadChoice(requested, FLAG, **facts)
    from_env = _positive_int((os.environ if env is None else env).get("OMP_NUM_THREADS"))
    if from_env is not None:
        return ThreadChoice(current if current is not None else from_env, ENV, **facts)
    threads = max(1, (cores - processes * workers) // processes)
    if current is not None and current < threads:
        return ThreadChoice(current, AUTO, kept=True, **facts)
    return ThreadChoice(threads, AUTO, **facts)


def setup_cpu_threads(device, workers: int, *, requested: int | None = None,
                      log: logging.Logger | None = None) -> ThreadChoice | None:
    """Apply `cpu_threads` to this process when `device` is the CPU and log the choice in one line.

    `workers`: the loader workers this process actually starts. Returns the choice, or None
    (nothing done) on any other device.
    """
    import torch

    if torch.device(device).type != "cpu":
        return None
    choice = cpu_threads(available_cores(), local_processes(), workers, requested=requested,
                         current=torch.get_num_threads())
    if choice.source != ENV and torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    (log or logging.getLogger("train")).info("%s", choice.line())
    return choice
