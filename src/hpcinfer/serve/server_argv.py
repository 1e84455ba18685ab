"""The command line and environment of one vLLM OpenAI-compatible server.

The server starts as `python -m vllm.entrypoints.openai.api_server` with this interpreter
(the `vllm` console script of the CPU build is broken, and a module path works for every
build). The argv is a list handed to `exec`, never to a shell, so nothing is quoted; the
API key travels in the environment (`VLLM_API_KEY`) because a command line is visible to
every user of the node (`ps`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.core.api_keys import resolve_api_key
from hpcinfer.core.binding_env import BindingEnv
from hpcinfer.core.processes import bound_env
from hpcinfer.engines.cpu_memory import cpu_kv_cache_share
from hpcinfer.engines.lora_adapters import server_lora_flags
from hpcinfer.spec import EngineSpec, ServeSpec

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
API_KEY_VAR = "VLLM_API_KEY"


@dataclass(frozen=True)
class ServerArgs:
    """What differs between the servers of one fleet."""

    model_path: str
    model_name: str
    host: str
    port: int
    on_cpu: bool
    servers_on_node: int = 1


def flag(name: str) -> str:
    """`max_num_seqs` -> `--max-num-seqs` (vLLM's spelling of an engine argument)."""
    return "--" + name.strip().lstrip("-").replace("_", "-")


def extra_flags(extra: Mapping[str, Any]) -> list[str]:
    """engine.extra as flags: True -> `--flag`, False -> `--no-flag`, a list -> `--flag a b`,
    a mapping -> `--flag '{json}'`; None is left out."""
    import json

    argv: list[str] = []
    for key, value in extra.items():
        if value is None:
            continue
        if value is True:
            argv.append(flag(key))
        elif value is False:
            argv.append("--no-" + flag(key)[2:])
        elif isinstance(value, list | tuple):
            argv += [flag(key), *(str(v) for v in value)]
        elif isinstance(value, dict):
            argv += [flag(key), json.dumps(value)]
        else:
            argv += [flag(key), str(value)]
    return argv


def memory_flags(engine: EngineSpec, on_cpu: bool, servers_on_node: int) -> list[str]:
    """KV-cache size: exact bytes, else the share asked for, else 0.3 of RAM split between
    the node's engine processes on CPU."""
    if engine.kv_cache_bytes is not None:
        return ["--kv-cache-memory-bytes", str(engine.kv_cache_bytes)]
    if engine.memory_share is not None:
        return ["--gpu-memory-utilization", str(engine.memory_share)]
    if on_cpu:
        share = cpu_kv_cache_share(servers_on_node, engine.tensor_parallel_size)
        return ["--gpu-memory-utilization", str(share)]
    return []


def server_argv(
    args: ServerArgs, engine: EngineSpec, serve: ServeSpec, python: str = sys.executable
) -> list[str]:
    """The full argv: fixed flags from the spec, then engine.extra, then serve.args (last, so
    a user's flag wins where vLLM takes the last occurrence)."""
    argv = [python, "-m", SERVER_MODULE, "--model", args.model_path]
    argv += ["--served-model-name", args.model_name]
    argv += ["--host", args.host, "--port", str(args.port)]
    argv += ["--tensor-parallel-size", str(engine.tensor_parallel_size)]
    argv += ["--dtype", engine.dtype, "--seed", "0"]
    if engine.max_model_len is not None:
        argv += ["--max-model-len", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(engine.max_num_seqs)]
    argv += memory_flags(engine, args.on_cpu, args.servers_on_node)
    eager = engine.enforce_eager if engine.enforce_eager is not None else args.on_cpu
    if eager:
        argv.append("--enforce-eager")
    if engine.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += server_lora_flags(engine.lora_adapters, args.on_cpu, Path.cwd())
    return [*argv, *extra_flags(engine.extra), *serve.args]


def api_key(serve: ServeSpec, env: Mapping[str, str]) -> str | None:
    """The key from the variable serve.api_key_env names; None when no key is asked for."""
    return resolve_api_key(serve.api_key_env, env, default=None, for_what="before `hpcinfer serve`")


def server_env(base: Mapping[str, str], binding: BindingEnv, key: str | None) -> dict[str, str]:
    """The server's environment: the caller's, minus launcher rank variables (vLLM would
    take them for its own distributed setup), plus the device binding, offline hub access
    and the API key. A VLLM_API_KEY inherited from the shell is dropped unless asked for,
    so servers never require a key nobody here knows."""
    env = bound_env(base, binding)
    env.pop(API_KEY_VAR, None)
    if key is not None:
        env[API_KEY_VAR] = key
    return env
