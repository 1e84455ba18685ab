"""The ALCF inference FOM (Llama 3.1 405B with vLLM on Aurora), computed instead of by hand.

It defines throughput as all tokens (input + output) over the end-to-end latency, and
the FOM as FOM1 + FOM2 + FOM3, the throughputs of three cases: prefill-heavy (long input,
moderate output), decode-heavy (moderate input, long output) and long context (moderate
lengths, a large max-model-len). It also gives a FLOP form of the same figure,

    C_prefill = b*N*(6*d^2*T_in + d*T_in^2)     C_decode = b*N*T_out*6*d^2
    FOM = (C_prefill + C_decode) / L

(N layers, d hidden size, b batch, L latency in seconds), which with a device's peak gives
the model FLOPs utilisation (MFU). The FLOP count is the FOM's estimate (dense layers and
prefill attention, no decode attention or vocabulary projection), kept as written so our
numbers agree with theirs; it is an estimate, not a measured count.

The CSV row of its `infr_bench.py` is reproduced column for column (names and order), so existing
spreadsheets keep reading our output.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOM_CSV_COLUMNS = (
    "Model Name",
    "precision",
    "throughput",
    "latency",
    "batch size",
    "tensor_parallel",
    "input length",
    "output length",
    "context_length",
)
"""The FOM's CSV header, names and order exactly (throughput tokens/s, latency seconds)."""


# ---------------------------------------------------------------------------------------
# model shape and the FLOP form


@dataclass(frozen=True)
class ModelShape:
    """The two numbers the FLOP form needs: N (layers) and d (hidden size)."""

    layers: int
    hidden: int

    def __post_init__(self) -> None:
        if self.layers < 1 or self.hidden < 1:
            raise ValueError(
                f"a model has at least one layer and a hidden size of 1 or more "
                f"(layers={self.layers}, hidden={self.hidden})"
            )

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a Hugging Face `config.json` (already parsed): `num_hidden_layers` and
        `hidden_size`, looked up in `text_config` too, where multimodal models keep them."""
        nested = config.get("text_config")
        scopes: list[tuple[str, Mapping[str, Any]]] = [("", config)]
        if isinstance(nested, Mapping):
            scopes.append(("text_config.", nested))

        def field_value(key: str) -> int:
            for prefix, scope in scopes:
                if key in scope and scope[key] is not None:
                    value = scope[key]
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise ValueError(
                            f"config.json {prefix}{key} must be a positive whole number, "
                            f"not {value!r}"
                        )
                    return value
            where = " or ".join(f"{prefix}{key}" for prefix, _ in scopes)
            raise ValueError(
                f"config.json has no {where}: the FLOP-based FOM needs the layer count "
                "(num_hidden_layers) and hidden size (hidden_size); pass them explicitly "
                "for a model whose config names them differently"
            )

        return cls(layers=field_value("num_hidden_layers"), hidden=field_value("hidden_size"))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} cannot be negative ({value})")


def flops_prefill(b: int, n_layers: int, d: int, t_in: int) -> int:
    """The FOM's prefill FLOPs: b*N*(6*d^2*T_in + d*T_in^2) (exact integer)."""
    _check_positive(b=b, n_layers=n_layers, d=d, t_in=t_in)
    return b * n_layers * (6 * d * d * t_in + d * t_in * t_in)


def flops_decode(b: int, n_layers: int, d: int, t_out: int) -> int:
    """The FOM's decode FLOPs: b*N*T_out*6*d^2 (exact integer)."""
    _check_positive(b=b, n_layers=n_layers, d=d, t_out=t_out)
    return b * n_layers * t_out * 6 * d * d


def _check_latency(latency_s: float) -> None:
    if not (math.isfinite(latency_s) and latency_s > 0):
        raise ValueError(f"latency must be a positive number of seconds, not {latency_s}")


def fom_flops(b: int, n_layers: int, d: int, t_in: int, t_out: int, latency_s: float) -> float:
    """The FLOP form of the FOM: (C_prefill + C_decode) / L, in FLOP/s."""
    _check_latency(latency_s)
    total = flops_prefill(b, n_layers, d, t_in) + flops_decode(b, n_layers, d, t_out)
    return total / latency_s


def throughput_fom(in_tokens: int, out_tokens: int, latency_s: float) -> float:
    """The FOM's throughput: (input + output tokens) / end-to-end latency, tokens/s.

    The token counts are totals over the batch (b requests of T_in and T_out tokens each
    give b*T_in and b*T_out), not one request's lengths.
    """
    _check_latency(latency_s)
    _check_positive(in_tokens=in_tokens, out_tokens=out_tokens)
    return (in_tokens + out_tokens) / latency_s


def mfu(achieved_flops_per_s: float, peak_tflops: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: achieved / (peak per device * devices), a fraction.

    None when the peak is unknown (a hardware profile's `peak_tflops_bf16` may be null):
    a made-up peak would make a made-up MFU.
    """
    if peak_tflops is None:
        return None
    if not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise ValueError(f"peak TFLOPS must be a positive number, not {peak_tflops}")
    if devices < 1:
        raise ValueError(f"MFU needs the number of devices used (1 or more), not {devices}")
    return achieved_flops_per_s / (peak_tflops * 1e12 * devices)


# ---------------------------------------------------------------------------------------
# the three cases and their presets


@dataclass(frozen=True)
class FomCase:
    """One FOM case: exact input and output lengths (random token ids, ignore_eos),
    `batch_size` concurrent requests, served with `max_model_len`."""

    name: str
    input_len: int
    output_len: int
    batch_size: int
    max_model_len: int

    def __post_init__(self) -> None:
        for label, value in (
            ("input_len", self.input_len),
            ("output_len", self.output_len),
            ("batch_size", self.batch_size),
            ("max_model_len", self.max_model_len),
        ):
            if value < 1:
                raise ValueError(f"{self.name}: {label} must be 1 or more, not {value}")
        if self.input_len + self.output_len > self.max_model_len:
            raise ValueError(
                f"{self.name}: input_len + output_len = {self.input_len + self.output_len} "
                f"does not fit max_model_len {self.max_model_len}; raise max_model_len or "
                "shorten the lengths"
            )


@dataclass(frozen=True)
class FomPreset:
    """A named set of FOM cases (FOM1 prefill-heavy, FOM2 decode-heavy, FOM3 long context)."""

    name: str
    description: str
    cases: tuple[FomCase, ...]


FOM_PRESETS: dict[str, FomPreset] = {
    preset.name: preset
    for preset in (
        FomPreset(
            name="cpu-tiny",
            description=(
                "the built-in tiny model on a CPU (context 2048 at most): seconds per case"
            ),
            cases=(
                FomCase("FOM1", input_len=448, output_len=64, batch_size=4, max_model_len=512),
                FomCase("FOM2", input_len=64, output_len=448, batch_size=4, max_model_len=512),
                FomCase("FOM3", input_len=256, output_len=256, batch_size=4, max_model_len=2048),
            ),
        ),
        FomPreset(
            name="alcf-fom-405b",
            description=(
                "after the ALCF inference FOM (Llama-3.1-405B, TP 8 x PP 2, --max-model-len 4096, "
                "batch 1): "
                "FOM1 and FOM2 fill the 4096 context one way or the other, FOM3 runs the "
                "FOM's 1024/1024 example with a 4x larger max-model-len"
            ),
            cases=(
                FomCase("FOM1", input_len=3584, output_len=512, batch_size=1, max_model_len=4096),
                FomCase("FOM2", input_len=512, output_len=3584, batch_size=1, max_model_len=4096),
                FomCase("FOM3", input_len=1024, output_len=1024, batch_size=1, max_model_len=16384),
            ),
        ),
    )
}


def fom_preset(name: str) -> FomPreset:
    """A preset by name, or a ValueError listing the names there are."""
    try:
        return FOM_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown FOM preset {name!r}: choose one of {', '.join(sorted(FOM_PRESETS))}"
        ) from None


@dataclass(frozen=True)
class FomResult:
    """One case's measured figures: the FOM's throughput and, given the model's shape, the
    FLOP form and MFU."""

    case: FomCase
    latency_s: float
    input_tokens: int
    output_tokens: int
    throughput: float
    flops_per_s: float | None
    mfu: float | None


def case_result(
    case: FomCase,
    latency_s: float,
    shape: ModelShape | None = None,
    *,
    peak_tflops: float | None = None,
    devices: int = 1,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
) -> FomResult:
    """The figures of one case run in `latency_s` seconds end to end.

    Token counts default to the nominal b*T_in and b*T_out (exact when prompts are exact
    token ids and ignore_eos holds); pass the measured counts when they differ. The FLOP
    form always uses the nominal lengths, as the FOM's formula does.
    """
    tokens_in = case.batch_size * case.input_len if input_tokens is None else input_tokens
    tokens_out = case.batch_size * case.output_len if output_tokens is None else output_tokens
    flops_per_s: float | None = None
    utilisation: float | None = None
    if shape is not None:
        flops_per_s = fom_flops(
            case.batch_size, shape.layers, shape.hidden, case.input_len, case.output_len, latency_s
        )
        utilisation = mfu(flops_per_s, peak_tflops, devices)
    return FomResult(
        case=case,
        latency_s=latency_s,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        throughput=throughput_fom(tokens_in, tokens_out, latency_s),
        flops_per_s=flops_per_s,
        mfu=utilisation,
    )


@dataclass(frozen=True)
class FomSum:
    """FOM = FOM1 + FOM2 + FOM3, in both forms (the FLOP form only when every case has it)."""

    throughput: float
    flops_per_s: float | None
    cases: tuple[str, ...]


def fom_sum(results: Sequence[FomResult]) -> FomSum:
    """The sum over the cases: the FOM in tokens/s, and in FLOP/s when known."""
    if not results:
        raise ValueError("the FOM is a sum over cases: give at least one case's result")
    names = [result.case.name for result in results]
    if len(set(names)) != len(names):
        raise ValueError(f"a case appears twice in the FOM sum: {', '.join(names)}")
    flops = [result.flops_per_s for result in results]
    return FomSum(
        throughput=math.fsum(result.throughput for result in results),
        flops_per_s=None if None in flops else math.fsum(f for f in flops if f is not None),
        cases=tuple(names),
    )


# ---------------------------------------------------------------------------------------
# the FOM's CSV


def fom_csv_row(
    model: str,
    precision: str | None,
    throughput: float,
    latency_s: float,
    batch_size: int,
    tensor_parallel: int | None,
    input_len: int,
    output_len: int,
    context_length: int,
) -> dict[str, str | int | float | None]:
    """One row of the FOM's CSV: throughput in tokens/s, latency in seconds, context_length
    the server's max-model-len; a precision or TP not known (None) is an empty cell."""
    values: tuple[str | int | float | None, ...] = (
        model,
        precision,
        throughput,
        latency_s,
        batch_size,
        tensor_parallel,
        input_len,
        output_len,
        context_length,
    )
    return dict(zip(FOM_CSV_COLUMNS, values, strict=True))


def append_csv_row(
    path: Path, row: Mapping[str, object], columns: Iterable[str] = FOM_CSV_COLUMNS
) -> None:
    """Append `row` to the CSV at `path`, writing the header first only when the file is new
    or empty, so repeated runs build one table as the FOM's `infr_bench.py` did.

    An existing file must have the same header (names compared without surrounding spaces,
    so a file `infr_bench.py` wrote with ", " separators is accepted); appending to a table with
    other columns raises instead of silently misaligning it.
    """
    header = list(columns)
    missing = [name for name in header if name not in row]
    extra = [name for name in row if name not in header]
    if missing or extra:
        raise ValueError(
            f"CSV row does not match the columns: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}"
        )
    existing = path.read_bytes() if path.exists() else b""
    _check_header(path, existing, header)
    with path.open("a", encoding="utf-8", newline="") as handle:
        if existing and not existing.endswith(b"\n"):
            handle.write("\n")
        writer = csv.writer(handle, lineterminator="\n")  # Unix line ends
        if not existing:
            writer.writerow(header)
        writer.writerow([row[name] for name in header])


def check_csv_header(path: Path, columns: Iterable[str] = FOM_CSV_COLUMNS) -> None:
    """Raise ValueError now if rows with `columns` cannot be appended to `path` later (its
    header differs), so a benchmark fails before it runs, not after."""
    _check_header(path, path.read_bytes() if path.exists() else b"", list(columns))


def _check_header(path: Path, existing: bytes, header: list[str]) -> None:
    if not existing:
        return
    first_line = existing.decode("utf-8").splitlines()[0]
    found = [name.strip() for name in next(csv.reader([first_line]))]
    if found != header:
        raise ValueError(
            f"{path} has the header {found}, not {header}: write to a new file or "
            "move this one aside"
        )
