"""Which model a command loads: `--model` read the same way by run, serve and bench.

A value that looks like a path (starts with '.', '/', '~', or exists relative to the working
directory) must be a model directory; anything else is a Hugging Face id found in `HF_HOME`.
No model at all means the built-in tiny model, built on first use.
"""

from __future__ import annotations

from pathlib import Path

from hpcinfer.core.tiny_model import TINY_MODEL_NAME, ensure_tiny_model
from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec


def resolve_model(spec: JobSpec, cwd: Path) -> tuple[str, str]:
    """(path or HF id given to vLLM, display name). No model: the built-in tiny model."""
    if spec.model is None:
        return str(ensure_tiny_model()), TINY_MODEL_NAME
    candidate = Path(spec.model).expanduser()
    if not candidate.is_absolute():
        candidate = cwd / candidate
    looks_like_path = spec.model.startswith((".", "/", "~")) or candidate.exists()
    if looks_like_path:
        if not candidate.is_dir():
            raise SpecError(f"model: {spec.model!r} is not a model directory (no such directory)")
        if not (candidate / "config.json").exists() and not (candidate / "params.json").exists():
            raise SpecError(
                f"model: {spec.model!r} is not a model directory (no config.json in {candidate}); "
                "point --model at the folder holding config.json and the weights"
            )
        return str(candidate), spec.model
    return spec.model, spec.model
