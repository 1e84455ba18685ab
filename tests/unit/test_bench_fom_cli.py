"""`hpcinfer bench fom` and `bench offline` without an engine: where the cases come from, how
they share engines, fom.csv's rows, --help, and flag errors (exit 2, before any engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hpcinfer.bench import fom_bench, offline
from hpcinfer.bench.fom import FOM_PRESETS, FomCase
from hpcinfer.bench.fom_bench import (
    fom_table_rows,
    group_by_context,
    parse_case,
    resolve_cases,
)
from hpcinfer.cli import main as cli_main
from hpcinfer.errors import SpecError
from hpcinfer.spec import build_spec
from tests.harness import call_main

runner = CliRunner()


# -- cases ------------------------------------------------------------------------------------


def test_parse_case() -> None:
    assert parse_case("FOM1:3584:512:8:4096") == FomCase("FOM1", 3584, 512, 8, 4096)
    for bad, message in [
        ("FOM1:3584:512:8", "write NAME:INPUT_LEN:OUTPUT_LEN:BATCH_SIZE:MAX_MODEL_LEN"),
        (":1:1:1:8", "write NAME:"),
        ("FOM1:many:512:8:4096", "INPUT_LEN 'many' is not a whole number"),
        ("FOM1:4000:512:8:4096", "does not fit max_model_len 4096"),
        ("FOM1:10:0:8:4096", "output_len must be 1 or more"),
    ]:
        with pytest.raises(SpecError, match=f"--case .*{message}"):
            parse_case(bad)


def test_cases_come_from_case_flags_then_the_spec_then_the_preset() -> None:
    spec = build_spec(
        {
            "bench": {
                "fom_cases": [{"name": "S1", "input_len": 8, "output_len": 8, "max_model_len": 64}]
            }
        }
    )
    spec_cases = spec.bench.fom_cases
    source, cases = resolve_cases(None, ["C1:4:4:2:16"], spec_cases, on_cpu=True)
    assert source == "--case" and cases == (FomCase("C1", 4, 4, 2, 16),)
    source, cases = resolve_cases(None, [], spec_cases, on_cpu=True)
    assert source == "spec bench.fom_cases" and cases == (FomCase("S1", 8, 8, 1, 64),)
    source, cases = resolve_cases("alcf-fom-405b", [], spec_cases, on_cpu=True)  # a preset wins
    assert source == "preset alcf-fom-405b" and cases == FOM_PRESETS["alcf-fom-405b"].cases
    assert resolve_cases(None, [], [], on_cpu=True)[0] == "preset cpu-tiny"
    assert resolve_cases(None, [], [], on_cpu=False)[0] == "preset alcf-fom-405b"


def test_case_source_errors() -> None:
    with pytest.raises(SpecError, match="--preset or --case, not both"):
        resolve_cases("cpu-tiny", ["A:1:1:1:8"], [], on_cpu=True)
    with pytest.raises(
        SpecError, match=r"--preset: unknown FOM preset 'gpu': .*alcf-fom-405b, cpu-tiny"
    ):
        resolve_cases("gpu", [], [], on_cpu=True)
    with pytest.raises(SpecError, match=r"case name.* A given twice"):
        resolve_cases(None, ["A:1:1:1:8", "A:2:2:1:8"], [], on_cpu=True)
    spec = build_spec(
        {
            "bench": {
                "fom_cases": [{"name": "S1", "input_len": 60, "output_len": 8, "max_model_len": 64}]
            }
        }
    )
    with pytest.raises(SpecError, match=r"spec bench.fom_cases\[0\]: S1: .*does not fit"):
        resolve_cases(None, [], spec.bench.fom_cases, on_cpu=True)


def test_spec_fom_cases_are_validated_with_their_path() -> None:
    with pytest.raises(SpecError, match=r"bench.fom_cases.0.input_len"):
        build_spec(
            {
                "bench": {
                    "fom_cases": [
                        {"name": "A", "input_len": 0, "output_len": 1, "max_model_len": 8}
                    ]
                }
            }
        )
    with pytest.raises(SpecError, match=r"bench.fom_cases.0.batch: unknown field"):
        build_spec(
            {
                "bench": {
                    "fom_cases": [
                        {
                            "name": "A",
                            "input_len": 1,
                            "output_len": 1,
                            "max_model_len": 8,
                            "batch": 2,
                        }
                    ]
                }
            }
        )


def test_cases_sharing_a_context_length_share_an_engine() -> None:
    groups = group_by_context(FOM_PRESETS["cpu-tiny"].cases)
    assert [(length, [c.name for c in cases]) for length, cases in groups] == [
        (512, ["FOM1", "FOM2"]),
        (2048, ["FOM3"]),
    ]
    mixed = [FomCase("a", 1, 1, 1, 64), FomCase("b", 1, 1, 1, 32), FomCase("c", 1, 1, 1, 64)]
    assert [length for length, _ in group_by_context(mixed)] == [64, 32]


def test_cpu_tiny_preset_keeps_the_three_shapes() -> None:
    fom1, fom2, fom3 = FOM_PRESETS["cpu-tiny"].cases
    assert fom1.input_len > fom1.output_len  # prefill-heavy
    assert fom2.output_len > fom2.input_len  # decode-heavy
    assert fom3.max_model_len > max(fom1.max_model_len, fom2.max_model_len)  # long context


def test_fom_table_ends_with_the_sum_row() -> None:
    cases = [
        {"name": "FOM1", "throughput": 10.0, "flops_per_s": 1.0},
        {"name": "FOM2", "throughput": 5.0, "flops_per_s": 2.0},
    ]
    rows = fom_table_rows(cases, {"throughput": 15.0, "flops_per_s": 3.0})
    assert [row["case"] for row in rows] == ["FOM1", "FOM2", "FOM"]
    assert rows[-1] == {"case": "FOM", "throughput": 15.0, "flops_per_s": 3.0}


# -- the commands ---------------------------------------------------------------------------


def test_help_has_runnable_examples() -> None:
    for command, example in [
        ("offline", "hpcinfer bench offline --input-len 128 --output-len 128 --batch-size 8"),
        ("fom", "hpcinfer bench fom --preset cpu-tiny --out bench-out"),
    ]:
        result = runner.invoke(cli_main.app, ["bench", command, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0
        text = " ".join(result.output.split())
        assert example in text and "Exit codes:" in text


class Main:
    """hpcinfer.cli.main.main() as the console script calls it; returns (code, output)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
        self.monkeypatch, self.capsys = monkeypatch, capsys
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HPCINFER_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(cli_main.err, "width", 300)
        self.started: list[str] = []  # the model resolution or an engine start, if reached
        monkeypatch.setattr(offline, "resolve_bench_model", self._refuse("model"))
        monkeypatch.setattr(fom_bench, "resolve_bench_model", self._refuse("model"))
        monkeypatch.setattr(offline, "run_engine", self._refuse("engine"))
        self.profile = tmp_path / "two-cores.yaml"
        self.profile.write_text("name: two-cores\nvendor: cpu\ncores_per_node: 2\n")

    def _refuse(self, what: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            self.started.append(what)
            raise SpecError(f"test: the {what} was reached")

        return refuse

    def __call__(self, *args: str) -> tuple[int, str]:
        ran = call_main(args, self.monkeypatch, self.capsys)
        return ran.code, " ".join(ran.output.split())


@pytest.fixture
def hpcinfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Main:
    return Main(tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["offline", "--input-len", "100", "--output-len", "100", "--max-model-len", "128"],
            "--input-len 100 + --output-len 100 = 200 tokens do not fit --max-model-len 128",
        ),
        (["offline", "--tp", "4"], "--tp 4 x --pp 1 needs 4 cores"),
        (["offline", "--percentiles", "50,101"], "--percentiles: percentile '101' is outside"),
        (["offline", "--iters", "0"], "--iters 0"),
        (["offline", "--set", "engine.tensor_parallel_size=0"], "tensor_parallel_size"),
        (["offline", "prompts.txt"], "takes a spec file (.yaml/.yml)"),
        (["fom", "--preset", "huge"], "unknown FOM preset 'huge'"),
        (["fom", "--case", "A:1:1"], "--case 'A:1:1': write NAME:INPUT_LEN"),
        (["fom", "--tp", "3"], "--tp 3 x --pp 1 needs 3 cores"),
        (["fom", "--set", "engine.max_model_len=512"], "bench fom sets max-model-len per case"),
    ],
)
def test_flag_errors_exit_2_before_any_engine(
    hpcinfer: Main, args: list[str], message: str
) -> None:
    code, output = hpcinfer("bench", *args, "--profile", str(hpcinfer.profile))
    assert code == 2, output
    assert "error:" in output and "Traceback" not in output
    assert message in output
    assert hpcinfer.started == []  # neither the model nor an engine was touched
    assert not Path("bench-out").exists()


def test_min_lengths_are_usage_errors(hpcinfer: Main) -> None:
    code, output = hpcinfer("bench", "offline", "--batch-size", "0")
    assert code == 2 and "--batch-size" in output
