"""hpcinfer's overhead against plain vLLM, and dynamic work units against a static split.

    .venv/bin/python bench/overhead.py [--prompts 512] [--max-tokens 128] [--repeat 2]

1. The same prompts through a plain `LLM.generate` script and through `hpcinfer run` (one
   worker, the same engine settings: both built by hpcinfer's own llm_kwargs and binding):
   whole-command wall time and generation tokens/s of each; the ratios (target >= 0.95).
2. A skewed workload (output lengths varying tenfold, the long ones in the first half) on
   2 workers of one core each: `hpcinfer run --workers 2` (dynamic units) against simple_test.py's
   static split (two plain scripts, one per half, one core each, as `{rank}.in` per rank);
   the ratio of wall times.
Figures are printed and written as JSON to --out; bench/RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hpcinfer.cluster import apply_env, cpu_affinity, plan_placement, resolve_profile  # noqa: E402
from hpcinfer.core.tiny_model import ensure_tiny_model  # noqa: E402
from hpcinfer.engines.vllm_offline import EngineSetup, engine_env, llm_kwargs  # noqa: E402
from hpcinfer.spec import EngineSpec, SamplingSpec  # noqa: E402

VOCAB = "the model reads a prompt and predicts the next token one step at a time".split()


def prompt(i: int) -> str:
    return " ".join(VOCAB[(i * 7 + j * 3) % len(VOCAB)] for j in range(12)) + f" {i}"


def worker_env(workers: int, index: int) -> dict[str, str]:
    """The environment hpcinfer gives worker `index` of `workers` on this machine."""
    plan = plan_placement(resolve_profile(None), workers=workers)
    return apply_env(os.environ, plan.placements[index].env)


def plain_run(
    model: str, prompts: Path, max_tokens: int, workers: int, index: int, out: Path
) -> subprocess.Popen[str]:
    setup = EngineSetup(
        model, "tiny", EngineSpec(), SamplingSpec(), on_cpu=True, workers_on_node=workers
    )
    env = worker_env(workers, index) | engine_env(setup)
    group = plan_placement(resolve_profile(None), workers=workers).placements[index].group
    cores = sorted(cpu_affinity(group) or ())
    cmd = [
        "taskset",
        "-c",
        ",".join(map(str, cores)),
        sys.executable,
        str(REPO / "bench" / "plain_generate.py"),
        "--prompts",
        str(prompts),
        "--llm-kwargs",
        json.dumps(llm_kwargs(setup)),
        "--max-tokens",
        str(max_tokens),
        "--out",
        str(out),
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def finish_plain(proc: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"plain vLLM script failed with code {proc.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def hpcinfer_run(args: list[str], cwd: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "hpcinfer", "run", *args, "--json", "--quiet"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"hpcinfer run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def overhead(model: str, work: Path, n: int, max_tokens: int, repeat: int) -> dict[str, Any]:
    prompts = work / "prompts.txt"
    prompts.write_text("".join(prompt(i) + "\n" for i in range(n)), encoding="utf-8")
    plain, ours = [], []
    for r in range(repeat):
        started = time.perf_counter()
        result = finish_plain(plain_run(model, prompts, max_tokens, 1, 0, work / "plain.out"))
        wall = time.perf_counter() - started
        plain.append(
            {
                "wall_s": wall,
                "tokens_per_s": result["output_tokens"] / result["generate_s"],
                "output_tokens": result["output_tokens"],
            }
        )
        started = time.perf_counter()
        summary = hpcinfer_run(
            [
                "prompts.txt",
                "--model",
                model,
                "--out",
                f"out-{r}",
                "--workers",
                "1",
                "--max-tokens",
                str(max_tokens),
                "--ignore-eos",
                "--temperature",
                "1.0",
            ],
            work,
        )
        wall = time.perf_counter() - started
        ours.append(
            {
                "wall_s": wall,
                "tokens_per_s": summary["output_tokens_per_s"],
                "output_tokens": summary["output_tokens"],
            }
        )
        print(
            f"  run {r + 1}: plain {plain[-1]['wall_s']:.1f} s "
            f"{plain[-1]['tokens_per_s']:.0f} tok/s"
            f" | hpcinfer {ours[-1]['wall_s']:.1f} s {ours[-1]['tokens_per_s']:.0f} tok/s",
            flush=True,
        )
    best_plain = _summary(plain)
    best_ours = _summary(ours)
    assert all(p["output_tokens"] == n * max_tokens for p in plain + ours), "token counts differ"
    return {
        "prompts": n,
        "max_tokens": max_tokens,
        "runs": {"plain": plain, "hpcinfer": ours},
        "median": {"plain": best_plain, "hpcinfer": best_ours},
        "ratio_wall": best_plain["wall_s"] / best_ours["wall_s"],
        "ratio_tokens_per_s": best_ours["tokens_per_s"] / best_plain["tokens_per_s"],
        # Runs alternate plain / hpcinfer, so each pair shares the machine's mood of the
        # moment: the median of per-pair ratios is the figure least moved by drift.
        "paired_ratio_wall": statistics.median(
            p["wall_s"] / o["wall_s"] for p, o in zip(plain, ours, strict=True)
        ),
        "paired_ratio_tokens_per_s": statistics.median(
            o["tokens_per_s"] / p["tokens_per_s"] for p, o in zip(plain, ours, strict=True)
        ),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians: single runs on a shared 2-core machine vary by +-15%."""
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
    }


def skew(model: str, work: Path, n: int, short: int) -> dict[str, Any]:
    """Lengths fall linearly from 10x short to short: the first half holds the long answers."""
    lengths = [round(short * 10 - (short * 9) * i / (n - 1)) for i in range(n)]
    rows = [{"prompt": prompt(i), "max_tokens": lengths[i]} for i in range(n)]
    halves = [rows[: n // 2], rows[n // 2 :]]
    for k, half in enumerate(halves):
        (work / f"{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in half), "utf-8")
    (work / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")

    started = time.perf_counter()
    procs = [plain_run(model, work / f"{k}.jsonl", short, 2, k, work / f"{k}.out") for k in (0, 1)]
    results = [finish_plain(p) for p in procs]
    static_wall = time.perf_counter() - started

    started = time.perf_counter()
    summary = hpcinfer_run(
        [
            "all.jsonl",
            "--model",
            model,
            "--out",
            "skew-out",
            "--workers",
            "2",
            "--max-tokens-field",
            "max_tokens",
            "--ignore-eos",
            "--temperature",
            "1.0",
        ],
        work,
    )
    dynamic_wall = time.perf_counter() - started
    total = sum(lengths)
    assert sum(r["output_tokens"] for r in results) == total == summary["output_tokens"]
    return {
        "prompts": n,
        "lengths": [min(lengths), max(lengths)],
        "output_tokens": total,
        "static": {"wall_s": static_wall, "generate_s": [r["generate_s"] for r in results]},
        "dynamic": {
            "wall_s": dynamic_wall,
            "generate_s": summary["generation_s"],
            "records_per_worker": [w["records"] for w in summary["workers"]],
        },
        "ratio_wall_static_over_dynamic": static_wall / dynamic_wall,
        "ratio_generation_static_over_dynamic": max(r["generate_s"] for r in results)
        / summary["generation_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skew-prompts", type=int, default=1024)
    parser.add_argument(
        "--skew-short", type=int, default=32, help="shortest output; longest is 10x"
    )
    parser.add_argument("--out", default="bench/overhead.json")
    args = parser.parse_args()
    model = str(ensure_tiny_model())
    with tempfile.TemporaryDirectory(prefix="hpcinfer-bench-") as tmp:
        work = Path(tmp)
        print(
            f"1. overhead: {args.prompts} prompts x {args.max_tokens} tokens, 1 worker", flush=True
        )
        first = overhead(model, work, args.prompts, args.max_tokens, args.repeat)
        print(
            f"   medians, hpcinfer / plain: wall-time ratio {first['ratio_wall']:.3f} "
            "(plain wall / ours),"
            f" tokens/s ratio {first['ratio_tokens_per_s']:.3f}  (target >= 0.95 on both)\n"
            f"   median of paired runs: wall {first['paired_ratio_wall']:.3f}, "
            f"tokens/s {first['paired_ratio_tokens_per_s']:.3f}"
        )
        print(
            f"2. skew: {args.skew_prompts} prompts, "
            f"outputs {args.skew_short}-{args.skew_short * 10}"
            " tokens, 2 workers x 1 core",
            flush=True,
        )
        second = skew(model, work, args.skew_prompts, args.skew_short)
        print(
            f"   static split {second['static']['wall_s']:.1f} s, dynamic units "
            f"{second['dynamic']['wall_s']:.1f} s: static / dynamic = "
            f"{second['ratio_wall_static_over_dynamic']:.2f}x; generation phase (slowest static "
            f"rank vs dynamic) {max(second['static']['generate_s']):.1f} s vs "
            f"{second['dynamic']['generate_s']:.1f} s = "
            f"{second['ratio_generation_static_over_dynamic']:.2f}x "
            f"(records per worker {second['dynamic']['records_per_worker']})"
        )
    Path(args.out).write_text(json.dumps({"overhead": first, "skew": second}, indent=1) + "\n")
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
