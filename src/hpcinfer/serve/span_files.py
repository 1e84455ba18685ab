"""The files the ranks of one server spanning nodes share (beside the registry parts, on the
shared file system: no messages between nodes, as for the registry itself).

- `span/server-<k>.json`: written by the server's first node (node rank 0) before its vLLM
  starts: its address on the chosen interface, the master port, the launch it belongs to.
  The other nodes wait for it (bounded) and start `vllm serve --headless` against it.
- `span/server-<k>-node-<r>.json`: each other node's rank (node rank r >= 1): who it is
  (host, address, devices), its headless rank's state and a heartbeat counter, rewritten
  every few seconds. The first node reads them to list every node in the registry entry and
  to fail the server when one of them dies or goes silent, instead of hanging.

Freshness: a file of an earlier launch (killed before it cleaned up) must not be taken for
this one's. Files carry the launch id when there is one (`launch_id`: hpcinfer's launcher's,
else the scheduler's job and step); otherwise a file counts when written after this rank
started, less a clock-skew margin. That margin alone would let a relaunch within it join the
earlier launch's server, so the two sides also shake hands: the first node's rendezvous
carries a fresh nonce, each other node echoes it with a token of its own, and starts its
headless rank only once the rendezvous lists its token as accepted (a follower that read an
earlier launch's rendezvous echoes the new nonce when the file changes). Heartbeats are
judged by the reader's own clock (a counter that stops changing), so clocks of different
nodes never need to agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.core.endpoints_registry import parts_dir
from hpcinfer.launch.rank_env import LAUNCH_ID_ENV
from hpcinfer.outputs.atomic import write_text_atomic

SKEW_S = 60.0
"""A file without a launch id counts when written at most this long before this rank began."""

RUNNING = "running"
STARTING = "starting"
STOPPED = "stopped"
DEAD = "dead"
FAILED = "failed"
GONE = (STOPPED, DEAD, FAILED)


def span_dir(registry: Path) -> Path:
    return parts_dir(registry) / "span"


def rendezvous_path(registry: Path, server: int) -> Path:
    return span_dir(registry) / f"server-{server}.json"


def member_path(registry: Path, server: int, node_rank: int) -> Path:
    return span_dir(registry) / f"server-{server}-node-{node_rank}.json"


LAUNCH_VARIABLES = (
    ("SLURM_JOB_ID", "SLURM_STEP_ID"),
    ("SLURM_JOBID", "SLURM_STEPID"),
    ("PBS_JOBID", "PALS_APID"),
    ("PALS_APID",),
    ("PMIX_NAMESPACE",),
    ("OMPI_MCA_ess_base_jobid",),
)
"""Variables that name one launch (job step, application, PMIx namespace) the same on every
rank and differently on the next: the first row all of whose variables are set is used."""


def launch_id(env: Mapping[str, str] | None = None) -> str | None:
    """What every rank of this launch agrees on without talking (None: nothing does)."""
    env = os.environ if env is None else env
    if env.get(LAUNCH_ID_ENV):
        return env[LAUNCH_ID_ENV]
    for names in LAUNCH_VARIABLES:
        values = [env.get(name) for name in names]
        if all(values):
            return "/".join(f"{n}={v}" for n, v in zip(names, values, strict=True))
    return None


def new_token() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Rendezvous:
    """What the first node of server `server` tells the others."""

    server: int
    node: str
    address: str
    master_port: int
    dp_rpc_port: int | None
    leader_rank: int
    part: str  # the leader's registry part (its endpoint's state: the others follow it)
    launch: str | None = None
    nonce: str = field(default_factory=new_token)
    accepted: dict[str, str] = field(default_factory=dict)
    """Node rank (as text) -> the token of the member the first node took for this launch's."""
    written: float = field(default_factory=time.time)

    def accepts(self, member: MemberState) -> bool:
        """This rendezvous let `member` in: it echoed the nonce, and its token is listed."""
        return member.nonce == self.nonce and self.accepted.get(str(member.node_rank)) == (
            member.token
        )


@dataclass
class MemberState:
    """One other node's rank of a server, as it reports itself."""

    server: int
    node_rank: int
    rank: int
    node: str
    address: str
    devices: list[str]
    state: str = STARTING
    error: str | None = None
    pid: int | None = None
    log: str | None = None
    beat: int = 0
    launch: str | None = None
    nonce: str | None = None
    """The nonce of the rendezvous this node joins (None: it failed before reading one)."""
    token: str = field(default_factory=new_token)
    written: float = field(default_factory=time.time)


def _write(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def _read(path: Path) -> dict[str, Any] | None:
    """The file's JSON object, or None when it is missing or being replaced right now."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return None


def fresh(data: dict[str, Any], launch: str | None, started_at: float) -> bool:
    """Written by this launch: same launch id where there is one, else recent enough."""
    if launch is not None and data.get("launch") is not None:
        return bool(data.get("launch") == launch)
    return float(data.get("written", 0.0)) >= started_at - SKEW_S


def write_rendezvous(registry: Path, rendezvous: Rendezvous) -> None:
    _write(rendezvous_path(registry, rendezvous.server), asdict(rendezvous))


def read_rendezvous(
    registry: Path, server: int, launch: str | None, started_at: float
) -> Rendezvous | None:
    data = _read(rendezvous_path(registry, server))
    if data is None or not fresh(data, launch, started_at):
        return None
    with contextlib.suppress(TypeError):
        return Rendezvous(**data)
    return None


def write_member(registry: Path, state: MemberState) -> None:
    state.written = time.time()
    _write(member_path(registry, state.server, state.node_rank), asdict(state))


def read_member(
    registry: Path,
    server: int,
    node_rank: int,
    launch: str | None,
    started_at: float,
    nonce: str | None = None,
) -> MemberState | None:
    """Node `node_rank`'s state when it is this launch's: fresh, and (given the leader's
    `nonce`) echoing it; a node that failed before reading any rendezvous echoes none."""
    data = _read(member_path(registry, server, node_rank))
    if data is None or not fresh(data, launch, started_at):
        return None
    echoed = data.get("nonce")
    failed_early = echoed is None and data.get("state") in GONE
    if nonce is not None and echoed != nonce and not failed_early:
        return None
    with contextlib.suppress(TypeError):
        return MemberState(**data)
    return None
