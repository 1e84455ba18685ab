"""CLI commands `hpcinfer bench offline` and `hpcinfer bench fom` (registered on the bench group).

Thin: flags (and an optional spec file for the engine) -> BenchSettings -> one call into
hpcinfer.bench.offline / hpcinfer.bench.fom_bench -> a table on stdout (or the result
document with --json). Progress goes to stderr. Nothing heavy is imported at module level;
vLLM is imported only by the engine process the benchmark starts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from hpcinfer.cli import flags
from hpcinfer.errors import SpecError

OFFLINE_EPILOG = (
    "Example (the built-in tiny model on a CPU, about 30 s): `hpcinfer bench offline "
    "--input-len 128 --output-len 128 --batch-size 8 --out bench-out`; add `--tp 2` for "
    "tensor parallelism. A real model: `hpcinfer bench offline --model /models/Llama-3.1-8B "
    "--tp 4 --input-len 1024 --output-len 1024 --batch-size 32 --csv fom.csv`. Writes "
    "DIR/offline.json and appends the ALCF inference FOM's CSV row to DIR/offline.csv "
    "(and --csv PATH). "
    "Exit codes: 0 done; 1 the engine failed (its log is named); 2 bad flags or spec."
)
FOM_EPILOG = (
    "Example (the built-in tiny model on a CPU, about a minute): `hpcinfer bench fom "
    "--preset cpu-tiny --out bench-out`. A real model: `hpcinfer bench fom --model "
    "/models/Llama-3.1-8B --tp 4 --preset alcf-fom-405b`, or your own cases: `--case "
    "FOM1:3584:512:8:4096 --case FOM2:512:3584:8:4096 --case FOM3:1024:1024:8:16384` "
    "(NAME:INPUT_LEN:OUTPUT_LEN:BATCH_SIZE:MAX_MODEL_LEN) or bench.fom_cases in SPEC.yaml. "
    "Writes DIR/fom.json and DIR/fom.csv. Exit codes: 0 done; 1 an engine failed (its log "
    "is named); 2 bad flags, cases or spec."
)

DEFAULT_OUT = Path("bench-out")

BENCH: dict[str, flags.Flag] = {
    "pp": flags.Flag(
        Annotated[
            int,
            typer.Option(
                "--pp", help="Pipeline-parallel stages (on CPU, vLLM 0.32 fails with PP: use --tp)."
            ),
        ],
        default=1,
    ),
    "peak_tflops": flags.Flag(
        Annotated[
            float | None,
            typer.Option(
                help="Peak TFLOPS per device for MFU (default: the profile's peak_tflops_bf16)."
            ),
        ]
    ),
    "warmup_iters": flags.Flag(
        Annotated[int, typer.Option(help="Untimed iterations first.")], default=1
    ),
    "iters": flags.Flag(Annotated[int, typer.Option(help="Timed iterations.")], default=3),
    "seed": flags.Flag(
        Annotated[int, typer.Option(help="Seed of the random prompts and of sampling.")],
        default=0,
    ),
    "temperature": flags.Flag(
        Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")], default=0.0
    ),
    "percentiles": flags.Flag(
        Annotated[str, typer.Option(help="Latency percentiles to report, e.g. 50,90,99.")],
        default="50,90,99",
    ),
    "csv": flags.Flag(
        Annotated[
            Path | None,
            typer.Option(help="Also append the CSV row(s) of the ALCF inference FOM to this file."),
        ]
    ),
    "out": flags.Flag(flags.FLAGS["out"].annotation),  # a directory, but no spec field here
}
"""The flags `bench offline` and `bench fom` share beyond the engine's."""
_BENCH_FLAGS = (*BENCH, *flags.COMMON)
_ENGINE_FLAGS = flags.ENGINE


def settings_from_flags(spec_file: str | None, given: flags.Flags) -> Any:
    """BenchSettings from a command's flags: both commands take the same flags, and one place
    maps them."""
    common = {name: given[name] for name in BENCH if name != "out"}
    out = Path(given["out"]) if given["out"] else DEFAULT_OUT
    return bench_settings(
        spec_file, given.spec_fields(), given.sets, **common, out=out, cwd=Path.cwd()
    )


def bench_settings(
    spec_file: str | None,
    engine_fields: Mapping[str, Any],
    sets: Sequence[str],
    *,
    pp: int,
    warmup_iters: int,
    iters: int,
    seed: int,
    temperature: float,
    percentiles: str,
    peak_tflops: float | None,
    out: Path,
    csv: Path | None,
    cwd: Path,
) -> Any:
    """Spec file + engine fields + --set (validated as `run` validates them) + benchmark
    flags -> BenchSettings; every problem is a SpecError naming the flag."""
    from hpcinfer.bench.metrics import parse_percentiles
    from hpcinfer.bench.offline import BenchSettings
    from hpcinfer.core.spec_loading import is_spec_file, load_job_spec

    if spec_file is not None and not is_spec_file(spec_file):
        raise SpecError(
            f"`hpcinfer bench` takes a spec file (.yaml/.yml), not {spec_file!r}; the model "
            "goes in --model"
        )
    spec = load_job_spec(spec_file, (), engine_fields, sets, cwd)
    try:
        chosen = parse_percentiles(percentiles)
    except ValueError as exc:
        raise SpecError(f"--percentiles: {exc}") from None
    return BenchSettings(
        spec=spec,
        out_dir=out if out.is_absolute() else cwd / out,
        pp=pp,
        warmup_iters=warmup_iters,
        iters=iters,
        seed=seed,
        temperature=temperature,
        percentiles=chosen,
        peak_tflops=peak_tflops,
        csv_copy=None if csv is None else (csv if csv.is_absolute() else cwd / csv),
        cwd=cwd,
        command=tuple(sys.argv),
    )


def _progress(quiet: bool) -> Any:
    def show(line: str) -> None:
        if not quiet:
            print(f"bench: {line}", file=sys.stderr, flush=True)

    return show


def _num(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _flops(value: float | None) -> str:
    if value is None:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOP/s"
    return f"{value:.3g} FLOP/s"


def _mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.3g}%"


@flags.takes(*_ENGINE_FLAGS, *_BENCH_FLAGS, table=BENCH)
def offline(
    spec_file: flags.SPEC_ONLY = None,
    input_len: Annotated[
        int, typer.Option(min=1, help="Prompt tokens per request (exactly).")
    ] = 32,
    output_len: Annotated[
        int, typer.Option(min=1, help="Generated tokens per request (exactly).")
    ] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Requests submitted together.")] = 8,
    *,
    flags: flags.Flags,
) -> None:
    """The ALCF inference FOM's benchmark on an in-process vLLM engine, exact lengths, warm-up.

    Reports throughput, latency, prefill and decode rates, the FLOP FOM and MFU.
    Each iteration submits --batch-size requests of exactly --input-len random token ids
    (ignore_eos, max_tokens = --output-len) and waits for all: its latency L is the FOM's
    end to end. Throughput = (input + output tokens) / L (over the timed iterations:
    their tokens over their summed latencies); prefill = input tokens / time to the last
    first token; decode = later output tokens / the rest of L.
    """
    from hpcinfer.bench.offline import run_offline

    settings = settings_from_flags(spec_file, flags)
    outcome = run_offline(settings, input_len, output_len, batch_size, _progress(flags.quiet))
    if flags.json_out:
        print(json.dumps(outcome.document, indent=1))
        return
    _print_offline(outcome)


def _print_offline(outcome: Any) -> None:
    from rich.table import Table

    from hpcinfer.core.terminal import unclipped, wide_console

    config, result = outcome.document["config"], outcome.document["result"]
    latency = result["latency_s"]
    requests = result["requests"]
    table = Table(
        title=(
            f"bench offline: {config['model']} ({config['precision']}), "
            f"TP={config['tensor_parallel']} PP={config['pipeline_parallel']}, "
            f"batch {config['batch_size']} x "
            f"({config['input_len']} in, {config['output_len']} out), {result['iterations']} "
            "timed iterations"
        ),
        show_header=False,
    )
    shown = ", ".join(
        f"{key} {value:.4f}" for key, value in latency.items() if key not in ("mean",)
    )
    table.add_row("latency", f"{latency['mean']:.4f} s mean ({shown})")
    table.add_row("throughput", f"{result['throughput']:.1f} tokens/s (input + output) / latency")
    table.add_row("prefill", _num(result["prefill_tokens_per_s"], unit=" tokens/s"))
    table.add_row("decode", _num(result["decode_tokens_per_s"], unit=" tokens/s"))
    table.add_row(
        "per request",
        f"TTFT {requests['mean_ttft_ms']:.1f} ms mean, E2E {requests['mean_e2el_ms']:.1f} ms mean",
    )
    table.add_row(
        "tokens",
        f"{result['input_tokens']} in, {result['output_tokens']} out per iteration (exact)",
    )
    table.add_row("FLOP FOM", f"{_flops(result['flops_per_s'])} ({config['flops_note']})")
    mfu = result["mfu"]
    table.add_row(
        "MFU", config["mfu_note"] if mfu is None else f"{_mfu(mfu)} ({config['mfu_note']})"
    )
    paths = [str(outcome.json_path), *(str(p) for p in outcome.csv_paths)]
    table.add_row("results", ", ".join(paths))
    wide_console().print(unclipped(table))


@flags.takes(
    *(f for f in _ENGINE_FLAGS if f != "max_model_len"), "url", "endpoints", "api_key_env",
    *_BENCH_FLAGS, table=BENCH,
)  # fmt: skip
def fom(
    spec_file: flags.SPEC_ONLY = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="cpu-tiny or alcf-fom-405b (default: cpu-tiny on a CPU, alcf-fom-405b otherwise)."
        ),
    ] = None,
    case: Annotated[
        list[str] | None,
        typer.Option(
            "--case",
            help="A case NAME:INPUT_LEN:OUTPUT_LEN:BATCH_SIZE:MAX_MODEL_LEN (repeatable; "
            "replaces the preset).",
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help="Run only these cases, e.g. FOM1,FOM2 (the FOM is then their sum).",
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="With a server: the model directory whose tokenizer gives the prompts' "
            "token ids (default: the server's model directory, when it is on this machine)."
        ),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(min=2, help="With a server: draw the prompts' token ids below N instead."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            parser=flags.seconds("--timeout"),
            metavar="DURATION",
            help=f"With a server: how long one request may take ({flags.DURATION_FORMS}; "
            "default 1h).",
        ),
    ] = None,
    *,
    flags: flags.Flags,
) -> None:
    """The ALCF inference FOM = FOM1 + FOM2 + FOM3, each case measured, and the sum.

    FOM1 is prefill-heavy, FOM2 decode-heavy, FOM3 has a large max-model-len; each case is
    timed as `bench offline` times a batch. Cases sharing a max-model-len share one engine;
    the engines run one after the other. With --url or --endpoints the cases run on that
    running server instead (the OpenAI API, the same figures): each case's batch is sent
    at once, exact lengths checked in every answer's usage, and every case's max-model-len
    must be the server's."""
    from hpcinfer.bench.fom_bench import parse_only, run_fom
    from hpcinfer.bench.fom_server import run_fom_on_server

    settings = settings_from_flags(spec_file, flags)
    server = fom_server(settings, tokenizer, vocab_size, timeout)
    progress, names = _progress(flags.quiet), parse_only(only)
    if server is not None:
        outcome = run_fom_on_server(settings, server, preset, case or [], progress, names)
    else:
        outcome = run_fom(settings, preset, case or [], progress, names)
    if flags.json_out:
        print(json.dumps(outcome.document, indent=1))
        return
    _print_fom(outcome)


def fom_server(
    settings: Any, tokenizer: Path | None, vocab_size: int | None, timeout: float | None
) -> Any:
    """The running server to measure (--url/--endpoints, or the spec's client section), or
    None; the server-only flags without one are an error."""
    from hpcinfer.bench.fom_server import DEFAULT_TIMEOUT_S, FomServer

    client = settings.spec.client
    if not client.urls and not client.registry:
        given = [
            name
            for name, value in (
                ("--tokenizer", tokenizer), ("--vocab-size", vocab_size), ("--timeout", timeout)
            )
            if value is not None
        ]  # fmt: skip
        if given:
            raise SpecError(
                f"{', '.join(given)}: for a running server only; add --url URL or "
                f"--endpoints FILE, or drop {'it' if len(given) == 1 else 'them'}"
            )
        return None
    return FomServer(
        urls=tuple(client.urls),
        registry=None if client.registry is None else Path(client.registry),
        model=settings.spec.model,
        tokenizer=None if tokenizer is None else settings.cwd / tokenizer,
        vocab_size=vocab_size,
        api_key_env=client.api_key_env if "api_key_env" in client.model_fields_set else None,
        timeout_s=DEFAULT_TIMEOUT_S if timeout is None else timeout,
    )


def _print_fom(outcome: Any) -> None:
    from rich.table import Table

    from hpcinfer.core.terminal import unclipped, wide_console

    config = outcome.document["config"]
    server = config.get("server")
    if server:
        engine = f"served at {server['url']} (max-model-len {server['max_model_len']})"
    else:
        engine = (
            f"({config['precision']}), TP={config['tensor_parallel']}"
            f" PP={config['pipeline_parallel']}"
        )
    table = Table(title=f"bench fom: {config['model']} {engine}, cases from {config['cases_from']}")
    for column in (
        "case",
        "input",
        "output",
        "batch",
        "max-model-len",
        "latency s",
        "throughput tok/s",
        "prefill tok/s",
        "decode tok/s",
        "FLOP FOM",
        "MFU",
    ):
        table.add_column(column, justify="left" if column == "case" else "right")
    for row in outcome.document["cases"]:
        table.add_row(
            row["name"],
            str(row["input_len"]),
            str(row["output_len"]),
            str(row["batch_size"]),
            str(row["max_model_len"]),
            f"{row['latency_s']:.4f}",
            f"{row['throughput']:.1f}",
            _num(row["prefill_tokens_per_s"]),
            _num(row["decode_tokens_per_s"]),
            _flops(row["flops_per_s"]),
            _mfu(row["mfu"]),
        )
    total = outcome.document["fom"]
    table.add_row(
        "FOM",
        "",
        "",
        "",
        "",
        "",
        f"{total['throughput']:.1f}",
        "",
        "",
        _flops(total["flops_per_s"]),
        "",
        style="bold",
    )
    console = wide_console()
    console.print(unclipped(table))
    notes = [config["flops_note"], config["mfu_note"]]
    paths = [outcome.json_path, outcome.csv_path]
    if outcome.csv_copy is not None:
        paths.append(outcome.csv_copy)
    console.print(
        "\n".join([*notes, "results: " + ", ".join(str(p) for p in paths)]), highlight=False
    )


def register(app: typer.Typer) -> None:
    """Add `offline` and `fom` to the `hpcinfer bench` group."""
    app.command(epilog=OFFLINE_EPILOG)(offline)
    app.command(epilog=FOM_EPILOG)(fom)
