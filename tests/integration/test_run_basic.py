"""`hpcinfer run` on the real CPU vLLM with the tiny model: simple_test.py and templates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO, check_startup_phases, read_rows, run_cli

pytestmark = pytest.mark.integration

SEED_PROMPTS = [
    "The most important invention of the 21st century is",
    "When humans first make contact with aliens, the conversation begins with",
    "To solve climate change, the world must",
    "The secret to a long and fulfilling life is",
]


def test_simple_test_prompts_give_simple_test_output_format(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        ["run", str(REPO / "examples" / "simple_test.yaml"), "--out", str(out), "--workers", "1"],
        cwd=tmp_path,
        env=cli_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text_files = list((out / "text").rglob("*.out"))
    assert [p.name for p in text_files] == ["0.out"]
    lines = text_files[0].read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    for line, prompt in zip(lines, SEED_PROMPTS, strict=True):
        assert line.startswith(f"Prompt: {prompt!r}, Generated text: '") or line.startswith(
            f'Prompt: {prompt!r}, Generated text: "'
        )
    rows = read_rows(out / "results.jsonl")
    assert [r["line"] for r in rows] == [1, 2, 4, 5]  # the blank line 3 is skipped
    assert all(r["status"] == "ok" and r["text"] for r in rows)
    assert all(0 < r["output_tokens"] <= 64 for r in rows)  # max_tokens from the spec, not 16
    assert all(r["model"] == "hpcinfer-tiny-llama" for r in rows)
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["summary"]["records_ok"] == 4
    assert run_info["spec"]["sampling"]["temperature"] == 0.8
    assert run_info["versions"]["vllm"]
    assert run_info["placement"]
    (worker,) = run_info["summary"]["workers"]
    check_startup_phases(worker["startup"])
    assert worker["startup"]["total_s"] >= worker["startup_s"]


def test_tsv_with_template_and_exact_lengths(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "genes.tsv").write_text(
        "genome_id\torganism\tgene\n"
        "511145.12\tEscherichia coli\tlacZ\n"
        "511145.12\tEscherichia coli\trecA\n"
        "224308.43\tBacillus subtilis\tspo0A\n",
        encoding="utf-8",
    )
    proc = run_cli(
        [
            "run",
            "genes.tsv",
            "--out",
            "out",
            "--workers",
            "1",
            "--template",
            "What is the function of {{ gene }} in {{ organism }}?",
            "--max-tokens",
            "12",
            "--ignore-eos",
            "--include-prompt",
            "--json",
        ],
        cwd=tmp_path,
        env=cli_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["records_ok"] == 3 and summary["output_tokens"] == 36
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [r["prompt"] for r in rows] == [
        "What is the function of lacZ in Escherichia coli?",
        "What is the function of recA in Escherichia coli?",
        "What is the function of spo0A in Bacillus subtilis?",
    ]
    assert rows[0]["fields"]["genome_id"] == "511145.12"  # no field is dropped
    assert all(r["output_tokens"] == 12 and r["finish_reason"] == "length" for r in rows)
    assert all(re.fullmatch(r"genes\.tsv:\d+", r["id"]) for r in rows)


def test_a_model_that_cannot_load_fails_fast_naming_the_log(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "p.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text('{"model_type": "no-such-arch"}')
    proc = run_cli(
        ["run", "p.txt", "--model", "./not-a-model", "--out", "out", "--workers", "1"],
        cwd=tmp_path,
        env=cli_env,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "worker 0" in proc.stderr
    assert "worker-0.log" in proc.stderr and "rerun to resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "logs" / "worker-0.log").stat().st_size > 0


def test_a_directory_without_config_json_is_refused_before_start(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "p.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    proc = run_cli(
        ["run", "p.txt", "--model", "./empty", "--out", "out"], cwd=tmp_path, env=cli_env
    )
    assert proc.returncode == 2 and "no config.json" in proc.stderr
    # Nothing was committed, so the fixed rerun (the built-in model) takes the same directory
    # without --restart.
    fixed = run_cli(["run", "p.txt", "--out", "out", "--workers", "1"], cwd=tmp_path, env=cli_env)
    assert fixed.returncode == 0, fixed.stderr
    assert [row["status"] for row in read_rows(tmp_path / "out" / "results.jsonl")] == ["ok"]


def test_missing_input_and_bad_spec_fail_before_any_engine(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    missing = run_cli(["run", "nope.txt", "--out", "out"], cwd=tmp_path, env=cli_env)
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    assert not (tmp_path / "out" / "logs").exists()
    (tmp_path / "job.yaml").write_text("sampling:\n  temprature: 0.5\n", encoding="utf-8")
    bad = run_cli(["run", "job.yaml", "x.txt"], cwd=tmp_path, env=cli_env)
    assert bad.returncode == 2
    assert "sampling.temprature" in bad.stderr and "temperature" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr
