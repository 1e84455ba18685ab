"""The communicator a stage runs on: MPI's world, or a stand-in for one process.

mpi4py is imported only when a launcher started more than one rank, so `hpcinfer --help`
and single-node staging never load MPI. The stand-in implements the few calls the stage
uses, so one code path serves both. `agree` is the one way a stage reports failure: every
rank contributes its own error (or none), and every rank raises the same `StageError`,
so ranks never disagree on the outcome or wait forever in a collective.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from hpcinfer.cluster.allocation import read_rank
from hpcinfer.errors import HardwareError, HpcinferError, SpecError
from hpcinfer.stage.errors import StageError


class Comm(Protocol):
    """The subset of mpi4py's Comm that staging uses."""

    def Get_rank(self) -> int: ...
    def Get_size(self) -> int: ...
    def bcast(self, obj: Any, root: int = 0) -> Any: ...
    def allgather(self, sendobj: Any) -> list[Any]: ...
    def gather(self, sendobj: Any, root: int = 0) -> list[Any] | None: ...
    def Bcast(self, buf: Any, root: int = 0) -> None: ...
    def Barrier(self) -> None: ...
    def Ibarrier(self) -> Any: ...
    def Split(self, color: int = 0, key: int = 0) -> Any: ...
    def Free(self) -> None: ...
    def Abort(self, errorcode: int = 0) -> None: ...


class LocalComm:
    """One process alone: broadcasts are no-ops, gathers return this rank's value."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, sendobj: Any) -> list[Any]:
        return [sendobj]

    def gather(self, sendobj: Any, root: int = 0) -> list[Any] | None:
        return [sendobj]

    def Bcast(self, buf: Any, root: int = 0) -> None:
        return None

    def Barrier(self) -> None:
        return None

    def Ibarrier(self) -> Any:
        raise NotImplementedError("one process never waits for others")

    def Split(self, color: int = 0, key: int = 0) -> LocalComm:
        return self

    def Free(self) -> None:
        return None

    def Abort(self, errorcode: int = 0) -> None:
        raise SystemExit(errorcode)


def open_comm(env: Mapping[str, str]) -> Comm:
    """MPI's world when a launcher started several ranks, else the one-process stand-in."""
    info = read_rank(env)
    if info is None or info.world_size == 1:
        return LocalComm()
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise SpecError(
            f"hpcinfer stage runs as rank {info.rank} of {info.world_size} ({info.launcher}) but "
            f"mpi4py cannot be imported ({exc}); install it against the site's MPI "
            "(`pip install mpi4py`, or `pip install 'hpcinfer[mpi]'` off HPC), or run "
            "`hpcinfer stage` without a launcher to copy on one node"
        ) from None
    world = MPI.COMM_WORLD
    if world.Get_size() != info.world_size:
        raise HardwareError(
            f"{info.launcher} started {info.world_size} ranks but MPI sees {world.Get_size()}: "
            "mpi4py is built against a different MPI than this launcher; use the launcher of "
            "the MPI mpi4py was built with (or rebuild mpi4py: pip install --no-binary "
            "mpi4py mpi4py)"
        )
    return world


def settle(comm: Comm) -> None:
    """A barrier that sleeps while it waits: ranks that finished a phase early (a folder
    another rank writes, a copy already verified) leave the cores to the ranks still busy,
    instead of spinning in MPI (which matters when several ranks share a node)."""
    if comm.Get_size() == 1:
        return
    request = comm.Ibarrier()
    pause = 0.0005
    while not request.Test():
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def agree(comm: Comm, error: HpcinferError | None, context: str, fix: str = "") -> None:
    """Raise the same StageError on every rank if any rank has an error.

    Each rank's message is listed once with the ranks that reported it; the exit code is
    that of the lowest failing rank (a usage error stays exit 2 everywhere).
    """
    mine = None if error is None else (error.exit_code, str(error))
    settle(comm)
    reports = comm.allgather(mine)
    failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
    if not failed:
        return
    by_message: dict[str, list[int]] = {}
    for rank, (_code, message) in failed:
        by_message.setdefault(message, []).append(rank)
    size = comm.Get_size()
    code = failed[0][1][0]
    if size == 1:
        raise StageError(failed[0][1][1] + (f"\n{fix}" if fix else ""), exit_code=code)
    lines = [f"{context} failed on {len(failed)} of {size} ranks (every rank exits {code}):"]
    for message, ranks in by_message.items():
        who = "rank" + ("s " if len(ranks) > 1 else " ") + ",".join(str(r) for r in ranks)
        lines.append(f"  {who}: {message}")
    if fix:
        lines.append(fix)
    raise StageError("\n".join(lines), exit_code=code)


@contextlib.contextmanager
def abort_on_surprise(comm: Comm) -> Iterator[None]:
    """An error not agreed on would leave the other ranks waiting in a collective until the
    walltime ends; abort the whole job instead (agreed errors pass through)."""
    try:
        yield
    except StageError:
        raise
    except BaseException:
        if comm.Get_size() == 1:
            raise
        rank = comm.Get_rank()
        sys.stderr.write(f"hpcinfer stage: rank {rank} failed unexpectedly; aborting all ranks\n")
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        raise
