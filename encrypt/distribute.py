"""The only place that knows about Ray: run shard tasks, one Ray task per shard.

Local Ray by default (`num_cpus` workers, no dashboard); `address`, or Ray's own
`RAY_ADDRESS` when none is given, joins a cluster (`auto`: the one started on this machine),
and then the cluster decides the CPUs. `runtime_env` goes to `ray.init` so nodes can get the
package shipped (`py_modules`, `working_dir`) instead of pre-installed. Once Ray is up the job
says on stderr, in one line, which cluster it uses, with how many nodes and CPUs. Tasks are
retried when a worker dies. Results stream back as they finish so the driver can journal each
shard at once and a crash loses at most the shards in flight. `workers=0` runs in-process
(used by tests and tiny jobs; the bytes are identical either way).

Ray's own failures become one line: a cluster that cannot be reached or joined is a
`ClusterError` naming the address (checked with a plain TCP connect first, since `ray.init`
retries an unreachable address for minutes), and a shard task that fails is a
`ShardTaskError` naming the shard, the node it ran on and the worker's own error.

No key leaves the driver: each task is given its own samples' seeds (`ShardKeys`, computed
here from the release key), never the dataset key or the release subkey. Seeds rather than
a per-shard subkey because a sample's secrets must not depend on its shard (forget moves
samples into new shards) and the driver derives ids and order anyway; a seed opens only its
own sample. Both paths pass exactly the same arguments (`shard_arguments`).
"""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from encrypt.ciphers import ShardKeys
from encrypt.job import ShardResult, encrypt_shard
from encrypt.plan import JobSettings, ShardTask
from encrypt.sources import InputError
from shards.errors import first_line

TASK_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0  # the TCP check of a cluster address, before ray.init
_NO_PROBE = {"auto", "local"}  # addresses Ray resolves itself
_WORKER = re.compile(r"\(pid=(\d+), ip=([^,)\s]+)")  # "ray::encrypt_shard() (pid=1, ip=10.0.0.5)"


class ClusterError(InputError):
    """Ray could not be started or the cluster could not be joined (exit 2)."""


class ShardTaskError(InputError):
    """A shard's task failed on a Ray worker; names the shard and the node (exit 2)."""


def shown_address(address: str) -> str:
    """The address as a message may show it: any `user:password@` part removed."""
    return re.sub(r"(^|//)[^/@]*@", r"\1", address.strip())


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for what Ray resolves itself."""
    target = shown_address(address)
    if target in _NO_PROBE:
        return None
    if "://" in target:
        target = target.split("://", 1)[1]
    target = target.rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"Ray cluster address {shown_address(address)!r}: expected host:port "
                           "(e.g. 10.0.0.5:6379) or ray://host:port")
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a cluster address nothing listens on, within `timeout` seconds, in one line."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except socket.timeout:
        reason = f"no answer within {timeout:g} s"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    else:
        return
    raise ClusterError(f"Ray cluster at {shown_address(address)}: cannot connect ({reason}); "
                       "is the head node running, and is this its address (host:port, default port 6379)?")


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: `address`, else Ray's `RAY_ADDRESS` (which ray.init reads anyway,
    and then refuses `num_cpus`), else None for a local Ray."""
    return (address or os.environ.get("RAY_ADDRESS", "")).strip() or None


def load_runtime_env(value: str | dict | None) -> dict | None:
    """A Ray runtime environment from inline JSON, a JSON file, or a dict; ClusterError in one line."""
    if value is None or isinstance(value, dict):
        return value
    text = value.strip()
    source = "--ray-runtime-env"
    if not text.startswith(("{", "[")):  # else a file name
        source = f"--ray-runtime-env {value}"
        try:
            text = Path(value).expanduser().read_text()
        except OSError as exc:
            raise ClusterError(f"{source}: cannot be read ({exc.strerror or type(exc).__name__}); "
                               "give a JSON object or a JSON file") from None
    try:
        env = json.loads(text)
    except ValueError as exc:
        raise ClusterError(f"{source}: not valid JSON ({first_line(exc)[:120]})") from None
    if not isinstance(env, dict):
        raise ClusterError(f"{source}: expected a JSON object such as "
                           '{"py_modules": ["encrypt", "keys", "shards"]}')
    return env


def cluster_line(ray, address: str | None) -> str:
    """What the job runs on, for the log (never the manifest): address, live nodes, CPUs."""
    try:
        where = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - the line is informative; never fail the job over it
        where = None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = ray.cluster_resources().get("CPU", 0)
    kind = f"cluster {shown_address(where or address or '?')}" if address else \
        f"local Ray started here ({shown_address(where)})" if where else "local Ray started here"
    asked = f" (asked for {shown_address(address)})" if address and where and address != where else ""
    return f"ray: {kind}{asked}: {len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs for shard tasks"


def _init_ray(ray, workers: int, address: str | None, runtime_env: dict | None = None) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    init = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                configure_logging=True)
    if runtime_env:
        init["runtime_env"] = runtime_env
    if address:
        check_address(address)
    try:
        if address:
            ray.init(address=address, **init)
        else:
            ray.init(num_cpus=workers, **init)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, auth, version mismatch...: one line
        where = f"Ray cluster at {shown_address(address)}" if address else f"local Ray ({workers} workers)"
        raise ClusterError(f"{where}: could not {'join' if address else 'start'} "
                           f"({type(exc).__name__}: {first_line(exc)[:300]})") from None


def _task_error(ray, exc: BaseException, task: ShardTask, out_dir: Path) -> ShardTaskError:
    """One line for a failed shard task: the shard, the node when Ray says it, the cause."""
    shard = f"{out_dir}/{task.name}"
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        node, pid = getattr(exc, "ip", None), getattr(exc, "pid", None)
        if node is None:  # the instance-of-cause form keeps them only in its text
            found = _WORKER.search(str(exc))
            pid, node = found.groups() if found else (None, None)
        where = f" on node {node}" + (f" (worker pid {pid})" if pid else "") if node else ""
        if cause is not None:
            text = f"{type(cause).__name__}: {first_line(cause)}" if str(cause) else type(cause).__name__
        else:
            text = first_line(exc)
        return ShardTaskError(shard, f"shard task failed{where}: {text[:400]}")
    return ShardTaskError(shard, f"shard task failed ({type(exc).__name__}: {first_line(exc)[:300]})")


def node_label(ray) -> str:
    """This worker's node as a person finds it in `ray status`/`ray list nodes`: IP and node id."""
    return f"{ray.util.get_node_ip_address()} (node id {ray.get_runtime_context().get_node_id()})"


def shard_arguments(task: ShardTask, settings: JobSettings, keys, out_dir) -> tuple:
    """What one shard task is given, on either path: the task, settings, its seeds, OUT."""
    return task, settings, ShardKeys.for_samples(keys, [(s.split, s.key) for s in task.samples]), str(out_dir)


def shard_task(task: ShardTask, settings: JobSettings, seeds, out_dir: str) -> ShardResult:
    """The Ray task: one shard from its own samples' seeds, tagged with the node that wrote it.

    The driver reads every shard back before it signs; when it cannot see one, the node named
    here is where the bytes went (a node-local OUT instead of a shared one).
    """
    import ray

    result = encrypt_shard(task, settings, seeds, out_dir)
    result.node = node_label(ray)
    return result


def _run_in_process(tasks: Iterable[ShardTask], settings: JobSettings, keys, out_dir) -> Iterator[ShardResult]:
    for task in tasks:
        yield encrypt_shard(*shard_arguments(task, settings, keys, out_dir))


def _run_on_ray(tasks: list[ShardTask], settings: JobSettings, keys, out_dir,
                workers: int, address: str | None, runtime_env: dict | None,
                say: Callable[[str], None] | None) -> Iterator[ShardResult]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, workers, address, runtime_env)
    try:
        (say or _stderr)(cluster_line(ray, address))
        remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(shard_task)
        settings_ref = ray.put(settings)
        task_of = {}
        for task in tasks:
            one, _, seeds, out = shard_arguments(task, settings, keys, out_dir)
            task_of[remote.remote(one, settings_ref, seeds, out)] = task
        pending = list(task_of)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                for ref in pending:  # the job stops here: do not let the rest run on
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: BLE001 - best effort; the original error is what matters
                        pass
                raise _task_error(ray, exc, task_of[done[0]], out_dir) from None
            yield result
    finally:
        if started_here:
            ray.shutdown()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_shards(tasks: list[ShardTask], settings: JobSettings, keys, out_dir, *,
               workers: int, address: str | None = None, runtime_env: dict | str | None = None,
               on_result: Callable[[ShardResult], None] | None = None,
               say: Callable[[str], None] | None = None) -> list[ShardResult]:
    """Run every task and return the results in completion order.

    `keys`: the release's keys (keys.derive.ReleaseKey); they stay here, tasks get seeds.
    `address` None falls back to `RAY_ADDRESS`; `say` gets the cluster line (default: stderr).
    """
    address = cluster_address(address)
    runtime_env = load_runtime_env(runtime_env)
    if workers == 0 and not address:
        stream = _run_in_process(tasks, settings, keys, out_dir)
    else:
        stream = _run_on_ray(tasks, settings, keys, out_dir, max(workers, 1), address, runtime_env, say)
    results = []
    for result in stream:
        if on_result:
            on_result(result)
        results.append(result)
    return results
