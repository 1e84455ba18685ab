"""What hpcinfer passes to vLLM (no vLLM import): LLM kwargs, SamplingParams kwargs, env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcinfer.core.tiny_model import cache_root, tiny_model_dir
from hpcinfer.engines.vllm_offline import (
    EngineSetup,
    engine_env,
    in_process_engine,
    llm_kwargs,
    sampling_kwargs,
)
from hpcinfer.spec import EngineSpec, SamplingSpec


def make_setup(
    on_cpu: bool = True,
    workers_on_node: int = 1,
    sampling: dict[str, Any] | None = None,
    **engine: Any,
) -> EngineSetup:
    return EngineSetup(
        model_path="/models/m",
        model_name="m",
        engine=EngineSpec(**engine),
        sampling=SamplingSpec(**(sampling or {})),
        on_cpu=on_cpu,
        workers_on_node=workers_on_node,
    )


# -- llm_kwargs on CPU ------------------------------------------------------------------------


def test_cpu_defaults() -> None:
    kwargs = llm_kwargs(make_setup(on_cpu=True))
    assert kwargs["model"] == kwargs["tokenizer"] == "/models/m"
    assert kwargs["served_model_name"] == "m"
    assert kwargs["dtype"] == "auto"
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["trust_remote_code"] is False
    assert kwargs["enforce_eager"] is True
    assert kwargs["distributed_executor_backend"] == "uni"
    assert kwargs["gpu_memory_utilization"] == 0.3
    assert kwargs["seed"] == 0
    assert "max_model_len" not in kwargs and "max_num_seqs" not in kwargs


def test_cpu_tp2_uses_vllms_own_executor() -> None:
    kwargs = llm_kwargs(make_setup(on_cpu=True, tensor_parallel_size=2))
    assert kwargs["tensor_parallel_size"] == 2
    assert "distributed_executor_backend" not in kwargs
    assert kwargs["enforce_eager"] is True


@pytest.mark.parametrize(("workers", "share"), [(1, 0.3), (2, 0.15), (3, 0.1), (4, 0.075)])
def test_cpu_kv_share_is_split_between_workers_on_the_node(workers: int, share: float) -> None:
    kwargs = llm_kwargs(make_setup(on_cpu=True, workers_on_node=workers))
    assert kwargs["gpu_memory_utilization"] == pytest.approx(share)


def test_zero_workers_on_node_does_not_divide_by_zero() -> None:
    assert llm_kwargs(make_setup(workers_on_node=0))["gpu_memory_utilization"] == 0.3


def test_memory_share_overrides_the_cpu_default() -> None:
    kwargs = llm_kwargs(make_setup(on_cpu=True, workers_on_node=4, memory_share=0.5))
    assert kwargs["gpu_memory_utilization"] == 0.5


def test_kv_cache_bytes_overrides_memory_share() -> None:
    kwargs = llm_kwargs(make_setup(on_cpu=True, memory_share=0.5, kv_cache_bytes=1 << 30))
    assert kwargs["kv_cache_memory_bytes"] == 1 << 30
    assert "gpu_memory_utilization" not in kwargs


def test_explicit_enforce_eager_false_on_cpu() -> None:
    assert "enforce_eager" not in llm_kwargs(make_setup(on_cpu=True, enforce_eager=False))


def test_spec_fields_are_passed() -> None:
    kwargs = llm_kwargs(
        make_setup(
            dtype="bfloat16",
            max_model_len=2048,
            max_num_seqs=64,
            trust_remote_code=True,
            sampling={"seed": 7},
        )
    )
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["max_model_len"] == 2048
    assert kwargs["max_num_seqs"] == 64
    assert kwargs["trust_remote_code"] is True
    assert kwargs["seed"] == 7


def test_extra_kwargs_win() -> None:
    extra = {"enforce_eager": False, "gpu_memory_utilization": 0.8, "block_size": 16}
    kwargs = llm_kwargs(make_setup(on_cpu=True, extra=extra))
    assert kwargs["enforce_eager"] is False
    assert kwargs["gpu_memory_utilization"] == 0.8
    assert kwargs["block_size"] == 16


# -- llm_kwargs on GPU ------------------------------------------------------------------------


def test_gpu_defaults_leave_vllm_defaults_alone() -> None:
    kwargs = llm_kwargs(make_setup(on_cpu=False))
    assert "enforce_eager" not in kwargs
    assert "gpu_memory_utilization" not in kwargs
    assert "distributed_executor_backend" not in kwargs


def test_gpu_explicit_settings_are_passed() -> None:
    kwargs = llm_kwargs(
        make_setup(on_cpu=False, enforce_eager=True, memory_share=0.85, tensor_parallel_size=4)
    )
    assert kwargs["enforce_eager"] is True
    assert kwargs["gpu_memory_utilization"] == 0.85
    assert kwargs["tensor_parallel_size"] == 4
    assert "distributed_executor_backend" not in kwargs


# -- engine_env / in_process_engine -----------------------------------------------------------


def test_in_process_engine_only_for_cpu_tp1() -> None:
    assert in_process_engine(make_setup(on_cpu=True))
    assert not in_process_engine(make_setup(on_cpu=True, tensor_parallel_size=2))
    assert not in_process_engine(make_setup(on_cpu=False))


def test_engine_env() -> None:
    assert engine_env(make_setup(on_cpu=True)) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert engine_env(make_setup(on_cpu=True, tensor_parallel_size=2)) == {}
    assert engine_env(make_setup(on_cpu=False)) == {}


# -- sampling_kwargs --------------------------------------------------------------------------


def test_sampling_defaults_always_carry_max_tokens() -> None:
    kwargs = sampling_kwargs(SamplingSpec())
    assert kwargs == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 256, "ignore_eos": False}


@pytest.mark.parametrize("top_k", [None, 0, -1])
def test_top_k_disabled_is_omitted(top_k: int | None) -> None:
    assert "top_k" not in sampling_kwargs(SamplingSpec(top_k=top_k))


def test_sampling_fields_are_passed() -> None:
    kwargs = sampling_kwargs(
        SamplingSpec(
            temperature=0.8,
            top_p=0.95,
            top_k=20,
            max_tokens=64,
            min_tokens=8,
            seed=0,
            stop=["</s>", "\n\n"],
            ignore_eos=True,
        )
    )
    assert kwargs == {
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 20,
        "max_tokens": 64,
        "min_tokens": 8,
        "seed": 0,
        "stop": ["</s>", "\n\n"],
        "ignore_eos": True,
    }


def test_sampling_stop_is_a_copy() -> None:
    spec = SamplingSpec(stop=["x"])
    sampling_kwargs(spec)["stop"].append("y")
    assert spec.stop == ["x"]


# -- tiny model cache location (no build) -----------------------------------------------------


def test_cache_root_prefers_hpcinfer_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HPCINFER_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "c"
    assert tiny_model_dir().parent == tmp_path / "c"


def test_cache_root_falls_back_to_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HPCINFER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "hpcinfer"


def test_cache_root_defaults_to_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HPCINFER_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "hpcinfer"


def test_empty_env_values_are_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HPCINFER_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "hpcinfer"


@pytest.mark.parametrize(("workers", "tp", "share"), [(1, 2, 0.15), (2, 2, 0.075), (1, 4, 0.075)])
def test_cpu_kv_share_is_split_between_tensor_parallel_ranks(
    workers: int, tp: int, share: float
) -> None:
    """vLLM's CPU build gives the share to each TP rank's process: two ranks at 0.3 asked for
    14 GiB of a 24 GiB machine."""
    kwargs = llm_kwargs(make_setup(on_cpu=True, workers_on_node=workers, tensor_parallel_size=tp))
    assert kwargs["gpu_memory_utilization"] == pytest.approx(share)
