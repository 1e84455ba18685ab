"""How an experiment's parallel plan reaches vLLM, or why vLLM cannot run it.

Users' earlier scripts wrote EP and DP into the config and never passed them to vLLM, so an
"EP4" run was a dense TP run. Here every degree either becomes a vLLM engine argument or the
experiment is refused with the reason, before anything starts:

- tp, pp -> `tensor_parallel_size`, `pipeline_parallel_size`;
- dp_replicate -> `data_parallel_size`; refused above 1 for now: `profile run` drives one
  offline engine, and vLLM refuses `LLM(data_parallel_size>1)` in a single process;
- ep > 1 -> `enable_expert_parallel=True`. vLLM has no separate EP size: the experts are
  split over all TP x DP ranks, so ep must be 1 or tp x dp_replicate, and the model must
  have experts (checked when its config.json can be read here);
- dp_shard and cp have no vLLM inference counterpart that hpcinfer drives: refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.profile.experiment import ExperimentConfig, Parallelism

TINY = "tiny"
"""`model.name: tiny` is hpcinfer's built-in tiny Llama (dense, 2 layers, 4 heads)."""

# config.json keys that give a mixture-of-experts model's expert count (Mixtral, Qwen-MoE,
# DeepSeek, gpt-oss, ...); a config with none of them is a dense model.
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class VllmPlan:
    """The engine arguments the plan becomes, what could not be checked, and refusals."""

    engine_args: dict[str, Any]
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def runnable(self) -> bool:
        return not self.refusals


def engine_args(parallelism: Parallelism) -> dict[str, Any]:
    """The vLLM engine arguments of the plan."""
    return {
        "tensor_parallel_size": parallelism.tp,
        "pipeline_parallel_size": parallelism.pp,
        "data_parallel_size": parallelism.dp_replicate,
        "enable_expert_parallel": parallelism.ep > 1,
    }


def model_architecture(name: str) -> dict[str, Any] | None:
    """The model's config.json when it can be read here (the built-in tiny model once built,
    a local folder, or a Hugging Face id already in the local cache); else None."""
    path: Path | None = None
    if name == TINY:
        from hpcinfer.core.tiny_model import tiny_model_dir

        path = tiny_model_dir() / "config.json"
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser() / "config.json"
    else:
        path = _cached_config(name)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cached_config(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id huggingface_hub rejects is simply not in the cache
        return None
    return Path(found) if isinstance(found, str) else None


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs keep the language model's figures under text_config."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


def plan_for_vllm(experiment: ExperimentConfig, architecture: dict[str, Any] | None) -> VllmPlan:
    """Check the experiment's plan against what vLLM can run; `architecture` is the model's
    config.json (None: the model-dependent checks are skipped and noted)."""
    p = experiment.parallelism
    refusals: list[str] = []
    notes: list[str] = []
    if p.dp_shard > 1:
        refusals.append(
            f"dp_shard={p.dp_shard}: vLLM has no sharded (FSDP-style) data parallelism for "
            "inference; use dp_replicate for data-parallel replicas"
        )
    if p.cp > 1:
        refusals.append(
            f"cp={p.cp}: hpcinfer does not drive vLLM's context parallelism "
            "(prefill/decode_context_parallel_size); set cp: 1"
        )
    if p.ep > 1 and p.ep != p.tp * p.dp_replicate:
        refusals.append(
            f"ep={p.ep}: vLLM splits the experts over all tp x dp_replicate = "
            f"{p.tp * p.dp_replicate} ranks (enable_expert_parallel has no size of its own); "
            f"set ep: {p.tp * p.dp_replicate} or ep: 1"
        )
    if p.dp_replicate > 1:
        refusals.append(
            f"dp_replicate={p.dp_replicate}: `profile run` drives one offline vLLM engine, and "
            "vLLM refuses LLM(data_parallel_size > 1) in one process (its offline data "
            "parallelism needs one process per replica); profile one replica "
            "(dp_replicate: 1)"
        )
    if architecture is None:
        notes.append(
            f"model {experiment.model.name!r} is not readable here: expert count, head count "
            "and layer count were not checked"
        )
    else:
        refusals += _model_refusals(p, _text_config(architecture))
    return VllmPlan(engine_args(p), refusals, notes)


def _model_refusals(p: Parallelism, config: dict[str, Any]) -> list[str]:
    refusals: list[str] = []
    experts = next((config[k] for k in EXPERT_KEYS if isinstance(config.get(k), int)), None)
    if p.ep > 1 and not experts:
        refusals.append(
            f"ep={p.ep}: the model is dense (its config.json has no expert count), so expert "
            "parallelism has nothing to split; use an MoE model or ep: 1"
        )
    heads = config.get("num_attention_heads")
    if isinstance(heads, int) and heads % p.tp:
        refusals.append(
            f"tp={p.tp}: the model's {heads} attention heads do not divide evenly over "
            f"{p.tp} ranks; choose a tp that divides {heads}"
        )
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and p.pp > layers:
        refusals.append(f"pp={p.pp}: the model has only {layers} layers to split into stages")
    return refusals
