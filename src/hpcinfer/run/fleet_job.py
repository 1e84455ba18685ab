"""`hpcinfer run --engine vllm-server`: start a fleet, dispatch the whole job to it, stop it.

Seed 001 end to end, without its flaws: the servers are placed on the node's devices, their
readiness has a timeout and watches the processes, the dispatcher balances every record
over every server (no file per host), and the servers are stopped whatever happens (signal,
failure, success). The registry of the fleet lives in the output directory
(`endpoints.json`), so the dispatcher follows deaths and recoveries as they happen. A rerun
of a finished job starts no server.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from hpcinfer.outputs.store import OutputStore
from hpcinfer.run.job import RunOptions, RunSummary, output_dir
from hpcinfer.spec import JobSpec

REGISTRY_NAME = "endpoints.json"


def dispatch_spec(spec: JobSpec, registry: Path) -> JobSpec:
    """The job as the dispatcher sees it: the fleet's registry as its endpoints, the fleet's
    key (if one is required) as its key. Nothing here enters the job's identity, so a
    rerun resumes."""
    client = spec.client.model_copy(
        update={
            "registry": str(registry),
            "urls": [],
            "api_key_env": spec.serve.api_key_env or spec.client.api_key_env,
        }
    )
    return spec.model_copy(update={"client": client})


def run_with_fleet(
    spec: JobSpec, options: RunOptions, run: Callable[[JobSpec], RunSummary]
) -> RunSummary:
    """Start this node's servers, wait for them, run the job on them, always stop them."""
    from hpcinfer.serve.plan import plan_fleet
    from hpcinfer.serve.report import EventPrinter

    out_dir = output_dir(spec, options.cwd)
    registry = out_dir / REGISTRY_NAME
    job = dispatch_spec(spec, registry)
    if _finished(out_dir):
        return run(job)  # nothing to dispatch: no server started
    printer = None if options.quiet else EventPrinter()
    fleet = plan_fleet(spec, options.cwd, registry, on_event=printer)
    with fleet, _signals_interrupt():
        fleet.start()
        # Dispatch from the first ready server on: the dispatcher follows the registry and
        # takes the others as they come up (or not: a failed one is in the registry too).
        fleet.wait_ready(spec.serve.ready_timeout_s, return_when="first")
        fleet.start_monitor()
        return run(job)


def _finished(out_dir: Path) -> bool:
    return (out_dir / "manifest.json").exists() and OutputStore(out_dir).units_left() == 0


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, `hpcinfer cancel`) while servers start: stop them, do not die
    with them running. The run's coordinator installs its own handlers (drain) meanwhile."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
