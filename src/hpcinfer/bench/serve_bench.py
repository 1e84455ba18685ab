"""`hpcinfer bench serve`: measure OpenAI-compatible servers under load, point by point.

One run: resolve the targets (`--url`s and the ready entries of an endpoints registry), check
each answers, find the model (and, for a vLLM server, its directory: the tokenizer the
random dataset draws token ids from), build the requests once, send `--warmup` requests and
discard them, then run every point of the sweep on the same requests. A point is one
arrival schedule (all at once, a concurrency limit, or a request rate with Poisson/gamma
arrivals); around it the servers' Prometheus `/metrics` are scraped. After each point the
result document (`serve.json`) and table (`serve.csv`) are rewritten whole, so a failure or
Ctrl-C in a later point loses nothing measured before it.

A sweep is the cross product of `--request-rate` and `--max-concurrency`, rates outer, in
the order given: `--request-rate 1,4 --max-concurrency 8,16` runs 1/8, 1/16, 4/8, 4/16. A rate
of inf is all at once; with a concurrency limit that is a closed loop (fixed concurrency).
`--sweep N` instead sweeps to saturation (`bench.sweep`): one request at a time, all at
once, then N rates in between, and names the knee.

Latency counts from the scheduled send (see `bench.metrics`); in a closed loop a request is
scheduled when it gets its slot, so the figures then match `vllm bench serve`'s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from hpcinfer.bench import arrivals, prometheus, sweep
from hpcinfer.bench.metrics import DEFAULT_PERCENTILES, LATENCY_METRICS, percentile_key, summarize
from hpcinfer.bench.results import result_document, write_result, write_table
from hpcinfer.core.server_probe import ProbeError, check_servers, list_models
from hpcinfer.errors import HpcinferError, InputError, SpecError

CHECK_TIMEOUT_S = 10.0
DEFAULT_RANDOM_PROMPTS = 1000
_MAX_LINE_ERRORS_KEPT = 50


class BenchError(HpcinferError):
    """The benchmark could not measure anything: servers unreachable, or no request
    succeeded. The message names the URL or the errors seen."""

    exit_code = 1


# ---------------------------------------------------------------------------------------
# the sweep


@dataclass(frozen=True)
class LoadPoint:
    """One point of a sweep: a request rate (inf = all at once) and a concurrency limit."""

    rate: float = math.inf
    max_concurrency: int | None = None

    @property
    def mode(self) -> str:
        """'all-at-once', 'concurrency' (closed loop) or 'rate' (open loop), as results.py
        names the load modes."""
        if math.isinf(self.rate):
            return "all-at-once" if self.max_concurrency is None else "concurrency"
        return "rate"

    @property
    def label(self) -> str:
        """A short name for tables: 'rate=2', 'concurrency=8', 'rate=2,concurrency=8'."""
        parts = []
        if not math.isinf(self.rate):
            parts.append(f"rate={self.rate:g}")
        if self.max_concurrency is not None:
            parts.append(f"concurrency={self.max_concurrency}")
        return ",".join(parts) or "all-at-once"

    def schedule(self, count: int, burstiness: float, seed: int) -> arrivals.Schedule:
        return arrivals.fixed_rate(
            count, self.rate, burstiness, seed=seed, max_concurrency=self.max_concurrency
        )


SYNCHRONOUS_POINT = LoadPoint(math.inf, 1)
THROUGHPUT_POINT = LoadPoint(math.inf, None)


def sweep_points(rates: Sequence[float], concurrencies: Sequence[int | None]) -> list[LoadPoint]:
    """The cross product of rates and concurrency limits, rates outer, in the order given;
    an empty list stands for its default (all at once / no limit)."""
    return [
        LoadPoint(rate, limit)
        for rate in (rates or [math.inf])
        for limit in (concurrencies or [None])
    ]


# ---------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class ServeBenchOptions:
    """Everything `hpcinfer bench serve` was asked for, validated by the CLI.

    `api_key` is the key itself (read from the variable `api_key_env` names): it is sent in
    the Authorization header and never written into any result or message.
    """

    out_dir: Path
    urls: tuple[str, ...] = ()
    registry: Path | None = None
    model: str | None = None
    api: Literal["completions", "chat"] = "completions"
    dataset: str = "random"
    """random, or an input file (read like `inputs`)."""
    inputs: tuple[str, ...] = ()
    """Input files, directories or globs, read as `hpcinfer run` reads them."""
    input_format: str | None = None
    prompt_field: str | None = None
    template: str | None = None
    """A prompt template (text, or @file.j2), as `run --template`."""
    max_tokens_field: str = "max_tokens"
    input_len: int = 1024
    output_len: int = 128
    num_prompts: int | None = None
    """Requests per point (default: 1000 random prompts, or each input prompt once); a
    smaller input is cycled through to reach it."""
    range_ratio: float = 0.0
    rates: tuple[float, ...] = (math.inf,)
    burstiness: float = 1.0
    concurrencies: tuple[int | None, ...] = (None,)
    dataset_seed: int = 0
    """Seed of the random prompts, their lengths and the arrival times (not of sampling)."""
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    slo: Mapping[str, float] | None = None
    tokenizer: Path | None = None
    vocab_size: int | None = None
    warmup: int = 0
    timeout_s: float = 600.0
    temperature: float = 0.0
    ignore_eos: bool = True
    """Greedy, exact lengths by default: every request generates --output-len tokens."""
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    """The sampling seed sent with every request, as `run --seed` (None: not sent)."""
    stop: tuple[str, ...] = ()
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    command: tuple[str, ...] = ()
    """The command line the result file records (the CLI passes its argv)."""
    sweep: int | None = None
    """Sweep to saturation with this many rates between the synchronous and throughput
    runs (`bench.sweep`) instead of the rates and concurrencies given."""

    @property
    def points(self) -> list[LoadPoint]:
        if self.sweep is not None:
            return [SYNCHRONOUS_POINT]
        return sweep_points(self.rates, self.concurrencies)

    @property
    def input_patterns(self) -> list[str]:
        """The inputs to read (`--dataset FILE` is one more); empty for random prompts."""
        return [*self.inputs, *([self.dataset] if self.dataset != "random" else [])]

    def config(self) -> dict[str, Any]:
        """The options as the result file records them (JSON-safe; the key is left out)."""
        return {
            "urls": list(self.urls),
            "registry": str(self.registry) if self.registry else None,
            "model": self.model,
            "api": self.api,
            "dataset": self.dataset,
            "inputs": self.input_patterns,
            "format": self.input_format,
            "prompt_field": self.prompt_field,
            "template": self.template,
            "max_tokens_field": self.max_tokens_field,
            "input_len": None if self.input_patterns else self.input_len,
            "output_len": self.output_len,
            "num_prompts": self.num_prompts,
            "range_ratio": self.range_ratio,
            "request_rates": [None if math.isinf(r) else r for r in self.rates],
            "burstiness": None if math.isinf(self.burstiness) else self.burstiness,
            "max_concurrencies": list(self.concurrencies),
            "dataset_seed": self.dataset_seed,
            "percentiles": list(self.percentiles),
            "slo": dict(self.slo) if self.slo else None,
            "tokenizer": str(self.tokenizer) if self.tokenizer else None,
            "vocab_size": self.vocab_size,
            "warmup": self.warmup,
            "timeout_s": self.timeout_s,
            "temperature": self.temperature,
            "ignore_eos": self.ignore_eos,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": list(self.stop),
            "api_key_env": self.api_key_env,
            "sweep_rates": self.sweep,
        }


# ---------------------------------------------------------------------------------------
# what the user sees while it runs (the CLI renders; tests pass a silent one)


class Reporter(Protocol):
    def note(self, message: str) -> None:
        """A one-line message (targets found, warm-up done, dataset line errors)."""

    def point_started(self, index: int, total: int, point: LoadPoint, requests: int) -> None:
        """Point `index` (1-based) of `total` begins."""

    def progress(self, done: int, total: int) -> None:
        """Requests of the current point finished (ok or not) so far."""

    def point_finished(self, run: Mapping[str, Any]) -> None:
        """The point's `runs` entry, as written to serve.json."""


class SilentReporter:
    def note(self, message: str) -> None:
        pass

    def point_started(self, index: int, total: int, point: LoadPoint, requests: int) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass

    def point_finished(self, run: Mapping[str, Any]) -> None:
        pass


# ---------------------------------------------------------------------------------------
# targets, model, tokenizer


@dataclass(frozen=True)
class ServedModel:
    """The model the benchmark asks for and, when the server says, where it was loaded from
    (vLLM's `root`: the model directory, for a local model the tokenizer's too)."""

    name: str
    root: str | None


def resolve_endpoints(urls: Sequence[str], registry: Path | None, cwd: Path) -> list[str]:
    """The base URLs to load: --url ones first, then the registry's usable (ready) entries,
    without duplicates; the same rules and messages as `hpcinfer run --engine openai`."""
    from hpcinfer.engines.targets import resolve_targets
    from hpcinfer.spec import JobSpec

    if not urls and registry is None:
        raise SpecError(
            "bench serve needs servers: --url http://HOST:PORT (repeatable) or --endpoints "
            "endpoints.json (from `hpcinfer serve`)"
        )
    client: dict[str, Any] = {"urls": list(urls)}
    if registry is not None:
        client["registry"] = str(registry)
    spec = JobSpec.model_validate({"client": client, "engine": {"kind": "openai"}})
    return [target.url for target in resolve_targets(spec, cwd).endpoints]


def reachable(
    urls: Sequence[str], given: Sequence[str], api_key: str | None, model: str | None
) -> tuple[list[str], list[str]]:
    """The endpoints that answer /health and /v1/models now (and serve `model`, when given),
    and a note for each registry endpoint left out because it does not. A `--url` the user
    `given` that does not answer is a BenchError naming it, as is having none left."""
    checks = check_servers([(url, model) for url in urls], api_key)
    explicit = {u.rstrip("/") for u in given}
    down = [(url, c.error) for url, c in zip(urls, checks, strict=True) if not c.up]
    named = [f"{url} ({error})" for url, error in down if url in explicit]
    if named or len(down) == len(checks):
        listed = named or [f"{url} ({error})" for url, error in down]
        raise BenchError(
            f"cannot reach {'; '.join(listed)}: check the URL and that the server is up "
            "(`hpcinfer endpoints --url URL`), or leave it out"
        )
    notes = [f"left out {url}: the registry lists it, but {error}" for url, error in down]
    return [url for url, c in zip(urls, checks, strict=True) if c.up], notes


def served_model(url: str, api_key: str | None, wanted: str | None) -> ServedModel:
    """The model to benchmark: `wanted`, or the first id the server lists in /v1/models."""
    try:
        cards = list_models(url, CHECK_TIMEOUT_S, api_key)
    except ProbeError as exc:
        if wanted:
            return ServedModel(wanted, None)
        raise BenchError(
            f"{url}/v1/models did not list the served model ({exc.reason}); pass --model NAME"
        ) from None
    if wanted is None:
        if not cards:
            raise BenchError(f"{url}/v1/models lists no model; pass --model NAME")
        wanted = str(cards[0]["id"])
    root = next((card.get("root") for card in cards if card.get("id") == wanted), None)
    return ServedModel(wanted, str(root) if root else None)


def tokenizer_source(options: ServeBenchOptions, model: ServedModel) -> Path | int:
    """Where the random dataset's token ids come from: --tokenizer, else the served model's
    directory when it exists here, else --vocab-size; else a SpecError saying so."""
    return token_id_source(options.tokenizer, options.vocab_size, model, "--dataset random")


def token_id_source(
    tokenizer: Path | None, vocab_size: int | None, model: ServedModel, user: str
) -> Path | int:
    """Where random token-id prompts draw their ids from: `tokenizer` (a directory), else
    `vocab_size`, else the served model's directory when it exists here; else a SpecError
    naming `user` (what wants the ids) and the flags that fix it."""
    if tokenizer is not None:
        if not tokenizer.is_dir():
            raise SpecError(
                f"--tokenizer {tokenizer}: not a directory; give the model's "
                "directory (with tokenizer.json or tokenizer_config.json)"
            )
        return tokenizer
    if vocab_size is not None:
        return vocab_size
    if model.root and Path(model.root).is_dir():
        return Path(model.root)
    where = (
        f"its model directory {model.root!r} is not on this machine"
        if model.root
        else ("the server does not say where its model is")
    )
    raise SpecError(
        f"{user} draws token ids from the model's tokenizer, and {where}: pass "
        "--tokenizer DIR (the model's directory) or --vocab-size N"
    )


# ---------------------------------------------------------------------------------------
# the dataset


@dataclass(frozen=True)
class Workload:
    """The requests every point sends, and what the dataset reader said about its input."""

    requests: list[Any]
    description: str
    line_errors: list[str]


def build_workload(options: ServeBenchOptions, model: ServedModel, cwd: Path) -> Workload:
    """The requests every point sends: random token ids, or the input files' prompts (bad
    records skipped and listed as file:line, relative to `cwd`), cycled through when there
    are fewer than --num-prompts."""
    from hpcinfer.bench import dataset

    if not options.input_patterns:
        source = tokenizer_source(options, model)
        if isinstance(source, Path):
            vocab: list[int] | int = dataset.vocabulary(str(source))
            where = f"tokenizer {source}"
        else:
            vocab = source
            where = f"ids below {source}"
        requests = dataset.random_requests(
            options.num_prompts or DEFAULT_RANDOM_PROMPTS,
            options.input_len,
            options.output_len,
            vocab,
            seed=options.dataset_seed,
            range_ratio=options.range_ratio,
        )
        text = (
            f"random: {len(requests)} prompts of {options.input_len} tokens ({where}), "
            f"{options.output_len} output tokens"
        )
        return Workload(list(requests), text, [])
    return _file_workload(options, cwd)


def _file_workload(options: ServeBenchOptions, cwd: Path) -> Workload:
    from hpcinfer.bench import dataset
    from hpcinfer.inputs.paths import display_name, expand_inputs
    from hpcinfer.inputs.template import PromptTemplate
    from hpcinfer.inputs.template_check import check_template

    files = expand_inputs(options.input_patterns, cwd=cwd)
    template = PromptTemplate.from_option(options.template)
    check_template(template, files, cwd=cwd, fmt=options.input_format)
    found = dataset.file_requests(
        files,
        options.output_len,
        fmt=options.input_format,
        prompt_field=options.prompt_field,
        template=template,
        max_tokens_field=options.max_tokens_field or None,
        limit=options.num_prompts,
        cwd=cwd,
    )
    names = ", ".join(display_name(f, cwd) for f in files)
    errors = found.errors
    if not found.requests:
        detail = f": {errors[0]}" if errors else ""
        raise InputError(
            f"{names}: no usable prompt{detail}; give each record a prompt (a text line, a "
            '"prompt" or "messages" field, --prompt-field NAME or --template)'
        )
    prompts = len(found.requests)
    wanted = options.num_prompts or prompts
    requests = dataset.cycled(found.requests, wanted)
    if wanted > prompts:
        counted = f"{wanted} requests from {prompts} prompt{'s' if prompts != 1 else ''}, cycled"
    else:
        counted = f"{wanted} prompt{'s' if wanted != 1 else ''}"
    chats = sum(1 for r in requests if r.api == "chat")
    if chats and chats < len(requests):
        counted += f" ({chats} chat)"
    elif chats:
        counted += " (chat)"
    text = f"{names}: {counted}, {options.output_len} output tokens unless a record sets its own"
    if errors:
        text += f" ({len(errors)} bad record{'s' if len(errors) != 1 else ''} skipped)"
    return Workload(requests, text, errors)


# ---------------------------------------------------------------------------------------
# one point, and the sweep


def _load(
    endpoints: Sequence[str],
    requests: Sequence[Any],
    schedule: arrivals.Schedule,
    load_options: Any,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """run_load, with a request the chosen API cannot carry reported as a bad option."""
    from hpcinfer.bench.loadgen import run_load

    try:
        return run_load(endpoints, requests, schedule, load_options, progress=progress)
    except ValueError as exc:
        raise SpecError(f"{exc} (--api {load_options.api})") from None


def run_point(
    point: LoadPoint,
    endpoints: Sequence[str],
    workload: Workload,
    options: ServeBenchOptions,
    load_options: Any,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Send the workload on the point's schedule; the point's `runs` entry."""
    schedule = point.schedule(len(workload.requests), options.burstiness, options.dataset_seed)
    before = prometheus.scrape(endpoints, api_key=options.api_key)
    result = _load(endpoints, workload.requests, schedule, load_options, progress)
    after = prometheus.scrape(endpoints, api_key=options.api_key)
    metrics = summarize(
        list(result.timings), result.duration_s, options.percentiles, options.slo,
        from_scheduled=True,
    )  # fmt: skip
    return {
        "label": point.label,
        "load": {
            "mode": point.mode,
            "rate": None if math.isinf(point.rate) else point.rate,
            "burstiness": None if math.isinf(options.burstiness) else options.burstiness,
            "max_concurrency": point.max_concurrency,
            "requests": len(schedule),
            "description": schedule.describe(),
        },
        "metrics": metrics,
        "server_metrics": prometheus.server_metrics(before, after),
        "errors": dict(result.errors),
    }


def latency_stats(percentiles: Sequence[float]) -> list[str]:
    """The statistics a table shows per latency: mean, the median (unless p50 is among the
    percentiles: it is the same figure, shown once as p50) and each chosen percentile."""
    median = [] if 50 in percentiles else ["median"]
    return ["mean", *median, *(percentile_key(p) for p in percentiles)]


def csv_columns(percentiles: Sequence[float]) -> list[str]:
    """serve.csv's header: the load, counts, throughputs, then per latency the
    `latency_stats`."""
    columns = [
        "label", "mode", "rate", "burstiness", "max_concurrency", "requests", "completed",
        "failed", "duration", "request_throughput", "output_throughput",
        "total_token_throughput", "request_goodput",
    ]  # fmt: skip
    stats = latency_stats(percentiles)
    for name in LATENCY_METRICS:
        columns += [f"{stat}_{name}_ms" for stat in stats]
    return columns


def csv_row(run: Mapping[str, Any]) -> dict[str, Any]:
    return {**run["metrics"], **run["load"], "label": run["label"]}


def write_outputs(
    options: ServeBenchOptions,
    config: Mapping[str, Any],
    runs: list[Any],
    sweep: Mapping[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """serve.json and serve.csv with every point measured so far (the CSV first: a reader
    that sees the JSON then finds a table at least as new); `sweep` is a sweep to
    saturation's plan and knee."""
    body: dict[str, Any] = {"runs": runs}
    if sweep is not None:
        body["sweep"] = dict(sweep)
    document = result_document("serve", config, body, options.command)
    write_table(
        options.out_dir / "serve.csv", [csv_row(r) for r in runs], csv_columns(options.percentiles)
    )
    return write_result(options.out_dir, document), document


@dataclass
class ServeBenchResult:
    """The result document and how the requests fared: every one succeeded ("ok"), some
    failed ("some_failed"), none succeeded ("none_succeeded", `message` says why)."""

    document: dict[str, Any]
    path: Path
    outcome: Literal["ok", "some_failed", "none_succeeded"]
    message: str | None = None
    """Why nothing succeeded, naming the errors seen."""


def _config(
    options: ServeBenchOptions,
    endpoints: Sequence[str],
    left_out: Sequence[str],
    model: ServedModel,
    workload: Workload,
) -> dict[str, Any]:
    """The result's `config`: the options, and what they resolved to."""
    return {
        **options.config(),
        "endpoints": list(endpoints),
        "endpoints_left_out": list(left_out),
        "model": model.name,
        "model_root": model.root,
        "workload": workload.description,
        "dataset_errors": {
            "count": len(workload.line_errors),
            "first": workload.line_errors[:_MAX_LINE_ERRORS_KEPT],
        },
        "sweep": "cross product of request rates (outer) and max concurrencies, in order",
        "latency_origin": "scheduled send time",
    }


def _warm_up(
    options: ServeBenchOptions,
    endpoints: Sequence[str],
    workload: Workload,
    load_options: Any,
    report: Reporter,
) -> None:
    """--warmup requests (the workload's first, repeated as needed) at the first point's
    concurrency limit, all at once; their figures are discarded."""
    warm = [workload.requests[i % len(workload.requests)] for i in range(options.warmup)]
    first = options.points[0].max_concurrency
    result = _load(endpoints, warm, arrivals.all_at_once(len(warm), first), load_options)
    failed = sum(1 for timing in result.timings if not timing.ok)
    report.note(
        f"warm-up: {len(warm)} requests sent and discarded"
        + (f" ({failed} failed: {', '.join(result.errors)})" if failed else "")
    )


def _outcome(document: dict[str, Any], path: Path) -> ServeBenchResult:
    runs = document["runs"]
    completed = sum(run["metrics"]["completed"] for run in runs)
    failed = sum(run["metrics"]["failed"] for run in runs)
    if completed:
        return ServeBenchResult(document, path, "some_failed" if failed else "ok")
    seen: Counter[str] = Counter()
    for run in runs:
        seen.update(run["errors"])
    top = "; ".join(f"{count} x {message}" for message, count in seen.most_common(3))
    message = (
        f"no request succeeded ({failed} failed: {top or 'no error recorded'}); results in {path}"
    )
    return ServeBenchResult(document, path, "none_succeeded", message)


def run_serve_bench(
    options: ServeBenchOptions, cwd: Path, reporter: Reporter | None = None
) -> ServeBenchResult:
    """The whole benchmark. Raises SpecError/InputError (exit 2) for bad options or dataset
    and BenchError (exit 1) when the servers cannot be reached. With results written, the
    result says whether every request, some or none succeeded."""
    from hpcinfer.bench.loadgen import LoadOptions

    report = reporter or SilentReporter()
    listed = resolve_endpoints(options.urls, options.registry, cwd)
    endpoints, left_out = reachable(listed, options.urls, options.api_key, options.model)
    for message in left_out:
        report.note(message)
    model = served_model(endpoints[0], options.api_key, options.model)
    workload = build_workload(options, model, cwd)
    report.note(
        f"{len(endpoints)} endpoint{'s' if len(endpoints) != 1 else ''} "
        f"({', '.join(endpoints)}), model {model.name}; {workload.description}"
    )
    for error in workload.line_errors[:_MAX_LINE_ERRORS_KEPT]:
        report.note(f"skipped {error}")
    load_options = LoadOptions(
        model=model.name,
        api=options.api,
        ignore_eos=options.ignore_eos,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        seed=options.seed,
        stop=options.stop,
        timeout_s=options.timeout_s,
        api_key=options.api_key,
    )
    config = _config(options, endpoints, left_out, model, workload)
    if options.warmup > 0:
        _warm_up(options, endpoints, workload, load_options, report)

    if options.sweep is not None:
        return _run_sweep(options, config, endpoints, workload, load_options, report)
    runs: list[dict[str, Any]] = []
    points = options.points
    for index, point in enumerate(points, start=1):
        report.point_started(index, len(points), point, len(workload.requests))
        runs.append(run_point(point, endpoints, workload, options, load_options, report.progress))
        path, document = write_outputs(options, config, runs)
        report.point_finished(runs[-1])
    return _outcome(document, path)


def _run_sweep(
    options: ServeBenchOptions,
    config: Mapping[str, Any],
    endpoints: Sequence[str],
    workload: Workload,
    load_options: Any,
    report: Reporter,
) -> ServeBenchResult:
    """Synchronous, throughput, then the rates between them (planned from those two); the
    knee is found again after every rate point, so the file always holds the latest."""
    count = options.sweep or sweep.DEFAULT_RATES
    total = 2 + count
    runs: list[dict[str, Any]] = []
    plan: dict[str, Any] = {
        "profile": "sweep",
        "arrivals": arrivals.shape(options.burstiness),
    }

    def measure(point: LoadPoint, role: str) -> tuple[Path, dict[str, Any]]:
        report.point_started(len(runs) + 1, total, point, len(workload.requests))
        run = run_point(point, endpoints, workload, options, load_options, report.progress)
        run["load"]["role"] = role
        runs.append(run)
        rated = [r for r in runs if r["load"]["role"] == sweep.RATE]
        if rated:
            plan["knee"] = sweep.find_knee(
                [{"label": _rate_label(r), "rate": r["load"]["rate"], "metrics": r["metrics"]}
                 for r in rated],
                runs[0]["metrics"],
                options.slo,
            )  # fmt: skip
        written = write_outputs(options, config, runs, plan)
        report.point_finished(run)
        return written

    path, document = measure(SYNCHRONOUS_POINT, sweep.SYNCHRONOUS)
    path, document = measure(THROUGHPUT_POINT, sweep.THROUGHPUT)
    plan["synchronous_rate"] = runs[0]["metrics"]["request_throughput"]
    plan["throughput_rate"] = runs[1]["metrics"]["request_throughput"]
    try:
        rates = sweep.sweep_rates(plan["synchronous_rate"], plan["throughput_rate"], count)
    except ValueError as exc:
        outcome = _outcome(document, path)
        if outcome.outcome == "none_succeeded":
            return outcome
        raise BenchError(f"the sweep cannot go on: {exc}; results so far in {path}") from None
    plan["rates"] = rates
    total = 2 + len(rates)
    report.note(
        f"sweep: synchronous {plan['synchronous_rate']:.3g} req/s, throughput "
        f"{plan['throughput_rate']:.3g} req/s; rates {', '.join(f'{r:g}' for r in rates)}"
    )
    for rate in rates:
        path, document = measure(LoadPoint(rate, None), sweep.RATE)
    return _outcome(document, path)


def _rate_label(run: Mapping[str, Any]) -> str:
    return f"{run['load']['rate']:g} req/s"
