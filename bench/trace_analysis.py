"""`hpcinfer profile analyze` against Holistic Trace Analysis (`traceinsight`) on the same
multi-rank trace set: wall time, peak memory, and whether their figures agree.

    .venv/bin/python bench/trace_analysis.py [--mb 500] [--ranks 4] [--dir DIR] [--reuse]

1. Writes a trace set like a 4-GPU tensor-parallel vLLM run's: one Kineto JSON per rank
   (about --mb MB each), `distributedInfo`, ProfilerStep#N and vLLM `execute_...` marks on
   the CPU and the GPU, CPU operators with their `cudaLaunchKernel` calls, kernels on
   streams with real vLLM and NCCL names (`ncclDevKernel_AllReduce_*` on a comm stream for
   prefill steps, vLLM's `cross_device_reduce_1stage` for decode steps), memory copies.
   The last rank runs its GEMMs slower, so it arrives late at every all-reduce and the
   others wait for it. The generator also writes the exact answer (DIR-truth.json).
2. Times, each in its own process: `hpcinfer profile analyze DIR` and traceinsight's
   `TraceAnalysis(trace_dir=DIR)` + `get_comm_comp_overlap()` + `get_temporal_breakdown()`.
   Peak memory is the largest summed PSS of the command's whole process tree (both tools
   read ranks in forked worker processes; PSS counts their shared pages once), sampled
   every 20 ms from /proc, and the largest single process's peak RSS (VmHWM).
3. Compares both tools' compute time and comm/compute overlap with the exact answer under
   each tool's own definitions (traceinsight's window is steps 0..n-2, hpcinfer's 1..n-2;
   traceinsight counts vLLM's all-reduce kernels as compute, its name table lacks them).

traceinsight is not a dependency of hpcinfer: `pip install traceinsight` (or
`pip install -e '.[bench]'`). Figures: bench/RESULTS.md; raw: bench/trace_analysis.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Real kernel names (H100, vLLM with CUDA graphs off, bf16).
RMS_NORM = (
    "void vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>(c10::BFloat16*, long, "
    "c10::BFloat16*, c10::BFloat16 const*, float, int, int)"
)
GEMM = (
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x128x64_warpgroupsize1x1x1_execute_"
    "segment_k_off_kernel__5x_cublas"
)
ROTARY = (
    "void vllm::rotary_embedding_kernel<c10::BFloat16, true>(long const*, c10::BFloat16*, "
    "c10::BFloat16*, c10::BFloat16 const*, int, long, long, long, int, int, int)"
)
CACHE = (
    "void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16, __nv_bfloat16, "
    "(vllm::Fp8KVCacheDataType)0>(__nv_bfloat16 const*, __nv_bfloat16 const*, "
    "__nv_bfloat16*, __nv_bfloat16*, long const*, long, long, long, long, int, int, int, "
    "float const*, float const*)"
)
ATTENTION = (
    "void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false, "
    "false, cutlass::bfloat16_t, Flash_kernel_traits<128, 64, 128, 4, cutlass::bfloat16_t> >, "
    "false, true, false, false, true, true, false, false>(flash::Flash_fwd_params)"
)
ACT = (
    "void vllm::act_and_mul_kernel<c10::BFloat16, &(c10::BFloat16 vllm::silu_kernel"
    "<c10::BFloat16>(c10::BFloat16 const&)), true>(c10::BFloat16*, c10::BFloat16 const*, int)"
)
NCCL_AR = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
CUSTOM_AR = (
    "void vllm::cross_device_reduce_1stage<__nv_bfloat16, 4>(vllm::RankData*, "
    "vllm::RankSignals, vllm::Signal*, __nv_bfloat16*, int, int)"
)
# (cpu operator, kernel, duration us) of one transformer layer, split at its two all-reduces
BEFORE_AR1 = [
    ("_C::fused_add_rms_norm", RMS_NORM, 5.0),
    ("aten::mm", GEMM, 40.0),
    ("_C::rotary_embedding", ROTARY, 4.0),
    ("_C_cache_ops::reshape_and_cache_flash", CACHE, 3.0),
    ("vllm::unified_attention", ATTENTION, 30.0),
    ("aten::mm", GEMM, 20.0),
]
BEFORE_AR2 = [
    ("_C::fused_add_rms_norm", RMS_NORM, 5.0),
    ("aten::mm", GEMM, 60.0),
    ("_C::silu_and_mul", ACT, 6.0),
    ("aten::mm", GEMM, 40.0),
]
LAYERS = 32
GAP = 1.0  # us between kernels
STEP_IDLE = 30.0  # us at the start of each step: the scheduler, the host
NCCL_US, CUSTOM_US, NCCL_LEAD = 15.0, 8.0, 5.0  # NCCL starts 5 us before the GEMM ends
SLOW_GEMM_US = 3.0  # the straggler's last GEMM before each all-reduce takes this much longer
HTOD_US, DTOH_US = 20.0, 10.0
PREFILL_EVERY = 8  # every 8th step is a prefill (NCCL), the others decode (custom all-reduce)
BASE_NS = 1_733_380_000_000_000_000


@dataclass
class StepTruth:
    """The exact figures of one step of one rank, in us."""

    wall: float = 0.0
    compute: float = 0.0  # compute kernels (union: they run one after another)
    comm: float = 0.0  # union of all-reduce kernels
    custom_ar: float = 0.0  # vLLM's all-reduce kernels (traceinsight: compute)
    nccl: float = 0.0
    overlap: float = 0.0  # comm under compute
    memcpy: float = 0.0


@dataclass
class RankWriter:
    """Writes one rank's trace the way Kineto lays it out: one event per line."""

    rank: int
    world: int
    out: Any
    correlation: int = 1
    external: int = 1
    lines: list[str] = field(default_factory=list)

    def x(self, cat: str, name: str, pid: int, tid: int, ts: float, dur: float, args: str) -> None:
        self.lines.append(
            f'  {{"ph": "X", "cat": "{cat}", "name": "{name}", "pid": {pid}, "tid": {tid}, '
            f'"ts": {ts:.3f}, "dur": {dur:.3f}, "args": {{{args}}}}},\n'
        )

    def launch(self, op: str, kernel: str, cpu_ts: float, gpu_ts: float, dur: float,
               stream: int, cat: str = "kernel") -> None:  # fmt: skip
        """A CPU operator, its cudaLaunchKernel, and the kernel it launched."""
        ext, corr = self.external, self.correlation
        self.external += 1
        self.correlation += 1
        self.x("cpu_op", op, 4242, 4242, cpu_ts, 9.0,
               f'"External id": {ext}, "Record function id": 0, "Ev Idx": {ext}')  # fmt: skip
        runtime = "cudaMemcpyAsync" if cat == "gpu_memcpy" else "cudaLaunchKernel"
        self.x("cuda_runtime", runtime, 4242, 4242, cpu_ts + 2.0, 5.0,
               f'"External id": {ext}, "cbid": 211, "correlation": {corr}')  # fmt: skip
        self.x(cat, kernel, 0, stream, gpu_ts, dur,
               f'"External id": {ext}, "queued": 0, "device": 0, "context": 1, '
               f'"stream": {stream}, "correlation": {corr}, "registers per thread": 128, '
               f'"shared memory": 0, "blocks per SM": 1.0, "warps per SM": 4.0, '
               f'"grid": [132, 1, 1], "block": [128, 1, 1], '
               f'"est. achieved occupancy %": 6')  # fmt: skip

    def flush(self) -> None:
        self.out.write("".join(self.lines))
        self.lines.clear()


def _layer(w: RankWriter, t: float, prefill: bool, straggler: bool, truth: StepTruth) -> float:
    """One layer from GPU time t; returns the time after it. Every rank's all-reduce ends at
    the same time (the last arrival + its duration), as a collective does."""
    for part in (BEFORE_AR1, BEFORE_AR2):
        for i, (op, kernel, dur) in enumerate(part):
            slow = SLOW_GEMM_US if straggler and i == len(part) - 1 else 0.0
            w.launch(op, kernel, t - 50.0, t, dur + slow, 7)
            truth.compute += dur + slow
            t += dur + slow + GAP
        arrival = t - GAP  # when this rank's input is ready
        last_arrival = arrival - (SLOW_GEMM_US if straggler else 0.0) + SLOW_GEMM_US
        if prefill:
            start, end = arrival - NCCL_LEAD, last_arrival + NCCL_US
            w.launch("vllm::all_reduce", NCCL_AR, start - 50.0, start, end - start, 20)
            truth.overlap += NCCL_LEAD
            truth.nccl += end - start
        else:
            start, end = arrival, last_arrival + CUSTOM_US
            w.launch("_C_custom_ar::all_reduce", CUSTOM_AR, start - 50.0, start, end - start, 7)
            truth.custom_ar += end - start
        truth.comm += end - start
        t = end + GAP
    return t


def write_rank(path: Path, rank: int, world: int, target_bytes: int) -> list[StepTruth]:
    """One rank's trace of about target_bytes; the exact figures of each step."""
    truths: list[StepTruth] = []
    with path.open("w", encoding="utf-8") as out:
        out.write(
            '{\n  "schemaVersion": 1,\n  "deviceProperties": [{"id": 0, "name": "NVIDIA H100 '
            '80GB HBM3", "totalGlobalMem": 85045870592, "computeMajor": 9, "computeMinor": 0, '
            '"numSms": 132}],\n  "distributedInfo": {"backend": "nccl", "rank": '
            f'{rank}, "world_size": {world}, "pg_count": 1, "pg_config": [], "nccl_version": '
            '"2.21.5"},\n  "record_shapes": 0,\n  "traceEvents": [\n'
        )
        w = RankWriter(rank, world, out)
        t, step = 1000.0, 0
        while out.tell() < target_bytes:
            prefill = step % PREFILL_EVERY == 0
            truth = StepTruth()
            start = t
            mark = (
                "execute_context_4(2048)_generation_0(0)"
                if prefill
                else "execute_context_0(0)_generation_64(64)"
            )
            t += STEP_IDLE
            w.launch("aten::copy_", "Memcpy HtoD (Pageable -> Device)", t - 50, t, HTOD_US, 7,
                     "gpu_memcpy")  # fmt: skip
            t += HTOD_US + GAP
            for _ in range(LAYERS):
                t = _layer(w, t, prefill, rank == world - 1, truth)
            w.launch("aten::copy_", "Memcpy DtoH (Device -> Pinned)", t - 50, t, DTOH_US, 7,
                     "gpu_memcpy")  # fmt: skip
            t += DTOH_US + GAP
            truth.memcpy = HTOD_US + DTOH_US
            truth.wall = t - start
            for cat, pid, tid, shift in (("user_annotation", 4242, 4242, -50.0),
                                         ("gpu_user_annotation", 0, 7, 0.0)):  # fmt: skip
                w.x(cat, f"ProfilerStep#{step}", pid, tid, start + shift, t - start,
                    f'"External id": {w.external}')  # fmt: skip
                w.x(cat, mark, pid, tid, start + shift + 1, t - start - 2,
                    f'"External id": {w.external + 1}')  # fmt: skip
            w.external += 2
            w.flush()
            truths.append(truth)
            step += 1
        out.write(
            '  {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": '
            '"python"}}\n  ],\n  "traceName": "bench",\n  "displayTimeUnit": "ms",\n  '
            f'"baseTimeNanoseconds": {BASE_NS}\n}}\n'
        )
    return truths


def generate(folder: Path, ranks: int, mb: float) -> dict[str, Any]:
    """The trace set (one process per rank) and its exact figures (truth.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import trace_analysis as b; "
        "from dataclasses import asdict; from pathlib import Path; "
        "t = b.write_rank(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), "
        "int(float(sys.argv[5]) * 1e6)); print(json.dumps([asdict(s) for s in t]))"
    )
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                str(Path(__file__).parent),
                str(folder / f"kineto_trace_{r}.json"),
                str(r),
                str(ranks),
                str(mb),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(ranks)
    ]
    truth = {"ranks": [json.loads(job.communicate()[0]) for job in jobs]}
    if any(job.returncode for job in jobs):
        raise SystemExit("generating the traces failed")
    _truth_file(folder).write_text(json.dumps(truth))
    return truth


def _truth_file(folder: Path) -> Path:
    """Beside the folder, not in it: traceinsight takes any *.json in it for a trace (and,
    finding no rank in it, for rank 0)."""
    return folder.parent / f"{folder.name}-truth.json"


@dataclass
class Measured:
    wall_s: float
    peak_tree_mb: float  # largest summed PSS of the process and its descendants
    peak_process_mb: float  # largest single process's peak RSS (VmHWM)
    stdout: str
    stderr: str
    returncode: int


def _tree_memory_kb(root: int) -> tuple[int, int]:
    """(summed PSS, largest peak RSS) of `root` and every descendant, from /proc: forked
    workers share pages with their parent, and PSS counts a shared page once over them
    (RSS once per process)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    total = largest = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            with open(f"/proc/{pid}/status", encoding="utf-8") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        largest = max(largest, int(line.split()[1]))
                        break
        except (OSError, ValueError):
            continue
    return total, largest


def measure(
    command: list[str], env: dict[str, str] | None = None, limit_gib: float = 0.0
) -> Measured:
    """Run `command`; its wall time and peak memory (process tree sampled every 20 ms). Past
    `limit_gib` of summed PSS the command's process group is killed (the machine is shared)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )  # fmt: skip
    peak = largest = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, largest
        while not done.is_set():
            pss, hwm = _tree_memory_kb(process.pid)
            peak, largest = max(peak, pss), max(largest, hwm)
            if limit_gib and pss > limit_gib * 1024 * 1024:
                os.killpg(process.pid, signal.SIGKILL)  # its own group: start_new_session
                return
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    return Measured(wall, peak / 1024, largest / 1024, out, err, process.returncode)


HTA_SCRIPT = """
import json, logging, sys
logging.disable(logging.WARNING)
from hta.trace_analysis import TraceAnalysis
analysis = TraceAnalysis(trace_dir=sys.argv[1])
overlap = analysis.get_comm_comp_overlap(visualize=False)
breakdown = analysis.get_temporal_breakdown(visualize=False)
print(json.dumps({"overlap": overlap.to_dict(orient="records"),
                  "breakdown": breakdown.to_dict(orient="records")}, default=float))
"""


def _sum(steps: list[dict[str, float]], key: str) -> float:
    return sum(s[key] for s in steps)


def compare(truth: dict[str, Any], ours: dict[str, Any], hta: dict[str, Any] | None) -> list[dict]:
    """Per rank: each tool's compute (ms) and overlap (%) against the exact answer under
    that tool's own definitions and window."""
    rows = []
    hta_by_rank = {int(r["rank"]): r for r in (hta or {}).get("breakdown", [])}
    hta_overlap = {int(r["rank"]): r for r in (hta or {}).get("overlap", [])}
    for entry in ours["ranks"]:
        rank = entry["rank"]
        steps = truth["ranks"][rank]
        kept = steps[1:-1]  # hpcinfer: first and last dropped
        row: dict[str, Any] = {
            "rank": rank,
            "ours_compute_ms": entry["total_compute_ms"],
            "truth_compute_ms": round(_sum(kept, "compute") / 1000, 3),
            "ours_comm_ms": entry["total_comm_ms"],
            "truth_comm_ms": round(_sum(kept, "comm") / 1000, 3),
            "ours_overlap_pct": entry["overlap_pct"],
            "truth_overlap_pct": round(100 * _sum(kept, "overlap") / _sum(kept, "comm"), 4),
        }
        if rank in hta_by_rank:
            window = steps[:-1]  # traceinsight: every step but the last
            row.update(
                hta_compute_ms=round(hta_by_rank[rank]["compute_time(us)"] / 1000, 3),
                # traceinsight counts vLLM's all-reduce kernels as compute
                truth_hta_compute_ms=round(
                    (_sum(window, "compute") + _sum(window, "custom_ar")) / 1000, 3
                ),
                hta_overlap_pct=hta_overlap[rank]["comp_comm_overlap_pctg"],
                truth_hta_overlap_pct=round(
                    100 * _sum(window, "overlap") / max(_sum(window, "nccl"), 1e-9), 2
                ),
                comm_hta_misses_ms=round(_sum(window, "custom_ar") / 1000, 3),
            )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=500.0, help="MB of JSON per rank")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hpcinfer-trace-bench"))
    parser.add_argument("--reuse", action="store_true", help="keep traces already in --dir")
    parser.add_argument("--skip-hta", action="store_true", help="time hpcinfer only")
    parser.add_argument(
        "--limit-gib", type=float, default=12.0, help="kill traceinsight past this much memory"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "trace_analysis.json")
    args = parser.parse_args()

    if importlib.util.find_spec("hta") is None and not args.skip_hta:
        raise SystemExit(
            "traceinsight (Holistic Trace Analysis) is not installed: "
            "`.venv/bin/pip install traceinsight` (or `pip install -e '.[bench]'`), "
            "or pass --skip-hta"
        )

    truth_file = _truth_file(args.dir)
    if args.reuse and truth_file.exists():
        truth = json.loads(truth_file.read_text())
    else:
        began = time.perf_counter()
        truth = generate(args.dir, args.ranks, args.mb)
        print(f"generated {args.ranks} ranks in {time.perf_counter() - began:.1f} s")
    sizes = [p.stat().st_size for p in sorted(args.dir.glob("kineto_trace_*.json"))]
    print(f"trace set: {len(sizes)} files, {sum(sizes) / 1e6:.0f} MB "
          f"({', '.join(f'{s / 1e6:.0f}' for s in sizes)} MB), "
          f"{len(truth['ranks'][0])} steps per rank")  # fmt: skip

    out = args.dir / "hpcinfer-out"
    env = {"PYTHONPATH": str(REPO / "src")}
    ours_run = measure(
        [sys.executable, "-m", "hpcinfer", "profile", "analyze", str(args.dir), "-o", str(out),
         "--quiet"],
        env,
    )  # fmt: skip
    if ours_run.returncode:
        raise SystemExit(f"hpcinfer profile analyze failed:\n{ours_run.stderr}")
    ours = json.loads((out / "analysis.json").read_text())
    result: dict[str, Any] = {
        "trace_mb": [round(s / 1e6, 1) for s in sizes],
        "steps_per_rank": len(truth["ranks"][0]),
        "hpcinfer": {k: v for k, v in vars(ours_run).items() if k not in ("stdout", "stderr")},
        "hpcinfer_straggler": ours["straggler"],
        "cpus": os.cpu_count(),
    }
    hta = None
    if not args.skip_hta:
        hta_run = measure([sys.executable, "-c", HTA_SCRIPT, str(args.dir)], None, args.limit_gib)
        result["traceinsight"] = {
            k: v for k, v in vars(hta_run).items() if k not in ("stdout", "stderr")
        }
        if hta_run.returncode:
            print(f"traceinsight failed (exit {hta_run.returncode}; killed past "
                  f"{args.limit_gib} GiB if -9):\n{hta_run.stderr[-3000:]}")  # fmt: skip
        else:
            hta = json.loads(hta_run.stdout.strip().splitlines()[-1])
            result["speedup"] = round(hta_run.wall_s / ours_run.wall_s, 2)
            result["memory_ratio"] = round(hta_run.peak_tree_mb / ours_run.peak_tree_mb, 1)
    result["agreement"] = compare(truth, ours, hta)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
