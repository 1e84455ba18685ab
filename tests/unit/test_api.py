"""The library surface: lazy exports, the stop request, typed documents and their errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import hpcinfer
from hpcinfer.bench.documents import validate_result
from hpcinfer.core.stop import StopSignal, signals_feed
from hpcinfer.errors import InputError
from hpcinfer.run.summary import RunSummary, WorkerSummary
from tests.report_docs import fom_document, offline_document, serve_document


def test_import_stays_light_and_every_export_resolves() -> None:
    code = (
        "import sys, hpcinfer; heavy = [m for m in ('vllm', 'torch', 'rich', 'hpcinfer.run.job')"
        " if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    for name in hpcinfer.__all__:
        assert getattr(hpcinfer, name) is not None, name


def test_stop_drains_then_aborts_and_wakes_a_waiter() -> None:
    stop = StopSignal()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(stop.wait(30)))
    waiter.start()
    stop.request("first")
    waiter.join(10)
    assert woke == [True] and stop.requested and not stop.aborted and stop.reason == "first"
    stop.request("second")
    assert stop.aborted and stop.reason == "first"  # the first reason is the one reported


def test_signals_feed_turns_sigterm_into_a_drain_and_restores_handlers() -> None:
    stop = StopSignal()
    with signals_feed(stop):
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.reason == "signal SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_signals_feed_off_the_main_thread_installs_nothing() -> None:
    seen: list[object] = []

    def body() -> None:
        with signals_feed(StopSignal()):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert seen == [signal.SIG_DFL]


def test_run_summary_json_keeps_run_json_shape() -> None:
    summary = RunSummary(
        status="ok",
        exit_code=hpcinfer.ExitCode.OK,
        out_dir="/o",
        records_total=2,
        records_ok=2,
        records_failed=0,
        records_this_run=2,
        resumed=False,
        prompt_tokens=4,
        output_tokens=8,
        wall_s=1.5,
        generation_s=1.0,
        output_tokens_per_s=8.0,
        workers=[WorkerSummary(worker=0, log="/o/logs/0.log", records=2)],
    )
    data = json.loads(json.dumps(summary.as_dict()))
    assert data["exit_code"] == 0 and data["workers"][0]["records"] == 2
    assert RunSummary.model_validate(data) == summary


@pytest.mark.parametrize("make", [serve_document, offline_document, fom_document])
def test_documents_the_benchmarks_write_validate(make: object, tmp_path: Path) -> None:
    document = make()  # type: ignore[operator]
    typed = validate_result(tmp_path / f"{document['kind']}.json", document)
    assert typed.kind == document["kind"]


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("offline", lambda d: d["result"].update(throughput="fast"), "result.throughput"),
        ("offline", lambda d: d.pop("result"), "result: Field required"),
        ("fom", lambda d: d["cases"][1].update(batch_size="x"), "cases[1].batch_size"),
        ("serve", lambda d: d["runs"][0].update(errors={"e": "many"}), "runs[0].errors.e"),
    ],
)
def test_a_wrong_field_is_named_with_its_file(
    kind: str, change: object, field: str, tmp_path: Path
) -> None:
    document = {"offline": offline_document, "fom": fom_document, "serve": serve_document}[kind]()
    change(document)  # type: ignore[operator]
    path = tmp_path / f"{kind}.json"
    with pytest.raises(InputError) as info:
        validate_result(path, document)
    assert str(path) in str(info.value) and field in str(info.value)
