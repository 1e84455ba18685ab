"""The command line's flags that set JobSpec fields: one table, read by every command.

A flag left unset (None, or an empty list for a repeatable one) keeps the spec file's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# CLI flag -> dotted spec field. Flags left unset do not override the spec file.
FLAG_FIELDS = {
    "model": "model",
    "engine": "engine.kind",
    "endpoints": "client.registry",
    "url": "client.urls",
    "servers": "serve.servers",
    "out": "output.dir",
    "dtype": "engine.dtype",
    "max_model_len": "engine.max_model_len",
    "tp": "engine.tensor_parallel_size",
    "memory_share": "engine.memory_share",
    "kv_cache_bytes": "engine.kv_cache_bytes",
    "max_num_seqs": "engine.max_num_seqs",
    "trust_remote_code": "engine.trust_remote_code",
    "enforce_eager": "engine.enforce_eager",
    "temperature": "sampling.temperature",
    "top_p": "sampling.top_p",
    "top_k": "sampling.top_k",
    "max_tokens": "sampling.max_tokens",
    "seed": "sampling.seed",
    "stop": "sampling.stop",
    "ignore_eos": "sampling.ignore_eos",
    "input_format": "inputs.format",
    "prompt_field": "inputs.prompt_field",
    "id_field": "inputs.id_field",
    "template": "inputs.template",
    "max_tokens_field": "inputs.max_tokens_field",
    "export": "output.exports",
    "include_prompt": "output.include_prompt",
    "workers": "workers.count",
    "profile": "workers.profile",
    "placement": "workers.placement",
    "unit_size": "workers.unit_size",
    "max_inflight": "workers.max_inflight",
    "time_limit": "time_limit",
    "launcher": "workers.launcher",
    "schedule": "workers.schedule",
    "local_dir": "output.local_dir",
}


def spec_fields(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted spec fields set by the spec flags among `flags` (a command's parameters)."""
    return {FLAG_FIELDS[name]: value for name, value in flags.items() if name in FLAG_FIELDS}
