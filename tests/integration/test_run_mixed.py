"""Two workers over text, chat JSONL and bad records: good records complete, bad ones become
error rows naming file and line, and both workers share the work."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.conftest import read_rows, run_cli, write_prompts

pytestmark = pytest.mark.integration

N_TEXT = 400


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("mixed")
    write_prompts(work / "prompts.txt", N_TEXT)
    chat = [
        {"id": "c1", "messages": [{"role": "user", "content": "What is a node?"}]},
        {
            "id": "c2",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is a rank?"},
            ],
        },
        {"id": "p1", "prompt": "Describe a scheduler.", "topic": "hpc"},
    ]
    lines = [json.dumps(obj) for obj in chat]
    lines += [
        '{"id": "broken", "prompt": "unterminated',  # line 4: malformed JSON
        json.dumps({"id": "e1", "prompt": "   "}),  # line 5: empty prompt
        json.dumps({"id": "c1", "prompt": "again"}),  # line 6: duplicate id
        json.dumps({"id": "m1", "question": "no prompt field"}),  # line 7: missing field
    ]
    (work / "chat.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "bytes.txt").write_bytes(b"a fine prompt\nbad \xff\xfe bytes\nanother fine prompt\n")
    (work / "long.txt").write_text(" ".join(["token"] * 400) + "\n", encoding="utf-8")
    proc = run_cli(
        [
            "run",
            "prompts.txt",
            "chat.jsonl",
            "bytes.txt",
            "long.txt",
            "--out",
            "out",
            "--workers",
            "2",
            "--max-model-len",
            "256",
            "--max-tokens",
            "64",
            "--ignore-eos",
            "--unit-size",
            "8",
            "--json",
        ],
        cwd=work,
        env=cli_env,
    )
    rows = (
        read_rows(work / "out" / "results.jsonl")
        if (work / "out" / "results.jsonl").exists()
        else []
    )
    return {"proc": proc, "rows": rows, "work": work}


def _by_id(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["id"], []).append(row)
    return out


def test_exit_code_says_some_records_failed(mixed_run: dict[str, Any]) -> None:
    proc: subprocess.CompletedProcess[str] = mixed_run["proc"]
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "finished_with_errors"
    assert summary["records_failed"] == 6


def test_every_record_appears_once_in_input_order(mixed_run: dict[str, Any]) -> None:
    rows = mixed_run["rows"]
    assert len(rows) == N_TEXT + 7 + 3 + 1
    places = [(r["source"], r["line"]) for r in rows]
    assert len(set(places)) == len(places)
    assert [r["source"] for r in rows[:N_TEXT]] == ["prompts.txt"] * N_TEXT
    assert [r["line"] for r in rows[:N_TEXT]] == list(range(1, N_TEXT + 1))


def test_good_records_complete_with_exact_lengths(mixed_run: dict[str, Any]) -> None:
    ok = [r for r in mixed_run["rows"] if r["status"] == "ok"]
    assert len(ok) == N_TEXT + 3 + 2
    assert all(r["output_tokens"] == 64 and r["prompt_tokens"] > 0 for r in ok)
    by_id = _by_id(mixed_run["rows"])
    assert by_id["c2"][0]["status"] == "ok" and by_id["c2"][0]["text"]
    assert by_id["p1"][0]["fields"] == {"topic": "hpc"}


def test_bad_records_are_error_rows_naming_file_and_line(mixed_run: dict[str, Any]) -> None:
    errors = {
        (r["source"], r["line"]): r["error"] for r in mixed_run["rows"] if r["status"] != "ok"
    }
    assert set(errors) == {
        ("chat.jsonl", 4),
        ("chat.jsonl", 5),
        ("chat.jsonl", 6),
        ("chat.jsonl", 7),
        ("bytes.txt", 2),
        ("long.txt", 1),
    }
    assert "JSON" in errors[("chat.jsonl", 4)]
    assert "empty prompt" in errors[("chat.jsonl", 5)]
    assert "chat.jsonl:1" in errors[("chat.jsonl", 6)]  # the duplicate names both places
    assert "UTF-8" in errors[("bytes.txt", 2)]
    assert "max-model-len" in errors[("long.txt", 1)]
    assert all(error and "Traceback" not in error for error in errors.values())


def test_both_workers_share_the_work(mixed_run: dict[str, Any]) -> None:
    run_info = json.loads((mixed_run["work"] / "out" / "run.json").read_text())
    workers = run_info["summary"]["workers"]
    assert len(workers) == 2
    assert all(w["records"] > 0 for w in workers), workers
    assert {tuple(w["devices"]) for w in workers} == {("core0",), ("core1",)}
    rows = mixed_run["rows"]
    assert {r["worker"] for r in rows if r["status"] == "ok"} == {0, 1}
