"""`hpcinfer run --engine openai` against local stub servers that fail on purpose.

The real coordinator, worker and dispatcher run as `hpcinfer` subprocesses; the servers are
the stub (exact token counts, injectable faults), so every retry path is reproducible and
each test takes seconds. Each record asks for its own number of tokens, so a record matched
to another's answer (the Aurora vLLM server scripts' bug) shows as a wrong `output_tokens`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.testing.stub_server import StubServer
from tests.conftest import hpcinfer_cmd, read_rows, run_cli, start_cli
from tests.harness import exited, wait_for

SECRET = "sk-test-not-for-logs-0123456789"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _workload(
    path: Path, count: int, poison: tuple[int, ...] = (), hang_once: tuple[int, ...] = ()
) -> dict[str, int]:
    """JSONL records with distinct max_tokens (1..13); `poison` records always fail, and the
    first attempt of a `hang_once` record is never answered, whichever server gets it."""
    expected = {}
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            prompt = f"question {i} about words" + (" FAIL_ALWAYS" if i in poison else "")
            prompt += f" FAIL_ONCE:r{i}:hang" if i in hang_once else ""
            budget = 1 + i % 13
            handle.write(json.dumps({"id": f"r{i}", "prompt": prompt, "n": budget}) + "\n")
            expected[f"r{i}"] = budget
    return expected


def _dispatch(
    tmp_path: Path, urls: list[str], *extra: str, env: dict[str, str] | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    args = ["run", "w.jsonl", "--engine", "openai", "--max-tokens-field", "n", "-o", "out"]
    for url in urls:
        args += ["--url", url]
    done = run_cli([*args, "--json", *extra], tmp_path, env or _env(), timeout=180)
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    return done, rows


def _check_exactly_once(rows: list[dict[str, Any]], expected: dict[str, int]) -> None:
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for row in rows:
        if row["status"] == "ok":
            assert row["output_tokens"] == expected[row["id"]], row
            assert row["text"].split() == [f"tok{i}" for i in range(expected[row["id"]])]


def test_dispatch_spreads_over_endpoints_and_keeps_ids(tmp_path: Path) -> None:
    expected = _workload(tmp_path / "w.jsonl", 300)
    with StubServer(ttft_s=0.01, itl_s=0.001) as a, StubServer(ttft_s=0.01, itl_s=0.001) as b:
        done, rows = _dispatch(tmp_path, [a.url, b.url])
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["records_ok"] == 300
        assert set(summary["endpoints"]) == {a.url, b.url}
        assert all(n > 50 for n in summary["endpoints"].values()), summary["endpoints"]
        assert a.stats()["ok"] + b.stats()["ok"] == 300  # no request sent twice
    _check_exactly_once(rows, expected)
    row = rows[0]
    assert row["prompt_tokens"] == 4 and row["ttft_s"] > 0 and row["latency_s"] >= row["ttft_s"]
    assert row["endpoint"] in (a.url, b.url) and row["model"] == "tiny"
    assert summary["output_tokens"] == sum(expected.values())


def test_faults_are_retried_and_only_exhausted_records_become_error_rows(
    tmp_path: Path,
) -> None:
    # The hang is asked for by a record, not by arrival number: which record is b's third
    # arrival depends on routing, and a poisoned record arriving third wore the hang's slot.
    expected = _workload(tmp_path / "w.jsonl", 200, poison=(7, 120), hang_once=(150,))
    faults_a = ["http500@every=5", "malformed:2@every=7", "truncate:2@every=11"]
    faults_b = ["drop@every=6"]
    with StubServer(faults=faults_a) as a, StubServer(faults=faults_b) as b:
        # 8 retries: a record fails 9 times in a row only when it is poisoned
        done, rows = _dispatch(
            tmp_path, [a.url, b.url], "--set", "client.request_timeout_s=2", "--set",
            "client.eject_after=50", "--set", "client.retries=8",
        )  # fmt: skip
        stats_a, stats_b = a.stats(), b.stats()
    assert done.returncode == 3, done.stderr  # finished, with error rows
    _check_exactly_once(rows, expected)
    failed = {r["id"]: r for r in rows if r["status"] == "error"}
    assert set(failed) == {"r7", "r120"}
    assert "gave up after 9 attempts" in failed["r7"]["error"]
    assert "w.jsonl:8" in failed["r7"]["error"]  # names the file and line to look at
    for mode in ("http500", "malformed", "truncate"):
        assert stats_a["faults"][mode] > 0, (mode, stats_a)
    assert stats_b["faults"]["drop"] > 0
    # each server counts attempts itself: a retry sent to the other server hangs there too
    assert stats_a["faults"]["hang"] + stats_b["faults"]["hang"] in (1, 2)
    assert next(r for r in rows if r["id"] == "r150")["status"] == "ok"


def test_an_endpoint_that_dies_mid_dispatch_loses_nothing(tmp_path: Path) -> None:
    expected = _workload(tmp_path / "w.jsonl", 400)
    b = StubServer(ttft_s=0.02, itl_s=0.002).start()
    try:
        with StubServer(ttft_s=0.02, itl_s=0.002) as a:
            proc = start_cli(
                hpcinfer_cmd(
                    "run", "w.jsonl", "--engine", "openai", "--max-tokens-field", "n",
                    "-o", "out", "--url", a.url, "--url", b.url, "--json", "--unit-size", "8",
                ),
                tmp_path,
                _env(),
            )  # fmt: skip
            wait_for(
                lambda: b.stats()["ok"] >= 40,
                120,
                "40 records answered by endpoint b",
                state=b.stats,
                give_up=lambda: exited(proc),
            )
            b.stop()  # mid-dispatch: its open streams are cut
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["records_ok"] == 400 and summary["endpoints"][a.url] > 0
    finally:
        b.stop()
    _check_exactly_once(read_rows(tmp_path / "out" / "results.jsonl"), expected)


def test_unreachable_endpoints_fail_fast_and_all_down_fails_the_run(tmp_path: Path) -> None:
    _workload(tmp_path / "w.jsonl", 10)
    started = time.monotonic()
    done = run_cli(
        ["run", "w.jsonl", "--engine", "openai", "--url", "http://127.0.0.1:9", "-o", "o1",
         "--set", "client.connect_timeout_s=2", "--set", "client.all_down_s=3600"],
        tmp_path, _env(), timeout=300,
    )  # fmt: skip
    # at the start, not after client.all_down_s (set far beyond any loaded machine's start)
    assert done.returncode == 1 and time.monotonic() - started < 200
    assert "none of the 1 endpoint(s) answers" in done.stderr

    expected = _workload(tmp_path / "w.jsonl", 120)
    stub = StubServer(ttft_s=0.05, itl_s=0.01).start()
    proc = start_cli(
        hpcinfer_cmd(
            "run", "w.jsonl", "--engine", "openai", "--max-tokens-field", "n", "-o", "out",
            "--url", stub.url, "--unit-size", "4", "--set", "client.all_down_s=3",
        ),
        tmp_path,
        _env(),
    )  # fmt: skip
    wait_for(
        lambda: stub.stats()["ok"] >= 20,
        120,
        "20 records answered",
        state=stub.stats,
        give_up=lambda: exited(proc),
    )
    port = stub.port
    stub.stop()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "no endpoint has answered for 3s" in err and "rerun to resume" in err
    committed = len(list((tmp_path / "out" / "units").glob("*.jsonl")))
    assert committed > 0
    with StubServer(port=port) as again:
        done, rows = _dispatch(tmp_path, [again.url], "--unit-size", "4")
        assert done.returncode == 0, done.stderr
        assert again.stats()["ok"] < 120  # committed units were not redone
    _check_exactly_once(rows, expected)


def test_chat_records_and_the_api_key_never_written(tmp_path: Path) -> None:
    records = [
        {"id": "c1", "messages": [{"role": "user", "content": "hello there"}], "n": 3},
        {"id": "c2", "prompt": "plain prompt", "n": 2},
    ]
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with StubServer(api_key=SECRET) as stub:
        done, rows = _dispatch(tmp_path, [stub.url], env=_env(OPENAI_API_KEY=SECRET))
        assert done.returncode == 0, done.stderr
        assert stub.stats()["by_api"] == {"completions": 1, "chat": 1}
        bad = run_cli(
            ["run", "w.jsonl", "--engine", "openai", "--url", stub.url, "-o", "o2"],
            tmp_path, _env(OPENAI_API_KEY="wrong"), timeout=60,
        )  # fmt: skip
    assert {r["id"]: r["output_tokens"] for r in rows} == {"c1": 3, "c2": 2}
    assert bad.returncode == 1 and "refused the API key" in bad.stderr
    assert "OPENAI_API_KEY" in bad.stderr and "wrong" not in bad.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_kill_9_mid_dispatch_then_rerun_completes_exactly_once(tmp_path: Path) -> None:
    expected = _workload(tmp_path / "w.jsonl", 200)
    with StubServer(ttft_s=0.05, itl_s=0.005) as stub:
        proc = start_cli(
            hpcinfer_cmd(
                "run", "w.jsonl", "--engine", "openai", "--max-tokens-field", "n", "-o", "out",
                "--url", stub.url, "--unit-size", "4",
            ),
            tmp_path,
            _env(),
        )  # fmt: skip
        # kill once units are committed (answers reach the stub's count before the worker
        # commits them: on a loaded machine 40 answers could mean nothing committed yet)
        units = tmp_path / "out" / "units"
        wait_for(
            lambda: len(list(units.glob("*.jsonl"))) >= 2 or proc.poll() is not None,
            120,
            "2 committed units",
            state=stub.stats,
            interval=0.02,
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        done, rows = _dispatch(tmp_path, [stub.url], "--unit-size", "4")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["records_this_run"] < 200
    _check_exactly_once(rows, expected)


@pytest.mark.parametrize("flag", [["--url", "localhost:8000"], ["--endpoints", "missing.json"]])
def test_bad_endpoint_options_are_clear(tmp_path: Path, flag: list[str]) -> None:
    _workload(tmp_path / "w.jsonl", 2)
    done = run_cli(["run", "w.jsonl", "--engine", "openai", *flag], tmp_path, _env(), timeout=60)
    assert done.returncode == 2
    assert "http://127.0.0.1:8000" in done.stderr or "hpcinfer serve" in done.stderr
