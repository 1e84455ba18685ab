"""`hpcinfer bench fom`: the ALCF inference FOM = FOM1 + FOM2 + FOM3, measured, with its FLOP form.

The cases come from, in this order of precedence: `--case NAME:IN:OUT:BATCH:MAXLEN`
(repeatable), the spec file's `bench.fom_cases`, or a named preset (`--preset`; by default
`cpu-tiny` on a CPU profile, `alcf-fom-405b` on accelerators). Each case is timed exactly as
`hpcinfer bench offline` times its batch (same engine, prompts, exact-length check and
figures). Cases sharing a max-model-len share one engine; engines start one after the
other, in the order the cases first name their context length, each in its own process.
`--only FOM1,FOM2` keeps just the cases named. With `--url` or `--endpoints` the cases run
on a server that is already running instead (`bench.fom_server`), with the same figures.

Results (see `bench.results`): `DIR/fom.json` (`cases` in the order given, each with the
documented keys plus `latency_stats`, `iterations_s`, prefill/decode rates and per-request
statistics; `fom` with the sum; `engines`), `DIR/fom.csv` (one row per case and a `FOM`
row with the sums), and with `--csv PATH` one FOM CSV row per case appended there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcinfer.bench.fom import (
    FomCase,
    FomResult,
    ModelShape,
    append_csv_row,
    fom_preset,
    fom_sum,
)
from hpcinfer.bench.offline import (
    BenchSettings,
    MfuBasis,
    Progress,
    base_config,
    case_csv_row,
    case_figures,
    engine_launch,
    fom_csv_tables,
    model_shape,
    resolve_bench_model,
    resolve_hardware,
    run_cases,
)
from hpcinfer.bench.offline_engine import BatchCase, EngineRun
from hpcinfer.bench.results import result_document, write_result, write_table
from hpcinfer.bench.samples import IterationSample
from hpcinfer.errors import SpecError

CPU_PRESET = "cpu-tiny"
ACCELERATOR_PRESET = "alcf-fom-405b"
CASE_FORM = "NAME:INPUT_LEN:OUTPUT_LEN:BATCH_SIZE:MAX_MODEL_LEN"

FOM_CSV_COLUMNS = (
    "case",
    "input_len",
    "output_len",
    "batch_size",
    "max_model_len",
    "latency_s",
    "input_tokens",
    "output_tokens",
    "throughput",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "flops_per_s",
    "mfu",
)
"""fom.csv: one row per case, then a `FOM` row holding the sums (throughput, flops_per_s)."""


def parse_case(text: str) -> FomCase:
    """'FOM1:3584:512:1:4096' -> FomCase; a SpecError naming --case and the form otherwise."""
    parts = text.split(":")
    if len(parts) != 5 or not parts[0].strip():
        raise SpecError(f"--case {text!r}: write {CASE_FORM}, e.g. FOM1:3584:512:1:4096")
    numbers: list[int] = []
    for label, raw in zip(CASE_FORM.split(":")[1:], parts[1:], strict=True):
        try:
            numbers.append(int(raw))
        except ValueError:
            raise SpecError(f"--case {text!r}: {label} {raw!r} is not a whole number") from None
    try:
        return FomCase(parts[0].strip(), *numbers)
    except ValueError as exc:
        raise SpecError(f"--case {text!r}: {exc}") from None


def resolve_cases(
    preset: str | None,
    case_texts: Sequence[str],
    spec_cases: Sequence[Any],
    on_cpu: bool,
    only: Sequence[str] = (),
) -> tuple[str, tuple[FomCase, ...]]:
    """(where the cases came from, the cases): --case, else the spec, else the preset; with
    `only` (--only) just the cases of those names, in their source's order."""
    if case_texts and preset is not None:
        raise SpecError("give --preset or --case, not both (--case replaces a preset's cases)")
    if case_texts:
        source, cases = "--case", tuple(parse_case(text) for text in case_texts)
    elif spec_cases and preset is None:
        source = "spec bench.fom_cases"
        cases = tuple(_spec_case(i, case) for i, case in enumerate(spec_cases))
    else:
        name = preset or (CPU_PRESET if on_cpu else ACCELERATOR_PRESET)
        try:
            cases = fom_preset(name).cases
        except ValueError as exc:
            raise SpecError(f"--preset: {exc}") from None
        source = f"preset {name}"
    names = [case.name for case in cases]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SpecError(f"{source}: case name(s) {', '.join(repeated)} given twice")
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise SpecError(
                f"--only {','.join(only)}: {source} has no case {', '.join(unknown)} "
                f"(its cases: {', '.join(names)})"
            )
        cases = tuple(case for case in cases if case.name in only)
        source += f" (only {', '.join(case.name for case in cases)})"
    return source, cases


def parse_only(text: str | None) -> tuple[str, ...]:
    """'FOM1,FOM2' -> ('FOM1', 'FOM2'); None or '' -> () (every case)."""
    names = tuple(name.strip() for name in (text or "").split(",") if name.strip())
    if text and not names:
        raise SpecError(f"--only {text!r}: name the cases to run, e.g. --only FOM1,FOM2")
    return names


def _spec_case(index: int, case: Any) -> FomCase:
    try:
        return FomCase(
            case.name, case.input_len, case.output_len, case.batch_size, case.max_model_len
        )
    except ValueError as exc:
        raise SpecError(f"spec bench.fom_cases[{index}]: {exc}") from None


def group_by_context(cases: Sequence[FomCase]) -> list[tuple[int, list[FomCase]]]:
    """Cases by max-model-len, one group per engine, in the order the lengths first appear."""
    groups: dict[int, list[FomCase]] = {}
    for case in cases:
        groups.setdefault(case.max_model_len, []).append(case)
    return list(groups.items())


def fom_table_rows(cases: Sequence[dict[str, Any]], total: dict[str, Any]) -> list[dict[str, Any]]:
    """fom.csv's rows: each case's figures, then the FOM sums."""
    rows = [{"case": case["name"], **case} for case in cases]
    rows.append(
        {"case": "FOM", "throughput": total["throughput"], "flops_per_s": total["flops_per_s"]}
    )
    return rows


@dataclass(frozen=True)
class FomOutcome:
    document: dict[str, Any]
    json_path: Path
    csv_path: Path
    csv_copy: Path | None


def run_fom(
    settings: BenchSettings,
    preset: str | None,
    case_texts: Sequence[str],
    progress: Progress,
    only: Sequence[str] = (),
) -> FomOutcome:
    """Every case, one engine per max-model-len; fom.json, fom.csv (and the FOM's CSV rows).
    (`bench.fom_server.run_fom_on_server` runs them on a running server instead.)"""
    if settings.spec.engine.max_model_len is not None:
        raise SpecError(
            "bench fom sets max-model-len per case: drop engine.max_model_len "
            "(give each case's in its --case, the spec's bench.fom_cases or the preset)"
        )
    hardware = resolve_hardware(settings)
    source, cases = resolve_cases(
        preset, case_texts, settings.spec.bench.fom_cases, hardware.profile.is_cpu, only
    )
    copies = fom_csv_tables(settings)
    model = resolve_bench_model(settings)
    progress(f"FOM cases from {source}: " + ", ".join(case.name for case in cases))
    groups = group_by_context(cases)
    runs: dict[str, tuple[FomCase, EngineRun]] = {}
    engines: list[dict[str, Any]] = []
    launch = None
    for number, (context, group) in enumerate(groups, start=1):
        launch = engine_launch(
            settings, hardware, model, context, max(case.batch_size for case in group)
        )
        log = settings.out_dir / "logs" / f"fom-engine-{context}.log"
        log.unlink(missing_ok=True)
        names = ", ".join(case.name for case in group)
        progress(
            f"engine {number}/{len(groups)}: max-model-len {context} for {names}, "
            f"TP={settings.tp}, PP={settings.pp} (log: {log})"
        )
        batches = [
            BatchCase(case.name, case.input_len, case.output_len, case.batch_size) for case in group
        ]
        run = run_cases(settings, launch, batches, log, progress)
        for case in group:
            runs[case.name] = (case, run)
        engines.append(
            {
                "max_model_len": run.info.max_model_len,
                "cases": [case.name for case in group],
                "startup_s": run.info.startup_s,
                "startup": run.info.startup,
                "log": str(log),
                "llm_kwargs": launch.llm_kwargs,
            }
        )
    assert launch is not None  # there is at least one case
    info = runs[cases[0].name][1].info
    shape, shape_note = model_shape(info)
    measured = [
        fom_case_figures(
            case, runs[case.name][1].cases[case.name], shape, hardware, settings.percentiles
        )
        for case in cases
    ]
    config = base_config(settings, hardware, launch, info, shape_note)
    config.pop("llm_kwargs")  # one per engine, in "engines"
    config.pop("engine_startup")  # likewise
    config["cases_from"] = source
    config["cases"] = [asdict(case) for case in cases]
    return write_fom(
        settings, config, measured, engines, copies, (launch.model_name, info.dtype, settings.tp)
    )


def fom_case_figures(
    case: FomCase,
    iterations: Sequence[IterationSample],
    shape: ModelShape | None,
    basis: MfuBasis,
    percentiles: Sequence[float],
) -> tuple[dict[str, Any], FomResult]:
    """One case's entry in fom.json (latency_s the mean, its statistics beside it) and its
    FOM figures, from its timed iterations (checked for exact lengths)."""
    measured, result = case_figures(case, iterations, shape, basis, percentiles)
    stats = measured["latency_s"]
    return {**measured, "latency_s": stats["mean"], "latency_stats": stats}, result


def write_fom(
    settings: BenchSettings,
    config: dict[str, Any],
    measured: Sequence[tuple[dict[str, Any], FomResult]],
    engines: list[dict[str, Any]],
    copies: Sequence[Path],
    row: tuple[str, str | None, int | None],
) -> FomOutcome:
    """fom.json, fom.csv and the FOM's CSV rows (`row`: the model, precision and TP its
    rows name) from every case's figures, in the order measured."""
    figures = [entry for entry, _ in measured]
    results = [result for _, result in measured]
    total = fom_sum(results)
    fom = {
        "throughput": total.throughput,
        "flops_per_s": total.flops_per_s,
        "cases": list(total.cases),
    }
    body = {"cases": figures, "fom": fom, "engines": engines}
    document = result_document("fom", config, body, settings.command)
    json_path = write_result(settings.out_dir, document)
    csv_path = write_table(
        settings.out_dir / "fom.csv", fom_table_rows(figures, fom), FOM_CSV_COLUMNS
    )
    model_name, precision, tp = row
    for path in copies:
        for result in results:
            append_csv_row(path, case_csv_row(model_name, result, precision, tp))
    return FomOutcome(document, json_path, csv_path, copies[0] if copies else None)
