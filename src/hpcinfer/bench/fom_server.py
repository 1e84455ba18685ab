"""`hpcinfer bench fom --url URL | --endpoints FILE`: the ALCF inference FOM on a running server.

The FOM's figures are those of `bench fom` on its own engines (`bench.fom_bench`): each
case's batch of `batch_size` requests is sent at once, and its end-to-end latency L runs from
the first send to the end of the last answer; throughput = (input + output tokens) / L;
FOM = the sum over the cases. Over the OpenAI API that takes:

- exact input lengths: each prompt is `input_len` random token ids (from the model's
  tokenizer, special ids excluded, fresh for every request and iteration, as `bench serve`
  and the offline engines draw them), sent as ids on /v1/completions, so the server sees
  exactly that many tokens and no prefix cache serves one iteration from another;
- exact output lengths: `max_tokens` = `min_tokens` = `output_len` with `ignore_eos`;
- proof of both: every answer's usage (`prompt_tokens`, `completion_tokens`) must equal the
  case's lengths, or the run stops with an error naming the case and the request;
- the case's context: a case is measured at its own max-model-len, so every case's must
  equal the server's (`max_model_len` of /v1/models), checked before anything is sent.

One server is measured (the FOM is a figure of one served model): `--url`, or the one ready
entry of a registry. What the OpenAI API does not say (the server's dtype, TP and PP) is
null in fom.json and an empty cell in the FOM's CSV; the FLOP form needs the model's
config.json, read from the server's model directory when it is on this machine; MFU needs
`--peak-tflops` and the devices the registry lists for the server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.bench import arrivals
from hpcinfer.bench.dataset import BenchRequest
from hpcinfer.bench.fom import FomCase, ModelShape
from hpcinfer.bench.fom_bench import FomOutcome, fom_case_figures, resolve_cases, write_fom
from hpcinfer.bench.offline import BenchSettings, Progress, fom_csv_tables, shape_from_config
from hpcinfer.bench.samples import IterationSample, RequestSample
from hpcinfer.bench.serve_bench import (
    CHECK_TIMEOUT_S,
    BenchError,
    ServedModel,
    reachable,
    resolve_endpoints,
    token_id_source,
)
from hpcinfer.errors import SpecError

DEFAULT_TIMEOUT_S = 3600.0
PROMPTS = (
    "random token ids (special ids excluded), exactly input_len per request, fresh for "
    "every request and iteration (seeded), sent as ids to /v1/completions; ignore_eos, "
    "max_tokens = min_tokens = output_len; lengths checked against each answer's usage"
)
ENGINE_FIELDS = {
    "dtype": "--dtype",
    "max_model_len": "engine.max_model_len",
    "tensor_parallel_size": "--tp",
    "memory_share": "--memory-share",
    "kv_cache_bytes": "--kv-cache-bytes",
    "max_num_seqs": "--max-num-seqs",
    "trust_remote_code": "--trust-remote-code",
    "enforce_eager": "--enforce-eager",
    "extra": "--set engine.extra",
    "lora_adapters": "--set engine.lora_adapters",
}
"""The engine settings a running server already has, by the flag that would set them."""


@dataclass(frozen=True)
class FomServer:
    """The running OpenAI-compatible server `bench fom` measures instead of starting engines:
    `urls` (one) or an endpoints `registry` (its one ready entry); `model` the served name
    (default: the first it lists); where the prompts' token ids come from (`tokenizer`, a
    model directory, or `vocab_size`; default: the server's model directory, when on this
    machine); `api_key_env` names the variable holding the key; `timeout_s` bounds one
    request."""

    urls: tuple[str, ...] = ()
    registry: Path | None = None
    model: str | None = None
    tokenizer: Path | None = None
    vocab_size: int | None = None
    api_key_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    api_key: str | None = field(default=None, repr=False, compare=False)
    """The key itself; None: read from `api_key_env` (default $OPENAI_API_KEY)."""


@dataclass(frozen=True)
class ServerFacts:
    """The measured server as it describes itself (and as the registry lists it)."""

    url: str
    model: str
    root: str | None
    max_model_len: int
    node: str | None = None
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerBasis:
    """MFU against a server: the peak (--peak-tflops) and the devices the registry lists."""

    peak_tflops: float | None
    devices: int
    note: str


def refuse_engine_settings(settings: BenchSettings) -> None:
    """A SpecError naming every engine setting given: a running server has its own."""
    engine = settings.spec.engine
    given = [ENGINE_FIELDS[name] for name in ENGINE_FIELDS if name in engine.model_fields_set]
    if "kind" in engine.model_fields_set:
        given.append("--set engine.kind")
    if settings.pp != 1:
        given.append("--pp")
    if "profile" in settings.spec.workers.model_fields_set:
        given.append("--profile")
    if given:
        raise SpecError(
            f"bench fom --url/--endpoints measures a server that is already running, with "
            f"the engine it was started with: drop {', '.join(given)} (they configure the "
            "engines bench fom starts without a server; set them on `hpcinfer serve`)"
        )


def check_settings(server: FomServer) -> None:
    if server.tokenizer is not None and server.vocab_size is not None:
        raise SpecError("--tokenizer and --vocab-size: give one of them, not both")
    if server.vocab_size is not None and server.vocab_size < 2:
        raise SpecError(f"--vocab-size {server.vocab_size}: give 2 or more")
    if not server.timeout_s > 0:
        raise SpecError(f"--timeout {server.timeout_s:g}: give the seconds one request may take")


def find_server(server: FomServer, cwd: Path, api_key: str | None) -> ServerFacts:
    """The one server to measure, answering now, with its model and max-model-len."""
    from hpcinfer.core.endpoints_registry import read_registry
    from hpcinfer.core.server_probe import ProbeError, list_models

    registry = server.registry
    if registry is not None and not registry.is_absolute():
        registry = cwd / registry
    listed = resolve_endpoints(server.urls, registry, cwd)
    if len(listed) > 1:
        raise SpecError(
            f"bench fom measures one server, and {len(listed)} are given ({', '.join(listed)}): "
            "pass --url with the one to measure"
        )
    (url,), _ = reachable(listed, server.urls, api_key, server.model)
    try:
        cards = list_models(url, CHECK_TIMEOUT_S, api_key)
    except ProbeError as exc:
        raise BenchError(f"{url}/v1/models: {exc.reason}") from None
    card = next((c for c in cards if server.model is None or c.get("id") == server.model), None)
    if card is None:
        raise BenchError(f"{url}/v1/models lists no model; is the server starting?")
    length = card.get("max_model_len")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise BenchError(
            f"{url}/v1/models does not say the model's max_model_len (vLLM does): bench fom "
            "measures each case at its own max-model-len and cannot check the server's"
        )
    entry = None
    if registry is not None:
        entry = next((e for e in read_registry(registry) if e.url == url), None)
    root = card.get("root")
    return ServerFacts(
        url=url,
        model=str(card["id"]),
        root=str(root) if root else None,
        max_model_len=length,
        node=entry.node if entry is not None and entry.node else None,
        devices=tuple(entry.devices) if entry is not None else (),
    )


def check_contexts(cases: Sequence[FomCase], facts: ServerFacts) -> None:
    """Every case's max-model-len is the server's, or a SpecError naming the cases that
    differ and what to do (before anything is sent)."""
    other = [case for case in cases if case.max_model_len != facts.max_model_len]
    if not other:
        return
    named = "; ".join(f"{case.name} needs max-model-len {case.max_model_len}" for case in other)
    fitting = [case.name for case in cases if case.max_model_len == facts.max_model_len]
    fix = (
        f"run the cases that match with --only {','.join(fitting)}, and the others on a "
        "server started with their --max-model-len"
        if fitting
        else "start the server with the cases' --max-model-len, or give cases of its length"
    )
    raise SpecError(
        f"{named}; the server at {facts.url} serves max-model-len {facts.max_model_len}: a "
        f"FOM case is measured at its own context length, so {fix}"
    )


def model_config(root: str | None) -> tuple[dict[str, Any] | None, str]:
    """The served model's config.json when its directory is on this machine, else None and
    why not (the FLOP form needs its layers and hidden size)."""
    if not root:
        return None, "FLOP FOM n/a: the server does not say where its model is"
    if not Path(root).is_dir():
        return None, (
            f"FLOP FOM n/a: the server's model directory {root!r} is not on this machine "
            "(its config.json gives the layers and hidden size)"
        )
    path = Path(root) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"FLOP FOM n/a: cannot read the server's model config {path} ({exc})"
    if not isinstance(config, dict):
        return None, f"FLOP FOM n/a: {path} is not a JSON object"
    return config, ""


def model_shape_of(root: str | None) -> tuple[ModelShape | None, str]:
    config, why = model_config(root)
    return shape_from_config(config) if config is not None else (None, why)


def mfu_basis(settings: BenchSettings, facts: ServerFacts) -> ServerBasis:
    peak, devices = settings.peak_tflops, len(facts.devices)
    if peak is None:
        return ServerBasis(None, max(devices, 1), "MFU n/a: give --peak-tflops (per device)")
    if devices == 0:
        return ServerBasis(
            None, 1, "MFU n/a: the server's devices are not known (pass --endpoints, whose "
            "registry lists them, instead of --url)"
        )  # fmt: skip
    return ServerBasis(
        peak, devices, f"MFU against {peak:g} TFLOPS per device (--peak-tflops) x {devices} "
        "devices the registry lists"
    )  # fmt: skip


def prompt_ids(server: FomServer, facts: ServerFacts) -> tuple[list[int], str]:
    """The token ids prompts draw from, and where they came from."""
    from hpcinfer.bench.dataset import vocabulary

    source = token_id_source(
        server.tokenizer, server.vocab_size, ServedModel(facts.model, facts.root), "bench fom"
    )
    if isinstance(source, int):
        return list(range(source)), f"ids below {source}"
    return vocabulary(str(source)), f"tokenizer {source}"


def check_answers(case: FomCase, what: str, result: Any) -> None:
    """Every request of one batch answered with exactly the case's lengths (its usage), or a
    BenchError naming the case, the iteration and the request."""
    failed = [t for t in result.timings if not t.ok]
    if failed:
        raise BenchError(
            f"{case.name}: {what}: {len(failed)} of {case.batch_size} requests failed "
            f"({failed[0].error}); the FOM needs every request of the batch answered"
        )
    for j, timing in enumerate(result.timings):
        if timing.prompt_tokens != case.input_len:
            said = "reported no usage" if timing.prompt_tokens == 0 else "counted"
            raise BenchError(
                f"{case.name}: {what}, request {j}: the server {said} {timing.prompt_tokens} "
                f"prompt tokens (usage.prompt_tokens), not exactly {case.input_len}"
            )
        if timing.output_tokens != case.output_len:
            raise BenchError(
                f"{case.name}: {what}, request {j}: the server generated "
                f"{timing.output_tokens} tokens (usage.completion_tokens), not exactly "
                f"{case.output_len}: a short answer is not the case's batch (the server must "
                "honour ignore_eos and min_tokens, as vLLM does)"
            )


def run_batch(
    facts: ServerFacts,
    case: FomCase,
    allowed: Sequence[int],
    key: str,
    what: str,
    options: Any,
) -> IterationSample:
    """One batch of the case sent at once; its latency (first send -> last answer ended)
    and each request's times after the send."""
    from hpcinfer.bench.loadgen import run_load
    from hpcinfer.engines.batch_steps import random_prompts

    prompts = random_prompts(allowed, case.batch_size, case.input_len, key)
    requests = [
        BenchRequest(source=f"{case.name} {key} request {j}", output_len=case.output_len,
                     prompt=prompt)
        for j, prompt in enumerate(prompts)
    ]  # fmt: skip
    result = run_load([facts.url], requests, arrivals.all_at_once(len(requests)), options)
    check_answers(case, what, result)
    start = result.start_s
    return IterationSample(
        latency_s=result.duration_s,
        requests=tuple(
            RequestSample(
                ttft_s=(t.first_token_s or start) - start,
                e2e_s=(t.end_s or start) - start,
                prompt_tokens=t.prompt_tokens,
                output_tokens=t.output_tokens,
            )
            for t in result.timings
        ),
    )


def run_case(
    settings: BenchSettings,
    server: FomServer,
    facts: ServerFacts,
    case: FomCase,
    allowed: Sequence[int],
    api_key: str | None,
    progress: Progress,
) -> list[IterationSample]:
    """The case's warm-up batches (discarded), then its timed ones."""
    from hpcinfer.bench.loadgen import LoadOptions

    options = LoadOptions(
        model=facts.model,
        api="completions",
        ignore_eos=True,
        temperature=settings.temperature,
        seed=settings.seed if settings.temperature > 0 else None,
        timeout_s=server.timeout_s,
        api_key=api_key,
        extra_body={"min_tokens": case.output_len},
        warm_connections=case.batch_size,
    )
    timed: list[IterationSample] = []
    for phase, count in (("warm-up", settings.warmup_iters), ("timed", settings.iters)):
        for index in range(1, count + 1):
            key = f"{settings.seed}/{case.name}/{phase}-{index}"
            what = f"{phase} iteration {index}"
            sample = run_batch(facts, case, allowed, key, what, options)
            progress(f"{case.name}: {phase} {index}/{count}: {sample.latency_s:.3f} s")
            if phase == "timed":
                timed.append(sample)
    return timed


def run_fom_on_server(
    settings: BenchSettings,
    server: FomServer,
    preset: str | None,
    case_texts: Sequence[str],
    progress: Progress,
    only: Sequence[str] = (),
) -> FomOutcome:
    """Every case on the server, one after the other; fom.json, fom.csv (and the FOM's CSV
    rows), shaped as `bench fom` writes them with its own engines."""
    from hpcinfer.cluster import resolve_profile
    from hpcinfer.core.api_keys import resolve_api_key

    refuse_engine_settings(settings)
    check_settings(server)
    api_key = server.api_key or resolve_api_key(server.api_key_env)
    on_cpu = resolve_profile(None).is_cpu
    source, cases = resolve_cases(preset, case_texts, settings.spec.bench.fom_cases, on_cpu, only)
    copies = fom_csv_tables(settings)
    facts = find_server(server, settings.cwd, api_key)
    check_contexts(cases, facts)
    allowed, ids_from = prompt_ids(server, facts)
    progress(
        f"server {facts.url}: model {facts.model}, max-model-len {facts.max_model_len}; "
        f"FOM cases from {source}: " + ", ".join(case.name for case in cases)
    )
    shape, shape_note = model_shape_of(facts.root)
    basis = mfu_basis(settings, facts)
    measured = []
    for case in cases:
        iterations = run_case(settings, server, facts, case, allowed, api_key, progress)
        measured.append(fom_case_figures(case, iterations, shape, basis, settings.percentiles))
    config = {
        "model": facts.model,
        "model_path": facts.root,
        "precision": None,
        "tensor_parallel": None,
        "pipeline_parallel": None,
        "devices": len(facts.devices) or None,
        "server": {
            "url": facts.url,
            "registry": None if server.registry is None else str(server.registry),
            "node": facts.node,
            "devices": list(facts.devices),
            "max_model_len": facts.max_model_len,
            "not_reported": "the server's dtype, TP and PP (the OpenAI API does not say them)",
        },
        "warmup_iters": settings.warmup_iters,
        "iters": settings.iters,
        "seed": settings.seed,
        "temperature": settings.temperature,
        "percentiles": list(settings.percentiles),
        "prompts": f"{PROMPTS} ({ids_from})",
        "timeout_s": server.timeout_s,
        "peak_tflops": basis.peak_tflops,
        "mfu_note": basis.note,
        "flops_note": shape_note,
        "cases_from": source,
        "cases": [asdict(case) for case in cases],
    }
    return write_fom(settings, config, measured, [], copies, (facts.model, None, None))
