"""`hpcinfer run --engine vllm-server`: start a fleet, dispatch the whole job to it, stop it.

The Aurora vLLM server scripts (Aurora-Inferencing) end to end, without their flaws:
the servers are placed on the node's devices, their
readiness has a timeout and watches the processes, the dispatcher balances every record
over every server (no file per host), and the servers are stopped whatever happens (signal,
failure, success). The registry of the fleet lives in the output directory
(`endpoints.json`), so the dispatcher follows deaths and recoveries as they happen. A rerun
of a finished job starts no server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from hpcinfer.core.models import resolve_model
from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import EngineError, StoppedError
from hpcinfer.outputs.atomic import write_text_atomic
from hpcinfer.outputs.store import OutputStore
from hpcinfer.run.options import RunOptions, output_dir
from hpcinfer.run.summary import RunSummary
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.fleet import Fleet
from hpcinfer.serve.process import ServerProcess
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
    """Start the servers (this node's, or one serve rank per node through the launcher),
    wait for the first to be ready, run the job on all of them, always stop them."""
    out_dir = output_dir(spec, options.cwd)
    registry = out_dir / REGISTRY_NAME
    job = dispatch_spec(spec, registry)
    if _finished(out_dir):
        return run(job)  # nothing to dispatch: no server started
    servers = _node_fleet if spec.workers.launcher == "local" else _serve_ranks
    with servers(spec, options, registry):
        return run(job)


@contextmanager
def _node_fleet(spec: JobSpec, options: RunOptions, registry: Path) -> Iterator[None]:
    from hpcinfer.serve.plan import plan_fleet
    from hpcinfer.serve.report import EventPrinter

    printer = None if options.quiet else EventPrinter()
    fleet = plan_fleet(spec, options.cwd, registry, on_event=printer)
    with fleet:
        fleet.start()
        # Dispatch from the first ready server on: the dispatcher follows the registry and
        # takes the others as they come up (or not: a failed one is in the registry too).
        with stop_closes(options.stop, fleet):
            try:
                fleet.wait_ready(spec.serve.ready_timeout_s, return_when="first")
            except ServeError:
                _raise_if_stopped(options.stop)
                raise
        _raise_if_stopped(options.stop)
        fleet.start_monitor()
        yield


@contextmanager
def _serve_ranks(spec: JobSpec, options: RunOptions, registry: Path) -> Iterator[None]:
    """`hpcinfer serve --launcher ...` (one rank per node, registries merged by its rank 0)
    in the background for the length of the job; stopped with SIGTERM, which the launcher
    passes to every rank, each stopping its servers."""
    registry.parent.mkdir(parents=True, exist_ok=True)
    spec_file = registry.with_name("serve-spec.yaml")
    model_path, _ = resolve_model(spec, options.cwd)
    data = spec.model_dump(mode="json", exclude={"client"})
    if spec.model is not None and Path(model_path).is_absolute():
        data["model"] = model_path  # the spec file lives elsewhere: no relative paths
    write_text_atomic(spec_file, yaml.safe_dump(data, sort_keys=False))
    log = registry.with_name("serve.log")
    argv = [
        sys.executable, "-m", "hpcinfer", "serve", str(spec_file),
        "--launcher", spec.workers.launcher, "--endpoints", str(registry),
    ]  # fmt: skip
    # Its own process group and a parent-death signal, like the servers it starts.
    serve = ServerProcess(argv, dict(os.environ), log, cwd=options.cwd)
    try:
        _wait_first_ready(serve, registry, spec.serve.ready_timeout_s, options.stop)
        yield
    finally:
        _stop(serve)


def _wait_first_ready(
    serve: ServerProcess, registry: Path, timeout_s: float, stop: StopSignal | None
) -> None:
    from hpcinfer.core.endpoints_registry import READY, RegistryError, read_registry

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _raise_if_stopped(stop)
        if not serve.alive():
            raise EngineError(
                f"`hpcinfer serve` exited with code {serve.returncode} before a server was "
                f"ready; see {serve.log}:\n{serve.log_tail()}"
            )
        with contextlib.suppress(RegistryError):
            if registry.exists() and any(e.state == READY for e in read_registry(registry)):
                return
        if stop is not None:
            stop.wait(1.0)
        else:
            time.sleep(1.0)
    raise EngineError(
        f"no server ready after {timeout_s:.0f}s; see {serve.log} and the server logs"
    )


def _stop(serve: ServerProcess, grace_s: float = 60.0) -> None:
    """SIGTERM to serve alone (it passes it to the launcher, which passes it to the ranks,
    each stopping its servers), then SIGKILL to whatever of its group is left."""
    if serve.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(serve.pid, signal.SIGTERM)
        if not serve.wait(grace_s):
            serve.signal_group(signal.SIGKILL)
    serve.reap_group()


def _finished(out_dir: Path) -> bool:
    return (out_dir / "manifest.json").exists() and OutputStore(out_dir).units_left() == 0


def _raise_if_stopped(stop: StopSignal | None) -> None:
    if stop is not None and stop.requested:
        raise StoppedError(
            f"{stop.reason} while the servers started: they were stopped and nothing was "
            "dispatched; rerun the same command to run the job"
        )


@contextmanager
def stop_closes(stop: StopSignal | None, fleet: Fleet) -> Iterator[None]:
    """While the block runs, a stop request stops the fleet (so a wait for readiness ends);
    watched from a helper thread, never from a signal handler."""
    if stop is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.2):
                fleet.stop()
                return

    watcher = threading.Thread(target=watch, name="hpcinfer-stop-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
