"""Run by tests/test_encrypt_cluster_faults.py in a fresh process (Ray reads its auth token once
per process): a two-node loopback cluster, a job on it, a worker then a node killed mid-job.

argv: SRC OUT KEYSTORE DATASET_ID SHARD_SAMPLES. Prints one JSON line: whether a shard was half
written when the worker was killed, and the job's error if any.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.keystore import open_keystore
from releases import job_settings
from shards.writer import TEMP_PATTERN


def shard_workers() -> list[int]:
    """Pids of this process's descendants (the cluster's workers) now running a shard task."""
    parent, cmdline = {}, {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline[int(proc.name)] = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    mine, found = {os.getpid()}, True
    while found:
        found = False
        for pid, ppid in parent.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                found = True
    return sorted(pid for pid in mine if b"shard_task" in cmdline.get(pid, b""))


def main() -> None:
    src, out, keystore_dir, dataset_id, shard_samples, reference = sys.argv[1:7]
    out = Path(out)
    keystore = open_keystore(keystore_dir, os.environ["PATCHVEIL_PASSPHRASE"].encode())
    listing = list_imagefolder(Path(src))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    report = {}
    try:
        second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={"worker_process_setup_hook": "pv_test_hooks.slow_writes"},
                 include_dashboard=False, log_to_driver=False)
        report["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
        journal = out.parent / f"{out.name}.owner" / "journal.jsonl"

        def job():
            try:
                encrypt_dataset(listing, out, keystore, dataset_id, job_settings(shard_samples=int(shard_samples)),
                                workers=2, progress=False, rebuild_from=Path(reference))  # the same release
            except BaseException as exc:  # noqa: BLE001 - reported
                report["error"] = f"{type(exc).__name__}: {exc}"

        def wait_for_shards(n):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and runner.is_alive():
                if journal.exists() and len(journal.read_text().splitlines()) - 1 >= n:
                    return
                time.sleep(0.02)

        runner = threading.Thread(target=job, daemon=True)
        runner.start()
        wait_for_shards(1)
        workers = shard_workers()
        report["worker_killed_mid_job"] = runner.is_alive() and bool(workers)
        report["temps_at_kill"] = sorted(p.name for p in out.iterdir() if TEMP_PATTERN.match(p.name))
        if workers:
            os.kill(workers[0], signal.SIGKILL)
        wait_for_shards(4)
        report["node_killed_mid_job"] = runner.is_alive()
        cluster.remove_node(second, allow_graceful=False)  # SIGKILL: raylet, its workers, their writes
        runner.join(timeout=120)
        report["finished"] = not runner.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
