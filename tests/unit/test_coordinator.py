"""The coordinator's share of work per request (guided self-scheduling) and its grants."""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.records import Record
from hpcinfer.run.coordinator import Coordinator, WorkerHandle
from hpcinfer.run.plan import WorkUnit, cut_units
from hpcinfer.run.schedule import grant_target


def target(unassigned: int, alive: int = 1, unit_size: int = 32, max_inflight: int = 256) -> int:
    return grant_target(
        unassigned=unassigned, alive=alive, unit_size=unit_size, max_inflight=max_inflight
    )


def test_one_worker_big_job_gets_max_inflight() -> None:
    assert target(1_000_000, alive=1) == 256
    assert target(1_000_000, alive=1, max_inflight=64) == 64


def test_a_lone_worker_gets_all_that_is_left_below_the_cap() -> None:
    # no one to balance with: halving its share would only shrink its batches at the tail
    assert target(300, alive=1) == 256
    assert target(200, alive=1) == 200


def test_two_workers_get_half_of_their_even_share() -> None:
    assert target(1000, alive=2) == 250
    assert target(1000, alive=4) == 125
    assert target(1000, alive=2) < target(1000, alive=1)


def test_never_below_unit_size() -> None:
    assert target(10, alive=1, unit_size=32) == 32
    assert target(0, alive=8, unit_size=16) == 16
    assert target(100, alive=50, unit_size=4) == 4


def test_unit_size_wins_over_a_smaller_max_inflight() -> None:
    assert target(10_000, alive=1, unit_size=64, max_inflight=8) == 64


def test_zero_alive_counts_as_one() -> None:
    assert target(400, alive=0) == target(400, alive=1)


def test_share_shrinks_as_the_job_drains() -> None:
    shares = [target(left, alive=2, unit_size=8) for left in (4000, 1000, 400, 100, 20, 0)]
    assert shares == sorted(shares, reverse=True)
    assert shares[0] == 256 and shares[-1] == 8
    assert len(set(shares)) > 3


# -- grants through the coordinator's message handling ----------------------------------------


class _Proc:
    def wait(self, timeout: float | None = None) -> int:
        return 0

    def kill(self) -> None:  # pragma: no cover - not reached
        pass

    def signal_group(self, signum: int) -> None:  # a worker still loading, ended on a stop
        pass


def make_units(n_records: int, unit_size: int) -> list[WorkUnit]:
    records = [Record(id=f"a:{i}", source="a", line=i, prompt="p") for i in range(1, n_records + 1)]
    return list(cut_units(records, unit_size))


def coordinator(
    tmp_path: Path, units: list[WorkUnit], n_workers: int, **kwargs: Any
) -> tuple[Coordinator, list[Connection]]:
    handles, ends = [], []
    for i in range(n_workers):
        here, there = Pipe()
        handles.append(WorkerHandle(i, _Proc(), here, tmp_path / f"{i}.log"))  # type: ignore[arg-type]
        ends.append(there)
    it: Iterator[WorkUnit] = iter(units)
    coord = Coordinator(
        handles,
        it,
        sum(u.size for u in units),
        unit_size=kwargs.pop("unit_size", 4),
        max_inflight=kwargs.pop("max_inflight", 16),
        on_progress=lambda _: None,
        **kwargs,
    )
    return coord, ends


def ask(coord: Coordinator, ends: list[Connection], worker: int, inflight: int = 0) -> Any:
    ends[worker].send(("want", {"inflight": inflight}))
    coord._receive(coord.workers[worker])
    assert ends[worker].poll(1)
    return ends[worker].recv()


def test_grant_respects_target_and_reports_more(tmp_path: Path) -> None:
    units = make_units(100, 4)
    coord, ends = coordinator(tmp_path, units, 1, unit_size=4, max_inflight=16)
    kind, payload = ask(coord, ends, 0)
    assert kind == "units"
    assert [u.id for u in payload["units"]] == [u.id for u in units[:4]]  # 16 records
    assert payload["more"] is True
    kind, payload = ask(coord, ends, 0, inflight=12)
    assert len(payload["units"]) == 1  # tops up to 16


def test_grants_run_out_then_say_no_more(tmp_path: Path) -> None:
    units = make_units(16, 4)
    coord, ends = coordinator(tmp_path, units, 2, unit_size=4, max_inflight=64)
    _, payload = ask(coord, ends, 0)
    assert [u.id for u in payload["units"]] == [units[0].id]  # half of its even share
    _, payload = ask(coord, ends, 0, inflight=4)
    # Holds its share already: ask again once holding less than the target (4 records).
    assert payload == {"units": [], "more": True, "ask_below": 4}
    _, payload = ask(coord, ends, 1, inflight=0)
    assert [u.id for u in payload["units"]] == [units[1].id]
    _, payload = ask(coord, ends, 1, inflight=0)
    assert [u.id for u in payload["units"]] == [units[2].id]
    _, payload = ask(coord, ends, 1, inflight=0)
    assert [u.id for u in payload["units"]] == [units[3].id]
    _, payload = ask(coord, ends, 1, inflight=0)
    # Worker 0 still holds a unit; nothing left to hand out: ask again only when woken.
    assert payload == {"units": [], "more": True, "ask_below": 0}
    coord.workers[0].assigned.clear()
    _, payload = ask(coord, ends, 1, inflight=0)
    assert payload == {"units": [], "more": False}


def test_idle_worker_waits_while_another_holds_work_and_is_woken(tmp_path: Path) -> None:
    units = make_units(4, 4)
    coord, ends = coordinator(tmp_path, units, 2, unit_size=4, max_inflight=64)
    _, first = ask(coord, ends, 0)
    assert len(first["units"]) == 1
    _, second = ask(coord, ends, 1)
    assert second == {"units": [], "more": True, "ask_below": 0}  # worker 0 might still die
    assert coord.workers[1].waiting
    ends[0].send(("committed", {"unit": units[0].id}))
    coord._receive(coord.workers[0])
    assert ends[1].poll(1) and ends[1].recv() == ("wake", {})
    assert not coord.workers[0].assigned


def test_after_stop_nothing_is_granted(tmp_path: Path) -> None:
    coord, ends = coordinator(tmp_path, make_units(40, 4), 1)
    coord.request_stop("test")
    assert ends[0].recv() == ("stop", {})
    _, payload = ask(coord, ends, 0)
    assert payload == {"units": [], "more": False}


@pytest.mark.parametrize("n_workers", [1, 3])
def test_every_unit_is_granted_exactly_once(tmp_path: Path, n_workers: int) -> None:
    units = make_units(97, 5)
    coord, ends = coordinator(tmp_path, units, n_workers, unit_size=5, max_inflight=20)
    seen: list[str] = []
    worker = 0
    while True:
        _, payload = ask(coord, ends, worker % n_workers)
        seen += [u.id for u in payload["units"]]
        if not payload["more"]:
            break
        worker += 1
    assert seen == [u.id for u in units]
    assert coord.scheduler.unassigned == 0


def test_the_first_ready_worker_starts_the_generation_clock_once(tmp_path: Path) -> None:
    """The progress view's tokens/s is timed from here, the run summary's window too."""
    readies: list[int] = []
    coord, ends = coordinator(tmp_path, make_units(8, 4), 2, on_ready=lambda: readies.append(1))
    for worker in (0, 1):
        ends[worker].send(("ready", {"startup_s": 1.0}))
        coord._receive(coord.workers[worker])
    assert readies == [1] and coord.first_ready is not None
