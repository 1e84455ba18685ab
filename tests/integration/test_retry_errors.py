"""--retry-errors and the servers' model check, through `hpcinfer run --engine openai` against
the stub server (the real coordinator, worker, dispatcher and output store)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from hpcinfer.testing.stub_server import StubServer
from tests.conftest import hpcinfer_cmd, read_rows, run_cli, start_cli
from tests.harness import exited, wait_for

FAILING = range(0, 120, 7)  # the ids whose first request fails


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _inputs(path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(120):
            trigger = f" FAIL_ONCE:r{i}" if i in FAILING else ""
            handle.write(json.dumps({"id": f"r{i}", "prompt": f"q {i}{trigger}"}) + "\n")


def _args(url: str, *extra: str) -> list[str]:
    # no retries inside the run, so each FAIL_ONCE record becomes an error row
    args = ["run", "w.jsonl", "--engine", "openai", "--url", url, "-o", "out"]
    args += ["--unit-size", "16", "--max-tokens", "4"]
    return [*args, "--set", "client.retries=0", "--set", "client.eject_after=1000", *extra]


def _run(tmp_path: Path, url: str, *extra: str) -> Any:
    return run_cli(_args(url, *extra), tmp_path, _env(), timeout=180)


def test_retry_errors_reruns_exactly_the_failed_ids(tmp_path: Path) -> None:
    _inputs(tmp_path / "w.jsonl")
    failed_ids = {f"r{i}" for i in FAILING}
    with StubServer() as stub:
        first = _run(tmp_path, stub.url)
        assert first.returncode == 3, first.stderr
        rows = read_rows(tmp_path / "out" / "results.jsonl")
        assert {r["id"] for r in rows if r["status"] != "ok"} == failed_ids
        ok_before = {r["id"]: r for r in rows if r["status"] == "ok"}
        sent_before = stub.stats()["ok"]

        again = _run(tmp_path, stub.url, "--retry-errors")
        assert again.returncode == 0, again.stderr
        assert f"retrying {len(failed_ids)} failed records of 120; " in again.stderr
        assert f"{120 - len(failed_ids)} ok kept" in again.stderr
        # exactly the failed ids went to the server again
        assert stub.stats()["ok"] - sent_before == len(failed_ids)
        summary = json.loads((tmp_path / "out" / "run.json").read_text())["summary"]
        assert summary["records_this_run"] == len(failed_ids)
        assert summary["records_ok"] == 120 and summary["records_failed"] == 0

    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(120)]  # every id once, in order
    assert all(r["status"] == "ok" for r in rows)
    for row in rows:
        if row["id"] in ok_before:
            assert row == ok_before[row["id"]]  # kept as the first run made it
    # nothing left to retry: a third run sends nothing
    with StubServer() as idle:
        third = _run(tmp_path, idle.url, "--retry-errors")
        assert third.returncode == 0, third.stderr
        assert "retrying 0 failed records of 120; 120 ok kept" in third.stderr
        quiet = _run(tmp_path, idle.url, "--retry-errors", "--quiet")
        assert quiet.returncode == 0 and "retrying" not in quiet.stderr, quiet.stderr
        assert idle.stats()["ok"] == 0


def test_retry_errors_takes_a_fixed_template(tmp_path: Path) -> None:
    (tmp_path / "w.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "q": f"q {i}"}) + "\n" for i in range(20)),
        encoding="utf-8",
    )
    with StubServer() as stub:
        bad = ["--template", "{{ q }}{% if q.endswith('3') %} FAIL_ALWAYS{% endif %}"]
        first = _run(tmp_path, stub.url, *bad)
        assert first.returncode == 3, first.stderr
        plain = _run(tmp_path, stub.url, "--template", "{{ q }}")
        assert plain.returncode == 2 and "--retry-errors" in plain.stderr
        fixed = _run(tmp_path, stub.url, "--template", "{{ q }}", "--retry-errors")
        assert fixed.returncode == 0, fixed.stderr
        assert "retrying 2 failed records of 20; 18 ok kept" in fixed.stderr
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20)]
    assert all(r["status"] == "ok" for r in rows)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["earlier_specs"]) == 1


def test_the_servers_model_is_the_default_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "w.jsonl").write_text('{"id": "a", "prompt": "hi"}\n', encoding="utf-8")
    with StubServer(model="served-name") as stub:
        wrong = _run(tmp_path, stub.url, "--model", "tiny")
        assert wrong.returncode == 2
        assert "'tiny'" in wrong.stderr and "served-name" in wrong.stderr
        assert stub.stats()["ok"] == 0
        default = _run(tmp_path, stub.url)
        assert default.returncode == 0, default.stderr
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [(r["status"], r["model"]) for r in rows] == [("ok", "served-name")]


def _error_rows(out: Path) -> set[str]:
    """The ids of the error rows committed now (a unit file is replaced by one rename)."""
    return {
        row["id"]
        for unit in sorted((out / "units").glob("*.jsonl"))
        for row in read_rows(unit)
        if row["status"] != "ok"
    }


def test_kill9_during_retry_errors_then_a_rerun_completes_every_id_once(tmp_path: Path) -> None:
    """`--retry-errors` killed with SIGKILL after some merged units were committed and while
    another unit's request is unanswered: the next `--retry-errors` retries what is left
    and results.jsonl holds every id once, the ok rows as the first run made them."""
    (tmp_path / "w.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "q": f"q {i}"}) + "\n" for i in range(64)),
        encoding="utf-8",
    )
    failing = {f"r{i}" for i in range(3, 64, 10)}  # the last unit of 16 holds r53 and r63
    with StubServer() as stub:
        first = _run(tmp_path, stub.url, "--template",
                     "{{ q }}{% if q.endswith('3') %} FAIL_ALWAYS{% endif %}")  # fmt: skip
        assert first.returncode == 3, first.stderr
        assert _error_rows(tmp_path / "out") == failing
        ok_before = {r["id"]: r for r in read_rows(tmp_path / "out" / "results.jsonl")}

        # the retry answers every failed record but r63, whose request hangs (its unit, the
        # last, cannot commit): killed then, the other units are merged, that one is not
        hang = "{{ q }}{% if q == 'q 63' %} FAIL_ONCE:r63:hang{% endif %}"
        args = _args(stub.url, "--template", hang, "--retry-errors")
        proc = start_cli(hpcinfer_cmd(*args), tmp_path, _env())
        try:
            wait_for(
                lambda: _error_rows(tmp_path / "out") == {"r53", "r63"}
                and stub.stats()["triggers"]["FAIL_ONCE"] == 1,
                120,
                "the retry to commit every unit but the one whose request hangs",
                state=lambda: (_error_rows(tmp_path / "out"), stub.stats()["triggers"]),
                give_up=lambda: exited(proc),
            )
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sent_before = stub.stats()["ok"]

        again = _run(tmp_path, stub.url, "--template", "{{ q }}", "--retry-errors")
        assert again.returncode == 0, again.stderr
        assert "retrying 2 failed records of 64; 62 ok kept" in again.stderr
        assert stub.stats()["ok"] - sent_before == 2  # r53 and r63, nothing else

    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(64)]  # every id once, in order
    assert all(r["status"] == "ok" for r in rows)
    for row in rows:
        if row["id"] not in failing:
            assert row == ok_before[row["id"]]  # kept as the first run made it
    unit_rows = [r["id"] for unit in (tmp_path / "out" / "units").glob("*.jsonl")
                 for r in read_rows(unit)]  # fmt: skip
    assert sorted(unit_rows) == sorted(f"r{i}" for i in range(64))
