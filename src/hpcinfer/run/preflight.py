"""Checks made before any engine starts: a mistake found here is exit 2 in a second, not one
error row per record after minutes of model loading (the template check is
`inputs.template_check`).

- the model: a directory holding config.json, or a Hugging Face id present in the cache
  (nothing is downloaded at run time), with the help `hpcinfer stage` gives;
- `--engine openai`: the model name against what the servers list at `/v1/models` (no
  --model: the one model they serve);
- the LoRA adapters (`engine.lora_adapters`): each a loadable adapter directory, since a
  bad one found by vLLM mid-run kills the engine with every record in flight;
- an explicit `--workers N` that cannot be honoured: said, not silently shrunk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcinfer.cluster.placement import PlacementPlan
from hpcinfer.core.server_probe import check_servers
from hpcinfer.engines.kinds import kind_of
from hpcinfer.engines.lora_adapters import check_lora_adapters
from hpcinfer.engines.openai_engine import Target
from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec

_OFFLINE_OFF = ("0", "false", "no", "off")


def check_model_present(spec: JobSpec, cwd: Path, env: Mapping[str, str] | None = None) -> None:
    """Raise (exit 2) when the job's model is neither a model directory nor in the HF cache.

    Only for jobs that load the model themselves (offline engines, a fleet of their own).
    Skipped when the user set HF_HUB_OFFLINE=0 (downloads allowed: vLLM fetches the model)."""
    if spec.model is None or (kind_of(spec).needs_servers and not kind_of(spec).starts_fleet(spec)):
        return
    from hpcinfer.stage.layout import is_hf_id, is_model_path, resolve_source

    env = os.environ if env is None else env
    downloads = env.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_OFF
    if downloads and not is_model_path(spec.model, cwd) and is_hf_id(spec.model):
        return
    resolve_source(spec.model, env, cwd)


def check_lora(spec: JobSpec, cwd: Path) -> None:
    """Raise (exit 2) naming the file and the fix when an adapter directory of the job's
    `engine.lora_adapters` does not hold a LoRA adapter vLLM can load."""
    check_lora_adapters(spec.engine.lora_adapters, cwd)


def served_model(spec: JobSpec, targets: Sequence[Target]) -> str | None:
    """The model name to ask the servers for (`--engine openai`), checked against their
    `/v1/models`: --model must be served by every server that answers; without --model, the
    one model they serve. Servers that do not answer yet are left to the dispatcher (it
    waits for them and re-checks); None when none answered (the dispatcher decides then)."""
    kind = kind_of(spec)
    if not kind.needs_servers or kind.starts_fleet(spec) or not targets:
        return spec.model
    if spec.model is not None and kind.served_model(spec) is None:
        return spec.model  # the job's own model, served under the name the servers report
    served = _served_lists(targets, os.environ.get(spec.client.api_key_env))
    if not served:
        return spec.model
    listing = "; ".join(f"{url}: {', '.join(models) or 'none'}" for url, models in served.items())
    if spec.model is not None:
        lacking = [url for url, models in served.items() if spec.model not in models]
        if lacking:
            raise SpecError(
                f"--model {spec.model!r} is not served by {', '.join(lacking)} (they serve: "
                f"{listing}); pass --model with a name from that list, or leave it out when "
                "every server serves one model"
            )
        return spec.model
    firsts = {models[0] for models in served.values() if models}
    if len(firsts) > 1:
        raise SpecError(
            f"the servers serve different models ({listing}); choose one with --model "
            "(each server must serve it)"
        )
    return firsts.pop() if firsts else None


def _served_lists(targets: Sequence[Target], api_key: str | None) -> dict[str, list[str]]:
    """url -> model ids, for the servers that answer /health and /v1/models now (one
    refusing the API key is left to the dispatcher, which fails the run naming the key's
    variable)."""
    checks = check_servers([(target.url, None) for target in targets], api_key, 5.0)
    return {t.url: check.models for t, check in zip(targets, checks, strict=True) if check.up}


def workers_notes(spec: JobSpec, placement: PlacementPlan, units_left: int | None) -> list[str]:
    """Why an explicit `--workers N` runs fewer than N (or shares devices): warnings shown
    before the job starts. Fewer units than workers still runs (the others would idle);
    more workers than device groups shares them (placement says so too)."""
    wanted = spec.workers.count
    if wanted is None:
        return []
    notes = []
    if units_left is not None and units_left < min(wanted, len(placement.placements)):
        notes.append(
            f"--workers {wanted}: the job has {units_left} unit(s) of work left "
            f"(--unit-size {spec.workers.unit_size}), so only {units_left} worker(s) start; "
            "a smaller --unit-size spreads it over more"
        )
    return notes
