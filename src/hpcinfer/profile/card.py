"""The CCL-Bench workload card of one profiled run: `workload_card.yaml` in the run folder.

The card follows CCL-Bench's template (workload{model, data, hardware}, Model-executor,
metric_source) so its tools can pick the traces up. Two things users' earlier card
generator got wrong are fixed here: the device count multiplies the parallel degrees
(dp_replicate x dp_shard x cp x tp x pp; EP splits experts over those same devices and is
not multiplied in: TP4 x EP4 is 4 devices), and it is checked against the rank trace files
actually present, so a card never describes traces that are not there. Versions and
hardware come from the run's profile.json, not from the machine writing the card.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from hpcinfer.errors import InputError
from hpcinfer.profile.rank_files import check_rank_files
from hpcinfer.profile.result import ProfileResult, read_profile_result
from hpcinfer.profile.vllm_parallel import EXPERT_KEYS, TINY, model_architecture

CARD_FILE = "workload_card.yaml"
_XPU_TYPES = {"cuda": "GPU", "xpu": "GPU", "rocm": "GPU", "cpu": "CPU"}
_PRECISIONS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "auto": "auto"}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_UNSAFE = re.compile(r"[^a-z0-9.]+")


def _slug(text: str) -> str:
    """'NVIDIA A100-SXM4-40GB' -> 'nvidia_a100_sxm4_40gb', as CCL-Bench writes models."""
    return _UNSAFE.sub("_", text.lower()).strip("_")


def _library(text: str | None) -> tuple[str | None, str | None]:
    """'NCCL 2.21.5' -> ('NCCL', '2.21.5'); 'shm' or 'gloo (torch.distributed)' -> the
    whole text and no version (only a leading number is a version)."""
    if not text:
        return None, None
    name, _, version = text.strip().partition(" ")
    if version[:1].isdigit():
        return name, version.strip()
    return text.strip(), None


def _model_arch(architecture: dict[str, Any] | None) -> dict[str, Any]:
    config = (architecture or {}).get("text_config") or architecture or {}
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    head_dim = config.get("head_dim") or (
        hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None
    )
    return {
        "num_params": None,
        "num_layers": config.get("num_hidden_layers"),
        "num_heads": heads,
        "head_dim": head_dim,
    }


def _is_moe(result: ProfileResult, architecture: dict[str, Any] | None) -> bool:
    if architecture is not None:
        config = architecture.get("text_config") or architecture
        return any(isinstance(config.get(key), int) and config[key] for key in EXPERT_KEYS)
    return result.experiment.parallelism.ep > 1


def build_card(run_dir: Path, result: ProfileResult) -> dict[str, Any]:
    """The card as a mapping; InputError when the rank trace files do not match the plan."""
    experiment = result.experiment
    plan = experiment.parallelism
    world = plan.world_size
    ranks = check_rank_files(run_dir, world)
    if not ranks.complete:
        raise InputError(
            f"{run_dir}: the plan ({_plan_text(result)}) has {world} rank(s), but "
            f"{ranks.problem()}; rerun `hpcinfer profile run` for this experiment so every "
            "rank is profiled, then write the card"
        )
    architecture = model_architecture(experiment.model.name)
    hardware, versions = result.hardware, result.versions
    comm_name, comm_version = _library(versions.communication_library)
    name = experiment.model.name
    traces = ["json"]
    if any(r.torch_et for r in result.ranks):
        traces.append("torch_et")
    if result.nsys:
        traces.append("nsys")
    return {
        "version": 1,
        "description": experiment.description or experiment.experiment_id,
        "hf_url": f"https://huggingface.co/{name}" if _is_hf_id(name) else None,
        "trace_url": str(run_dir.resolve()),
        "contributor": None,
        "contact": None,
        "workload": {
            "model": {
                "phase": "inference",
                "moe": _is_moe(result, architecture),
                "granularity": "model_fwd",
                "model_family": "hpcinfer-tiny-llama" if name == TINY else _slug_model(name),
                "precision": _PRECISIONS[experiment.model.precision],
                "epochs": None,
                "iteration": experiment.profile_iterations,
                "model_arch": _model_arch(architecture),
            },
            "data": {
                "batch_size": experiment.data.batch_size,
                "seq_len": experiment.data.seq_len,
                "max_tokens": experiment.data.max_tokens,
                "dataset": None,
            },
            "hardware": {
                "network_topo": {"topology": hardware.network_topology, "bandwidth_gbps": []},
                "xpu_spec": {
                    "type": _XPU_TYPES.get(hardware.device_type.lower(), hardware.device_type),
                    "model": _slug(hardware.device_model),
                    "total_count": world,
                    "count_per_node": min(
                        hardware.count_per_node, math.ceil(world / max(hardware.nodes, 1))
                    ),
                },
                "driver_version": versions.driver
                or ("n/a (CPU)" if hardware.device_type == "cpu" else None),
            },
        },
        "Model-executor": {
            "framework": {
                "name": "vllm",
                "version": versions.vllm,
                "compiler_tool_selection": None,
            },
            "model_plan_parallelization": {
                "dp_replicate": plan.dp_replicate,
                "dp_shard": plan.dp_shard,
                "tp": plan.tp,
                "pp": plan.pp,
                "cp": plan.cp,
                "ep": plan.ep,
                "pp_mb": 1,
            },
            "communication_library": {"name": comm_name, "version": comm_version, "env": {}},
            "protocol_selection": [],
        },
        "metric_source": {
            "traces": traces,
            "metrics_specific_trace": ["timing_stats"]
            if any(r.timing_stats for r in result.ranks)
            else [],
        },
    }


def _is_hf_id(name: str) -> bool:
    return bool(_HF_ID.match(name)) and not Path(name).expanduser().exists()


def _slug_model(name: str) -> str:
    return _UNSAFE.sub("-", name.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")


def _plan_text(result: ProfileResult) -> str:
    p = result.experiment.parallelism
    return (
        f"dp_replicate {p.dp_replicate} x dp_shard {p.dp_shard} x cp {p.cp} x tp {p.tp} x "
        f"pp {p.pp}; ep {p.ep} not multiplied in"
    )


def write_card(run_dir: Path, out: Path | None = None) -> Path:
    """Write `workload_card.yaml` (into `out`, default the run folder); its path."""
    from hpcinfer.outputs.atomic import write_text_atomic

    if not run_dir.is_dir():
        raise InputError(
            f"{run_dir} is not a run folder: give the output_dir of `hpcinfer profile run`"
        )
    card = build_card(run_dir, read_profile_result(run_dir))
    target = (out or run_dir) / CARD_FILE
    header = "# CCL-Bench workload card, written by `hpcinfer profile card` from profile.json.\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, header + yaml.safe_dump(card, sort_keys=False))
    return target
