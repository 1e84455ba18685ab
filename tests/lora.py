"""A real LoRA adapter for the built-in tiny model, written as PEFT saves one (peft is not
needed): adapter_config.json and adapter_model.safetensors with PEFT's key names
(`base_model.model.<module>.lora_A.weight`, shape (r, in); `lora_B`, shape (out, r)), on the
attention projections of both layers. Its weights are large enough that the adapted model
answers differently from the base model."""

from __future__ import annotations

import json
from pathlib import Path

_HIDDEN = 128  # core/tiny_model.py: hidden_size 128, 4 heads, 2 KV heads of 32
_PROJECTIONS = {"q_proj": (_HIDDEN, _HIDDEN), "v_proj": (_HIDDEN, 64), "o_proj": (_HIDDEN, _HIDDEN)}


def write_tiny_lora(directory: Path, rank: int = 4, seed: int = 7) -> Path:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(2):
        for name, (inputs, outputs) in _PROJECTIONS.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, inputs, generator=generator)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(outputs, rank, generator=generator)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": sorted(_PROJECTIONS),
        "bias": "none",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory
