"""`hpcinfer bench offline` without an engine: statistics, rates, exactness, prompts, the
engine's launch (kwargs, binding, env), FLOP/MFU plumbing, the FOM's CSV row and flag checks."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from hpcinfer.bench.fom import FomCase, ModelShape, flops_decode, flops_prefill
from hpcinfer.bench.offline import (
    BenchSettings,
    case_csv_row,
    case_figures,
    engine_launch,
    fom_csv_tables,
    model_shape,
    resolve_hardware,
    run_offline,
)
from hpcinfer.bench.offline_engine import (
    BatchCase,
    EngineInfo,
    EngineJob,
    _failure,
    _read_events,
    allowed_token_ids,
    first_error,
    random_prompts,
)
from hpcinfer.bench.samples import (
    IterationSample,
    RequestSample,
    check_exact,
    decode_rate,
    latency_stats,
    prefill_rate,
    request_stats,
)
from hpcinfer.errors import EngineError, SpecError
from hpcinfer.spec import JobSpec, build_spec

MODEL = ("/models/tiny", "tiny")


def batch(latency: float, ttfts: list[float], prompt: int, output: int) -> IterationSample:
    return IterationSample(
        latency_s=latency,
        requests=tuple(RequestSample(t, latency, prompt, output) for t in ttfts),
    )


def settings(tmp_path: Path, data: dict[str, object] | None = None, **kw: object) -> BenchSettings:
    spec = build_spec(data or {})
    return BenchSettings(spec=spec, out_dir=tmp_path / "out", cwd=tmp_path, **kw)  # type: ignore[arg-type]


def cpu_profile(tmp_path: Path, cores: int = 2) -> str:
    path = tmp_path / "two-cores.yaml"
    path.write_text(f"name: two-cores\nvendor: cpu\ncores_per_node: {cores}\n", encoding="utf-8")
    return str(path)


# -- statistics and rates -------------------------------------------------------------------


def test_latency_stats_are_numpy_style_in_seconds() -> None:
    stats = latency_stats([1.0, 2.0, 3.0, 4.0], (50, 90, 99))
    assert stats["mean"] == 2.5 and stats["median"] == 2.5
    assert stats["std"] == pytest.approx(math.sqrt(1.25))  # population std, as numpy/vLLM
    assert stats["p50"] == pytest.approx(2.5)
    assert stats["p90"] == pytest.approx(3.7)  # numpy's linear interpolation
    assert stats["p99"] == pytest.approx(3.97)
    assert set(stats) == {"mean", "median", "std", "p50", "p90", "p99"}
    with pytest.raises(ValueError, match="no timed iteration"):
        latency_stats([], (50,))


def test_prefill_and_decode_rates_pool_the_iterations() -> None:
    # 2 requests x 100 prompt tokens, 11 output tokens; last first token at 0.5 s of 2.5 s
    iterations = [batch(2.5, [0.4, 0.5], 100, 11), batch(1.5, [0.5, 0.5], 100, 11)]
    assert prefill_rate(iterations) == pytest.approx(400 / 1.0)
    assert decode_rate(iterations) == pytest.approx((2 * 2 * 10) / (2.0 + 1.0))
    stats = request_stats(iterations, (50,))
    assert stats["ttft_count"] == 4 and stats["mean_ttft_ms"] == pytest.approx(475.0)
    assert stats["mean_e2el_ms"] == pytest.approx(2000.0)


def test_one_token_outputs_have_no_decode_rate() -> None:
    assert decode_rate([batch(0.2, [0.2], 10, 1)]) is None


def test_exact_counts_pass_and_any_mismatch_names_iteration_and_request() -> None:
    good = [batch(1.0, [0.1, 0.1], 8, 4)]
    check_exact("c", good, input_len=8, output_len=4, batch_size=2)
    short = [good[0], batch(1.0, [0.1, 0.1], 8, 4)]
    short[1] = IterationSample(1.0, (RequestSample(0.1, 1.0, 8, 4), RequestSample(0.1, 1.0, 8, 3)))
    with pytest.raises(EngineError, match=r"c: iteration 2, request 1: .*generated 3 tokens"):
        check_exact("c", short, input_len=8, output_len=4, batch_size=2)
    with pytest.raises(EngineError, match=r"saw 8 prompt tokens, not exactly 9"):
        check_exact("c", good, input_len=9, output_len=4, batch_size=2)
    with pytest.raises(EngineError, match="finished 2 requests, not the batch of 3"):
        check_exact("c", good, input_len=8, output_len=4, batch_size=3)


# -- prompts and the child protocol ---------------------------------------------------------


def test_random_prompts_have_exact_lengths_no_special_ids_and_are_seeded() -> None:
    allowed = allowed_token_ids(50, special_ids=[0, 1, 2, 3])
    assert allowed == list(range(4, 50))
    prompts = random_prompts(allowed, batch_size=3, length=17, key="0/FOM1/iteration/1")
    assert [len(p) for p in prompts] == [17, 17, 17]
    assert all(4 <= token < 50 for p in prompts for token in p)
    assert prompts == random_prompts(allowed, 3, 17, "0/FOM1/iteration/1")
    assert prompts != random_prompts(allowed, 3, 17, "0/FOM1/iteration/2")
    assert len({tuple(p) for p in prompts}) == 3  # every request its own prompt
    with pytest.raises(ValueError, match="no ordinary token"):
        allowed_token_ids(2, [0, 1])


def test_engine_job_and_samples_survive_json() -> None:
    job = EngineJob({"model": "m"}, (BatchCase("a", 1, 2, 3),), warmup_iters=1, iters=2)
    assert EngineJob.from_json(job.as_json()) == job
    sample = batch(1.0, [0.1], 5, 6)
    assert IterationSample.from_dict(json.loads(json.dumps(sample.as_dict()))) == sample


def test_events_from_the_child_become_progress_cases_and_errors() -> None:
    info = {
        "max_model_len": 512,
        "dtype": "bfloat16",
        "text_config": {"num_hidden_layers": 2, "hidden_size": 128},
        "vllm_version": "0.32.0",
        "startup_s": 7.0,
    }
    lines = [
        {"event": "ready", **info},
        {
            "event": "iteration",
            "case": "a",
            "phase": "warm-up",
            "index": 1,
            "count": 1,
            "latency_s": 0.5,
        },
        {"event": "startup", "phases": {"imports_s": 3.0, "first_token_s": 0.1}},
        {"event": "case", "name": "a", "iterations": [batch(0.4, [0.1], 3, 2).as_dict()]},
    ]
    shown: list[str] = []
    stream = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    run, error = _read_events(stream, shown.append)
    assert error is None and run is not None
    phases = {"imports_s": 3.0, "first_token_s": 0.1}  # the later event completes the start-up
    assert run.info == EngineInfo(**info, startup=phases)  # type: ignore[arg-type]
    assert run.cases["a"] == [batch(0.4, [0.1], 3, 2)]
    assert "a: warm-up 1/1: 0.500 s" in shown
    assert "engine ready in 7.0 s" in shown[0]
    failing = io.BytesIO(b'{"event": "error", "usage": true, "message": "too long"}\n')
    assert _read_events(failing, shown.append)[1] == {"usage": True, "message": "too long"}


ENGINE_LOG = """INFO 11-22 [core.py:1] starting
(Worker_PP1 pid=1) ERROR 11-22 [executor.py:9] Traceback (most recent call last):
(Worker_PP1 pid=1) ERROR 11-22 [executor.py:9]   File "runner.py", line 3174, in gather
(Worker_PP1 pid=1) ERROR 11-22 [executor.py:9] AssertionError
(EngineCore pid=2) ERROR 11-22 [core.py:1512] KeyError: 'r-1'
vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace
INFO 11-22 [core_client.py:770] [shutdown] MPClient: complete
"""


def test_an_engine_failure_names_its_log_and_the_root_cause_when_hidden(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(ENGINE_LOG, encoding="utf-8")
    assert first_error(log) == "(Worker_PP1 pid=1) ERROR 11-22 [executor.py:9] AssertionError"
    assert first_error(tmp_path / "missing.log") is None
    hidden = _failure("the engine failed: EngineDeadError: see the stack trace above", log)
    assert f"(log: {log})" in hidden and "first error in the log: (Worker_PP1" in hidden
    assert "last log lines:" in hidden and "MPClient: complete" in hidden
    plain = _failure("the engine failed: ValueError: no such model", log)
    assert "first error in the log" not in plain


# -- the engine's launch --------------------------------------------------------------------


def test_cpu_tp1_launch_runs_an_in_process_engine_with_benchmark_defaults(
    tmp_path: Path,
) -> None:
    bench = settings(tmp_path, {"workers": {"profile": cpu_profile(tmp_path)}})
    hardware = resolve_hardware(bench)
    launch = engine_launch(bench, hardware, MODEL, 512, max_batch=4, base_env={"PATH": "/bin"})
    kwargs = launch.llm_kwargs
    assert kwargs["model"] == "/models/tiny" and kwargs["served_model_name"] == "tiny"
    assert kwargs["distributed_executor_backend"] == "uni" and kwargs["enforce_eager"]
    assert kwargs["max_model_len"] == 512 and kwargs["max_num_seqs"] == 4
    assert kwargs["enable_prefix_caching"] is False  # as vllm bench latency
    assert kwargs["gpu_memory_utilization"] == 0.3
    env = launch.env
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and launch.cores == {0, 1}
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/bin"


def test_cpu_tp2_binds_one_core_per_rank_and_uses_worker_processes(tmp_path: Path) -> None:
    bench = settings(
        tmp_path,
        {
            "workers": {"profile": cpu_profile(tmp_path)},
            "engine": {
                "tensor_parallel_size": 2,
                "max_num_seqs": 16,
                "extra": {"enable_prefix_caching": True},
            },
        },
    )
    launch = engine_launch(bench, resolve_hardware(bench), MODEL, None, 4, base_env={})
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in launch.env
    kwargs = launch.llm_kwargs
    assert kwargs["tensor_parallel_size"] == 2 and "distributed_executor_backend" not in kwargs
    assert kwargs["max_num_seqs"] == 16  # the user's choice wins
    assert kwargs["enable_prefix_caching"] is True
    assert "max_model_len" not in kwargs  # the model's own


def test_pipeline_stages_leave_the_in_process_executor(tmp_path: Path) -> None:
    bench = settings(tmp_path, {"workers": {"profile": cpu_profile(tmp_path)}}, pp=2)
    launch = engine_launch(bench, resolve_hardware(bench), MODEL, None, 1, base_env={})
    assert launch.llm_kwargs["pipeline_parallel_size"] == 2
    assert "distributed_executor_backend" not in launch.llm_kwargs
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in launch.env
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


def test_gpu_launch_binds_the_group_and_takes_the_profiles_peak(tmp_path: Path) -> None:
    bench = settings(
        tmp_path, {"workers": {"profile": "polaris"}, "engine": {"tensor_parallel_size": 2}}
    )
    hardware = resolve_hardware(bench)
    assert hardware.devices == 2 and hardware.peak_tflops == 312.0
    assert "polaris" in hardware.mfu_note()
    launch = engine_launch(bench, hardware, MODEL, 4096, 8, base_env={})
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "gpu_memory_utilization" not in launch.llm_kwargs  # vLLM's GPU default
    override = settings(tmp_path, {"workers": {"profile": "polaris"}}, peak_tflops=100.0)
    assert resolve_hardware(override).peak_tflops == 100.0


def test_tp_beyond_the_devices_is_a_flag_error(tmp_path: Path) -> None:
    bench = settings(
        tmp_path,
        {"workers": {"profile": cpu_profile(tmp_path)}, "engine": {"tensor_parallel_size": 2}},
        pp=2,
    )
    with pytest.raises(SpecError, match=r"--tp 2 x --pp 2 needs 4 cores; .* has 2: lower"):
        resolve_hardware(bench)


def test_cpu_profile_has_no_peak_so_mfu_is_na_and_says_why(tmp_path: Path) -> None:
    hardware = resolve_hardware(settings(tmp_path, {"workers": {"profile": cpu_profile(tmp_path)}}))
    assert hardware.peak_tflops is None
    assert "MFU n/a" in hardware.mfu_note() and "--peak-tflops" in hardware.mfu_note()


# -- figures --------------------------------------------------------------------------------


def test_case_figures_give_fom_throughput_flops_and_mfu(tmp_path: Path) -> None:
    bench = settings(
        tmp_path, {"workers": {"profile": "polaris"}, "engine": {"tensor_parallel_size": 2}}
    )
    hardware = resolve_hardware(bench)
    case = FomCase("FOM1", input_len=100, output_len=10, batch_size=2, max_model_len=512)
    iterations = [batch(2.0, [0.5, 0.5], 100, 10), batch(4.0, [0.5, 0.5], 100, 10)]
    shape = ModelShape(layers=2, hidden=128)
    figures, result = case_figures(case, iterations, shape, hardware, (50, 99))
    assert figures["latency_s"]["mean"] == 3.0 and figures["iterations_s"] == [2.0, 4.0]
    assert figures["input_tokens"] == 200 and figures["output_tokens"] == 20
    assert figures["total_input_tokens"] == 400 and figures["total_output_tokens"] == 40
    assert figures["throughput"] == pytest.approx(220 / 3.0)
    flops = (flops_prefill(2, 2, 128, 100) + flops_decode(2, 2, 128, 10)) / 3.0
    assert figures["flops_per_s"] == pytest.approx(flops)
    assert figures["mfu"] == pytest.approx(flops / (312e12 * 2))
    assert figures["prefill_tokens_per_s"] == pytest.approx(400 / 1.0)
    assert result.throughput == figures["throughput"] and result.latency_s == 3.0
    row = case_csv_row("tiny", result, "bfloat16", tp=2)
    assert list(row.values()) == ["tiny", "bfloat16", 220 / 3.0, 3.0, 2, 2, 100, 10, 512]
    with pytest.raises(EngineError, match="not exactly 11"):
        case_figures(FomCase("x", 100, 11, 2, 512), iterations, shape, hardware, (50,))


def test_model_shape_comes_from_the_engines_config_or_says_why_not() -> None:
    info = EngineInfo(512, "bfloat16", {"num_hidden_layers": 2, "hidden_size": 128}, "0", 1.0)
    assert model_shape(info)[0] == ModelShape(2, 128)
    shape, note = model_shape(EngineInfo(512, "bfloat16", {}, "0", 1.0))
    assert shape is None and note.startswith("FLOP FOM n/a") and "num_hidden_layers" in note


# -- flag checks before any engine ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"iters": 0}, "--iters 0"),
        ({"pp": 0}, "--pp 0"),
        ({"warmup_iters": -1}, "--warmup-iters"),
        ({"peak_tflops": -1.0}, "--peak-tflops"),
        ({"temperature": -0.5}, "--temperature"),
    ],
)
def test_bad_settings_name_their_flag(
    tmp_path: Path, changes: dict[str, object], flag: str
) -> None:
    with pytest.raises(SpecError, match=flag):
        BenchSettings(spec=JobSpec(), out_dir=tmp_path, **changes)  # type: ignore[arg-type]


def test_lengths_over_max_model_len_fail_before_the_engine(tmp_path: Path) -> None:
    bench = settings(tmp_path, {"engine": {"max_model_len": 128}})
    with pytest.raises(SpecError, match=r"--input-len 100 \+ --output-len 100 = 200 .* 128"):
        run_offline(bench, 100, 100, 1, progress=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_a_csv_with_another_header_fails_before_the_run(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n", encoding="utf-8")
    bench = settings(tmp_path, csv_copy=other)
    with pytest.raises(SpecError, match=r"--csv .*other.csv: cannot append .*header"):
        fom_csv_tables(bench, tmp_path / "out" / "offline.csv")
    own_csv = tmp_path / "own.csv"
    own_csv.write_text(
        "Model Name, precision, throughput, latency, batch size, tensor_parallel, input length, "
        "output length, context_length\n",
        encoding="utf-8",
    )  # the seed's own ", " separators are accepted
    assert fom_csv_tables(settings(tmp_path, csv_copy=own_csv)) == (own_csv,)
