"""`hpcinfer bench serve --sweep` finds the knee where the server's capacity is.

The stub answers at most CAPACITY requests at once (the rest wait for a slot, as a vLLM
server with --max-num-seqs queues them) at a known pace: first token TTFT_MS after it gets
a slot, then one every ITL_MS. So one request takes SERVICE_S, one at a time runs at
1 / SERVICE_S req/s and the server can complete at most CAPACITY / SERVICE_S. The sweep must
measure both ends, run its rates evenly between them, and put the knee at or below the
capacity with latency having turned above it. The whole sweep takes about 15 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcinfer.bench.sweep import sweep_rates
from tests.conftest import run_cli
from tests.processes import stub_process

pytestmark = pytest.mark.integration

TTFT_MS, ITL_MS, OUTPUT_LEN, CAPACITY = 50.0, 10.0, 6, 4
SERVICE_S = (TTFT_MS + (OUTPUT_LEN - 1) * ITL_MS) / 1000
SYNCHRONOUS_RATE = 1 / SERVICE_S
CAPACITY_RATE = CAPACITY / SERVICE_S


def test_a_sweep_finds_the_knee_at_the_servers_capacity(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "prompts.txt").write_text("a short prompt\nanother one\nand a third\n")
    args = ("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--capacity", str(CAPACITY))
    with stub_process(*args, "--busy-poll") as url:
        done = run_cli(
            ["bench", "serve", "prompts.txt", "--url", url, "--output-len", str(OUTPUT_LEN),
             "--num-prompts", "40", "--sweep", "4", "-o", "out"],
            tmp_path, cli_env, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "40 requests from 3 prompts, cycled" in done.stderr

    document = json.loads((tmp_path / "out" / "serve.json").read_text())
    plan = document["sweep"]
    # Rates measured on a loaded machine can only fall short of what the stub's timing
    # allows; the order and the capacity's effect are what the sweep must get right.
    assert 0 < plan["synchronous_rate"] <= SYNCHRONOUS_RATE * 1.05
    assert plan["throughput_rate"] <= CAPACITY_RATE * 1.05
    assert plan["throughput_rate"] > 1.5 * plan["synchronous_rate"]  # 4 at once, not 1
    assert plan["rates"] == sweep_rates(plan["synchronous_rate"], plan["throughput_rate"], 4)
    assert all(run["metrics"]["failed"] == 0 for run in document["runs"])

    knee = plan["knee"]
    assert knee["rate"] is not None, knee
    assert plan["synchronous_rate"] < knee["rate"] <= CAPACITY_RATE * 1.05, knee
    rated = {run["load"]["rate"]: run["metrics"] for run in document["runs"][2:]}
    for rate, metrics in rated.items():  # every rate up to the knee kept to its limits
        if rate <= knee["rate"]:
            for key, limit in knee["limits"].items():
                assert metrics[key] <= limit, (rate, key)
    turned = knee["turned_at"]
    if turned is None:  # no rate turned: the knee is the highest, at capacity
        assert knee["rate"] == max(rated)
    else:
        assert turned["rate"] > knee["rate"]
        assert all(over["value"] > over["limit"] for over in turned["over"])
        assert f"The knee is at {knee['label']}" in done.stdout

    report = run_cli(["report", "out"], tmp_path, cli_env, timeout=120)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"at {knee['label']}" in page
