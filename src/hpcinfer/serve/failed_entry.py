"""A `failed` registry entry for a serve that fails before its servers start.

Whoever waits on the registry (`hpcinfer serve & hpcinfer endpoints --wait 55m` in a job
script) would otherwise wait out its whole deadline for a file nobody will write; with this
entry it learns at once that the servers failed, and why (`serve.checks.wait_until_up`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

from hpcinfer.cluster.allocation import short_hostname
from hpcinfer.core.endpoints_registry import FAILED, Endpoint, now_iso, write_registry
from hpcinfer.serve.plan import advertised_url
from hpcinfer.spec import JobSpec


def scheduler_job(env: Mapping[str, str] | None = None) -> str | None:
    """The PBS or Slurm job this process runs in (None outside one): a failed entry written
    by this job's serve is this wait's news even when written before the wait began."""
    env = os.environ if env is None else env
    for name in ("PBS_JOBID", "SLURM_JOB_ID", "SLURM_JOBID"):
        if env.get(name):
            return f"{name}={env[name]}"
    return None


def failed_entry(spec: JobSpec, error: str) -> Endpoint:
    """The servers of `spec` as they would have been listed, failed with `error`."""
    serve = spec.serve
    return Endpoint(
        url=advertised_url(serve.host, serve.port),
        model=spec.model or "",
        node=short_hostname(socket.gethostname()),
        state=FAILED,
        started=now_iso(),
        error=error,
    )


@contextlib.contextmanager
def failure_recorded(spec: JobSpec, registry: Path, *, record: bool = True) -> Iterator[None]:
    """An error inside (the servers not started yet) replaces `registry` with one failed
    entry naming it, then goes on to the caller. `record=False`: this rank writes no
    registry (another rank merges it)."""
    try:
        yield
    except Exception as exc:
        if record:
            with contextlib.suppress(OSError):  # the error itself still reaches the user
                entry = failed_entry(spec, str(exc) or type(exc).__name__)
                write_registry(registry, [entry], job=scheduler_job())
        raise
