"""The ALCF inference FOM: FLOP formulas by hand, presets, the sum, and its CSV written once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hpcinfer.bench.fom import (
    FOM_CSV_COLUMNS,
    FOM_PRESETS,
    FomCase,
    ModelShape,
    append_csv_row,
    case_result,
    flops_decode,
    flops_prefill,
    fom_csv_row,
    fom_flops,
    fom_preset,
    fom_sum,
    mfu,
    throughput_fom,
)


def test_flop_formulas_on_a_hand_example() -> None:
    # b=2, N=3, d=4, T_in=5, T_out=7
    assert flops_prefill(2, 3, 4, 5) == 2 * 3 * (6 * 16 * 5 + 4 * 25) == 3480
    assert flops_decode(2, 3, 4, 7) == 2 * 3 * 7 * 6 * 16 == 4032
    assert fom_flops(2, 3, 4, 5, 7, latency_s=2.0) == (3480 + 4032) / 2 == 3756.0


def test_flops_are_exact_integers_at_405b_scale() -> None:
    # Llama-3.1-405B: 126 layers, hidden 16384; one request of 3584 in, 512 out
    prefill = flops_prefill(1, 126, 16384, 3584)
    assert prefill == 126 * (6 * 16384**2 * 3584 + 16384 * 3584**2)
    assert isinstance(prefill, int)
    assert flops_decode(1, 126, 16384, 512) == 126 * 512 * 6 * 16384**2


def test_throughput_is_all_tokens_over_latency() -> None:
    assert throughput_fom(4 * 1024, 4 * 1024, latency_s=16.0) == 512.0
    with pytest.raises(ValueError, match="positive number of seconds"):
        throughput_fom(1, 1, 0.0)
    with pytest.raises(ValueError, match="cannot be negative"):
        throughput_fom(-1, 1, 1.0)


def test_mfu() -> None:
    assert mfu(3.12e14, peak_tflops=312.0, devices=2) == pytest.approx(0.5, rel=1e-12)
    assert mfu(1e12, peak_tflops=None, devices=4) is None  # unknown peak: no made-up MFU
    with pytest.raises(ValueError, match="number of devices"):
        mfu(1e12, 312.0, 0)
    with pytest.raises(ValueError, match="peak TFLOPS"):
        mfu(1e12, 0.0, 1)


def test_model_shape_from_hf_config() -> None:
    config = {"num_hidden_layers": 126, "hidden_size": 16384, "model_type": "llama"}
    assert ModelShape.from_hf_config(config) == ModelShape(layers=126, hidden=16384)
    multimodal = {
        "model_type": "mllama",
        "text_config": {"num_hidden_layers": 40, "hidden_size": 4096},
    }
    assert ModelShape.from_hf_config(multimodal) == ModelShape(40, 4096)


def test_model_shape_errors_name_the_missing_key() -> None:
    with pytest.raises(ValueError, match=r"has no num_hidden_layers: .*pass them explicitly"):
        ModelShape.from_hf_config({"hidden_size": 128})
    with pytest.raises(ValueError, match=r"no hidden_size or text_config\.hidden_size"):
        ModelShape.from_hf_config({"num_hidden_layers": 2, "text_config": {}})
    with pytest.raises(ValueError, match="hidden_size must be a positive whole number"):
        ModelShape.from_hf_config({"num_hidden_layers": 2, "hidden_size": "128"})
    with pytest.raises(ValueError, match="at least one layer"):
        ModelShape(layers=0, hidden=8)


def test_presets_have_three_cases_that_fit_their_context() -> None:
    for preset in FOM_PRESETS.values():
        assert [case.name for case in preset.cases] == ["FOM1", "FOM2", "FOM3"]
        fom1, fom2, fom3 = preset.cases
        assert fom1.input_len > fom1.output_len  # prefill-heavy
        assert fom2.output_len > fom2.input_len  # decode-heavy
        assert fom3.max_model_len > max(fom1.max_model_len, fom2.max_model_len)  # long context
    assert max(case.max_model_len for case in fom_preset("cpu-tiny").cases) <= 2048
    assert fom_preset("alcf-fom-405b").cases[0].max_model_len == 4096
    with pytest.raises(
        ValueError, match="unknown FOM preset 'big': choose one of alcf-fom-405b, cpu-tiny"
    ):
        fom_preset("big")


def test_a_case_must_fit_its_max_model_len() -> None:
    with pytest.raises(ValueError, match="FOM1: input_len \\+ output_len = 600 does not fit"):
        FomCase("FOM1", input_len=500, output_len=100, batch_size=1, max_model_len=512)
    with pytest.raises(ValueError, match="batch_size must be 1 or more"):
        FomCase("FOM2", input_len=5, output_len=5, batch_size=0, max_model_len=512)


def test_case_results_and_their_sum() -> None:
    shape = ModelShape(layers=3, hidden=4)
    one = FomCase("FOM1", input_len=5, output_len=7, batch_size=2, max_model_len=16)
    two = FomCase("FOM2", input_len=1, output_len=3, batch_size=1, max_model_len=16)
    first = case_result(one, 2.0, shape, peak_tflops=1e-9, devices=1)
    assert (first.input_tokens, first.output_tokens) == (10, 14)
    assert first.throughput == 12.0
    assert first.flops_per_s == 3756.0
    assert first.mfu == pytest.approx(3756.0 / 1000.0, rel=1e-12)
    second = case_result(two, 0.5, shape, input_tokens=1, output_tokens=2)
    assert second.throughput == 6.0  # measured counts win over nominal ones
    assert second.mfu is None
    assert second.flops_per_s == (flops_prefill(1, 3, 4, 1) + flops_decode(1, 3, 4, 3)) / 0.5
    total = fom_sum([first, second])
    assert total.throughput == 18.0
    assert total.flops_per_s == first.flops_per_s + second.flops_per_s
    assert total.cases == ("FOM1", "FOM2")
    assert fom_sum([first, case_result(two, 1.0)]).flops_per_s is None  # one case lacks it
    with pytest.raises(ValueError, match="appears twice"):
        fom_sum([first, first])
    with pytest.raises(ValueError, match="at least one"):
        fom_sum([])


def test_csv_header_written_once_with_the_fom_columns(tmp_path: Path) -> None:
    path = tmp_path / "fom.csv"
    for latency in (16.0, 8.0):
        row = fom_csv_row("tiny", "bfloat16", 512.0, latency, 4, 1, 1024, 1024, 4096)
        append_csv_row(path, row)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        "Model Name,precision,throughput,latency,batch size,tensor_parallel,"
        "input length,output length,context_length"
    )
    assert lines[1:] == ["tiny,bfloat16,512.0,16.0,4,1,1024,1024,4096"] * 1 + [
        "tiny,bfloat16,512.0,8.0,4,1,1024,1024,4096"
    ]
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(FOM_CSV_COLUMNS)


def test_csv_appends_to_a_file_the_seed_wrote(tmp_path: Path) -> None:
    # infr_bench.py separated its header with ", " and may have left no final newline
    path = tmp_path / "seed.csv"
    path.write_text(", ".join(FOM_CSV_COLUMNS) + "\nm,fp16,1.0,2.0,1,8,1,1,4096", encoding="utf-8")
    append_csv_row(path, fom_csv_row("m", "fp16", 3.0, 4.0, 1, 8, 1, 1, 4096))
    assert path.read_text(encoding="utf-8").splitlines()[1:] == [
        "m,fp16,1.0,2.0,1,8,1,1,4096",
        "m,fp16,3.0,4.0,1,8,1,1,4096",
    ]


def test_csv_refuses_a_different_table_or_row(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    row = fom_csv_row("m", "fp16", 1.0, 1.0, 1, 1, 1, 1, 8)
    with pytest.raises(ValueError, match="has the header \\['a', 'b'\\]"):
        append_csv_row(path, row)
    assert path.read_text(encoding="utf-8") == "a,b\n1,2\n"
    with pytest.raises(ValueError, match="missing \\['context_length'\\], unexpected \\['ctx'\\]"):
        bad = {k: v for k, v in row.items() if k != "context_length"} | {"ctx": 8}
        append_csv_row(tmp_path / "new.csv", bad)
    assert not (tmp_path / "new.csv").exists()
