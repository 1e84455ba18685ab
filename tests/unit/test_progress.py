"""The run's figures have one definition each (run/figures.py), used by the progress line,
the summary and run.json alike; the ETA waits for a measured generation rate; a stop
request is answered at once with what it does."""

from __future__ import annotations

from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.run import figures, progress
from hpcinfer.run.coordinator import Coordinator, WorkerHandle
from hpcinfer.run.progress import ProgressView
from hpcinfer.run.status_file import read_status_file
from tests.unit.test_coordinator import make_units


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_rate_and_eta_count_from_the_first_worker_ready(clock: list[float]) -> None:
    view = ProgressView(total=100, done=20, quiet=True)  # 20 committed by an earlier run
    assert view.rate() == 0.0 and view.eta_s() is None
    clock[0] = 130.0  # 30 s of engine start-up: not part of any figure but wall time
    view.generation_started()
    clock[0] = 140.0
    view.advance({"records": 10, "errors": 1, "output_tokens": 500})
    clock[0] = 150.0
    view.advance({"records": 10, "errors": 0, "output_tokens": 500})
    assert (view.done, view.errors, view.records_run) == (40, 1, 20)
    assert view.generation_s() == 20.0
    assert view.rate() == pytest.approx(1000 / 20)
    # 20 records in 20 s of generation -> 60 left take 60 s (not counting start-up)
    assert view.eta_s() == pytest.approx(60.0)


def test_no_eta_until_the_rate_is_measured_over_enough_records_and_time(
    clock: list[float],
) -> None:
    """The old ETA divided by the time since the view started: a first report right after
    a 40 s engine start-up said `ETA 26m22s` for a job of 400 records that ended 1 s later."""
    view = ProgressView(total=400, done=0, quiet=True)
    clock[0] = 140.0
    view.generation_started()
    clock[0] = 140.5
    view.advance({"records": 3, "output_tokens": 200})
    assert view.eta_s() is None  # 3 records, half a second: no pace known yet
    clock[0] = 145.0
    view.advance({"records": 300, "output_tokens": 20000})
    assert view.eta_s() is None  # enough records, but under ETA_MIN_S of generation
    clock[0] = 140.0 + figures.ETA_MIN_S
    view.advance({"records": 50, "output_tokens": 3000})
    assert view.eta_s() == pytest.approx(47 / (353 / figures.ETA_MIN_S))


def test_eta_thresholds() -> None:
    assert figures.eta_s(100, figures.ETA_MIN_RECORDS - 1, 60.0) is None
    assert figures.eta_s(100, 100, figures.ETA_MIN_S - 0.1) is None
    assert figures.eta_s(100, 100, None) is None
    assert figures.eta_s(100, 100, 50.0) == pytest.approx(50.0)
    assert figures.per_s(10, None) == 0.0 and figures.per_s(10, 0.0) == 0.0
    assert [figures.duration_text(s) for s in (42, 185, 3720)] == ["42s", "3m05s", "1h02m"]


def _pair(tmp_path: Path, n_workers: int = 1, **kwargs: Any) -> tuple[Coordinator, list[Any]]:
    handles, ends = [], []
    for i in range(n_workers):
        here, there = Pipe()
        handles.append(WorkerHandle(i, None, here, tmp_path / f"{i}.log"))
        ends.append(there)
    units = make_units(8, 4)
    coord = Coordinator(
        handles, iter(units), 8, unit_size=4, max_inflight=16, on_progress=lambda _: None,
        **kwargs,
    )  # fmt: skip
    return coord, ends


def test_the_last_progress_figure_is_the_summary_figure(
    tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    """Progress said 6,018 tok/s where the summary said 459: both are now output tokens of
    this run over the window from the first worker ready to the last commit."""
    view = ProgressView(total=8, done=0, quiet=False)
    coord, ends = _pair(tmp_path, on_ready=view.generation_started, observer=view)
    coord.on_progress = view.advance
    worker = coord.workers[0]
    with view:
        clock[0] = 160.0  # 60 s of start-up
        ends[0].send(("ready", {"startup_s": 60.0}))
        coord._receive(worker)
        ends[0].send(("want", {"inflight": 0}))
        coord._receive(worker)
        units = ends[0].recv()[1]["units"]
        for i, unit in enumerate(units):
            clock[0] = 160.0 + 4 * (i + 1)
            ends[0].send(("progress", {"records": unit.size, "output_tokens": 400}))
            coord._receive(worker)
            ends[0].send(("committed", {"unit": unit.id}))
            coord._receive(worker)
        ends[0].send(("bye", {}))
        coord._receive(worker)
    result = coord.run()  # nobody alive: returns the window at once
    assert result.generation_s == pytest.approx(8.0)
    summary_rate = figures.per_s(view.output_tokens, result.generation_s)
    assert view.rate() == pytest.approx(summary_rate) == pytest.approx(100.0)
    assert "8/8 records, 0 errors, 100 output tok/s" in capsys.readouterr().err


def test_phases_and_the_stop_messages_are_said_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    view = ProgressView(total=8, done=0, quiet=False, out_dir=tmp_path)
    coord, ends = _pair(tmp_path, n_workers=2, observer=view)
    view.workers_starting(2)
    ends[0].send(("ready", {"startup_s": 1.0}))
    coord._receive(coord.workers[0])
    ends[0].send(("want", {"inflight": 0}))
    coord._receive(coord.workers[0])
    held = len(ends[0].recv()[1]["units"])
    assert read_status_file(tmp_path)["phase"].startswith("generating; 1 of 2 workers ready")
    coord.request_stop("signal SIGINT")
    err = capsys.readouterr().err
    assert "workers loading the model: 0 of 2 ready" in err
    assert "generating; 1 of 2 workers ready" in err
    assert (
        f"stopping (signal SIGINT): finishing {held} unit(s) in flight; Ctrl-C again to abort"
        in err
    )
    coord.request_stop("signal SIGINT")
    assert "aborting: ending the workers now" in capsys.readouterr().err
    assert ends[0].recv()[0] == "stop" and ends[0].recv()[0] == "abort"


def test_a_worker_holding_units_that_stops_reporting_is_shown_silent(
    tmp_path: Path, clock: list[float]
) -> None:
    view = ProgressView(total=8, done=0, quiet=True, out_dir=tmp_path)
    coord, ends = _pair(tmp_path, n_workers=2, observer=view)
    for w in (0, 1):
        ends[w].send(("ready", {"startup_s": 1.0}))
        coord._receive(coord.workers[w])
        ends[w].send(("want", {"inflight": 0}))
        coord._receive(coord.workers[w])
        ends[w].recv()
    clock[0] += 120.0
    ends[1].send(("progress", {}))  # a heartbeat: alive though nothing finished
    coord._receive(coord.workers[1])
    view.tick(coord)
    states = {w.worker: w.state for w in view.workers}
    assert states == {0: "silent", 1: "generating"} or states == {0: "silent", 1: "waiting"}
    assert "worker 0 silent 2m00s" in view._silent_text()
    assert read_status_file(tmp_path)["workers"][0]["state"] == "silent"
