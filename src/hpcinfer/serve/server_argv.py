"""The command line and environment of one vLLM OpenAI-compatible server.

The server starts as `python -m vllm.entrypoints.openai.api_server` with this interpreter
(the `vllm` console script of the CPU build is broken, and a module path works for every
build); a server spanning nodes as `python -m hpcinfer.serve.vllm_cli` (vLLM's `vllm serve`,
whose `--headless` mode the nodes after the first one need). The argv is a list handed to
`exec`, never to a shell, so nothing is quoted; the API key travels in the environment
(`VLLM_API_KEY`) because a command line is visible to every user of the node (`ps`).
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
SPAN_MODULE = "hpcinfer.serve.vllm_cli"
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
    ranks_on_node: int | None = None
    """This server's ranks (devices) on this node; default: its tensor-parallel size."""


@dataclass(frozen=True)
class Span:
    """Where one node's rank sits in a server spanning nodes (vLLM's multi-node flags)."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int
    dp_rpc_port: int | None = None  # data parallel across nodes: the engines' handshake port

    @property
    def headless(self) -> bool:
        return self.node_rank > 0


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


def memory_flags(
    engine: EngineSpec, on_cpu: bool, servers_on_node: int, ranks_on_node: int | None = None
) -> list[str]:
    """KV-cache size: exact bytes, else the share asked for, else 0.3 of RAM split between
    the node's engine processes on CPU."""
    if engine.kv_cache_bytes is not None:
        return ["--kv-cache-memory-bytes", str(engine.kv_cache_bytes)]
    if engine.memory_share is not None:
        return ["--gpu-memory-utilization", str(engine.memory_share)]
    if on_cpu:
        ranks = ranks_on_node if ranks_on_node is not None else engine.tensor_parallel_size
        share = cpu_kv_cache_share(servers_on_node, ranks)
        return ["--gpu-memory-utilization", str(share)]
    return []


def parallel_flags(serve: ServeSpec) -> list[str]:
    """Pipeline, data and expert parallelism, where asked for (TP is always given)."""
    argv: list[str] = []
    if serve.pipeline_parallel_size > 1:
        argv += ["--pipeline-parallel-size", str(serve.pipeline_parallel_size)]
    if serve.data_parallel_size > 1:
        argv += ["--data-parallel-size", str(serve.data_parallel_size)]
    if serve.expert_parallel:
        argv.append("--enable-expert-parallel")
    return argv


def span_flags(span: Span, data_parallel: bool) -> list[str]:
    """vLLM's own multi-node mode: every node runs `vllm serve` with the same flags and its
    node rank; the first one serves the API, the others are `--headless` engine workers.
    The executor backend is named (vLLM picks Ray by itself where Ray is initialised)."""
    argv = ["--nnodes", str(span.nodes), "--node-rank", str(span.node_rank)]
    argv += ["--master-addr", span.master_addr, "--master-port", str(span.master_port)]
    argv += ["--distributed-executor-backend", "mp"]
    if data_parallel:
        argv += ["--data-parallel-address", span.master_addr]
        if span.dp_rpc_port is not None:
            argv += ["--data-parallel-rpc-port", str(span.dp_rpc_port)]
    if span.headless:
        argv.append("--headless")
    return argv


RAY_FLAGS = ("--distributed-executor-backend", "ray")
"""Named explicitly: since vLLM 0.11.1 a multi-node Ray server does not pick Ray by itself."""


def server_argv(
    args: ServerArgs,
    engine: EngineSpec,
    serve: ServeSpec,
    python: str = sys.executable,
    span: Span | None = None,
) -> list[str]:
    """The full argv: fixed flags from the spec, then engine.extra, then serve.args (last, so
    a user's flag wins where vLLM takes the last occurrence). `span`: this node's rank of a
    server spanning nodes with the mp backend; serve.backend 'ray' names Ray's executor."""
    module = SPAN_MODULE if span is not None or serve.backend == "ray" else SERVER_MODULE
    argv = [python, "-m", module, "--model", args.model_path]
    argv += ["--served-model-name", args.model_name]
    if span is None or not span.headless:
        argv += ["--host", args.host, "--port", str(args.port)]
    argv += ["--tensor-parallel-size", str(engine.tensor_parallel_size)]
    argv += parallel_flags(serve)
    if span is not None:
        argv += span_flags(span, serve.data_parallel_size > 1)
    elif serve.backend == "ray":
        argv += RAY_FLAGS
    argv += ["--dtype", engine.dtype, "--seed", "0"]
    if engine.max_model_len is not None:
        argv += ["--max-model-len", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(engine.max_num_seqs)]
    argv += memory_flags(engine, args.on_cpu, args.servers_on_node, args.ranks_on_node)
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
