"""Named grids `hpcinfer profile grid --preset NAME` expands, written as a grid file would be.

- `tp-scaling-llama-8b`: the TP-scaling study of the vLLM parallelism-profiling experiments,
  Llama-3.1-8B at TP 1 (E1.1, the baseline), 2 (E1.2) and 4 (E1.3) on one Perlmutter node.
- `cpu-tiny`: the built-in tiny model at TP 1 and 2 with small batches, to try the whole
  profiling path on a CPU machine.
"""

from __future__ import annotations

from typing import Any

from hpcinfer.errors import SpecError
from hpcinfer.profile.grid import GridSpec, grid_from_data

PRESETS: dict[str, dict[str, Any]] = {
    "tp-scaling-llama-8b": {
        "description": "TP scaling, Llama-3.1-8B at TP={tp} ({world_size} GPU(s), PP=1, EP=1)",
        "profile": "perlmutter",
        "nodes": 1,
        "models": [
            {"name": "meta-llama/Llama-3.1-8B", "precision": "bfloat16", "label": "llama8b"}
        ],
        "tp": [1, 2, 4],
        "batch_size": 4,
        "seq_len": 2048,
        "max_tokens": 512,
        "filter": "tp * pp * dp <= devices",
        "id": "E1.{index}_{model}_tp{tp}",
        "warmup_iterations": 2,
        "timed_iterations": 5,
        "profile_iterations": 5,
    },
    "cpu-tiny": {
        "description": "The built-in tiny model at TP={tp} on the CPU build of vLLM",
        "profile": "cpu",
        "models": ["tiny"],
        "tp": [1, 2],
        "batch_size": 4,
        "seq_len": 32,
        "max_tokens": 16,
        "id": "cpu-tiny_tp{tp}",
        "warmup_iterations": 1,
        "timed_iterations": 3,
        "profile_iterations": 2,
    },
}


def preset_grid(name: str) -> GridSpec:
    data = PRESETS.get(name)
    if data is None:
        raise SpecError(f"--preset {name!r}: unknown preset; choose {' or '.join(sorted(PRESETS))}")
    return grid_from_data(data, f"preset {name}")
