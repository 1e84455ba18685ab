"""`hpcinfer run --launcher ray`: the job's workers as Ray actors on a running Ray cluster.

This process is the Ray driver and the coordinator. It listens (run.joins) on the address
through which it reaches the cluster, starts one actor per device group of the cluster
(run.ray_placement), pinned to its node, and each actor starts the standard worker, which
joins the coordinator like any other rank's worker (run.ray_actor). Exactly-once, resume
and a lost worker's units going to the others are therefore the coordinator's, unchanged.

Everything started ends with the job: the actors are killed at the end (normal end, error,
signal); if this process is killed, Ray kills the actors of the dead driver, and each worker
also leaves on its own when its connection to the coordinator closes. An actor that ends
before its worker joined is given up at once, so the job never waits for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.cluster import HardwareProfile, PlacementPlan
from hpcinfer.errors import HardwareError, LaunchError, SpecError
from hpcinfer.outputs.store import OutputStore
from hpcinfer.raycluster.cluster_file import CLUSTER_FILE_ENV, cluster_path, load_cluster
from hpcinfer.run.joins import JoinListener
from hpcinfer.run.ranks import COORDINATOR_HOST_ENV, JOIN_WAIT_S
from hpcinfer.run.ray_actor import ActorTask, run_worker
from hpcinfer.run.ray_placement import ActorSlot, plan_actors, ray_nodes, slot_of_gpus
from hpcinfer.spec import JobSpec

CONNECT_TIMEOUT_S = 5.0
KILL_WAIT_S = 10.0
FORWARDED_ENV = ("PYTHONPATH",)
"""The driver's variables every actor gets: where hpcinfer's code is, as the ssh launcher
passes it to every rank."""


@dataclass(frozen=True)
class ClusterAddress:
    """The GCS address of the cluster to run on, and where it came from (for errors)."""

    address: str
    source: str

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise SpecError(f"the Ray address {self.address!r} ({self.source}) is not HOST:PORT")
        return host, int(port)


def cluster_address(cluster_file: str | None, env: dict[str, str] | None = None) -> ClusterAddress:
    """The cluster: `--ray-cluster FILE`, else $RAY_ADDRESS, else the cluster file of this
    job (`$HPCINFER_RAY_CLUSTER`, else ~/.hpcinfer/ray/<job id or local>.json)."""
    env = dict(os.environ) if env is None else env
    if cluster_file is None and env.get("RAY_ADDRESS") and not env.get(CLUSTER_FILE_ENV):
        return ClusterAddress(env["RAY_ADDRESS"], "$RAY_ADDRESS")
    path = cluster_path(cluster_file, None, env)
    if not path.is_file():
        how = "--ray-cluster" if cluster_file is not None else "this job's cluster file"
        raise SpecError(
            f"no Ray cluster file at {path} ({how}): start a cluster with `hpcinfer ray up` "
            "(it writes that file), or name one with --ray-cluster FILE or $RAY_ADDRESS=HOST:PORT"
        )
    return ClusterAddress(load_cluster(path).address, str(path))


def check_reachable(cluster: ClusterAddress) -> str:
    """The address of this host that the cluster reaches (the coordinator listens there);
    a cluster that does not answer is an error naming it, in seconds, before Ray starts."""
    host, port = cluster.host_port
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as probe:
            here = str(probe.getsockname()[0])
    except OSError as exc:
        raise LaunchError(
            f"the Ray cluster at {cluster.address} (from {cluster.source}) does not answer "
            f"({exc}); is it up? `hpcinfer ray status` checks it, `hpcinfer ray up` starts one"
        ) from None
    return os.environ.get(COORDINATOR_HOST_ENV) or here


def check_ray_installed() -> None:
    if importlib.util.find_spec("ray") is None:
        raise HardwareError(
            "--launcher ray needs Ray in this Python: pip install 'hpcinfer[ray]' (the same "
            "Ray version as the cluster's nodes)"
        )


def check_job(spec: JobSpec) -> None:
    """What cannot run on a Ray cluster, refused before anything starts."""
    from hpcinfer.engines.kinds import kind_of

    if kind_of(spec).starts_fleet(spec):
        raise SpecError(
            "--launcher ray runs the job's engines as Ray actors; a server fleet for the job "
            "(--engine vllm-server) starts with --launcher mpi, srun or ssh. On a Ray cluster, "
            "serve with `hpcinfer serve` and dispatch to it with --engine openai"
        )


def actor_tasks(
    actors: list[ActorSlot], spec_json: str, address: str, key: bytes, store: OutputStore
) -> list[ActorTask]:
    """Each actor's call: its worker index, node slot and log file."""
    return [
        ActorTask(
            spec_json=spec_json,
            index=a.index,
            host=a.node.host,
            slot=a.slot,
            node_slots=a.node_slots,
            address=address,
            key=key,
            log=str(store.log_path(a.index)),
        )
        for a in actors
    ]


def actor_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The variables the actors' processes get from the driver."""
    env = dict(os.environ) if env is None else env
    return {name: env[name] for name in FORWARDED_ENV if env.get(name)}


class WorkerActor:
    """The Ray actor (made remote at run time, so importing this module needs no Ray)."""

    def run(self, task: ActorTask) -> dict[str, Any]:
        import ray

        spec = JobSpec.model_validate_json(task.spec_json)
        tp = spec.engine.tensor_parallel_size
        slot = slot_of_gpus(ray.get_gpu_ids(), tp, task.node_slots, task.slot)
        return run_worker(dataclasses.replace(task, slot=slot))


@dataclass
class RayWorkers:
    """The driver's side: connected to the cluster, the actors planned, then started."""

    spec: JobSpec
    cluster: ClusterAddress
    here: str
    actors: list[ActorSlot]
    joins: JoinListener
    handles: list[Any] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    started: int = 0
    _watch: threading.Thread | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    def placement(self, profile: HardwareProfile) -> PlacementPlan:
        """This process runs no worker: an empty plan (the actors' plans are their nodes')."""
        return PlacementPlan(profile, self.spec.engine.tensor_parallel_size, "ray", [], [], [])

    @property
    def total(self) -> int:
        return len(self.actors)

    def start(self, store: OutputStore, units_left: int | None) -> int:
        """Start the actors (no more than the units left to do); how many started."""
        import ray

        keep = len(self.actors) if units_left is None else min(len(self.actors), units_left)
        for skipped in self.actors[keep:]:
            self.joins.give_up(skipped.index)
        spec_json = self.spec.model_dump_json()
        address, key = self.joins.address, self.joins.key
        tasks = actor_tasks(self.actors[:keep], spec_json, address, key, store)
        remote: Any = ray.remote(WorkerActor)
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
        env = actor_env()
        refs = {}
        for actor, task in zip(self.actors[:keep], tasks, strict=True):
            handle = remote.options(
                name=None,
                max_restarts=0,
                scheduling_strategy=strategy(node_id=actor.node.node_id, soft=False),
                runtime_env={"env_vars": env} if env else None,
                **actor.resources(),
            ).remote()
            self.handles.append(handle)
            refs[handle.run.remote(task)] = actor
        self.started = keep
        self._watch = threading.Thread(target=self._watch_actors, args=(refs,), daemon=True)
        self._watch.start()
        return keep

    def _watch_actors(self, refs: dict[Any, ActorSlot]) -> None:
        """An actor's call returns when its worker ended: one that never joined is given up
        (the coordinator would otherwise wait for it), and a failure is kept for the report."""
        import ray

        pending = list(refs)
        while pending and not self._done.is_set():
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                actor = refs[ref]
                try:
                    outcome = ray.get(ref)
                    if outcome.get("code"):
                        self.errors[actor.index] = f"its worker exited with code {outcome['code']}"
                except Exception as exc:  # Ray's errors, reported as they are
                    self.errors[actor.index] = _first_line(exc)
                self.joins.give_up(actor.index)

    def never_joined(self, logs: Path) -> str:
        """The started actors whose worker never joined, and why where Ray said."""
        missing = [r for r in self.joins.missing_ranks() if r < self.started]
        if not missing:
            return ""
        why = "; ".join(f"actor {r}: {self.errors[r]}" for r in missing if r in self.errors)
        return f"Ray actor(s) {missing} never joined (see {logs})" + (f": {why}" if why else "")

    def failures(self) -> str:
        """The actors that failed, for the job's message."""
        return "; ".join(
            f"Ray actor {i} on {self.actors[i].node.host}: {text}"
            for i, text in sorted(self.errors.items())
        )

    def close(self) -> None:
        """Kill every actor (their workers die with them) and leave the cluster."""
        import ray

        self._done.set()
        for handle in self.handles:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        if self._watch is not None:
            self._watch.join(timeout=KILL_WAIT_S)
        with contextlib.suppress(Exception):
            ray.shutdown()


@contextlib.contextmanager
def ray_workers(spec: JobSpec) -> Iterator[RayWorkers]:
    """Connect to the cluster and plan the actors; the actors start with `start` and are
    gone when the block ends, however it ends."""
    from hpcinfer.cluster import resolve_profile
    from hpcinfer.engines.kinds import kind_of

    check_ray_installed()
    check_job(spec)
    cluster = cluster_address(spec.workers.ray_cluster)
    here = check_reachable(cluster)
    nodes = _connect(cluster)
    try:
        on_cpu = resolve_profile(spec.workers.profile).vendor == "cpu"
        on_gpus = kind_of(spec).needs_devices and not on_cpu
        actors = plan_actors(
            ray_nodes(nodes),
            tp=spec.engine.tensor_parallel_size,
            use_gpus=on_gpus,
            count=spec.workers.count,
        )
        joins = JoinListener(here, here, len(actors) + 1, JOIN_WAIT_S, ranks=range(len(actors)))
    except BaseException:
        _disconnect()
        raise
    workers = RayWorkers(spec, cluster, here, actors, joins)
    try:
        yield workers
    finally:
        joins.close()
        workers.close()


def _connect(cluster: ClusterAddress) -> list[dict[str, Any]]:
    """ray.init as a driver of the cluster; its live nodes. Ray's SIGTERM handler (exit at
    once) is taken back out: the first signal drains the job, as without Ray."""
    import ray

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(
            address=cluster.address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except Exception as exc:  # ray.init raises many kinds
        raise LaunchError(
            f"cannot join the Ray cluster at {cluster.address} (from {cluster.source}): "
            f"{_first_line(exc)}; check it with `hpcinfer ray status` (this host must be one "
            "of its nodes, with the same Ray version)"
        ) from None
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    # Ray prints its raylets' error messages (a killed actor, ...) on this process's stdout,
    # which holds the --json summary; the job's own message names a lost worker.
    ray._private.worker._worker_logs_enabled = False
    return list(ray.nodes())


def _disconnect() -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
