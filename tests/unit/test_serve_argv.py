"""A server's argv and environment: from the spec, with platform defaults, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcinfer.errors import SpecError
from hpcinfer.serve.server_argv import (
    SERVER_MODULE,
    ServerArgs,
    api_key,
    extra_flags,
    server_argv,
    server_env,
)
from hpcinfer.spec import EngineSpec, ServeSpec

CPU = ServerArgs("/models/m", "m", "127.0.0.1", 8001, on_cpu=True, servers_on_node=2)
GPU = ServerArgs("/models/m", "m", "0.0.0.0", 8000, on_cpu=False)


def value_of(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_argv_carries_the_spec_and_starts_the_module_with_this_python() -> None:
    engine = EngineSpec(
        tensor_parallel_size=2, dtype="bfloat16", max_model_len=4096, max_num_seqs=64
    )
    argv = server_argv(CPU, engine, ServeSpec(), python="/venv/bin/python")
    assert argv[:3] == ["/venv/bin/python", "-m", SERVER_MODULE]
    assert value_of(argv, "--model") == "/models/m"
    assert value_of(argv, "--served-model-name") == "m"
    assert value_of(argv, "--host") == "127.0.0.1"
    assert value_of(argv, "--port") == "8001"
    assert value_of(argv, "--tensor-parallel-size") == "2"
    assert value_of(argv, "--dtype") == "bfloat16"
    assert value_of(argv, "--max-model-len") == "4096"
    assert value_of(argv, "--max-num-seqs") == "64"
    assert value_of(argv, "--seed") == "0"


def test_cpu_defaults_split_the_kv_share_and_run_eager() -> None:
    argv = server_argv(CPU, EngineSpec(), ServeSpec())
    assert value_of(argv, "--gpu-memory-utilization") == "0.15"  # 0.3 over 2 servers
    assert "--enforce-eager" in argv
    assert "--max-model-len" not in argv
    tp2 = server_argv(CPU, EngineSpec(tensor_parallel_size=2), ServeSpec())
    assert value_of(tp2, "--gpu-memory-utilization") == "0.075"  # and over each TP rank


def test_gpu_defaults_leave_memory_and_graphs_to_vllm() -> None:
    argv = server_argv(GPU, EngineSpec(), ServeSpec())
    assert "--gpu-memory-utilization" not in argv
    assert "--enforce-eager" not in argv


def test_explicit_memory_settings_win() -> None:
    share = server_argv(CPU, EngineSpec(memory_share=0.5), ServeSpec())
    assert value_of(share, "--gpu-memory-utilization") == "0.5"
    exact = server_argv(CPU, EngineSpec(kv_cache_bytes=1 << 30, memory_share=0.5), ServeSpec())
    assert value_of(exact, "--kv-cache-memory-bytes") == str(1 << 30)
    assert "--gpu-memory-utilization" not in exact
    lazy = server_argv(CPU, EngineSpec(enforce_eager=False, trust_remote_code=True), ServeSpec())
    assert "--enforce-eager" not in lazy
    assert "--trust-remote-code" in lazy


def test_extra_engine_args_then_serve_args_come_last() -> None:
    engine = EngineSpec(
        extra={
            "swap_space": 4,
            "enable_prefix_caching": True,
            "enable_chunked_prefill": False,
            "allowed_origins": ["a", "b"],
            "compilation_config": {"level": 0},
            "skipped": None,
        }
    )
    argv = server_argv(CPU, engine, ServeSpec(args=["--uvicorn-log-level", "warning"]))
    assert argv[-2:] == ["--uvicorn-log-level", "warning"]
    assert value_of(argv, "--swap-space") == "4"
    assert "--enable-prefix-caching" in argv
    assert "--no-enable-chunked-prefill" in argv
    assert argv[argv.index("--allowed-origins") : argv.index("--allowed-origins") + 3] == [
        "--allowed-origins",
        "a",
        "b",
    ]
    assert value_of(argv, "--compilation-config") == '{"level": 0}'
    assert "--skipped" not in argv
    assert extra_flags({"--already-dashed": 1}) == ["--already-dashed", "1"]


def test_api_key_travels_in_the_environment_only() -> None:
    serve = ServeSpec(api_key_env="MY_KEY")
    key = api_key(serve, {"MY_KEY": "s3cret"})
    argv = server_argv(CPU, EngineSpec(), serve)
    env = server_env({"PATH": "/bin"}, {}, key)
    assert env["VLLM_API_KEY"] == "s3cret"
    assert not any("s3cret" in a for a in argv)
    assert "--api-key" not in argv


def test_unset_key_variable_is_a_clear_error() -> None:
    with pytest.raises(SpecError, match=r"\$MY_KEY is not set.*export MY_KEY"):
        api_key(ServeSpec(api_key_env="MY_KEY"), {})
    assert api_key(ServeSpec(), {"MY_KEY": "x"}) is None


def test_env_binds_devices_drops_rank_vars_and_stray_keys() -> None:
    base = {
        "PATH": "/bin",
        "PMI_RANK": "1",
        "OMPI_COMM_WORLD_RANK": "1",
        "SLURM_PROCID": "1",
        "VLLM_API_KEY": "inherited",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    }
    env = server_env(base, {"CUDA_VISIBLE_DEVICES": "2", "HIP_VISIBLE_DEVICES": None}, None)
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert env["HF_HUB_OFFLINE"] == "1"
    for gone in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "VLLM_API_KEY"):
        assert gone not in env
    assert server_env({"HF_HUB_OFFLINE": "0"}, {}, None)["HF_HUB_OFFLINE"] == "0"


def test_lora_adapters_are_served_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path
    for name, rank in (("sql", 4), ("chat", 20)):
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text(
            f'{{"r": {rank}, "target_modules": ["q_proj"]}}'
        )
        (root / name / "adapter_model.safetensors").write_bytes(b"{}")
    monkeypatch.chdir(root)
    engine = EngineSpec(lora_adapters={"sql": "sql", "chat": str(root / "chat")})
    argv = server_argv(GPU, engine, ServeSpec())
    assert "--enable-lora" in argv and value_of(argv, "--max-lora-rank") == "32"
    assert value_of(argv, "--max-loras") == "2"
    at = argv.index("--lora-modules")
    assert argv[at + 1 : at + 3] == [f"chat={root / 'chat'}", f"sql={root / 'sql'}"]
    assert value_of(server_argv(CPU, engine, ServeSpec()), "--max-loras") == "3"  # a spare
    with pytest.raises(SpecError, match=r"engine.lora_adapters.x=nope: .* is not a directory"):
        server_argv(GPU, EngineSpec(lora_adapters={"x": "nope"}), ServeSpec())
    assert "--enable-lora" not in server_argv(GPU, EngineSpec(), ServeSpec())
