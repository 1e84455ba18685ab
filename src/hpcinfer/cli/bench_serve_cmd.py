"""CLI command `hpcinfer bench serve` (registered on the bench group by `register`).

Thin: flags -> validated ServeBenchOptions -> hpcinfer.bench.serve_bench -> a table per sweep
point and a summary of the sweep on stdout (or the result document with --json). Progress
and notes go to stderr. The flags are `vllm bench serve`'s where it has one (its `--random-*`
spellings are accepted too), so a command line carries over.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hpcinfer.cli import flags
from hpcinfer.cli.bench_offline_cmd import BENCH
from hpcinfer.errors import SpecError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from hpcinfer.spec import SamplingSpec

SERVE_EPILOG = (
    "Example (a stub server, no model: `python -m hpcinfer.testing.stub_server --port 8000 "
    "--ttft-ms 50 --itl-ms 10 &`): `hpcinfer bench serve --url http://127.0.0.1:8000 "
    "--vocab-size 1000 --input-len 128 --output-len 64 --num-prompts 200 --max-concurrency "
    "1,4,16 --out bench-out`. Your own prompts, read as `run` reads them, and a sweep to "
    "saturation: `hpcinfer bench serve prompts.txt --url http://127.0.0.1:8000 --num-prompts "
    "100 --sweep 5`. A fleet from `hpcinfer serve`: `hpcinfer bench serve --endpoints "
    "endpoints.json --request-rate 2,8,inf --burstiness 0.5 --slo ttft=2000,tpot=100`. "
    "Sweeps: every --request-rate with every --max-concurrency (rates outer, in the order "
    "given); rate inf = all at once, with a concurrency limit a closed loop. Latency counts "
    "from the scheduled send time. Writes DIR/serve.json (after every point) and "
    "DIR/serve.csv; `hpcinfer report DIR` renders them. Exit codes: 0 every request "
    "succeeded; 3 some failed (counts printed); 1 servers unreachable or nothing succeeded; "
    "2 bad flags or dataset."
)
DEFAULT_OUT = Path("bench-out")
BENCH_INPUTS = ("input_format", "prompt_field", "template", "max_tokens_field")
"""`run`'s input flags that apply to a benchmark (record ids play no part in one)."""
BENCH_SAMPLING = tuple(name for name in flags.SAMPLING if name != "max_tokens")
"""`run`'s sampling flags; the output length is --output-len (`vllm bench serve`'s name)."""
SAMPLING_DEFAULTS: dict[str, Any] = {"temperature": 0.0, "ignore_eos": True}
"""Where a load test differs from `run` unless told otherwise (flag, spec file or --set):
greedy, and exact lengths, so every request generates --output-len tokens, as `vllm bench
serve` does."""
_PROGRESS_EVERY_S = 0.5


def _parse(flag: str, parser: Any, text: str) -> Any:
    try:
        return parser(text)
    except ValueError as exc:
        raise SpecError(f"{flag}: {exc}") from None


def _given(section: BaseModel, name: str) -> Any:
    """The field's value when the flags, spec file or --set gave it, else None."""
    return getattr(section, name) if name in section.model_fields_set else None


def sampling_options(sampling: SamplingSpec) -> dict[str, Any]:
    """build_options' sampling arguments from the spec's sampling section: what was given,
    the benchmark's own defaults (SAMPLING_DEFAULTS) for the rest; top_p 1 is not sent."""
    chosen = {
        name: getattr(sampling, name) if name in sampling.model_fields_set else default
        for name, default in SAMPLING_DEFAULTS.items()
    }
    return {
        **chosen,
        "top_p": None if sampling.top_p == 1.0 else sampling.top_p,
        "top_k": sampling.top_k,
        "seed": sampling.seed,
        "stop": list(sampling.stop),
    }


def build_options(
    *,
    url: list[str] | None,
    endpoints: Path | None,
    model: str | None,
    api: str,
    dataset: str,
    input_len: int,
    output_len: int,
    num_prompts: int | None,
    range_ratio: float,
    request_rate: str,
    burstiness: float,
    max_concurrency: str | None,
    dataset_seed: int,
    percentiles: str,
    slo: str | None,
    tokenizer: Path | None,
    vocab_size: int | None,
    warmup: int,
    timeout: float,
    temperature: float,
    ignore_eos: bool,
    api_key_env: str | None,
    out: Path,
    cwd: Path,
    inputs: list[str] | None = None,
    input_format: str | None = None,
    prompt_field: str | None = None,
    template: str | None = None,
    max_tokens_field: str | None = None,
    sweep: int | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> Any:
    """Every flag checked, each problem a SpecError naming the flag and the fix. `seed` is
    the sampling seed (as `run --seed`), `dataset_seed` that of the prompts and arrivals."""
    from hpcinfer.bench.arrivals import parse_concurrencies, parse_rates
    from hpcinfer.bench.metrics import parse_percentiles, parse_slo
    from hpcinfer.bench.serve_bench import ServeBenchOptions
    from hpcinfer.core.api_keys import resolve_api_key

    if api not in ("completions", "chat"):
        raise SpecError(f"--api {api!r}: choose completions or chat")
    if dataset != "random":
        path = Path(dataset).expanduser()
        path = path if path.is_absolute() else cwd / path
        if not path.is_file():
            raise SpecError(
                f"--dataset {dataset!r}: no such file; give `random` or a file of prompts"
            )
        dataset = str(path)
    from_files = bool(inputs) or dataset != "random"
    fmt = None if input_format in (None, "auto") else input_format
    if not from_files and (template or prompt_field or fmt):
        raise SpecError(
            "--template, --prompt-field and --format read input files: name them "
            "(`hpcinfer bench serve prompts.csv --template ...`)"
        )
    if sweep is not None and (request_rate.strip() != "inf" or max_concurrency is not None):
        raise SpecError(
            "--sweep chooses its own loads (one at a time, all at once, rates between): "
            "leave out --request-rate and --max-concurrency"
        )
    if not 0 <= range_ratio < 1:
        raise SpecError(f"--range-ratio {range_ratio:g}: use 0 (exact lengths) up to below 1")
    if math.isnan(burstiness) or burstiness <= 0:
        raise SpecError(
            f"--burstiness {burstiness:g}: use a number above 0 (1 = Poisson, < 1 burstier)"
        )
    if not (timeout > 0 and math.isfinite(timeout)):
        raise SpecError(f"--timeout {timeout:g}: give the seconds one request may take, > 0")
    if api == "chat" and not from_files:
        raise SpecError(
            "--api chat needs text prompts: the random dataset sends token ids, which only "
            "the completions API takes; use --api completions or name input files"
        )
    if tokenizer is not None and vocab_size is not None:
        raise SpecError("--tokenizer and --vocab-size: give one of them, not both")
    rates = _parse("--request-rate", parse_rates, request_rate)
    concurrencies: list[int | None] = [None]
    if max_concurrency is not None:
        concurrencies = list(_parse("--max-concurrency", parse_concurrencies, max_concurrency))
    chosen = _parse("--percentiles", parse_percentiles, percentiles)
    bounds = _parse("--slo", parse_slo, slo) if slo is not None else None
    registry = None
    if endpoints is not None:
        registry = endpoints if endpoints.is_absolute() else cwd / endpoints
    if not url and registry is None:
        raise SpecError(
            "bench serve needs servers: --url http://HOST:PORT (repeatable) or --endpoints "
            "endpoints.json (from `hpcinfer serve`)"
        )
    return ServeBenchOptions(
        out_dir=out if out.is_absolute() else cwd / out,
        urls=tuple(url or ()),
        registry=registry,
        model=model,
        api="chat" if api == "chat" else "completions",
        dataset=dataset,
        inputs=tuple(inputs or ()),
        input_format=fmt,
        prompt_field=prompt_field,
        template=template,
        max_tokens_field=max_tokens_field or "max_tokens",
        input_len=input_len,
        output_len=output_len,
        num_prompts=num_prompts,
        range_ratio=range_ratio,
        sweep=sweep,
        rates=tuple(rates),
        burstiness=burstiness,
        concurrencies=tuple(concurrencies),
        dataset_seed=dataset_seed,
        percentiles=chosen,
        slo=bounds,
        tokenizer=None if tokenizer is None else cwd / tokenizer,
        vocab_size=vocab_size,
        warmup=warmup,
        timeout_s=timeout,
        temperature=temperature,
        ignore_eos=ignore_eos,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(stop),
        api_key_env=api_key_env,
        api_key=resolve_api_key(api_key_env),
        command=tuple(sys.argv),
    )


# ---------------------------------------------------------------------------------------
# what the user sees


class ConsoleReporter:
    """Notes and a progress line on stderr; a table per point on stdout (not with --json)."""

    def __init__(self, tables: bool, quiet: bool) -> None:
        self.tables = tables
        self.quiet = quiet
        self.live = sys.stderr.isatty()
        self._last = 0.0
        self._quarter = 0
        self._label = ""

    def note(self, message: str) -> None:
        if not self.quiet:
            print(f"bench serve: {message}", file=sys.stderr, flush=True)

    def point_started(self, index: int, total: int, point: Any, requests: int) -> None:
        self._label = f"point {index}/{total} {point.label}"
        self._last = 0.0
        self._quarter = 0
        self.note(f"{self._label}: {requests} requests")

    def progress(self, done: int, total: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if done < total and now - self._last < _PROGRESS_EVERY_S:
            return
        self._last = now
        line = f"bench serve: {self._label}: {done}/{total} requests done"
        if self.live:
            end = "\n" if done >= total else ""
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
        elif done * 4 // total > self._quarter:  # a log file: a line per quarter done
            self._quarter = done * 4 // total
            print(line, file=sys.stderr, flush=True)

    def point_finished(self, run: Mapping[str, Any]) -> None:
        errors = run["errors"]
        if errors and not self.quiet:
            for message, count in errors.items():
                self.note(f"{run['label']}: {count} failed: {message}")
        if self.tables:
            _print_point(run)


def _ms(metrics: Mapping[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else f"{value:.2f}"


def _print_point(run: Mapping[str, Any]) -> None:
    from rich.table import Table

    from hpcinfer.bench.serve_bench import latency_stats
    from hpcinfer.core.terminal import unclipped, wide_console

    m = run["metrics"]
    stats = ["mean", "std", *latency_stats(m["percentiles"])[1:]]
    table = Table(title=f"bench serve {run['label']}: {run['load']['description']}")
    table.add_column("latency (ms)")
    for stat in stats:
        table.add_column(stat, justify="right")
    for name, title in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
        table.add_row(title, *(_ms(m, f"{stat}_{name}_ms") for stat in stats))
    console = wide_console()
    console.print(unclipped(table))
    line = (
        f"{m['completed']} ok, {m['failed']} failed in {m['duration']:.2f} s: "
        f"{m['request_throughput']:.2f} req/s, {m['output_throughput']:.1f} output tok/s, "
        f"{m['total_token_throughput']:.1f} total tok/s"
    )
    if m["request_goodput"] is not None:
        line += f", goodput {m['request_goodput']:.2f} req/s"
    delta = (run["server_metrics"] or {}).get("delta", {}).get("total") or {}
    if "generation_tokens_total" in delta:
        line += (
            f"; servers counted {delta.get('prompt_tokens_total', 0):.0f} prompt and "
            f"{delta['generation_tokens_total']:.0f} generated tokens"
        )
    console.print(line, highlight=False, soft_wrap=True)


def _print_summary(document: Mapping[str, Any], path: Path) -> None:
    from rich.table import Table

    from hpcinfer.core.terminal import unclipped, wide_console

    runs = document["runs"]
    table = Table(title=f"bench serve: {len(runs)} point{'s' if len(runs) != 1 else ''}")
    columns = ("point", "ok", "failed", "req/s", "out tok/s", "goodput", "TTFT mean",
               "TTFT p99", "TPOT mean", "ITL mean", "E2E mean")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "point" else "right")
    for run in runs:
        m = run["metrics"]
        goodput = m["request_goodput"]
        role = run["load"].get("role")
        table.add_row(
            run["label"] if role in (None, "rate") else f"{run['label']} ({role})",
            str(m["completed"]),
            str(m["failed"]),
            f"{m['request_throughput']:.2f}",
            f"{m['output_throughput']:.1f}",
            "-" if goodput is None else f"{goodput:.2f}",
            _ms(m, "mean_ttft_ms"),
            _ms(m, "p99_ttft_ms"),
            _ms(m, "mean_tpot_ms"),
            _ms(m, "mean_itl_ms"),
            _ms(m, "mean_e2el_ms"),
        )
    console = wide_console()
    console.print(unclipped(table))
    knee = (document.get("sweep") or {}).get("knee")
    if knee:
        from hpcinfer.bench.sweep import describe_knee

        console.print(describe_knee(knee), highlight=False, soft_wrap=True)
    console.print(f"results: {path} and {path.with_suffix('.csv')}", highlight=False)


# ---------------------------------------------------------------------------------------
# the command


@flags.takes(
    "url", "endpoints", "model", "api_key_env", "out", *BENCH_INPUTS, *BENCH_SAMPLING,
    *flags.COMMON, table={"out": BENCH["out"]},
)  # fmt: skip
def serve(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SPEC.yaml INPUT...",
            help="A job spec first (optional: its model, client, inputs and sampling "
            "sections), then prompt files, directories or globs, read as `run` reads them "
            "(text, JSONL prompts or chat messages, CSV/TSV/Parquet with --prompt-field or "
            "--template); chat records go to /v1/chat/completions. Default: random token-id "
            "prompts.",
            show_default=False,
        ),
    ] = None,
    api: Annotated[
        str, typer.Option(help="completions or chat (for text prompts; chat records: chat).")
    ] = "completions",
    dataset: Annotated[
        str,
        typer.Option(
            help="random (token-id prompts of exactly --input-len) or a file of prompts, "
            'read like INPUT (a record\'s own "max_tokens" sets its output length).'
        ),
    ] = "random",
    input_len: Annotated[
        int, typer.Option("--input-len", "--random-input-len", min=1, help="Prompt tokens.")
    ] = 1024,
    output_len: Annotated[
        int,
        typer.Option(
            "--output-len",
            "--random-output-len",
            min=1,
            help="Tokens to generate (exactly, with the default --ignore-eos).",
        ),
    ] = 128,
    num_prompts: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests per point (default: 1000 random prompts, or each input prompt "
            "once); a smaller input is cycled through.",
        ),
    ] = None,
    sweep: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Sweep to saturation: one request at a time, all at once, then N rates "
            "evenly spaced between (arrivals per --burstiness: 1 Poisson, inf constant), "
            "and name the knee: the highest rate whose TTFT/TPOT p50/p99 stay within 2x "
            "the one-at-a-time run's (or within --slo).",
        ),
    ] = None,
    range_ratio: Annotated[
        float,
        typer.Option(
            "--range-ratio",
            "--random-range-ratio",
            help="Random lengths within +-ratio of --input-len/--output-len (0: exact).",
        ),
    ] = 0.0,
    request_rate: Annotated[
        str, typer.Option(help="Requests/s, comma list for a sweep; inf = all at once.")
    ] = "inf",
    burstiness: Annotated[
        float,
        typer.Option(help="Gamma shape of the arrivals: 1 Poisson, < 1 burstier, > 1 regular."),
    ] = 1.0,
    max_concurrency: Annotated[
        str | None,
        typer.Option(help="Most requests in flight, comma list for a sweep (default: no limit)."),
    ] = None,
    dataset_seed: Annotated[
        int,
        typer.Option(
            help="Seed of the random prompts, their lengths and the arrival times (--seed is "
            "the sampling seed, as in `run`)."
        ),
    ] = 0,
    percentiles: Annotated[
        str, typer.Option(help="Latency percentiles to report, e.g. 50,90,99.")
    ] = "50,90,99",
    slo: Annotated[
        str | None,
        typer.Option(help="Goodput SLO in ms, e.g. ttft=2000,tpot=100 (also e2el)."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="Model directory whose tokenizer gives the random token ids "
            "(default: the server's model directory, when it is on this machine)."
        ),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(min=2, help="Draw random token ids below N instead of from a tokenizer."),
    ] = None,
    warmup: Annotated[
        int, typer.Option(min=0, help="Requests sent and discarded before measuring.")
    ] = 0,
    timeout: Annotated[
        float,
        typer.Option(
            parser=flags.seconds("--timeout"),
            metavar="DURATION",
            help=f"How long one request may take ({flags.DURATION_FORMS}; default 10m).",
        ),
    ] = 600.0,
    *,
    flags: flags.Flags,
) -> None:
    """Latency and throughput of OpenAI-compatible servers under load (vllm bench serve's
    figures: TTFT, TPOT, ITL, E2E, throughput, goodput), with the servers' /metrics.

    Each sweep point sends the same --num-prompts requests all at once, at a fixed
    concurrency, or at a request rate with Poisson/gamma arrivals, over every endpoint.
    The sampling flags are `run`'s; unless given (flag, spec file or --set), sampling is
    greedy (--temperature 0) with --ignore-eos, so each request generates exactly
    --output-len tokens."""
    from hpcinfer.bench.serve_bench import BenchError, run_serve_bench
    from hpcinfer.core.spec_loading import load_job_spec, split_spec_and_inputs

    spec_file, inputs = split_spec_and_inputs(args or [])
    spec = load_job_spec(spec_file, inputs, flags.spec_fields(), flags.sets)
    out = flags["out"]
    registry = spec.client.registry
    options = build_options(
        url=spec.client.urls,
        endpoints=None if registry is None else Path(registry),
        model=spec.model,
        api=api,
        dataset=dataset,
        input_len=input_len,
        output_len=output_len,
        num_prompts=num_prompts,
        range_ratio=range_ratio,
        request_rate=request_rate,
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        dataset_seed=dataset_seed,
        percentiles=percentiles,
        slo=slo,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        warmup=warmup,
        timeout=timeout,
        api_key_env=_given(spec.client, "api_key_env"),
        out=DEFAULT_OUT if out is None else Path(out),
        cwd=Path.cwd(),
        inputs=spec.inputs.paths,
        input_format=spec.inputs.format,
        prompt_field=spec.inputs.prompt_field,
        template=spec.inputs.template,
        max_tokens_field=spec.inputs.max_tokens_field,
        sweep=sweep,
        **sampling_options(spec.sampling),
    )
    json_out = flags.json_out
    reporter = ConsoleReporter(tables=not json_out, quiet=flags.quiet)
    outcome = run_serve_bench(options, Path.cwd(), reporter)
    if json_out:
        print(json.dumps(outcome.document, indent=1))
    else:
        _print_summary(outcome.document, outcome.path)
        if outcome.outcome == "some_failed":
            failed = sum(run["metrics"]["failed"] for run in outcome.document["runs"])
            total = sum(run["load"]["requests"] for run in outcome.document["runs"])
            print(f"{failed} of {total} requests failed", file=sys.stderr)
    if outcome.message:
        raise BenchError(outcome.message)
    raise typer.Exit(3 if outcome.outcome == "some_failed" else 0)


def register(app: typer.Typer) -> None:
    """Add `serve` to the `hpcinfer bench` group."""
    app.command(epilog=SERVE_EPILOG)(serve)
