"""The job's LoRA adapters (`engine.lora_adapters`), checked before any engine starts.

vLLM loads an adapter only when the first record asks for it, and a missing or unreadable
adapter then kills the whole engine (every record in flight fails), so each adapter
directory is checked up front: a PEFT `adapter_config.json` with a rank `r` and
`target_modules`, and the weights beside it. The largest rank also sizes vLLM's LoRA slots
(`max_lora_rank`), which otherwise refuse adapters of rank above 16.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from hpcinfer.errors import SpecError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
"""The weight files vLLM's LoRA loader looks for, in its order."""
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM's LoRA slots come in (`max_lora_rank`)."""
_FIX = (
    "give the directory a PEFT LoRA adapter was saved to (adapter_config.json and "
    "adapter_model.safetensors), e.g. --set engine.lora_adapters.{name}=/models/{name}-lora"
)


def adapter_dir(directory: str, cwd: Path) -> Path:
    """An adapter directory as given, relative ones from `cwd`."""
    root = Path(directory).expanduser()
    return root if root.is_absolute() else cwd / root


def adapter_rank(name: str, directory: str, cwd: Path) -> int:
    """The rank `r` of adapter `name`; SpecError naming the file and the fix when the
    directory does not hold a LoRA adapter vLLM can load."""
    root = adapter_dir(directory, cwd)
    fix = _FIX.format(name=name)
    where = f"engine.lora_adapters.{name}={directory}"
    if not root.is_dir():
        raise SpecError(f"{where}: {root} is not a directory; {fix}")
    config = root / CONFIG_FILE
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{where}: {config} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{where}: {config} is not readable JSON ({exc}); {fix}") from None
    rank = values.get("r") if isinstance(values, dict) else None
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise SpecError(f"{where}: {config} has no positive whole rank 'r'; {fix}")
    if rank > VLLM_RANKS[-1]:
        raise SpecError(
            f"{where}: {config} has rank r={rank}; vLLM takes LoRA ranks up to "
            f"{VLLM_RANKS[-1]}"
        )
    if not values.get("target_modules"):
        raise SpecError(f"{where}: {config} names no 'target_modules'; {fix}")
    if not any((root / weights).is_file() for weights in WEIGHT_FILES):
        raise SpecError(
            f"{where}: {root} holds {CONFIG_FILE} but no weights ({', '.join(WEIGHT_FILES)}); "
            f"{fix}"
        )
    return rank


def check_lora_adapters(adapters: Mapping[str, str], cwd: Path) -> int | None:
    """Check every adapter (SpecError on the first bad one); the `max_lora_rank` vLLM needs
    for them, None without adapters."""
    ranks = [adapter_rank(name, path, cwd) for name, path in sorted(adapters.items())]
    return slot_rank(max(ranks)) if ranks else None


def slot_rank(rank: int) -> int:
    """The smallest vLLM LoRA slot rank that holds an adapter of rank `rank`."""
    return next(slot for slot in VLLM_RANKS if slot >= rank)


def lora_slots(adapters: int, on_cpu: bool) -> int:
    """vLLM's `max_loras` for `adapters` adapters. vLLM's CPU LoRA kernels (torch ops) index
    the adapter slots with -1 for a request without an adapter, which wraps to the last
    slot: records without `lora` decoded in a step beside LoRA records got the last
    adapter. One spare slot on CPU, never filled (slots fill lowest first), makes -1 an
    all-zero adapter."""
    return adapters + (1 if on_cpu else 0)


def server_lora_flags(adapters: Mapping[str, str], on_cpu: bool, cwd: Path) -> list[str]:
    """A vLLM server's flags serving each adapter under its name (a record's `lora` is the
    model name its request asks for)."""
    rank = check_lora_adapters(adapters, cwd)
    if rank is None:
        return []
    modules = [f"{name}={adapter_dir(path, cwd)}" for name, path in sorted(adapters.items())]
    slots = str(lora_slots(len(adapters), on_cpu))
    return ["--enable-lora", "--max-loras", slots, "--max-lora-rank", str(rank),
            "--lora-modules", *modules]  # fmt: skip
