"""The Python API from a worker thread (as Jupyter, a Ray actor or a Parsl app calls it): a
real job on the CPU vLLM and a real one-server fleet measured by the serve benchmark, with
typed results and nothing written on stdout."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import hpcinfer
from hpcinfer.core.endpoints_registry import read_registry
from hpcinfer.serve.ports import port_in_use
from tests.harness import free_port
from tests.processes import assert_no_orphans

pytestmark = pytest.mark.integration

T = TypeVar("T")


def in_thread(call: Callable[[], T], timeout_s: float = 900) -> T:
    """`call()` in a fresh non-main thread; its exception is raised here."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="api-caller")
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the API call did not return within {timeout_s}s"
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


@pytest.fixture
def mark(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The tiny-model cache of the session, and a mark on every process we start."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv("HPCINFER_CACHE", cli_env["HPCINFER_CACHE"])
    monkeypatch.setenv("HPCINFER_TEST_MARK", mark)
    yield mark
    assert_no_orphans(mark)


def test_run_from_a_worker_thread_returns_a_typed_summary(
    tmp_path: Path, mark: str, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "prompts.txt").write_text("one\ntwo\nthree\n", encoding="utf-8")
    spec = hpcinfer.load_job_spec(
        None,
        ["prompts.txt"],
        {"output.dir": "out", "workers.count": 1, "sampling.max_tokens": 8},
        [],
        tmp_path,
    )
    stop = hpcinfer.StopSignal()
    summary = in_thread(lambda: hpcinfer.run_batch(spec, cwd=tmp_path, stop=stop))
    assert isinstance(summary, hpcinfer.RunSummary)
    assert summary.status == "ok" and summary.exit_code == hpcinfer.ExitCode.OK
    assert (summary.records_total, summary.records_ok, summary.records_failed) == (3, 3, 0)
    assert 0 < summary.output_tokens <= 24 and summary.output_tokens_per_s > 0
    assert [w.records for w in summary.workers] == [3]
    assert Path(summary.results_path).is_file()
    recorded = hpcinfer.read_run_json(tmp_path / "out")
    assert recorded.summary == summary
    # a second call in the same process (the run package is imported by now) resumes: the
    # directory is not held by the first call, and nothing is redone
    again = in_thread(lambda: hpcinfer.run_batch(spec, cwd=tmp_path))
    assert (again.records_total, again.records_ok) == (3, 3)
    assert capfd.readouterr().out == ""


def test_fleet_from_a_worker_thread_serves_the_benchmark_and_stops(
    tmp_path: Path, mark: str, capfd: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    spec = hpcinfer.JobSpec.model_validate(
        {"serve": {"servers": 1, "port": port, "registry": str(tmp_path / "endpoints.json")}}
    )

    def serve_and_measure() -> tuple[list[str], Any]:
        with hpcinfer.fleet(spec, cwd=tmp_path) as running:
            urls = running.urls
            options = hpcinfer.ServeBenchOptions(
                out_dir=tmp_path / "bench",
                urls=tuple(urls),
                num_prompts=4,
                input_len=8,
                output_len=4,
                vocab_size=100,
            )
            return urls, hpcinfer.bench_serve(options, cwd=tmp_path)

    urls, document = in_thread(serve_and_measure)
    assert urls == [f"http://127.0.0.1:{port}"]
    assert isinstance(document, hpcinfer.ServeDocument)
    assert document.command == []  # a library call records no command line
    assert [run.metrics["completed"] for run in document.runs] == [4]
    assert document.runs[0].load.requests == 4
    assert [e.state for e in read_registry(tmp_path / "endpoints.json")] == ["stopped"]
    assert not port_in_use("127.0.0.1", port)
    assert capfd.readouterr().out == ""


def test_fleet_stops_its_servers_when_the_block_raises(tmp_path: Path, mark: str) -> None:
    spec = hpcinfer.JobSpec.model_validate(
        {"serve": {"servers": 1, "port": free_port(), "registry": str(tmp_path / "e.json")}}
    )

    def fail_inside() -> None:
        with hpcinfer.fleet(spec, cwd=tmp_path, wait="first"):
            raise RuntimeError("the caller's own failure")

    with pytest.raises(RuntimeError, match="the caller's own failure"):
        in_thread(fail_inside)
    assert [e.state for e in read_registry(tmp_path / "e.json")] == ["stopped"]
