"""The worker loop against a fake engine, with the test playing the coordinator.

Worker.serve() runs in a thread on one end of a real multiprocessing Pipe; the test thread
answers its messages on the other end.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.engines.vllm_offline import EngineSetup
from hpcinfer.outputs.store import OutputStore
from hpcinfer.records import Record, Result
from hpcinfer.run.plan import WorkUnit
from hpcinfer.run.worker import Worker, WorkerConfig
from hpcinfer.spec import EngineSpec, SamplingSpec

TIMEOUT = 5.0
WORKER_INDEX = 3


class FakeEngine:
    """Engine protocol: submit queues, poll finishes up to `per_poll` records (FIFO, or LIFO
    to mimic out-of-order completion); records with an error fail at submit."""

    model_name = "fake"

    def __init__(self, per_poll: int = 1, lifo: bool = False) -> None:
        self.per_poll = per_poll
        self.lifo = lifo
        self.queue: deque[Record] = deque()
        self.submitted: list[str] = []
        self.closed = False

    def submit(self, records: Sequence[Record]) -> list[Result]:
        rejected = []
        for record in records:
            self.submitted.append(record.id)
            if record.error is not None:
                rejected.append(Result.failed(record.id, record.error))
            else:
                self.queue.append(record)
        return rejected

    def poll(self) -> list[Result]:
        done = []
        for _ in range(min(self.per_poll, len(self.queue))):
            record = self.queue.pop() if self.lifo else self.queue.popleft()
            prompt = record.prompt or ""
            done.append(
                Result(
                    id=record.id,
                    text=prompt.upper(),
                    finish_reason="stop",
                    prompt_tokens=len(prompt),
                    output_tokens=2,
                )
            )
        return done

    def inflight(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        self.closed = True


def unit(source: str, first: int, n: int, index: int = 0, bad: Sequence[int] = ()) -> WorkUnit:
    records = tuple(
        Record(
            id=f"{source}:{line}",
            source=source,
            line=line,
            prompt=None if line in bad else f"prompt {source} {line}",
            error=f"{source}:{line}: unreadable" if line in bad else None,
        )
        for line in range(first, first + n)
    )
    return WorkUnit(id=f"{source}:{first}-{first + n - 1}", index=index, records=records)


def setup() -> EngineSetup:
    return EngineSetup(
        model_path="/nonexistent",
        model_name="fake",
        engine=EngineSpec(),
        sampling=SamplingSpec(),
        on_cpu=True,
    )


class Harness:
    """The worker in a thread; the test holds `coord`, the coordinator's end of the pipe."""

    def __init__(self, tmp_path: Path, engine: FakeEngine, max_inflight: int) -> None:
        self.coord, worker_end = Pipe()
        self.engine = engine
        self.out = tmp_path / "out"
        self.store = OutputStore(self.out)
        self.store.prepare("fp", {}, restart=False)
        config = WorkerConfig(
            worker=WORKER_INDEX, setup=setup(), out_dir=str(self.out), max_inflight=max_inflight
        )
        self.worker = Worker(worker_end, config, engine)
        self.log: list[tuple[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            self.worker.serve()
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def start(self) -> Harness:
        self.thread.start()
        return self

    def recv(self) -> tuple[str, Any]:
        if not self.coord.poll(TIMEOUT):
            raise AssertionError(f"worker sent nothing for {TIMEOUT}s; log so far: {self.kinds()}")
        message = self.coord.recv()
        self.log.append(message)
        return message

    def recv_kind(self) -> tuple[str, Any]:
        """Next message that is not a progress report."""
        while True:
            message = self.recv()
            if message[0] != "progress":
                return message

    def send(self, kind: str, payload: dict[str, Any] | None = None) -> None:
        self.coord.send((kind, payload or {}))

    def serve_grants(
        self,
        grants: list[list[WorkUnit]],
        on_message: Callable[[tuple[str, Any]], None] | None = None,
    ) -> None:
        """Answer each 'want' with the next grant until the worker says bye."""
        pending = deque(grants)
        while True:
            message = self.recv()
            if on_message:
                on_message(message)
            if message[0] == "want":
                units = pending.popleft() if pending else []
                self.send("units", {"units": units, "more": bool(pending)})
            elif message[0] in ("bye", "failed"):
                break
        self.finish()

    def finish(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "worker did not return"
        if self.error is not None:
            raise self.error

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log if kind != "progress"]

    def committed(self) -> list[str]:
        return [payload["unit"] for kind, payload in self.log if kind == "committed"]


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Harness]:
    harnesses: list[Harness] = []

    def build(per_poll: int = 1, max_inflight: int = 8, lifo: bool = False) -> Harness:
        h = Harness(tmp_path, FakeEngine(per_poll, lifo), max_inflight)
        harnesses.append(h)
        return h

    yield build  # type: ignore[misc]
    for h in harnesses:  # never leave a worker thread blocked on the pipe
        if h.thread.is_alive():
            h.send("abort")
            h.thread.join(TIMEOUT)


def assert_unit_rows(store: OutputStore, work: WorkUnit) -> None:
    rows = store.read_unit(work.id)
    assert [r["id"] for r in rows] == [r.id for r in work.records]
    assert [r["line"] for r in rows] == [r.line for r in work.records]
    for row, record in zip(rows, work.records, strict=True):
        assert row["worker"] == WORKER_INDEX
        assert row["model"] == "fake"
        assert row["source"] == record.source
        assert row["prompt"] == record.prompt
        if record.error is None:
            assert row["status"] == "ok"
            assert row["text"] == (record.prompt or "").upper()  # its own result
            assert row["output_tokens"] == 2
        else:
            assert row["status"] == "error"
            assert row["error"] == record.error
            assert row["text"] is None


# -- tests ------------------------------------------------------------------------------------


def test_every_record_is_committed_once_in_record_order(make: Callable[..., Harness]) -> None:
    h = make(per_poll=2, max_inflight=6).start()
    u0, u1, u2 = unit("a.txt", 1, 3, 0), unit("a.txt", 4, 3, 1), unit("b.txt", 1, 2, 2)
    h.serve_grants([[u0], [u1, u2]])
    assert sorted(h.committed()) == sorted([u0.id, u1.id, u2.id])
    assert len(h.committed()) == 3  # each unit once
    assert len(h.store.committed()) == 3
    for work in (u0, u1, u2):
        assert_unit_rows(h.store, work)
    assert h.kinds()[-1] == "bye"
    assert len(h.engine.submitted) == 8  # every record went to the engine once
    assert len(set(h.engine.submitted)) == 8


def test_rows_are_in_record_order_when_the_engine_finishes_out_of_order(
    make: Callable[..., Harness],
) -> None:
    h = make(per_poll=2, max_inflight=5, lifo=True).start()
    work = unit("a.txt", 1, 5)
    h.serve_grants([[work]])
    assert_unit_rows(h.store, work)


def test_progress_reports_add_up(make: Callable[..., Harness]) -> None:
    h = make(per_poll=3, max_inflight=8).start()
    work = unit("a.txt", 1, 6, bad=(2,))
    h.serve_grants([[work]])
    totals: dict[str, int] = {}
    last_errors = []
    for kind, payload in h.log:
        if kind == "progress":
            for key, value in payload.items():
                if key == "last_error":  # the latest error row's text, for `hpcinfer status`
                    last_errors.append(value)
                else:
                    totals[key] = totals.get(key, 0) + value
    assert totals["records"] == 6
    assert totals["errors"] == 1
    assert len(last_errors) == 1 and last_errors[0]
    assert totals["output_tokens"] == 10
    # progress for a unit's records arrives before the unit is reported committed
    first_commit = next(i for i, (k, _) in enumerate(h.log) if k == "committed")
    assert any(k == "progress" for k, _ in h.log[:first_commit])


def test_asks_for_the_next_unit_before_the_current_one_commits(
    make: Callable[..., Harness],
) -> None:
    h = make(per_poll=1, max_inflight=8).start()
    u0, u1 = unit("a.txt", 1, 4, 0), unit("a.txt", 5, 4, 1)
    h.serve_grants([[u0], [u1]])
    kinds = h.kinds()
    wants = [i for i, k in enumerate(kinds) if k == "want"]
    first_commit = kinds.index("committed")
    assert len(wants) >= 2
    assert wants[1] < first_commit, kinds
    # both units were in the engine together
    assert h.committed() == [u0.id, u1.id]
    assert_unit_rows(h.store, u0)
    assert_unit_rows(h.store, u1)


def test_asks_only_below_max_inflight_and_reports_what_it_holds(
    make: Callable[..., Harness],
) -> None:
    h = make(per_poll=1, max_inflight=4).start()
    assert h.recv() == ("want", {"inflight": 0})
    # 4 records fill max_inflight: it asks again only once one has finished, saying it holds 3
    work = unit("a.txt", 1, 4)
    h.send("units", {"units": [work], "more": True})
    assert h.recv_kind() == ("want", {"inflight": 3})
    h.send("units", {"units": [], "more": False})
    assert h.recv_kind() == ("committed", {"unit": work.id})
    assert h.recv_kind()[0] == "bye"
    h.finish()
    assert_unit_rows(h.store, work)


def test_error_records_become_error_rows_and_commit(make: Callable[..., Harness]) -> None:
    h = make(per_poll=1, max_inflight=8).start()
    mixed = unit("a.txt", 1, 4, 0, bad=(2, 4))
    all_bad = unit("a.txt", 5, 2, 1, bad=(5, 6))
    h.serve_grants([[mixed], [all_bad]])
    assert sorted(h.committed()) == sorted([mixed.id, all_bad.id])
    assert_unit_rows(h.store, mixed)
    assert_unit_rows(h.store, all_bad)
    rows = h.store.read_unit(mixed.id)
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error"]


def test_stop_finishes_in_flight_units_then_says_bye_without_asking(
    make: Callable[..., Harness],
) -> None:
    h = make(per_poll=1, max_inflight=64)
    u0, u1 = unit("a.txt", 1, 3, 0), unit("a.txt", 4, 3, 1)
    # the answer to the worker's first request, then a stop, are waiting when it starts
    h.send("units", {"units": [u0, u1], "more": True})
    h.send("stop")
    h.start()
    while h.recv()[0] != "bye":
        pass
    h.finish()
    assert h.kinds() == ["want", "committed", "committed", "bye"]
    assert h.committed() == [u0.id, u1.id]
    assert_unit_rows(h.store, u0)
    assert_unit_rows(h.store, u1)
    assert h.engine.inflight() == 0


def test_stop_while_idle_says_bye_at_once(make: Callable[..., Harness]) -> None:
    h = make().start()
    assert h.recv()[0] == "want"
    h.send("stop")
    h.send("units", {"units": [], "more": False})
    assert h.recv_kind()[0] == "bye"
    h.finish()
    assert h.store.committed() == set()


def test_empty_grant_with_more_waits_for_wake(make: Callable[..., Harness]) -> None:
    h = make(per_poll=2, max_inflight=8).start()
    assert h.recv() == ("want", {"inflight": 0})
    h.send("units", {"units": [], "more": True})
    assert not h.coord.poll(0.3), "worker asked again without being woken"
    assert h.thread.is_alive()
    h.send("wake")
    assert h.recv() == ("want", {"inflight": 0})
    work = unit("a.txt", 1, 2)
    h.send("units", {"units": [work], "more": False})
    assert h.recv_kind() == ("committed", {"unit": work.id})
    assert h.recv_kind()[0] == "bye"
    h.finish()
    assert_unit_rows(h.store, work)


def test_a_refused_worker_asks_again_only_below_the_hint(make: Callable[..., Harness]) -> None:
    h = make(per_poll=1, max_inflight=8).start()
    assert h.recv() == ("want", {"inflight": 0})
    first = unit("a.txt", 1, 6, 0)
    h.send("units", {"units": [first], "more": True})
    assert h.recv_kind() == ("want", {"inflight": 5})
    h.send("units", {"units": [], "more": True, "ask_below": 2})  # refused: target is 2
    seen = [h.recv_kind()]
    while seen[-1][0] != "want":  # the unit may commit first: it runs while we talk
        seen.append(h.recv_kind())
    assert seen[-1][1]["inflight"] < 2, f"asked again at {seen[-1]}, above the hint"
    h.send("units", {"units": [], "more": False})
    while seen[-1][0] != "bye":
        seen.append(h.recv_kind())
    assert ("committed", {"unit": first.id}) in seen
    h.finish()


def test_abort_returns_without_bye(make: Callable[..., Harness]) -> None:
    h = make().start()
    assert h.recv()[0] == "want"
    h.send("abort")
    h.finish()
    assert not h.coord.poll(0.05)


def test_no_more_work_says_bye(make: Callable[..., Harness]) -> None:
    h = make().start()
    h.serve_grants([])
    assert h.kinds() == ["want", "bye"]


def test_duplicate_id_in_one_unit_keeps_the_original_result(
    make: Callable[..., Harness],
) -> None:
    original = Record(id="q1", source="a.jsonl", line=1, prompt="hello")
    duplicate = Record(
        id="q1", source="a.jsonl", line=2, error="a.jsonl:2: duplicate id 'q1', first used at 1"
    )
    work = WorkUnit(id="a.jsonl:1-2", index=0, records=(original, duplicate))
    h = make().start()
    h.serve_grants([[work]])
    rows = h.store.read_unit(work.id)
    assert [r["line"] for r in rows] == [1, 2]
    assert rows[0]["status"] == "ok" and rows[0]["text"] == "HELLO"
    assert rows[1]["status"] == "error" and "duplicate id" in rows[1]["error"]


def test_duplicate_id_across_units_in_flight_keeps_the_original_result(
    make: Callable[..., Harness],
) -> None:
    original = Record(id="q1", source="a.jsonl", line=1, prompt="hello")
    duplicate = Record(
        id="q1", source="b.jsonl", line=1, error="b.jsonl:1: duplicate id 'q1', first used at 1"
    )
    u0 = WorkUnit(id="a.jsonl:1-1", index=0, records=(original,))
    u1 = WorkUnit(id="b.jsonl:1-1", index=1, records=(duplicate,))
    h = make(max_inflight=8)
    h.send("units", {"units": [u0, u1], "more": False})
    h.start()
    while h.recv()[0] != "bye":
        pass
    h.finish()
    assert h.store.read_unit(u0.id)[0]["status"] == "ok"
    assert h.store.read_unit(u1.id)[0]["status"] == "error"


def test_a_refusal_that_arrives_after_the_units_committed_does_not_deadlock(
    make: Callable[..., Harness],
) -> None:
    # Regression: the worker asked while holding a unit, the unit committed while the
    # coordinator's "nothing now, more later" was on its way, and the worker then waited for
    # a commit that could never come while the coordinator waited for a request.
    h = make(per_poll=1, max_inflight=8).start()
    assert h.recv() == ("want", {"inflight": 0})
    first = unit("a.txt", 1, 4, 0)
    h.send("units", {"units": [first], "more": True})
    assert h.recv_kind() == ("want", {"inflight": 3})  # asks again while the unit runs
    assert h.recv_kind() == ("committed", {"unit": first.id})  # ...and it commits
    h.send("units", {"units": [], "more": True})  # the refusal of the earlier request
    assert h.recv_kind() == ("want", {"inflight": 0}), "the worker must ask again"
    second = unit("a.txt", 5, 2, 1)
    h.send("units", {"units": [second], "more": False})
    assert h.recv_kind() == ("committed", {"unit": second.id})
    assert h.recv_kind()[0] == "bye"
    h.finish()


def test_progress_reports_thin_out_at_scale() -> None:
    from hpcinfer.run.worker import progress_interval_s

    assert progress_interval_s(2) == 0.5  # a node: the bar moves twice a second
    # 24,576 workers: about 2,000 periodic reports a second reach the coordinator in all.
    assert 24_576 / progress_interval_s(24_576) == pytest.approx(2000)


def test_the_first_token_completes_the_start_up_phases_once(tmp_path: Path) -> None:
    """An engine that times its first token: the worker sends its start-up phases once, with
    that time, before it commits anything (the coordinator records them in run.json)."""
    from hpcinfer.core.startup_phases import StartupClock

    class TimedEngine(FakeEngine):
        first_token_s: float | None = None

        def poll(self) -> list[Result]:
            self.first_token_s = 0.125
            return super().poll()

    h = Harness(tmp_path, TimedEngine(per_poll=1), max_inflight=8)
    clock = StartupClock(tmp_path / "no-log")
    with clock.engine():
        pass
    h.worker.clock = clock
    h.start().serve_grants([[unit("a.txt", 1, 3)]])
    startups = [payload for kind, payload in h.log if kind == "startup"]
    assert len(startups) == 1
    assert startups[0]["first_token_s"] == 0.125
    assert startups[0]["total_s"] >= 0.125
    assert h.kinds().index("startup") < h.kinds().index("committed")


def test_an_engine_without_a_first_token_time_sends_no_start_up(
    make: Callable[..., Harness],
) -> None:
    h = make().start()
    h.serve_grants([[unit("a.txt", 1, 2)]])
    assert "startup" not in h.kinds()
