"""The FOM benchmark's part of the report: the per-case table, the sum and its breakdown."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcinfer.report import plots
from hpcinfer.report.page import Plot, Section, Table, malformed
from hpcinfer.report.startup_table import startup_table
from hpcinfer.report.values import NA, fmt, fmt_count, fmt_flops, fmt_pct, get_num


def _shape(case: Mapping[str, Any]) -> str:
    """'448 in / 64 out tokens x batch 4, prefill-heavy'."""
    t_in, t_out = get_num(case, "input_len"), get_num(case, "output_len")
    text = f"{fmt_count(case.get('input_len'))} in / {fmt_count(case.get('output_len'))} out "
    text += f"tokens x batch {fmt_count(case.get('batch_size'))}"
    if t_in is not None and t_out is not None:
        if t_in >= 2 * t_out:
            text += ", prefill-heavy"
        elif t_out >= 2 * t_in:
            text += ", decode-heavy"
        else:
            text += f", context {fmt_count(case.get('max_model_len'))}"
    return text


def _read_cases(path: Path, document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    cases = document.get("cases")
    if not isinstance(cases, list):
        raise malformed(path, "'cases'", "a list of FOM cases", cases)
    for index, case in enumerate(cases):
        if not isinstance(case, Mapping):
            raise malformed(path, f"cases[{index}]", "an object", case)
    return cases


def fom_section(path: Path, document: Mapping[str, Any]) -> Section:
    cases = _read_cases(path, document)
    names = [str(case.get("name") or f"case {i + 1}") for i, case in enumerate(cases)]
    throughputs = [get_num(case, "throughput") for case in cases]
    flops = [get_num(case, "flops_per_s") for case in cases]
    fom_raw = document.get("fom")
    fom: Mapping[str, Any] = fom_raw if isinstance(fom_raw, Mapping) else {}
    total = get_num(fom, "throughput")
    note = ""
    if total is None and throughputs and None not in throughputs:
        total = math.fsum(t for t in throughputs if t is not None)
        note = " The file holds no FOM sum; it is computed here from the cases."
    total_flops = get_num(fom, "flops_per_s")
    rows = [
        (
            name,
            fmt_count(case.get("input_len")),
            fmt_count(case.get("output_len")),
            fmt_count(case.get("batch_size")),
            fmt_count(case.get("max_model_len")),
            fmt(get_num(case, "latency_s")),
            fmt_count(case.get("input_tokens")),
            fmt_count(case.get("output_tokens")),
            fmt(throughput),
            fmt_pct(throughput / total) if throughput is not None and total else NA,
            fmt_flops(flop),
            fmt_pct(get_num(case, "mfu")),
        )
        for name, case, throughput, flop in zip(names, cases, throughputs, flops, strict=True)
    ]
    rows.append(
        ("FOM (sum)", "", "", "", "", "", "", "", fmt(total), "100%" if total else NA,
         fmt_flops(total_flops), "")
    )  # fmt: skip
    blocks: list[Table | Plot] = [
        Table(
            title="FOM cases",
            columns=(
                "case",
                "input len",
                "output len",
                "batch",
                "max model len",
                "latency (s)",
                "input tokens",
                "output tokens",
                "throughput (tok/s)",
                "share of FOM",
                "FLOP/s (estimate)",
                "MFU",
            ),
            rows=tuple(rows),
            note="Throughput is the ALCF inference FOM's: (input + output tokens) / end-to-end "
            "latency of "
            "the case's batch; FOM = the sum over the cases. MFU n/a: no peak FLOPS known "
            "for this hardware." + note,
        )
    ]
    if cases and None not in throughputs:
        known = [t for t in throughputs if t is not None]
        every_flop = [f for f in flops if f is not None]
        blocks.append(
            plots.fom_breakdown(names, known, every_flop if len(every_flop) == len(cases) else None)
        )
    table = startup_table("FOM engines' start-up (s)", _engine_startups(document))
    blocks += [table] if table is not None else []
    return Section(
        kind="fom",
        title="Figure of merit (FOM)",
        source=path.name,
        reading=read_fom(names, cases, throughputs, total, total_flops),
        blocks=tuple(blocks),
    )


def _engine_startups(document: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """('max-model-len 512', its start-up phases) for each engine the FOM started."""
    engines = document.get("engines")
    return [
        (f"max-model-len {engine.get('max_model_len')}", engine.get("startup"))
        for engine in (engines if isinstance(engines, list) else [])
        if isinstance(engine, Mapping)
    ]


def read_fom(
    names: Sequence[str],
    cases: Sequence[Mapping[str, Any]],
    throughputs: Sequence[float | None],
    total: float | None,
    total_flops: float | None,
) -> tuple[str, ...]:
    """The FOM, which case carried it and which held it back, in sentences."""
    if not cases:
        return ("The file lists no FOM case: nothing was measured.",)
    sentences = [
        f"FOM = {' + '.join(names)} = {fmt(total)} tokens/s"
        + (f" ({fmt_flops(total_flops)} in FLOP form)." if total_flops is not None else ".")
    ]
    known = [(t, i) for i, t in enumerate(throughputs) if t is not None]
    if len(known) >= 2 and total:
        (hi, top), (lo, low) = max(known), min(known)
        sentences.append(
            f"{names[top]} ({_shape(cases[top])}) contributed most: {fmt(hi)} tokens/s, "
            f"{fmt_pct(hi / total)} of the FOM; {names[low]} ({_shape(cases[low])}) least: "
            f"{fmt(lo)} tokens/s, {fmt_pct(lo / total)}."
        )
    mfus = [m for m in (get_num(case, "mfu") for case in cases) if m is not None]
    if mfus:
        sentences.append(f"MFU ranged from {fmt_pct(min(mfus))} to {fmt_pct(max(mfus))}.")
    return tuple(sentences)
