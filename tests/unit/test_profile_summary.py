"""`hpcinfer profile summary` (results_summary.csv, the scaling plot, profile_summary.json)
and the profile section `hpcinfer report` makes of it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hpcinfer.errors import InputError
from hpcinfer.profile.summary import CSV_FILE, PLOT_FILE, SUMMARY_FILE, write_summary
from hpcinfer.report import render_report
from tests.harness import InProcessCLI
from tests.profile_runs import analysis, profile_result, write_run

PNG = b"\x89PNG\r\n\x1a\n"


def study(root: Path) -> list[Path]:
    """TP 1, 2, 4 of one model (TP4 with a straggler), and a run never analysed."""
    return [
        write_run(
            root,
            profile_result("E1.1_llama8b_tp1", tokens_per_s=1000, tp=1),
            analysis(1, comm_pct=0, exposed_pct=0, allreduce_per_step=0),
        ),
        write_run(
            root,
            profile_result("E1.2_llama8b_tp2", tokens_per_s=1800, tp=2),
            analysis(2, comm_pct=15, exposed_pct=8),
        ),
        write_run(
            root,
            profile_result("E1.3_llama8b_tp4", tokens_per_s=3000, tp=4),
            analysis(4, comm_pct=25, exposed_pct=14, straggler=3),
        ),
        write_run(root, profile_result("other_tp2", model="org/other", tokens_per_s=500, tp=2)),
    ]


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["experiment"]: row for row in csv.DictReader(handle)}


def test_summary_csv_has_one_row_per_run_with_scaling_and_comm(
    tmp_path: Path, main_cli: InProcessCLI
) -> None:
    runs = study(tmp_path / "experiments")
    out = tmp_path / "study"
    ran = main_cli("profile", "summary", *map(str, runs), "-o", str(out))
    assert ran.code == 0, ran.output
    assert ran.out.strip() == str(out / CSV_FILE)
    rows = read_csv(out / CSV_FILE)
    assert list(rows) == ["E1.1_llama8b_tp1", "E1.2_llama8b_tp2", "E1.3_llama8b_tp4", "other_tp2"]
    tp4 = rows["E1.3_llama8b_tp4"]
    assert (tp4["tp"], tp4["pp"], tp4["ep"], tp4["devices"]) == ("4", "1", "1", "4")
    assert float(tp4["throughput_tokens_per_s"]) == 3000.0
    assert (float(tp4["ttft_ms"]), float(tp4["tpot_ms"])) == (40.0, 8.0)
    assert float(tp4["speedup"]) == 3.0 and float(tp4["efficiency"]) == 0.75
    assert float(tp4["comm_overhead_pct"]) == pytest.approx(25 + 1.5)  # mean over 4 ranks
    assert float(tp4["exposed_comm_pct"]) == pytest.approx(14 + 1.5)
    assert float(tp4["collectives_per_step_total"]) == 65
    assert tp4["collectives_per_step"] == "all_gather=1 all_reduce=64"
    assert tp4["straggler_rank"] == "3"
    assert float(tp4["startup_s"]) == 21.5
    assert float(rows["E1.2_llama8b_tp2"]["efficiency"]) == 0.9
    other = rows["other_tp2"]
    assert other["speedup"] == "1.0"  # its own baseline: another model is not compared
    assert other["comm_overhead_pct"] == other["exposed_comm_pct"] == ""
    assert "no analysis.json" in other["note"]
    assert "other_tp2: no analysis.json" in ran.err
    assert (out / PLOT_FILE).read_bytes().startswith(PNG)
    assert len(json.loads((out / SUMMARY_FILE).read_text())["rows"]) == 4


def test_ranks_that_disagree_on_collectives_are_noted(tmp_path: Path) -> None:
    doc = analysis(2)
    doc["ranks"][1]["collectives_per_step"] = {"all_reduce": 60, "all_gather": 1}
    run = write_run(tmp_path, profile_result(tp=2), doc)
    [row] = write_summary([run], tmp_path / "out").rows
    assert row.note == "ranks differ in collectives per step"
    assert row.collectives_per_step == "all_gather=1 all_reduce=62"


def test_an_unreadable_analysis_is_named(tmp_path: Path) -> None:
    run = write_run(tmp_path, profile_result(tp=2))
    (run / "analysis.json").write_text('{"ranks": 3}')
    with pytest.raises(InputError, match=r"analysis\.json: 'ranks' must be a list"):
        write_summary([run], tmp_path / "out")


def test_report_shows_the_profile_section_with_plot_and_reading(tmp_path: Path) -> None:
    out = tmp_path / "study"
    write_summary(study(tmp_path / "experiments"), out)
    page = render_report(out)
    assert '<section id="profile">' in page
    assert page.count('src="data:image/png;base64,') == 1
    assert "from 1 to 4 devices throughput goes from 1,000 to 3,000 tokens/s" in page
    assert "rank 3 holds the others back: it arrives last at the collectives (90.0% of" in page
    assert "the other ranks spent 3.50 ms in all waiting for it" in page
    assert "Where the time goes at TP=4" in page
    assert "No trace analysis for other_tp2" in page


def test_report_names_a_broken_profile_summary(tmp_path: Path, main_cli: InProcessCLI) -> None:
    (tmp_path / SUMMARY_FILE).write_text('{"kind": "profile_summary", "rows": [{"tp": 1}]}')
    ran = main_cli("report", str(tmp_path))
    assert ran.code == 2
    assert str(tmp_path / SUMMARY_FILE) in ran.err and "rows[0]" in ran.err


def test_summary_reads_what_profile_analyze_writes(tmp_path: Path) -> None:
    """The contract with `profile analyze`: real (small) traces of 4 ranks, rank 2 late at
    every all-reduce, analysed by hpcinfer.traces; the summary's comm figures and straggler
    are the analysis's."""
    from hpcinfer.traces import analyze_traces
    from tests.unit.trace_fakes import TraceBuilder

    all_reduce = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
    gemm = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1"
    run = write_run(tmp_path, profile_result("tp4", tp=4))
    for rank in range(4):
        trace = TraceBuilder(rank=rank, world_size=4)
        for step in range(24):  # 22 analysed: enough calls for a straggler to be named
            late = 80.0 if rank == 2 else 0.0
            trace.annotation(f"ProfilerStep#{step}", step * 1000, 1000)
            trace.kernel(gemm, step * 1000, 500)
            trace.kernel(all_reduce, step * 1000 + 600 + late, 200 - late, stream=20)
        trace.write(run / f"kineto_trace_{rank}.json.gz")
    analyze_traces(run, run, workers=1)
    [row] = write_summary([run], tmp_path / "out").rows
    assert (row.straggler_rank, row.straggler_last_pct) == (2, 100.0)
    assert row.collectives_per_step == "all_reduce=1"
    # 200 us of 1000 on the punctual ranks, 120 us on the late one: the mean is 18%
    assert row.comm_overhead_pct == pytest.approx(18.0)
    assert row.exposed_comm_pct == pytest.approx(18.0)  # nothing overlaps the all-reduce
    assert row.note == ""
