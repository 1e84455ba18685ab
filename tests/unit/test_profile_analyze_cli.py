"""`hpcinfer profile analyze` as users see it: the table, the files, --json, --quiet, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness import InProcessCLI
from tests.unit.test_traces import _calls_rank, _gpu_rank, _vllm_cpu_rank


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> InProcessCLI:
    return InProcessCLI(monkeypatch, capsys)


def test_analyze_prints_a_table_and_writes_into_the_trace_folder(
    tmp_path: Path, cli: InProcessCLI
) -> None:
    for rank in range(2):
        _vllm_cpu_rank(rank).write(tmp_path / f"rank{rank}.pt.trace.json.gz")
    ran = cli("profile", "analyze", str(tmp_path))
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0].split()[:4] == ["rank", "steps", "step", "ms"]
    assert lines[1].split()[:4] == ["0", "3", "1.000", "15.5"]
    assert "all_reduce 5" in lines[1] and "all_gather 1" in lines[1]
    assert lines[-1] == str(tmp_path / "analysis.json")
    for name in ("analysis.json", "analysis_ranks.csv", "analysis_steps.csv",
                 "analysis_collectives.csv"):  # fmt: skip
        assert (tmp_path / name).is_file(), name


def test_analyze_json_and_quiet(tmp_path: Path, cli: InProcessCLI) -> None:
    for rank in range(2):
        _gpu_rank(rank).write(tmp_path / f"kineto_trace_{rank}.json.gz")
    out = tmp_path / "results"
    ran = cli("profile", "analyze", str(tmp_path), "-o", str(out), "--json")
    assert ran.code == 0, ran.err
    document = json.loads(ran.out)
    assert [r["rank"] for r in document["ranks"]] == [0, 1]
    assert document == json.loads((out / "analysis.json").read_text())
    quiet = cli("profile", "analyze", str(tmp_path), "-o", str(out), "--quiet")
    assert quiet.out.strip() == str(out / "analysis.json")
    assert quiet.err == ""


def test_damage_is_reported_on_stderr_and_the_rest_analysed(
    tmp_path: Path, cli: InProcessCLI
) -> None:
    data = _gpu_rank(0).text()
    (tmp_path / "kineto_trace_0.json").write_bytes(data[: len(data) * 9 // 10])
    _gpu_rank(1).write(tmp_path / "kineto_trace_1.json")
    ran = cli("profile", "analyze", str(tmp_path))
    assert ran.code == 0
    assert "kineto_trace_0.json: the file ends in the middle of the JSON" in ran.err


def test_a_folder_without_traces_exits_2_naming_it(tmp_path: Path, cli: InProcessCLI) -> None:
    ran = cli("profile", "analyze", str(tmp_path))
    assert ran.code == 2
    assert str(tmp_path) in ran.err and "no Kineto trace" in ran.err


def test_missing_ranks_and_the_straggler_line_are_printed(
    tmp_path: Path, cli: InProcessCLI
) -> None:
    for rank in (0, 1, 3):  # of 4: rank 2 wrote no trace; rank 3 is 80 us late 24 times
        _calls_rank(rank, 4, [80.0 if rank == 3 else 0.0] * 24).write(
            tmp_path / f"kineto_trace_{rank}.json"
        )
    ran = cli("profile", "analyze", str(tmp_path))
    assert ran.code == 0, ran.err
    assert "missing ranks (no trace found): 2" in ran.out
    assert (
        "straggler: rank 3 arrived last at 100% of its matched collectives (p = 3.5e-12 by "
        "chance; 24 matched in all); the others waited 3.840 ms for it"
    ) in ran.out
    assert "no trace was found for rank(s) 2" in ran.err
