"""`hpcinfer bench serve` end to end: the command against stub servers (sweeps, result files,
exact counts, exit codes), and against a real CPU vLLM server beside vLLM's own `bench serve`.

The stub runs in its own process, started as a user starts it, so its pace (first token after
TTFT_MS, then one every ITL_MS) is known; the measured latencies can only be above it, and by
how much depends on the machine, so only lower bounds are asserted here (the load generator's
exactness has its own test). The agreement test starts one vLLM server (tiny model) pinned to
core 0 and runs both benchmarks, pinned to core 1, alternately on the same workload.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import hpcinfer_cmd, run_cli
from tests.harness import free_port
from tests.processes import marked, stub_process

pytestmark = pytest.mark.integration

TTFT_MS, ITL_MS = 20.0, 5.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _bench(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return run_cli(["bench", "serve", *args], tmp_path, _env(), timeout=timeout)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# -- against the stub -------------------------------------------------------------------------


def test_sweeps_write_exact_counts_and_latency_counts_from_the_scheduled_send(
    tmp_path: Path,
) -> None:
    with stub_process("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)) as url:
        # a concurrency sweep: closed loops of 1 and 6 requests in flight
        closed = _bench(
            tmp_path, "--url", url, "--vocab-size", "800", "--input-len", "24",
            "--output-len", "10", "--num-prompts", "30", "--max-concurrency", "1,6",
            "--slo", "ttft=10000", "--out", "closed",
        )  # fmt: skip
        # a rate sweep crossed with a limit of 1: at 100 req/s requests must queue for the
        # slot (each takes ~65 ms), and that wait is counted; all at once with the same limit
        # is a closed loop, where it is not
        opened = _bench(
            tmp_path, "--url", url, "--vocab-size", "800", "--input-len", "8",
            "--output-len", "10", "--num-prompts", "20", "--request-rate", "100,inf",
            "--burstiness", "0.5", "--max-concurrency", "1", "--out", "open", "--json",
        )  # fmt: skip
    assert closed.returncode == 0, closed.stderr
    assert "point 2/2 concurrency=6" in closed.stderr
    assert "bench serve: 2 points" in closed.stdout  # the summary table
    document = json.loads((tmp_path / "closed" / "serve.json").read_text())
    assert document["config"]["endpoints"] == [url]
    runs = document["runs"]
    assert [r["label"] for r in runs] == ["concurrency=1", "concurrency=6"]
    for run in runs:
        m = run["metrics"]
        assert (m["completed"], m["failed"]) == (30, 0)
        assert (m["total_input_tokens"], m["total_output_tokens"]) == (30 * 24, 30 * 10)
        assert m["ttft_count"] == 30 and m["tpot_count"] == 30 and m["itl_count"] == 30 * 9
        # the stub's pace is a floor (figures in ms, from before the send)
        assert m["mean_ttft_ms"] >= TTFT_MS and m["mean_e2el_ms"] >= TTFT_MS + 9 * ITL_MS
        assert m["mean_itl_ms"] > ITL_MS / 2
        assert m["request_goodput"] == pytest.approx(m["request_throughput"])
        assert run["load"]["mode"] == "concurrency" and run["errors"] == {}
        delta = run["server_metrics"]["delta"]["total"]
        assert delta["generation_tokens_total"] == 30 * 10
        assert delta["prompt_tokens_total"] == 30 * 24
    rows = _csv(tmp_path / "closed" / "serve.csv")
    assert [(r["label"], r["completed"], r["failed"]) for r in rows] == [
        ("concurrency=1", "30", "0"),
        ("concurrency=6", "30", "0"),
    ]
    assert float(rows[1]["mean_tpot_ms"]) == pytest.approx(runs[1]["metrics"]["mean_tpot_ms"])

    assert opened.returncode == 0, opened.stderr
    printed = json.loads(opened.stdout)
    assert printed == json.loads((tmp_path / "open" / "serve.json").read_text())
    queued, closed_loop = printed["runs"]
    assert queued["load"] | {"description": ""} == {
        "mode": "rate", "rate": 100.0, "burstiness": 0.5, "max_concurrency": 1,
        "requests": 20, "description": "",
    }  # fmt: skip
    assert closed_loop["load"]["mode"] == "concurrency"
    assert queued["metrics"]["duration"] >= 20 / 100  # the last send is due at n / rate
    for run in (queued, closed_loop):
        assert run["metrics"]["completed"] == 20 and run["metrics"]["total_output_tokens"] == 200
    # Each request holds the one slot ~65 ms while the schedule sends one every 10 ms: from
    # the scheduled time, the queueing shows; a closed loop has none to show.
    assert queued["metrics"]["mean_send_lag_ms"] > 100
    assert queued["metrics"]["mean_ttft_ms"] > queued["metrics"]["mean_send_lag_ms"] + TTFT_MS
    assert closed_loop["metrics"]["mean_send_lag_ms"] < 5
    assert closed_loop["metrics"]["mean_ttft_ms"] < queued["metrics"]["mean_ttft_ms"] / 3


def test_failures_exit_3_with_counts_and_an_unreachable_url_exits_1(tmp_path: Path) -> None:
    with stub_process("--ttft-ms", "2", "--itl-ms", "1", "--fault", "http500@every=5") as url:
        faulty = _bench(
            tmp_path, "--url", url, "--vocab-size", "100", "--input-len", "4",
            "--output-len", "3", "--num-prompts", "20", "--max-concurrency", "2", "--out", "f",
        )  # fmt: skip
    assert faulty.returncode == 3, faulty.stderr
    run = json.loads((tmp_path / "f" / "serve.json").read_text())["runs"][0]
    assert (run["metrics"]["completed"], run["metrics"]["failed"]) == (16, 4)
    assert run["metrics"]["total_output_tokens"] == 16 * 3
    assert list(run["errors"].values()) == [4] and "HTTP 500" in next(iter(run["errors"]))
    assert "4 failed: HTTP 500" in faulty.stderr
    assert "4 of 20 requests failed" in faulty.stderr
    assert _csv(tmp_path / "f" / "serve.csv")[0]["failed"] == "4"

    closed_port = "http://127.0.0.1:9"
    down = _bench(tmp_path, "--url", closed_port, "--vocab-size", "100", "--out", "d")
    assert down.returncode == 1, down.stderr
    assert f"cannot reach {closed_port}" in down.stderr
    assert not (tmp_path / "d").exists()


# -- beside vLLM's own bench serve ------------------------------------------------------------

INPUT_LEN, OUTPUT_LEN, PROMPTS, CONCURRENCY = 64, 32, 40, 4
PAIRS, WARM_UP_PROMPTS = 5, 100
STUB_TTFT_MS, STUB_ITL_MS, STUB_PROMPTS = 15.0, 5.0, 40
TOLERANCE = 0.05
READY_WAIT_S = 480.0

# One process runs the steps in order, with the server's /metrics scraped around each (the
# server's own mean TTFT and ITL over the step): vLLM's benchmark in-process (imported once),
# ours as a subprocess.
DRIVER = r"""
import json, subprocess, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
from hpcinfer.bench.prometheus import counter_delta, fetch_metrics
steps, out = json.loads(sys.argv[1]), sys.argv[2]
server = {}
for name, tool, url, argv in steps:
    before = fetch_metrics(url, 5.0)
    if tool == "vllm":
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        main(parser.parse_args(argv))
    elif subprocess.run(argv).returncode != 0:
        sys.exit(f"{name} failed")
    server[name] = counter_delta(before, fetch_metrics(url, 5.0))
with open(out, "w") as handle:
    json.dump(server, handle)
"""


@pytest.fixture
def vllm_server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """One real vLLM server with the tiny model on 127.0.0.1, on core 0 when there are two
    or more (so the benchmark clients, on core 1, do not take its CPU); (url, model dir)."""
    from hpcinfer.core.tiny_model import ensure_tiny_model
    from hpcinfer.serve.process import ServerProcess, stop_all

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPCINFER_CACHE", cli_env["HPCINFER_CACHE"])
        model = ensure_tiny_model()
    mark = uuid.uuid4().hex
    env = dict(cli_env, HPCINFER_TEST_MARK=mark)
    pinned = (os.cpu_count() or 1) >= 2
    if pinned:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    port = free_port()
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
        "--gpu-memory-utilization", "0.1", "--enforce-eager",
    ]  # fmt: skip
    server = ServerProcess(argv, env, tmp_path / "server.log", cores=[0] if pinned else None)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_WAIT_S
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            with (
                contextlib.suppress(OSError),
                opener.open(f"{url}/health", timeout=5) as response,
            ):
                if response.status == 200:
                    break
            if not server.alive() or time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready ({server.exit_text()}):\n{server.log_tail()}")
            time.sleep(1.0)
        yield url, model
    finally:
        stop_all([server], grace_s=30.0)
        for pid in marked(mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _vllm_argv(url: str, model: Path, out: Path, name: str, prompts: int = PROMPTS) -> list[str]:
    return [
        "--backend", "vllm", "--base-url", url, "--model", "tiny", "--tokenizer", str(model),
        "--dataset-name", "random", "--random-input-len", str(INPUT_LEN),
        "--random-output-len", str(OUTPUT_LEN), "--num-prompts", str(prompts),
        "--max-concurrency", str(CONCURRENCY), "--ignore-eos", "--temperature", "0",
        "--disable-tqdm", "--save-result", "--result-dir", str(out),
        "--result-filename", f"{name}.json",
    ]  # fmt: skip


def _ours_argv(url: str, out: Path, prompts: int = PROMPTS, *extra: str) -> list[str]:
    return hpcinfer_cmd(
        "bench", "serve", "--url", url, "--input-len", str(INPUT_LEN),
        "--output-len", str(OUTPUT_LEN), "--num-prompts", str(prompts),
        "--max-concurrency", str(CONCURRENCY), "--out", str(out), "--quiet", *extra,
    )  # fmt: skip


def _median(values: list[float]) -> float:
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _ours(out: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = json.loads((out / "serve.json").read_text())["runs"][0]["metrics"]
    return metrics


def test_agrees_with_vllms_own_bench_serve_on_a_real_server(
    vllm_server: tuple[str, Path], tmp_path: Path
) -> None:
    """Same server, same lengths, count and concurrency, closed loops (where both tools time
    from the actual send), run in short alternating pairs (vLLM then ours, then ours then
    vLLM, ...), judged by the median over the pairs of ours / vLLM's figure:

    - request throughput within 5%, each run's taken relative to the server's own pace over
      that run (times its mean E2E latency from /metrics): on this 2-core VM the machine's
      speed drifts by up to 30% from one run to the next, and this cancels it;
    - mean TPOT within 5%, relative to the server's own mean inter-token latency likewise;
    - mean TTFT, relative to the server's own mean TTFT over the run likewise, is at most 5%
      above vLLM's, and below it by at most what vLLM's client adds of its own plus 5%:
      vLLM's client times from before aiohttp builds and sends its request to when its
      coroutine reads the chunk, ours from the write to the read's arrival
      (`bench.http_stream`). What each adds is measured here first, both run alone against
      the stub of known TTFT (README: "bench serve beside vllm bench serve")."""
    url, model = vllm_server
    cores = {0} if (os.cpu_count() or 1) >= 2 else None  # the server's core, idle meanwhile
    stub_args = ("--ttft-ms", str(STUB_TTFT_MS), "--itl-ms", str(STUB_ITL_MS))
    with stub_process(*stub_args, cores=cores) as stub:
        stub_vllm_argv = _vllm_argv(stub, model, tmp_path, "stub-vllm", STUB_PROMPTS)
        stub_ours_argv = _ours_argv(
            stub, tmp_path / "stub-ours", STUB_PROMPTS, "--vocab-size", "1000"
        )
        steps: list[tuple[str, str, str, list[str]]] = [
            ("stub-vllm", "vllm", stub, stub_vllm_argv),
            ("stub-ours", "ours", stub, stub_ours_argv),
            ("warm-up", "ours", url, _ours_argv(url, tmp_path / "warm", WARM_UP_PROMPTS)),
        ]  # fmt: skip
        for k in range(PAIRS):
            pair = [
                (f"vllm-{k}", "vllm", url, _vllm_argv(url, model, tmp_path, f"vllm-{k}")),
                (f"ours-{k}", "ours", url, _ours_argv(url, tmp_path / f"ours-{k}")),
            ]
            steps += pair if k % 2 == 0 else pair[::-1]
        server_file = tmp_path / "server.json"
        pin = (lambda: os.sched_setaffinity(0, {1})) if cores else None
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(steps), str(server_file)],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
            preexec_fn=pin,
        )  # fmt: skip
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]

    # each tool's own part of TTFT: its excess over the stub's known TTFT
    stub_vllm = json.loads((tmp_path / "stub-vllm.json").read_text())["mean_ttft_ms"]
    stub_ours = _ours(tmp_path / "stub-ours")["mean_ttft_ms"]
    overhead = (stub_vllm - STUB_TTFT_MS) - (stub_ours - STUB_TTFT_MS)
    assert 0 <= stub_ours - STUB_TTFT_MS < 1.0  # the exactness test's bound, here too

    server = json.loads(server_file.read_text())
    theirs = [json.loads((tmp_path / f"vllm-{k}.json").read_text()) for k in range(PAIRS)]
    ours = [_ours(tmp_path / f"ours-{k}") for k in range(PAIRS)]
    ratios: dict[str, list[float]] = {"throughput": [], "tpot": [], "ttft": [], "ttft_floor": []}
    lines = [
        f"against the stub (TTFT {STUB_TTFT_MS:g} ms): vLLM's client measures {stub_vllm:.2f} "
        f"ms, ours {stub_ours:.2f} ms; vLLM's own part is {overhead:.2f} ms more"
    ]
    for k, (other, mine) in enumerate(zip(theirs, ours, strict=True)):
        assert other["completed"] == mine["completed"] == PROMPTS
        assert other["total_output_tokens"] == mine["total_output_tokens"] == PROMPTS * OUTPUT_LEN
        # vLLM decodes its random ids to text and the server re-tokenizes it (+ BOS): within
        # a token or so per prompt of ours, which are exactly INPUT_LEN ids
        assert mine["total_input_tokens"] == PROMPTS * INPUT_LEN
        assert abs(other["total_input_tokens"] - PROMPTS * INPUT_LEN) <= PROMPTS
        assert mine["mean_send_lag_ms"] < 2.0  # closed loop: scheduled = sent, as vLLM times
        seen_v, seen_o = server[f"vllm-{k}"], server[f"ours-{k}"]
        norm_v = other["mean_ttft_ms"] / seen_v["server_mean_ttft_ms"]
        norm_o = mine["mean_ttft_ms"] / seen_o["server_mean_ttft_ms"]
        ratios["throughput"].append(
            (mine["request_throughput"] * seen_o["server_mean_e2el_ms"])
            / (other["request_throughput"] * seen_v["server_mean_e2el_ms"])
        )
        ratios["tpot"].append(
            (mine["mean_tpot_ms"] / seen_o["server_mean_itl_ms"])
            / (other["mean_tpot_ms"] / seen_v["server_mean_itl_ms"])
        )
        ratios["ttft"].append(norm_o / norm_v)
        ratios["ttft_floor"].append(1 - overhead / other["mean_ttft_ms"])
        lines.append(
            f"pair {k}: ours / vLLM: throughput {mine['request_throughput']:.2f} / "
            f"{other['request_throughput']:.2f} (server E2E {seen_o['server_mean_e2el_ms']:.1f}"
            f" / {seen_v['server_mean_e2el_ms']:.1f} ms), TPOT {mine['mean_tpot_ms']:.2f} / "
            f"{other['mean_tpot_ms']:.2f} ms (server ITL {seen_o['server_mean_itl_ms']:.2f} / "
            f"{seen_v['server_mean_itl_ms']:.2f}), TTFT {mine['mean_ttft_ms']:.2f} / "
            f"{other['mean_ttft_ms']:.2f} ms (server {seen_o['server_mean_ttft_ms']:.2f} / "
            f"{seen_v['server_mean_ttft_ms']:.2f})"
        )
    medians = {key: _median(sorted(values)) for key, values in ratios.items()}
    lines.append("medians of the pairs' ratios: " + json.dumps(medians))
    report = "\n".join(lines)
    print(report)
    assert abs(medians["throughput"] - 1) <= TOLERANCE, report
    assert abs(medians["tpot"] - 1) <= TOLERANCE, report
    assert medians["ttft_floor"] - TOLERANCE <= medians["ttft"] <= 1 + TOLERANCE, report
