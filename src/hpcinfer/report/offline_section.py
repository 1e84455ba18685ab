"""The offline benchmark's part of the report: the engine's figures and its latency bars."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcinfer.report import plots
from hpcinfer.report.page import Plot, Section, Table, malformed
from hpcinfer.report.startup_table import read_startup, startup_table
from hpcinfer.report.values import NA, fmt, fmt_count, fmt_flops, fmt_pct, get_num, num

_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")
MFU_MISSING = "n/a (no peak FLOPS known for this hardware)"


def latency_percentiles(latency: Mapping[str, Any]) -> list[tuple[str, float]]:
    """('p50', 0.12), ... in ascending percentile order, from `latency_s`."""
    found = []
    for key, value in latency.items():
        match = _PERCENTILE.match(str(key))
        number = num(value)
        if match and number is not None:
            found.append((float(match.group(1)), str(key), number))
    return [(key, value) for _, key, value in sorted(found)]


def offline_section(path: Path, document: Mapping[str, Any]) -> Section:
    result = document.get("result")
    if not isinstance(result, Mapping):
        raise malformed(path, "'result'", "an object (the offline figures)", result)
    latency_raw = result.get("latency_s")
    latency: Mapping[str, Any] = latency_raw if isinstance(latency_raw, Mapping) else {}
    percentiles = latency_percentiles(latency)
    raw_iterations = result.get("iterations_s")
    iterations = [
        n for n in (num(v) for v in (raw_iterations if isinstance(raw_iterations, list) else []))
        if n is not None
    ]  # fmt: skip
    mfu = get_num(result, "mfu")
    rows: list[tuple[str, str]] = [
        ("throughput (input + output tokens/s)", fmt(get_num(result, "throughput"))),
        ("prefill (input tokens/s)", fmt(get_num(result, "prefill_tokens_per_s"))),
        ("decode (output tokens/s)", fmt(get_num(result, "decode_tokens_per_s"))),
        ("input tokens per iteration", fmt_count(result.get("input_tokens"))),
        ("output tokens per iteration", fmt_count(result.get("output_tokens"))),
        ("iterations measured", str(len(iterations)) if iterations else NA),
    ]
    for stat in ("mean", "median", "std"):
        rows.append((f"latency {stat} (s)", fmt(get_num(latency, stat))))
    rows += [(f"latency {key} (s)", fmt(value)) for key, value in percentiles]
    rows += [
        ("FLOP FOM (ALCF FOM estimate)", fmt_flops(get_num(result, "flops_per_s"))),
        ("MFU (model FLOPs utilisation)", fmt_pct(mfu) if mfu is not None else MFU_MISSING),
    ]
    blocks: list[Table | Plot] = [
        Table(
            title="Offline figures",
            columns=("figure", "value"),
            rows=tuple(rows),
            note="Throughput is the ALCF inference FOM's: all tokens (input + output) over the "
            "end-to-end "
            "latency of an iteration. The FLOP FOM is the ALCF FOM's estimate "
            "(C_prefill + C_decode) / L, not a measured count.",
        )
    ]
    if percentiles:
        blocks.append(plots.offline_latency(percentiles, get_num(latency, "mean"), iterations))
    config = document.get("config")
    startup = config.get("engine_startup") if isinstance(config, Mapping) else None
    table = startup_table("Engine start-up (s)", [("offline", startup)])
    blocks += [table] if table is not None else []
    reading = read_offline(result, latency, percentiles, iterations)
    started = read_startup(startup)
    return Section(
        kind="offline",
        title="Offline benchmark",
        source=path.name,
        reading=reading + ((started,) if started else ()),
        blocks=tuple(blocks),
    )


def read_offline(
    result: Mapping[str, Any],
    latency: Mapping[str, Any],
    percentiles: list[tuple[str, float]],
    iterations: list[float],
) -> tuple[str, ...]:
    """What the numbers say, in sentences."""
    median = get_num(latency, "median")
    if median is None and get_num(result, "throughput") is None:
        return ("The file records no latency or throughput: nothing to read.",)
    tail = percentiles[-1] if percentiles else None
    counted = f"median of {len(iterations)} iterations" if iterations else "median"
    sentences = [
        f"Each iteration processed {fmt_count(result.get('input_tokens'))} input and "
        f"{fmt_count(result.get('output_tokens'))} output tokens in {fmt(median)} s "
        f"({counted}; mean {fmt(get_num(latency, 'mean'))} s"
        + (f", {tail[0]} {fmt(tail[1])} s" if tail else "")
        + f"): {fmt(get_num(result, 'throughput'))} tokens/s overall, prefill at "
        f"{fmt(get_num(result, 'prefill_tokens_per_s'))} tokens/s and decode at "
        f"{fmt(get_num(result, 'decode_tokens_per_s'))} tokens/s."
    ]
    flops = get_num(result, "flops_per_s")
    mfu = get_num(result, "mfu")
    if flops is not None:
        text = f"By the ALCF FOM's FLOP estimate that is {fmt_flops(flops)}"
        text += (
            f", {fmt_pct(mfu)} of the devices' peak (MFU)."
            if mfu is not None
            else "; MFU is n/a: the hardware profile gives no peak FLOPS."
        )
        sentences.append(text)
    if len(iterations) >= 2 and median:
        slowest = max(iterations)
        if slowest > 1.5 * median:
            which = (
                "the first iteration, a warm-up effect"
                if iterations.index(slowest) == 0
                else f"iteration {iterations.index(slowest) + 1}"
            )
            sentences.append(
                f"The slowest was {which}: {fmt(slowest)} s, {slowest / median:.1f}x the median."
            )
        else:
            sentences.append(
                f"Iterations varied little: {fmt(min(iterations))} to {fmt(slowest)} s."
            )
    return tuple(sentences)
