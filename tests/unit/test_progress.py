"""The progress view's figures: counts, errors, rate and ETA."""

from __future__ import annotations

import pytest

from hpcinfer.run import progress
from hpcinfer.run.progress import ProgressView


def test_counts_rate_and_eta_follow_worker_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    view = ProgressView(total=100, done=20, quiet=True)  # 20 committed by an earlier run
    assert view.rate() == 0.0 and view.eta_s() is None
    clock[0] = 130.0  # 30 s of engine start-up: not part of the rate
    view.advance({"records": 10, "errors": 1, "output_tokens": 500})
    clock[0] = 135.0
    view.advance({"records": 10, "errors": 0, "output_tokens": 500})
    assert (view.done, view.errors) == (40, 1)
    assert view.rate() == pytest.approx(500 / 5)  # the first report only starts the clock
    # 20 records in 35 s this run -> 60 left take 105 s
    assert view.eta_s() == pytest.approx(105.0)


def test_plain_lines_go_to_stderr_with_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    view = ProgressView(total=4, done=0, quiet=False)
    with view:
        view.advance({"records": 4, "errors": 2, "output_tokens": 40})
    err = capsys.readouterr().err
    assert "4/4 records, 2 errors" in err
    assert err.count("4/4 records") == 1  # the closing line is not repeated


def test_the_final_line_rates_a_job_whose_first_report_carries_every_record(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small job's one progress message holds all its tokens: the closing line gives them
    over the generation time measured (from the first worker ready), not 0 tok/s."""
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    view = ProgressView(total=4, done=0, quiet=False)
    with view:
        clock[0] = 130.0  # 30 s of engine start-up: not part of the rate
        view.generation_started()
        clock[0] = 134.0
        view.advance({"records": 4, "errors": 0, "output_tokens": 400})
    err = capsys.readouterr().err
    assert "4/4 records, 0 errors, 100 output tok/s" in err
