"""hpcinfer's dispatcher against the Aurora scripts' client, and each client's own ceiling.

    .venv/bin/python bench/dispatch.py [--quick] [--out bench/out/dispatch.json]

1. Throughput on real servers. Two CPU vLLM servers with the built-in tiny model, one core
   each, started here and always stopped at the end. The same skewed workload (most records
   8-32 output tokens, a tail of 256-512; fixed seed; JSONL id, prompt, max_tokens), every
   request with its record's max_tokens, ignore_eos, temperature 0 and the chat API, so both
   clients ask for exactly the same token work:
   - the client of the Aurora vLLM server scripts (Aurora-Inferencing), rebuilt in
     `bench/aurora_vllm_client.py`: batches of 32 on a pool of 32, each batch waiting for
     its slowest request; one process per server on half of the records each, run at once,
     as the scripts ran one per host on one file each;
   - `hpcinfer run --engine openai --url U1 --url U2` over all records.
   Output tokens/s and total (prompt + output) tokens/s over each client's dispatch phase
   (Aurora client: first batch sent to last answer, over both processes; hpcinfer: its generation_s,
   first worker ready to last commit), whole-command wall too; every record checked present
   exactly once with its expected output tokens. Target: hpcinfer / Aurora >= 1.3x.
2. Client ceiling. The stub server (`hpcinfer.testing.stub_server`, no compute, ttft and itl
   0) alone on core 1; each client alone on core 0 (taskset), 16 output tokens a request:
   `hpcinfer run` with client.inflight_per_endpoint=256, and the client inside
   `vllm bench serve` (its Python entry point, --request-rate inf --max-concurrency 256,
   --dataset-name random). Requests/s of each over its dispatch phase, and the stub's CPU use
   in that time (near 100% would mean the stub, not the client, was the limit).

Runs alternate A B, B A, ... (without --quick: 2 pairs in part 1, 4 in part 2), so a drift
of the machine's speed falls on both clients alike. A part 2 run is marked noisy when its
client had less than 85% of its core in its dispatch window (CPU seconds per second of its
processes, sampled from /proc) or the stub used over 80% of its core; the ratio is also
given over the pairs without noise. Figures are printed as tables and written as JSON to
--out; bench/RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hpcinfer.core.tiny_model import ensure_tiny_model  # noqa: E402

PY = sys.executable
SERVED = "tiny"
VOCAB = (
    "what is known about this bacterial gene its function essential operon regulation "
    "drug target interaction expression hypothesis protein pathway membrane transport"
).split()
LONG_SHARE = 0.10
SHORT_TOKENS = (8, 32)
LONG_TOKENS = (256, 512)
SEED = 1234
CEILING_OUTPUT_TOKENS = 16
CEILING_PROMPT_WORDS = 32
CEILING_INFLIGHT = 256
SERVER_READY_S = 300.0
RUN_TIMEOUT_S = 420.0
NOISY_CLIENT_SHARE = 0.85  # a ceiling run whose client had less of its core than this...
NOISY_STUB_SHARE = 0.80  # ...or whose stub used this much of its core (near its limit) is noisy
END_MARK = "DISPATCH-BENCH-END"


@dataclass(frozen=True)
class Sizes:
    records: int  # part 1 workload
    repeat: int  # part 1 pairs of runs, in the order A B, B A, A B, ...
    ceiling_requests: int  # part 2, per client run
    ceiling_repeat: int  # part 2 pairs


FULL = Sizes(records=640, repeat=2, ceiling_requests=10_000, ceiling_repeat=4)
QUICK = Sizes(records=160, repeat=1, ceiling_requests=3_000, ceiling_repeat=1)


def abba(a: str, b: str, pairs: int) -> list[str]:
    """A B, B A, A B, ...: a slow drift of the machine's speed falls on both alike."""
    return [x for i in range(pairs) for x in ((a, b) if i % 2 == 0 else (b, a))]


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[Any], grace_s: float = 20.0) -> None:
    """SIGTERM the process group (the process started it as its session), then SIGKILL."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of an exited leader
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def started(procs: list[subprocess.Popen[Any]]) -> Iterator[None]:
    """Stop every process started into `procs`, however the block ends."""
    try:
        yield
    finally:
        for proc in procs:
            stop_group(proc)


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (the stub is one process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_ticks() -> list[tuple[int, int]]:
    """(busy, total) jiffies of each CPU since boot, from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out.append((sum(ticks) - idle, sum(ticks)))
    return out


def core_busy(before: list[tuple[int, int]]) -> list[float]:
    """Share of each CPU busy (anyone's work) since `before`: the noise from other loads."""
    after = core_ticks()
    return [
        round((b1 - b0) / max(1, t1 - t0), 3)
        for (b0, t0), (b1, t1) in zip(before, after, strict=True)
    ]


class SessionCpus(threading.Thread):
    """Samples, while a command runs, the CPUs its processes may use and the CPU time they
    have used (wall-clock stamped), for the client's share of its core in any window.

    The ceiling test means nothing if a client escapes its core (a worker could set its own
    affinity) or does not get it (another load on the same core, or the VM's host taking the
    core away): the first shows in `cpus`, the second in `share(t0, t1)` below 1.
    """

    INTERVAL_S = 0.25

    def __init__(self, sid: int) -> None:
        super().__init__(daemon=True)
        self.sid = sid
        self.cpus: set[int] = set()
        self.series: list[tuple[float, float]] = []
        self.done = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.done.wait(self.INTERVAL_S):
            total = 0.0
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        total += self._sample(entry)
            self.series.append((time.time(), total))

    def _sample(self, pid: str) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if int(fields[3]) != self.sid:  # field 6: session id
            return 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                for part in line.split(":", 1)[1].strip().split(","):
                    low, _, high = part.partition("-")
                    self.cpus.update(range(int(low), int(high or low) + 1))
        # utime + stime, and cutime + cstime of reaped children (a worker that has exited)
        return sum(int(f) for f in fields[11:15]) / self.tick

    def stop(self) -> list[int]:
        self.done.set()
        self.join()
        return sorted(self.cpus)

    def share(self, t0: float, t1: float) -> float | None:
        """CPU seconds used per second between wall-clock times t0 and t1 (None: no samples)."""
        inside = [(t, c) for t, c in self.series if t0 <= t <= t1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return None
        # Between samples a process can exit before its parent reaps it: its CPU time is
        # briefly in nobody's count, so only the rises are summed.
        used = sum(max(0.0, b[1] - a[1]) for a, b in itertools.pairwise(inside))
        return used / (inside[-1][0] - inside[0][0])


# ---------------------------------------------------------------------------- servers


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_vllm(model: Path, core: int, log: Path) -> Server:
    port = free_port()
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(core), HF_HUB_OFFLINE="1")
    cmd = [
        PY, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", SERVED,
        "--host", "127.0.0.1", "--port", str(port),
        "--gpu-memory-utilization", "0.15", "--enforce-eager", "--max-num-seqs", "256",
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Server(f"http://127.0.0.1:{port}", proc, log)


def wait_ready(servers: Sequence[Server], timeout_s: float) -> float:
    """Wait for every /health; fail at once when a server exits, naming its log."""
    start = time.monotonic()
    pending = list(servers)
    while pending:
        for server in list(pending):
            if server.proc.poll() is not None:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server {server.url} exited; log {server.log}:\n{tail}")
            with contextlib.suppress(OSError):
                get(server.url + "/health", timeout=2)
                pending.remove(server)
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"servers not ready after {timeout_s:.0f} s: see {servers[0].log}")
        if pending:
            time.sleep(0.5)
    return time.monotonic() - start


def post_json(url: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.loads(resp.read()))


def warm_up(urls: Sequence[str], per_server: int = 64) -> None:
    """Some requests of every shape to each server, so neither client pays first-use costs."""
    body = {"model": SERVED, "max_tokens": 32, "ignore_eos": True, "temperature": 0.0}
    jobs = [
        (url, {**body, "messages": [{"role": "user", "content": f"warm up {i}"}]})
        for url in urls
        for i in range(per_server)
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: post_json(job[0] + "/v1/chat/completions", job[1]), jobs))


def wait_idle(urls: Sequence[str], timeout_s: float = 60.0) -> None:
    """Wait until no server is running or queueing a request (left over from a run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = 0.0
        for url in urls:
            for line in get(url + "/metrics").decode().splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    busy += float(line.rsplit(" ", 1)[1])
        if busy == 0:
            return
        time.sleep(0.5)
    raise RuntimeError("servers still busy 60 s after a run ended")


# ---------------------------------------------------------------------------- workload


def make_workload(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Skewed output lengths: LONG_SHARE of the records 256-512 tokens, the rest 8-32."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        long = rng.random() < LONG_SHARE
        max_tokens = rng.randint(*(LONG_TOKENS if long else SHORT_TOKENS))
        words = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(16, 48)))
        records.append({"id": f"r{i:06d}", "prompt": f"{words} {i}", "max_tokens": max_tokens})
    return records


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def verify(rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every record answered exactly once, ok, with exactly its max_tokens of output."""
    expected = {r["id"]: r["max_tokens"] for r in records}
    seen: dict[str, int] = {}
    wrong_tokens = not_ok = 0
    for row in rows:
        seen[row["id"]] = seen.get(row["id"], 0) + 1
        if row.get("status") != "ok":
            not_ok += 1
        elif row.get("output_tokens") != expected.get(row["id"]):
            wrong_tokens += 1
    problems = {
        "missing": len(expected.keys() - seen.keys()),
        "duplicated": sum(1 for c in seen.values() if c > 1),
        "unknown": len(seen.keys() - expected.keys()),
        "not_ok": not_ok,
        "wrong_output_tokens": wrong_tokens,
    }
    return {"ok": not any(problems.values()), **problems}


# ---------------------------------------------------------------------------- clients


def hpcinfer_cmd(workload: Path, urls: Sequence[str], out: Path, *extra: str) -> list[str]:
    cmd = [PY, "-m", "hpcinfer", "run", str(workload), "--engine", "openai"]
    for url in urls:
        cmd += ["--url", url]
    return [*cmd, *extra, "-o", str(out), "-q", "--json"]


@dataclass
class Ran:
    """What a finished command left: its stdout, wall time, the CPUs its processes were
    allowed, and the CPU time it and its descendants used (to see whether it had its core)."""

    stdout: str
    wall_s: float
    cpus: list[int]
    cpu_s: float
    watch: SessionCpus


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_logged(cmd: list[str], log: Path, timeout: float = RUN_TIMEOUT_S) -> Ran:
    """Run a command in its own session (killed whole on timeout or error); stderr to `log`."""
    start, cpu0 = time.monotonic(), children_cpu_s()
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        watch = SessionCpus(proc.pid)
        watch.start()
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except BaseException:
            stop_group(proc, grace_s=5)
            raise
        finally:
            cpus = watch.stop()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[:4]}... exited {proc.returncode}; log {log}:\n{tail}")
    return Ran(stdout, wall, cpus, children_cpu_s() - cpu0, watch)


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON summary a command printed (the whole output, else its last JSON line)."""
    with contextlib.suppress(ValueError):
        return dict(json.loads(stdout))
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"no JSON summary in output: {stdout[-500:]!r}")


def token_figures(rows: Sequence[dict[str, Any]], dispatch_s: float, wall_s: float) -> dict:
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in rows)
    output = sum(int(r.get("output_tokens") or 0) for r in rows)
    return {
        "dispatch_s": round(dispatch_s, 3),
        "wall_s": round(wall_s, 3),
        "prompt_tokens": prompt,
        "output_tokens": output,
        "output_tok_s": round(output / dispatch_s, 1),
        "total_tok_s": round((prompt + output) / dispatch_s, 1),
        "wall_output_tok_s": round(output / wall_s, 1),
    }


def run_hpcinfer_real(
    workload: Path, records: list[dict[str, Any]], urls: Sequence[str], work: Path, tag: str
) -> dict[str, Any]:
    out = work / f"hpcinfer-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--max-tokens-field", "max_tokens", "--ignore-eos", "--temperature", "0"]
    extra += ["--set", "client.api=chat"]
    ran = run_logged(hpcinfer_cmd(workload, urls, out, *extra), work / f"{tag}.log")
    stdout, wall = ran.stdout, ran.wall_s
    summary = last_json(stdout)
    rows = read_jsonl(out / "results.jsonl")
    dispatch = float(summary.get("generation_s") or summary["wall_s"])
    figures = token_figures(rows, dispatch, wall)
    figures["summary_output_tokens"] = summary.get("output_tokens")
    figures["endpoints"] = summary.get("endpoints")
    return {"client": "hpcinfer", **figures, "verify": verify(rows, records)}


def run_aurora_client(
    records: list[dict[str, Any]], urls: Sequence[str], work: Path, tag: str
) -> dict[str, Any]:
    """One Aurora client per server, each on its half of the records, all at once."""
    half = (len(records) + len(urls) - 1) // len(urls)
    procs: list[subprocess.Popen[str]] = []
    outs: list[Path] = []
    start = time.monotonic()
    with started(procs):
        for k, url in enumerate(urls):
            part = write_jsonl(work / f"aurora-{tag}-{k}.jsonl", records[k * half : (k + 1) * half])
            outs.append(work / f"aurora-{tag}-{k}.rows.jsonl")
            cmd = [PY, str(REPO / "bench" / "aurora_vllm_client.py"), str(part), "--url", url]
            cmd += ["--model", SERVED, "--out", str(outs[-1])]
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
            procs.append(proc)
        windows = []
        for proc in procs:
            stdout, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
            if proc.returncode != 0:
                raise RuntimeError(f"Aurora client exited {proc.returncode}:\n{stdout[-3000:]}")
            windows.append(last_json(stdout))
    wall = time.monotonic() - start
    rows = [row for out in outs for row in read_jsonl(out)]
    dispatch = max(w["end"] for w in windows) - min(w["start"] for w in windows)
    figures = token_figures(rows, dispatch, wall)
    per_host = [round(w["end"] - w["start"], 3) for w in windows]
    figures["per_host_s"] = per_host
    return {"client": "aurora-client", **figures, "verify": verify(rows, records)}


# ---------------------------------------------------------------------------- part 1


def part1(sizes: Sizes, work: Path, logs: Path) -> dict[str, Any]:
    model = ensure_tiny_model()
    records = make_workload(sizes.records)
    workload = write_jsonl(work / "workload.jsonl", records)
    expected_out = sum(r["max_tokens"] for r in records)
    long = sum(1 for r in records if r["max_tokens"] >= LONG_TOKENS[0])
    print(
        f"part 1: {len(records)} records ({long} long), {expected_out} output tokens; "
        "starting 2 vLLM servers (one core each)...",
        flush=True,
    )
    servers: list[Server] = []
    procs: list[subprocess.Popen[Any]] = []
    with started(procs):
        for core in (0, 1):
            servers.append(start_vllm(model, core, logs / f"vllm-{core}.log"))
            procs.append(servers[-1].proc)
        ready_s = wait_ready(servers, SERVER_READY_S)
        urls = [s.url for s in servers]
        print(f"  servers ready in {ready_s:.0f} s: {' '.join(urls)}; warming up", flush=True)
        warm_up(urls)
        order = abba("aurora-client", "hpcinfer", sizes.repeat)
        runs = []
        for i, client in enumerate(order):
            wait_idle(urls)
            tag = f"{client}-{i}"
            if client == "aurora-client":
                run = run_aurora_client(records, urls, work, tag)
            else:
                run = run_hpcinfer_real(workload, records, urls, work, tag)
            runs.append(run)
            print(
                f"  {client:8s} run {i}: {run['output_tok_s']:>8,.0f} output tok/s, "
                f"dispatch {run['dispatch_s']:.1f} s, verified {run['verify']['ok']}",
                flush=True,
            )
    return {
        "records": len(records),
        "long_records": long,
        "expected_output_tokens": expected_out,
        "servers_ready_s": round(ready_s, 1),
        "runs": runs,
        "ratio": _ratios(runs, "output_tok_s"),
        "ratio_total": _ratios(runs, "total_tok_s"),
        "ratio_wall": _ratios(runs, "wall_output_tok_s"),
    }


def _ratios(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """hpcinfer / baseline: medians of each client's runs, the median of adjacent pairs, and
    the median of the pairs where neither run was marked noisy (None when there is none)."""
    ours = [r[key] for r in runs if r["client"] == "hpcinfer"]
    theirs = [r[key] for r in runs if r["client"] != "hpcinfer"]
    pairs = _pairs(runs)
    clean = [a[key] / b[key] for a, b in pairs if not (a.get("noisy") or b.get("noisy"))]
    return {
        "hpcinfer_median": statistics.median(ours),
        "baseline_median": statistics.median(theirs),
        "ratio_of_medians": round(statistics.median(ours) / statistics.median(theirs), 3),
        "median_of_pairs": round(statistics.median(a[key] / b[key] for a, b in pairs), 3),
        "pair_ratios": [round(a[key] / b[key], 3) for a, b in pairs],
        "clean_pairs": len(clean),
        "median_of_clean_pairs": round(statistics.median(clean), 3) if clean else None,
    }


def _pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(hpcinfer run, baseline run) for each A B / B A pair in run order."""
    out = []
    for a, b in zip(runs[::2], runs[1::2], strict=False):
        ours, theirs = (a, b) if a["client"] == "hpcinfer" else (b, a)
        out.append((ours, theirs))
    return out


# ---------------------------------------------------------------------------- part 2


def start_stub(core: int, log: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = ["taskset", "-c", str(core), PY, "-m", "hpcinfer.testing.stub_server", "--port", "0"]
    cmd += ["--model", SERVED]
    err = log.open("w")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
    )
    err.close()
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        stop_group(proc)
        raise RuntimeError(f"the stub server did not start: see {log}")
    return proc, url


def ceiling_hpcinfer(n: int, url: str, stub: int, work: Path, tag: str) -> dict[str, Any]:
    rng = random.Random(SEED)
    records = [
        {
            "id": f"c{i:07d}",
            "prompt": " ".join(rng.choice(VOCAB) for _ in range(CEILING_PROMPT_WORDS)),
            "max_tokens": CEILING_OUTPUT_TOKENS,
        }
        for i in range(n)
    ]
    workload = write_jsonl(work / f"ceiling-{n}.jsonl", records)
    out = work / f"ceiling-hpcinfer-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--max-tokens", str(CEILING_OUTPUT_TOKENS), "--ignore-eos"]
    extra += ["--set", f"client.inflight_per_endpoint={CEILING_INFLIGHT}"]
    cmd = ["taskset", "-c", "0", *hpcinfer_cmd(workload, [url], out, *extra)]
    cpu0, cores0 = cpu_seconds(stub), core_ticks()
    ran = run_logged(cmd, work / f"ceiling-{tag}.log")
    stub_cpu, busy = cpu_seconds(stub) - cpu0, core_busy(cores0)
    summary = last_json(ran.stdout)
    rows = read_jsonl(out / "results.jsonl")
    dispatch = float(summary.get("generation_s") or summary["wall_s"])
    check = verify(rows, records)
    # generation_s ends at the last commit: the newest unit file in the output store
    last_commit = max(f.stat().st_mtime for f in (out / "units").rglob("*") if f.is_file())
    return {
        "client": "hpcinfer",
        "requests": n,
        "completed": len(rows) - check["not_ok"],
        "dispatch_s": round(dispatch, 3),
        "requests_per_s": round(n / dispatch, 1),
        **_load(
            ran, (last_commit - dispatch, last_commit), n / dispatch, stub_cpu / dispatch, busy
        ),
        "verify": check,
    }


def ceiling_vllm_bench(n: int, url: str, stub: int, work: Path, tag: str) -> dict[str, Any]:
    result_dir = work / f"vllm-bench-{tag}"
    load = ["--request-rate", "inf", "--max-concurrency", str(CEILING_INFLIGHT)]
    flags = vllm_bench_flags(url, CEILING_PROMPT_WORDS, CEILING_OUTPUT_TOKENS, n, load, result_dir)
    cmd = ["taskset", "-c", "0", PY, str(Path(__file__).resolve()), "vllm-bench", *flags]
    cpu0, cores0 = cpu_seconds(stub), core_ticks()
    ran = run_logged(cmd, work / f"vllm-bench-{tag}.log")
    stub_cpu, busy = cpu_seconds(stub) - cpu0, core_busy(cores0)
    result = json.loads((result_dir / "result.json").read_text())
    duration = float(result["duration"])
    end = next(
        float(line.split()[1])
        for line in reversed(ran.stdout.splitlines())
        if line.startswith(END_MARK)
    )
    return {
        "client": "vllm-bench",
        "requests": n,
        "completed": int(result["completed"]),
        "failed": int(result.get("failed", n - int(result["completed"]))),
        "dispatch_s": round(duration, 3),
        "requests_per_s": round(float(result["request_throughput"]), 1),
        "output_tokens": int(result["total_output_tokens"]),
        **_load(
            ran,
            (end - duration, end),
            float(result["request_throughput"]),
            stub_cpu / duration,
            busy,
        ),
        "verify": {
            "ok": int(result["completed"]) == n
            and int(result["total_output_tokens"]) == n * CEILING_OUTPUT_TOKENS
        },
    }


def _load(
    ran: Ran,
    window: tuple[float, float],
    requests_per_s: float,
    stub_share: float,
    busy: list[float],
) -> dict[str, Any]:
    """Did the run have its cores? The client must have had its core during its dispatch
    window (CPU seconds per second near 1: no other load on it, nothing taken by the VM's
    host) and the stub must have been far from saturating its own; else the run is noisy."""
    share = ran.watch.share(*window)
    client_share = share if share is not None else ran.cpu_s / ran.wall_s
    return {
        "wall_s": round(ran.wall_s, 3),
        "client_cpus": ran.cpus,
        "client_core_share": round(client_share, 3),
        "requests_per_cpu_s": round(requests_per_s / max(client_share, 1e-9), 1),
        "client_core_share_whole_run": round(ran.cpu_s / ran.wall_s, 3),
        "stub_cpu_share": round(stub_share, 3),
        "core_busy": busy,
        "noisy": client_share < NOISY_CLIENT_SHARE or stub_share > NOISY_STUB_SHARE,
    }


def vllm_bench_flags(
    url: str, input_len: int, output_len: int, n: int, load: list[str], result_dir: Path
) -> list[str]:
    """`vllm bench serve`'s flags for n random requests of these lengths against the tiny
    model at `url` under `load` (its rate/concurrency flags), its result written to
    `result_dir`/result.json (the directory emptied first)."""
    shutil.rmtree(result_dir, ignore_errors=True)
    result_dir.mkdir(parents=True)
    return [
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", SERVED, "--tokenizer", str(ensure_tiny_model()),
        "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(output_len), "--ignore-eos", "--num-prompts", str(n),
        *load, "--disable-tqdm", "--save-result",
        "--result-dir", str(result_dir), "--result-filename", "result.json",
    ]  # fmt: skip


def vllm_bench_main(argv: list[str]) -> int:
    """`vllm bench serve` in this process (its console script does not work here)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    main(parser.parse_args(argv))
    print(f"{END_MARK} {time.time()}", flush=True)  # the end of its dispatch window
    os._exit(0)  # skip the interpreter's teardown (native extensions print leak reports)


def part2(sizes: Sizes, work: Path, logs: Path) -> dict[str, Any]:
    n = sizes.ceiling_requests
    print(
        f"part 2: client ceiling, {n} requests x {CEILING_OUTPUT_TOKENS} tokens, client on "
        "core 0, stub server on core 1",
        flush=True,
    )
    procs: list[subprocess.Popen[Any]] = []
    runs = []
    with started(procs):
        stub, url = start_stub(1, logs / "stub.log")
        procs.append(stub)
        order = abba("vllm-bench", "hpcinfer", sizes.ceiling_repeat)
        for i, client in enumerate(order):
            tag = f"{client}-{i}"
            if client == "hpcinfer":
                run = ceiling_hpcinfer(n, url, stub.pid, work, tag)
            else:
                run = ceiling_vllm_bench(n, url, stub.pid, work, tag)
            runs.append(run)
            print(
                f"  {client:10s} run {i}: {run['requests_per_s']:>8,.0f} requests/s "
                f"(stub core busy {run['stub_cpu_share']:.0%}), verified {run['verify']['ok']}",
                flush=True,
            )
        stats = json.loads(get(url + "/stats"))
    return {
        "requests": n,
        "output_tokens": CEILING_OUTPUT_TOKENS,
        "inflight": CEILING_INFLIGHT,
        "runs": runs,
        "stub_stats": stats,
        "ratio": _ratios(runs, "requests_per_s"),
        "ratio_per_cpu_s": _ratios(runs, "requests_per_cpu_s"),
    }


# ---------------------------------------------------------------------------- report


def print_tables(result: dict[str, Any]) -> None:
    if "part1" in result:
        p1 = result["part1"]
        print(
            f"\nPart 1: {p1['records']} records ({p1['long_records']} with 256-512 tokens, "
            f"the rest 8-32), {p1['expected_output_tokens']} output tokens, 2 CPU vLLM servers"
        )
        print(
            f"{'run':>3} {'client':13} {'dispatch s':>10} {'wall s':>7} {'out tok/s':>10} "
            f"{'total tok/s':>11} {'verified':>8}"
        )
        for i, r in enumerate(p1["runs"]):
            print(
                f"{i:>3} {r['client']:13} {r['dispatch_s']:>10.1f} {r['wall_s']:>7.1f} "
                f"{r['output_tok_s']:>10,.0f} {r['total_tok_s']:>11,.0f} {r['verify']['ok']!s:>8}"
            )
        ratio, total, wall = p1["ratio"], p1["ratio_total"], p1["ratio_wall"]
        print(
            f"hpcinfer / aurora-client, output tok/s: {ratio['ratio_of_medians']:.2f}x (medians), "
            f"{ratio['median_of_pairs']:.2f}x (median of pairs); total tok/s: "
            f"{total['ratio_of_medians']:.2f}x; whole-command wall: "
            f"{wall['ratio_of_medians']:.2f}x  [target >= 1.3x]"
        )
    if "part2" in result:
        p2 = result["part2"]
        print(
            f"\nPart 2: client ceiling, {p2['requests']} requests x {p2['output_tokens']} tokens, "
            "client on core 0, stub server on core 1"
        )
        print(
            f"{'run':>3} {'client':10} {'dispatch s':>10} {'req/s':>8} {'client core':>11} "
            f"{'req/cpu-s':>9} {'stub busy':>9} {'core 0/1 busy':>13} {'noisy':>5} {'ok':>5}"
        )
        for i, r in enumerate(p2["runs"]):
            busy = "/".join(f"{b:.0%}" for b in r["core_busy"][:2])
            print(
                f"{i:>3} {r['client']:10} {r['dispatch_s']:>10.2f} {r['requests_per_s']:>8,.0f} "
                f"{r['client_core_share']:>11.0%} {r['requests_per_cpu_s']:>9,.0f} "
                f"{r['stub_cpu_share']:>9.0%} {busy:>13} "
                f"{r['noisy']!s:>5} {r['verify']['ok']!s:>5}"
            )
        ratio = p2["ratio"]
        clean = ratio["median_of_clean_pairs"]
        print(
            f"hpcinfer / vllm bench serve client, requests/s: {ratio['ratio_of_medians']:.2f}x "
            f"(medians), {ratio['median_of_pairs']:.2f}x (median of pairs), "
            + (
                f"{clean:.2f}x (median of {ratio['clean_pairs']} pairs without noise)"
                if clean
                else "no pair without noise: rerun on a quiet machine"
            )
        )
        per_cpu = p2["ratio_per_cpu_s"]
        print(
            f"  per CPU-second of the client (robust to a shared core): "
            f"{per_cpu['ratio_of_medians']:.2f}x (medians), "
            f"{per_cpu['median_of_pairs']:.2f}x (median of pairs)"
        )
        for r in p2["runs"]:
            if r["client_cpus"] != [0]:
                print(f"WARNING: {r['client']} processes could run on CPUs {r['client_cpus']}")
            if r["stub_cpu_share"] > NOISY_STUB_SHARE:
                print(f"WARNING: the stub was {r['stub_cpu_share']:.0%} busy: it may be the limit")


def all_verified(result: dict[str, Any]) -> bool:
    runs = [r for part in ("part1", "part2") for r in result.get(part, {}).get("runs", [])]
    return all(r["verify"]["ok"] for r in runs)


@contextlib.contextmanager
def bench_run(name: str, out: Path, result: dict[str, Any], keep: bool) -> Iterator[Path]:
    """A benchmark script's run: a work directory beside `out`, SIGTERM unwinding like
    Ctrl-C (so servers are always stopped), and `result` (stamped with the command, date,
    CPUs and commit) written to `out` however the run ends; the work directory is removed
    unless `keep` or the run failed (its logs say what went wrong)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=out.parent))
    result.update(
        command=" ".join([f"bench/{name}.py", *sys.argv[1:]]),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        cpus=os.cpu_count(),
        commit=_commit(),
    )
    began = time.monotonic()
    try:
        yield work
    except BaseException:
        keep = True
        raise
    finally:
        result["bench_s"] = round(time.monotonic() - began, 1)
        out.write_text(json.dumps(result, indent=1) + "\n")
        if keep:
            print(f"work directory and logs kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _commit() -> str:
    """HEAD, with '+dirty' when the working tree differs from it (figures belong to a tree)."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "vllm-bench":
        sys.exit(vllm_bench_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A ~2-minute smoke version.")
    parser.add_argument("--part", choices=("1", "2", "all"), default="all")
    parser.add_argument("--records", type=int, help="Part 1 records.")
    parser.add_argument("--repeat", type=int, help="Part 1 pairs of runs (A B, B A, ...).")
    parser.add_argument("--ceiling-requests", type=int, help="Part 2 requests per run.")
    parser.add_argument("--ceiling-repeat", type=int, help="Part 2 pairs of runs.")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "dispatch.json"))
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        records=args.records or base.records,
        repeat=args.repeat or base.repeat,
        ceiling_requests=args.ceiling_requests or base.ceiling_requests,
        ceiling_repeat=args.ceiling_repeat or base.ceiling_repeat,
    )
    out = Path(args.out)
    result: dict[str, Any] = {"sizes": vars(sizes)}
    with bench_run("dispatch", out, result, args.keep) as work:
        logs = work / "logs"
        logs.mkdir()
        if args.part in ("1", "all"):
            result["part1"] = part1(sizes, work, logs)
        if args.part in ("2", "all"):
            result["part2"] = part2(sizes, work, logs)
    print_tables(result)
    print(f"\nbench took {result['bench_s']:.0f} s; figures written to {out}")
    if not all_verified(result):
        print("FAILED: some run did not produce every record once with its tokens", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
