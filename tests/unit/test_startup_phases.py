"""Start-up phases: vLLM's own figures read from real log lines, and the clock's arithmetic."""

from __future__ import annotations

from pathlib import Path

from hpcinfer.core.startup_phases import (
    StartupClock,
    StartupPhases,
    phases_from_log,
    phases_from_log_file,
    server_startup,
)

DATA = Path(__file__).parent / "data"
CPU_LOG = DATA / "vllm_0.32_cpu_startup.log"
"""A worker's log from `hpcinfer run` on this machine's CPU vLLM 0.32 (tiny model, eager)."""

# Lines vLLM 0.32 writes on GPUs at TP 2 (its format strings in gpu_model_runner.py, core.py
# and compilation/monitor.py), with the prefixes a multiprocess engine's processes carry.
GPU_TP2 = (DATA / "vllm_0.32_gpu_tp2_startup.log").read_text()


def test_cpu_log_of_vllm_0_32() -> None:
    phases = phases_from_log(CPU_LOG.read_text().splitlines())
    # "Initializing model took 0.116459 seconds" + "Loading weights took 0.01 seconds"
    assert phases.model_load_s == round(0.116459 + 0.01, 3)
    # "init engine (profile, create kv cache, warmup model) took 2.56 s", nothing compiled
    assert phases.kv_cache_s == 2.56
    assert phases.compile_s == 0.0
    assert phases.imports_s is None and phases.first_token_s is None and phases.total_s is None


def test_gpu_lines_take_the_slowest_rank_and_split_compilation_off() -> None:
    phases = phases_from_log(GPU_TP2.splitlines())
    assert phases.model_load_s == 22.014  # "Model loading took" wins over its parts
    assert phases.compile_s == 18.64 + 10  # compilation + the slowest graph capture
    assert phases.kv_cache_s == round(41.80 - 18.64 - 10, 3)


def test_older_vllm_wording_and_nothing_reported() -> None:
    older = ["INFO 05-01 10:00:00 monitor.py:33] torch.compile takes 12.50 s in total"]
    assert phases_from_log(older).compile_s == 12.5
    assert phases_from_log(older).kv_cache_s is None
    nothing = phases_from_log(["INFO starting", "Loading safetensors checkpoint shards: 100%"])
    assert nothing == StartupPhases()


def test_log_file_from_an_offset_skips_an_earlier_start(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    earlier = GPU_TP2
    log.write_text(earlier + CPU_LOG.read_text())
    assert phases_from_log_file(log, len(earlier.encode())).model_load_s == 0.126
    assert phases_from_log_file(tmp_path / "missing.log") == StartupPhases()


def test_server_total_is_its_ready_time(tmp_path: Path) -> None:
    log = tmp_path / "server-0.log"
    log.write_text(GPU_TP2)
    phases = server_startup(log, 95.25)
    assert phases.total_s == 95.25 and phases.model_load_s == 22.014
    assert phases.imports_s is None and phases.first_token_s is None


def test_clock_reads_what_the_engine_logged_while_it_started(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(GPU_TP2)  # an earlier engine's start: not this one's
    clock = StartupClock(log)
    with clock.imports():
        import json  # noqa: F401  (anything: the clock only times it)
    with clock.engine(), log.open("a") as handle:
        handle.write(CPU_LOG.read_text())
    clock.first_token(0.25)
    clock.first_token(9.0)  # only the first request counts
    phases = clock.phases()
    assert phases.model_load_s == 0.126 and phases.kv_cache_s == 2.56
    assert phases.first_token_s == 0.25
    assert phases.imports_s is not None and phases.total_s is not None
    assert clock.engine_s is not None
    # the total is what was timed here: imports + engine construction + first token
    assert abs(phases.total_s - (phases.imports_s + clock.engine_s + 0.25)) < 0.0025
    assert list(phases.reported()) == [
        "imports_s",
        "model_load_s",
        "kv_cache_s",
        "compile_s",
        "first_token_s",
    ]


def test_clock_without_a_log_keeps_vllm_phases_unknown() -> None:
    clock = StartupClock(Path("/nonexistent/dir/engine.log"))
    with clock.engine():
        pass
    phases = clock.phases()
    assert phases.model_load_s is None and phases.compile_s is None
    assert phases.total_s is not None and phases.first_token_s is None


def test_cpu_tp2_log_of_vllm_0_32() -> None:
    """A TP 2 engine on this machine: the EngineCore and both TP workers are child processes
    of the worker and write its log; rank 0 alone reports the model load."""
    log = DATA / "vllm_0.32_cpu_tp2_startup.log"
    phases = phases_from_log(log.read_text().splitlines())
    assert phases.model_load_s == round(0.174238 + 0.01, 3)
    assert phases.kv_cache_s == 1.52 and phases.compile_s == 0.0
