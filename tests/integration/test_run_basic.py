"""`hpcinfer run` on the real CPU vLLM with the built-in tiny model: seed 000 and templates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO, read_rows, run_cli

pytestmark = pytest.mark.integration

SEED_PROMPTS = [
    "The most important invention of the 21st century is",
    "When humans first make contact with aliens, the conversation begins with",
    "To solve climate change, the world must",
    "The secret to a long and fulfilling life is",
]


def test_seed000_prompts_give_seed000_output_format(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        ["run", str(REPO / "examples" / "seed000.yaml"), "--out", str(out), "--workers", "1"],
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
    assert rows[0]["fields"]["genome_id"] == "511145.12"  # no field is dropped (seed 001's bug)
    assert all(r["output_tokens"] == 12 and r["finish_reason"] == "length" for r in rows)
    assert all(re.fullmatch(r"genes\.tsv:\d+", r["id"]) for r in rows)
