"""The scheduling policy: dynamic (guided self-scheduling) and static (simple_test.py's split)."""

from __future__ import annotations

from hpcinfer.records import Record
from hpcinfer.run.plan import WorkUnit, cut_units
from hpcinfer.run.schedule import Scheduler, static_owners


def _units(files: dict[str, int], unit_size: int = 2) -> list[WorkUnit]:
    records = [
        Record(id=f"{name}:{line}", source=name, line=line, prompt="p")
        for name, count in files.items()
        for line in range(1, count + 1)
    ]
    return list(cut_units(records, unit_size))


def test_static_owners_follow_rank_numbers_in_file_names() -> None:
    names = ["in/0.in", "in/1.in", "in/10.in", "in/2.in"]
    assert static_owners(names, 12) == {"in/0.in": 0, "in/1.in": 1, "in/10.in": 10, "in/2.in": 2}


def test_static_owners_fall_back_to_input_order() -> None:
    assert static_owners(["b.txt", "a.txt", "c.txt"], 2) == {"b.txt": 0, "a.txt": 1, "c.txt": 0}


def _static(files: dict[str, int], workers: int) -> Scheduler:
    units = _units(files)
    owners = static_owners(list(files), workers)
    return Scheduler(
        iter(units),
        sum(u.size for u in units),
        unit_size=2,
        max_inflight=100,
        owner_of=lambda u: owners[u.records[0].source],
    )


def test_static_gives_each_worker_only_its_file() -> None:
    sched = _static({"0.in": 4, "1.in": 6, "2.in": 2}, workers=3)
    got = {w: sched.grant(w, 0, alive=3) for w in (2, 0, 1)}
    assert {w: {u.records[0].source for u in us} for w, us in got.items()} == {
        0: {"0.in"},
        1: {"1.in"},
        2: {"2.in"},
    }
    assert {w: sum(u.size for u in us) for w, us in got.items()} == {0: 4, 1: 6, 2: 2}
    assert not sched.has_work() and not sched.more_for(0)


def test_static_orphaned_units_go_to_survivors() -> None:
    sched = _static({"0.in": 4, "1.in": 4}, workers=2)
    first = sched.grant(1, 99, alive=2)  # worker 1 takes one unit of its file, then dies
    assert [u.id for u in first] == ["1.in:1-2"]
    assert [u.id for u in sched.grant(0, 0, alive=2)] == ["0.in:1-2", "0.in:3-4"]
    assert sched.grant(0, 0, alive=2) == []  # 1.in is not worker 0's while 1 lives
    sched.requeue(first, owner_died=1)
    assert sched.more_for(0)
    taken = [u.id for u in sched.grant(0, 0, alive=1)]
    assert sorted(taken) == ["1.in:1-2", "1.in:3-4"]
    assert not sched.has_work()


def test_dynamic_hands_out_every_unit_once() -> None:
    units = _units({"a": 50})
    sched = Scheduler(iter(units), 50, unit_size=2, max_inflight=8)
    seen: list[str] = []
    worker = 0
    while sched.has_work():
        seen += [u.id for u in sched.grant(worker % 3, 0, alive=3)]
        worker += 1
    assert sorted(seen) == sorted(u.id for u in units)
    assert sched.unassigned == 0


def test_a_finished_job_has_no_work_before_any_unit_is_read() -> None:
    # A rerun of a finished job: the coordinator must not wait for other ranks to join.
    assert not Scheduler(iter([]), 0, unit_size=2, max_inflight=8).has_work()
    assert Scheduler(iter(_units({"a": 1})), 1, unit_size=2, max_inflight=8).has_work()


def test_batching_engines_get_a_full_batch_while_the_job_has_one_per_worker() -> None:
    from hpcinfer.run.schedule import grant_target

    big = {"unit_size": 32, "max_inflight": 320, "batch": 256}
    # 10M records over 24,576 workers: guided self-scheduling alone would cap at 204.
    assert grant_target(unassigned=10_000_000, alive=24_576, **big) == 256
    # Later, little is unassigned but workers still hold plenty: keep batches full.
    assert grant_target(unassigned=1_000_000, alive=24_576, held=6_000_000, **big) == 256
    # A small job is spread evenly, not taken by the first worker to ask.
    assert grant_target(unassigned=240, alive=3, **big) == 80
    # The end of a job: even shares of what is outstanding.
    assert grant_target(unassigned=64, alive=4, held=96, **big) == 40
