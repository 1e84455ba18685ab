"""`hpcinfer bench fom --endpoints` against a real `hpcinfer serve` of the tiny model (CPU vLLM):
the FOM's cases that match the server's max-model-len measured through the OpenAI API with
exact lengths (vLLM honours ignore_eos and min_tokens, and its usage counts are checked), the
others refused before anything is sent, and nothing left running after the server stops.

One server start (about 30 s here) serves every check."""

from __future__ import annotations

import csv
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcinfer.bench.prometheus import fetch_metrics
from hpcinfer.core.endpoints_registry import read_registry
from tests.conftest import hpcinfer_cmd, run_cli, start_cli
from tests.harness import wait_for
from tests.integration.test_serve import READY_WAIT_S, free_base_port
from tests.processes import assert_no_orphans, marked_env

pytestmark = pytest.mark.integration


@pytest.fixture
def env(cli_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """cli_env plus a mark; at the end every marked process is killed (on failure too)."""
    with marked_env(cli_env) as marked_cli_env:
        yield marked_cli_env


def _generated(url: str) -> float:
    """The server's own count of generated tokens (vLLM's /metrics)."""
    metrics = fetch_metrics(url)
    assert metrics is not None, f"{url}/metrics did not answer"
    return metrics["generation_tokens_total"]


def test_fom_cases_on_a_running_server(tmp_path: Path, env: dict[str, str]) -> None:
    port = free_base_port(1)
    serve = start_cli(
        hpcinfer_cmd(
            "serve", "--servers", "1", "--max-model-len", "512", "--port", str(port),
            "--endpoints", "endpoints.json",
        ),
        tmp_path,
        env,
    )  # fmt: skip
    try:
        waited = run_cli(
            ["endpoints", "--endpoints", "endpoints.json", "--wait", READY_WAIT_S, "--expect", "1"],
            tmp_path,
            env,
        )
        assert waited.returncode == 0, waited.stdout + waited.stderr[-3000:]
        (entry,) = read_registry(tmp_path / "endpoints.json")
        before = _generated(entry.url)

        # the whole cpu-tiny preset: FOM3 wants max-model-len 2048, the server has 512
        refused = run_cli(["bench", "fom", "--endpoints", "endpoints.json"], tmp_path, env)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert (
            f"FOM3 needs max-model-len 2048; the server at {entry.url} serves max-model-len 512"
            in " ".join(refused.stderr.split())
        )
        assert _generated(entry.url) == before  # refused before anything was sent

        done = run_cli(
            [
                "bench", "fom", "--endpoints", "endpoints.json", "--only", "FOM1,FOM2",
                "--warmup-iters", "1", "--iters", "1", "--csv", "rows.csv", "--out", "fom",
            ],
            tmp_path,
            env,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "bench fom: " in done.stdout and f"served at {entry.url}" in done.stdout
        document = json.loads((tmp_path / "fom" / "fom.json").read_text())
        assert document["config"]["server"]["url"] == entry.url
        assert document["config"]["server"]["devices"] == entry.devices
        assert "tokenizer" in document["config"]["prompts"]  # the served model's own
        cases = document["cases"]
        assert [case["name"] for case in cases] == ["FOM1", "FOM2"]
        for case in cases:  # exact lengths, as the server counted them
            assert case["input_tokens"] == case["batch_size"] * case["input_len"]
            assert case["output_tokens"] == case["batch_size"] * case["output_len"]
            assert case["throughput"] > 0 and case["flops_per_s"] > 0  # its config.json read
        assert document["fom"]["cases"] == ["FOM1", "FOM2"]
        # 2 cases x 2 batches (warm-up and timed) of 4 requests, every token generated
        expected = before + 2 * 4 * (64 + 448)
        wait_for(lambda: _generated(entry.url) >= expected, 30, "the server's token counter")
        assert _generated(entry.url) == expected
        with (tmp_path / "rows.csv").open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [(r["input length"], r["output length"], r["context_length"]) for r in rows] == [
            ("448", "64", "512"),
            ("64", "448", "512"),
        ]
    finally:
        if serve.poll() is None:
            os.kill(serve.pid, signal.SIGTERM)
        _, err = serve.communicate(timeout=120)
    assert serve.returncode == 0, err[-3000:]
    assert_no_orphans(env["HPCINFER_TEST_MARK"], f"--port {port}")
