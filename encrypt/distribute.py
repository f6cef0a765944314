"""The only place that knows about Ray: run shard tasks, one Ray task per shard.

Local Ray by default (`num_cpus` workers, no dashboard); `address` joins a cluster. Tasks are
retried when a worker dies. Results stream back as they finish so the driver can journal each
shard at once and a crash loses at most the shards in flight. `workers=0` runs in-process
(used by tests and tiny jobs; the bytes are identical either way).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from encrypt.job import ShardResult, encrypt_shard
from encrypt.plan import JobSettings, ShardTask

TASK_RETRIES = 3


def _run_in_process(tasks: Iterable[ShardTask], settings: JobSettings, dataset_key, out_dir: Path) -> Iterator[ShardResult]:
    for task in tasks:
        yield encrypt_shard(task, settings, dataset_key, out_dir)


def _run_on_ray(tasks: list[ShardTask], settings: JobSettings, dataset_key, out_dir: Path,
                workers: int, address: str | None) -> Iterator[ShardResult]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        init = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                    configure_logging=True)
        if address:
            ray.init(address=address, **init)
        else:
            ray.init(num_cpus=workers, **init)
    try:
        remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(encrypt_shard)
        settings_ref, key_ref = ray.put(settings), ray.put(dataset_key)
        pending = [remote.remote(task, settings_ref, key_ref, str(out_dir)) for task in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def run_shards(tasks: list[ShardTask], settings: JobSettings, dataset_key, out_dir: Path, *,
               workers: int, address: str | None = None,
               on_result: Callable[[ShardResult], None] | None = None) -> list[ShardResult]:
    """Run every task and return the results in completion order."""
    if workers == 0 and not address:
        stream = _run_in_process(tasks, settings, dataset_key, out_dir)
    else:
        stream = _run_on_ray(tasks, settings, dataset_key, out_dir, max(workers, 1), address)
    results = []
    for result in stream:
        if on_result:
            on_result(result)
        results.append(result)
    return results
