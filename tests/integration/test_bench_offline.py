"""`hpcinfer bench offline` (TP=1 and TP=2) and `hpcinfer bench fom` on the real CPU vLLM
with the built-in tiny model: exact token counts, the ALCF FOM's CSV built across runs, the
FOM sum, and an engine that cannot start."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import check_startup_phases, require, run_cli

pytestmark = pytest.mark.integration

# A small KV cache: on CPU the engine then starts in seconds instead of zeroing gigabytes
# (vLLM's default share of RAM); the benchmark itself needs a few thousand tokens of it.
SMALL_KV = ["--kv-cache-bytes", str(256 << 20)]
FOM_CSV_HEADER = [
    "Model Name",
    "precision",
    "throughput",
    "latency",
    "batch size",
    "tensor_parallel",
    "input length",
    "output length",
    "context_length",
]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def bench_offline(cwd: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    proc = run_cli(
        [
            "bench",
            "offline",
            "--input-len",
            "24",
            "--output-len",
            "8",
            "--batch-size",
            "3",
            "--iters",
            "2",
            "--out",
            "out",
            "--csv",
            "fom-copy.csv",
            "--json",
            *SMALL_KV,
            *extra,
        ],
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "offline: warm-up 1/1" in proc.stderr and "offline: iteration 2/2" in proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    assert document == json.loads((cwd / "out" / "offline.json").read_text(encoding="utf-8"))
    return document


def check_exact_offline(document: dict[str, Any], tp: int) -> None:
    config, result = document["config"], document["result"]
    assert document["kind"] == "offline"
    assert config["model"] == "hpcinfer-tiny-llama" and config["tensor_parallel"] == tp
    assert config["llm_kwargs"]["tensor_parallel_size"] == tp
    assert result["iterations"] == 2 and len(result["iterations_s"]) == 2
    # exact counts as vLLM reported them: 3 requests x 24 prompt tokens, x 8 generated
    assert result["input_tokens"] == 3 * 24 and result["output_tokens"] == 3 * 8
    assert result["total_input_tokens"] == 2 * 3 * 24
    assert result["total_output_tokens"] == 2 * 3 * 8
    assert result["cached_prompt_tokens"] == 0  # every prompt was really prefilled
    mean = result["latency_s"]["mean"]
    assert mean == pytest.approx(sum(result["iterations_s"]) / 2)
    assert result["throughput"] == pytest.approx((72 + 24) / mean)
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert result["flops_per_s"] > 0  # N=2, d=128 from the engine's config
    assert result["mfu"] is None and "MFU n/a" in config["mfu_note"]  # no CPU peak
    assert result["requests"]["ttft_count"] == 6
    check_startup_phases(config["engine_startup"])


def test_offline_at_tp1_and_tp2_counts_exactly_and_builds_one_fom_csv_table(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    require("two CPU cores", len(os.sched_getaffinity(0)) >= 2, "run TP=2 on 2+ cores")
    check_exact_offline(bench_offline(tmp_path, cli_env), tp=1)
    check_exact_offline(bench_offline(tmp_path, cli_env, "--tp", "2"), tp=2)
    for table in (tmp_path / "out" / "offline.csv", tmp_path / "fom-copy.csv"):
        rows = read_csv(table)
        assert rows[0] == FOM_CSV_HEADER and len(rows) == 3  # appended, header once
        assert [row[5] for row in rows[1:]] == ["1", "2"]
        for row in rows[1:]:
            assert row[0] == "hpcinfer-tiny-llama" and row[6:9] == ["24", "8", "2048"]
            assert float(row[2]) == pytest.approx((72 + 24) / float(row[3]))


def test_fom_cpu_tiny_preset_end_to_end(tmp_path: Path, cli_env: dict[str, str]) -> None:
    proc = run_cli(
        ["bench", "fom", "--preset", "cpu-tiny", "--iters", "1", "--out", "out", *SMALL_KV],
        cwd=tmp_path,
        env=cli_env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine 1/2: max-model-len 512 for FOM1, FOM2" in proc.stderr
    assert "engine 2/2: max-model-len 2048 for FOM3" in proc.stderr
    table = " ".join(proc.stdout.split())
    assert "FOM1" in table and "FOM3" in table and "FOM " in table
    document = json.loads((tmp_path / "out" / "fom.json").read_text(encoding="utf-8"))
    assert document["kind"] == "fom" and document["config"]["cases_from"] == "preset cpu-tiny"
    cases = document["cases"]
    assert [c["name"] for c in cases] == ["FOM1", "FOM2", "FOM3"]
    shapes = [(448, 64, 4, 512), (64, 448, 4, 512), (256, 256, 4, 2048)]
    for case, (input_len, output_len, batch, context) in zip(cases, shapes, strict=True):
        assert (case["input_len"], case["output_len"]) == (input_len, output_len)
        assert (case["batch_size"], case["max_model_len"]) == (batch, context)
        assert case["input_tokens"] == batch * input_len  # measured, exact
        assert case["output_tokens"] == batch * output_len
        assert case["throughput"] == pytest.approx(
            (batch * (input_len + output_len)) / case["latency_s"]
        )
    fom = document["fom"]
    assert fom["throughput"] == pytest.approx(math.fsum(c["throughput"] for c in cases))
    assert fom["flops_per_s"] == pytest.approx(math.fsum(c["flops_per_s"] for c in cases))
    assert [e["cases"] for e in document["engines"]] == [["FOM1", "FOM2"], ["FOM3"]]
    assert [e["max_model_len"] for e in document["engines"]] == [512, 2048]
    for engine in document["engines"]:
        check_startup_phases(engine["startup"])
    rows = read_csv(tmp_path / "out" / "fom.csv")
    assert [row[0] for row in rows] == ["case", "FOM1", "FOM2", "FOM3", "FOM"]
    header = rows[0]
    total = dict(zip(header, rows[-1], strict=True))
    assert float(total["throughput"]) == pytest.approx(fom["throughput"])


def test_a_model_that_cannot_load_fails_naming_the_engine_log(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text('{"model_type": "no-such-arch"}')
    proc = run_cli(
        ["bench", "offline", "--model", "./not-a-model", "--out", "out", "--iters", "1"],
        cwd=tmp_path,
        env=cli_env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: the engine failed:" in proc.stderr
    assert "offline-engine.log" in proc.stderr and "no-such-arch" in proc.stderr
    assert (tmp_path / "out" / "logs" / "offline-engine.log").stat().st_size > 0
    assert not (tmp_path / "out" / "offline.json").exists()
    assert not (tmp_path / "out" / "offline.csv").exists()
