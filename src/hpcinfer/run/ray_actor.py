"""What a Ray actor of `hpcinfer run --launcher ray` does on its node: start one worker.

The actor binds nothing itself: it plans its node's device groups from the node's own
hardware profile (as an MPI rank does with its local rank), and starts the standard
`python -m hpcinfer.run.worker --connect` child bound to its group, which dials the
coordinator and speaks the same protocol as any rank's worker. The child has the
parent-death signal and a guard (core.processes), so a killed actor takes its worker and
the worker's engine processes with it; a dead coordinator closes the worker's connection,
the worker exits, and so does this actor's call.

Ray imports this module on the nodes, so it imports nothing of Ray's and nothing heavy.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.cluster import plan_placement, resolve_profile
from hpcinfer.core.processes import Child
from hpcinfer.run.policy import engine_vars_for
from hpcinfer.run.spawn import spawn_remote_worker
from hpcinfer.spec import JobSpec


@dataclass(frozen=True)
class ActorTask:
    """Everything one actor needs to start its worker (the key is never on a command line:
    it travels in the call's arguments, then in the worker's environment)."""

    spec_json: str
    index: int
    host: str
    slot: int
    node_slots: int
    address: str
    key: bytes
    log: str

    def hello(self) -> dict[str, Any]:
        """What the worker tells the coordinator about itself: actor i is rank i with one
        slot, so its worker's index is i (`--schedule static` gives it file i)."""
        return {
            "rank": self.index,
            "slot": 0,
            "slots": 1,
            "host": self.host,
            "node_workers": self.node_slots,
        }


def start_worker(task: ActorTask) -> Child:
    """The worker process of this actor, bound to device group `slot` of this node."""
    spec = JobSpec.model_validate_json(task.spec_json)
    profile = resolve_profile(spec.workers.profile)
    tp, mode = spec.engine.tensor_parallel_size, spec.workers.placement
    plan = plan_placement(profile, workers=task.node_slots, tp=tp, mode=mode)
    entry = plan.placements[task.slot]
    engine_vars = engine_vars_for(spec, profile, task.node_slots)
    log = Path(task.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    return spawn_remote_worker(
        entry, engine_vars, log, address=task.address, key=task.key, hello=task.hello()
    )


def run_worker(task: ActorTask) -> dict[str, Any]:
    """Start the worker and wait for it; its exit code and what it left in its log."""
    # Ray turns SIGTERM into an exception in its workers; the coordinator decides when the
    # job drains, as for every rank's workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proc = start_worker(task)
    proc.wait(None)
    proc.reap_group()  # whatever the worker left behind (an EngineCore)
    return {"index": task.index, "host": task.host, "pid": os.getpid(), "code": proc.returncode}
