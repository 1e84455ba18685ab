"""CLI command `hpcinfer profile run CONFIG...` (registered on the `profile` group).

Thin: arguments -> `hpcinfer.profile.runner.run_profile` per config -> a summary on stdout
(or the profile.json documents with --json). Every config is checked before the first engine
starts; a failed experiment does not stop the next one (the exit code is the first
failure's). Progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hpcinfer.cli import flags
from hpcinfer.errors import HpcinferError

RUN_EPILOG = (
    "Example (the built-in tiny model on this CPU, TP=2, a few minutes): `hpcinfer profile "
    "grid --preset cpu-tiny -o experiments` then `hpcinfer profile run "
    "experiments/*.yaml`. Each run folder (the config's output_dir) gets config.yaml, "
    "profile.json (TTFT, TPOT and throughput of the unprofiled iterations, the profiler's "
    "overhead, start-up phases, the rank files), and per rank kineto_trace_<rank>.json.gz, "
    "torch_et_<rank>.json, timing_stats_<rank>.json and operators_<rank>.csv. `--nsys` runs "
    "the engine under `nsys profile --trace-fork-before-exec=true --cuda-graph-trace=node`. "
    "Exit codes: 0 every experiment profiled; 1 an engine failed or a rank wrote no trace "
    "(named; the other files are kept); 2 a bad config, a parallel plan vLLM cannot run, or "
    "--nsys without nsys on PATH (nothing started)."
)


def _progress(quiet: bool) -> Any:
    def show(line: str) -> None:
        if not quiet:
            print(f"profile: {line}", file=sys.stderr, flush=True)

    return show


@flags.takes("profile", "kv_cache_bytes", "memory_share", *flags.OUTPUT_MODE)
def run(
    configs: Annotated[
        list[Path],
        typer.Argument(
            metavar="CONFIG...",
            help="Experiment configs (YAML, as `hpcinfer profile grid` writes them).",
            show_default=False,
        ),
    ],
    nsys: Annotated[
        bool, typer.Option("--nsys", help="Run the engine under Nsight Systems (nsys).")
    ] = False,
    execution_trace: Annotated[
        bool,
        typer.Option(
            "--execution-trace/--no-execution-trace",
            help="Record torch_et_<rank>.json in one extra iteration.",
        ),
    ] = True,
    analyze: Annotated[
        bool,
        typer.Option("--analyze/--no-analyze", help="Analyze the traces at the end."),
    ] = True,
    *,
    flags: flags.Flags,
) -> None:
    """Profile experiments on an offline vLLM engine, every rank's trace captured.

    Per config: warm-up iterations, timed iterations without the profiler (TTFT, TPOT,
    throughput from the tokens processed), then profiled iterations with the torch profiler
    in every TP/PP worker; the traces are named by the rank they record and checked against
    tp x pp x dp."""
    from hpcinfer.profile.runner import ProfileRunOptions, check_config, run_profile

    options = ProfileRunOptions(
        nsys=nsys,
        hardware_profile=flags["profile"],
        kv_cache_bytes=flags["kv_cache_bytes"],
        memory_share=flags["memory_share"],
        execution_trace=execution_trace,
        analyze=analyze,
        progress=_progress(flags.quiet or flags.json_out),
    )
    for config in configs:  # every config checked before the first engine starts
        check_config(config, options)
    documents: list[dict[str, Any]] = []
    first_failure: HpcinferError | None = None
    for config in configs:
        try:
            outcome = run_profile(config, options)
        except HpcinferError as exc:
            first_failure = first_failure or exc
            documents.append({"config": str(config), "error": str(exc)})
            if len(configs) > 1:
                print(f"profile: {config}: error: {exc}", file=sys.stderr, flush=True)
                continue
            raise
        documents.append(
            {
                "config": str(config),
                "run_dir": str(outcome.run_dir),
                "profile": outcome.result.model_dump(mode="json"),
            }
        )
        if not flags.json_out and not flags.quiet:
            _print_run(outcome)
    if flags.json_out:
        print(json.dumps({"runs": documents}, indent=1))
    if first_failure is not None:
        raise typer.Exit(first_failure.exit_code)


def _print_run(outcome: Any) -> None:
    result = outcome.result
    timing, overhead = result.timing, result.profiler
    ttft = "n/a" if timing.ttft_ms is None else f"{timing.ttft_ms:.1f} ms"
    tpot = "n/a" if timing.tpot_ms is None else f"{timing.tpot_ms:.2f} ms"
    print(
        f"{result.experiment.experiment_id}: {len(result.ranks)}/{result.expected_ranks} "
        f"ranks traced; TTFT {ttft}, TPOT {tpot}, {timing.total_tokens_per_s:.1f} tokens/s "
        f"(unprofiled); profiler overhead {overhead.overhead_pct:+.1f}% per iteration; "
        f"{outcome.run_dir}"
    )
    for note in outcome.notes:
        print(f"  note: {note}")


def register(group: typer.Typer) -> None:
    """Add `run` to the `hpcinfer profile` group."""
    group.command(epilog=RUN_EPILOG)(run)
