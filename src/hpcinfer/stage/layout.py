"""Where a staged model lives, and what `hpcinfer run` must be given to read that copy.

The Aurora vLLM server scripts staged weights to one directory and started a
server that read another (its
HF_HOME still pointed at the shared file system). Everything that decides a staged path is
here, in pure functions, so `hpcinfer stage`, its printed advice and the job scripts of
`hpcinfer submit` cannot disagree:

- a model directory ``/lus/models/Llama-8B`` is copied to ``TO/Llama-8B`` and the run
  takes ``--model TO/Llama-8B``;
- a Hugging Face id ``org/name`` found in the HF cache is copied in the cache's own layout
  to ``TO/hub/models--org--name`` and the run takes ``--model org/name`` with
  ``HF_HOME=TO`` and ``HF_HUB_CACHE=TO/hub`` (the second wins over a site module that
  exports its own ``HF_HUB_CACHE``).
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hpcinfer.errors import InputError, SpecError

# {rank}: global rank; {node}: index of this rank's host among the job's hosts (in order of
# their first rank); {hostname}: short host name. For tests on one machine, or a shared
# scratch file system where every node needs its own folder.
PLACEHOLDERS = ("rank", "node", "hostname")
HUB_FOLDER = "hub"
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def check_placeholders(to: str) -> None:
    """Reject unknown or malformed `{...}` in --to before any rank starts work."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(to) if name is not None]
    except ValueError as exc:
        raise SpecError(
            f"--to {to!r}: {exc}; write placeholders as {{rank}}, {{node}} or {{hostname}}"
        ) from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise SpecError(
                f"--to {to!r}: unknown placeholder {{{name}}}; use {{rank}}, {{node}} or "
                "{hostname} (or none: one folder per node)"
            )


def has_placeholders(to: str) -> bool:
    check_placeholders(to)
    return any(name for _, name, _, _ in string.Formatter().parse(to))


def expand_target(to: str, *, rank: int, node: int, hostname: str) -> str:
    """--to with this rank's placeholders filled in (check_placeholders first)."""
    check_placeholders(to)
    return to.format(rank=rank, node=node, hostname=hostname)


def is_model_path(model: str, cwd: Path | None = None) -> bool:
    """The rule `hpcinfer run` uses: path-like text, or an existing directory, is a path."""
    if model.startswith((".", "/", "~")):
        return True
    base = cwd if cwd is not None else Path.cwd()
    return (base / model).is_dir()


def is_hf_id(model: str) -> bool:
    return _HF_ID.fullmatch(model) is not None and "--" not in model and ".." not in model


def hf_repo_folder(model_id: str) -> str:
    """The HF cache folder of a model id: org/name -> models--org--name."""
    return "models--" + model_id.replace("/", "--")


def _abs(path: str, cwd: Path | None) -> str:
    expanded = os.path.expanduser(path)
    if not os.path.isabs(expanded):
        expanded = os.path.join(cwd if cwd is not None else os.getcwd(), expanded)
    return os.path.normpath(expanded)


def _dir_name(model: str, cwd: Path | None) -> str:
    return os.path.basename(_abs(model, cwd)) or "model"


Layout = Literal["dir", "hf"]


def layout_of(model: str, cwd: Path | None = None) -> Layout:
    return "dir" if is_model_path(model, cwd) else "hf"


def staged_location(model: str, to: str) -> tuple[str, dict[str, str]]:
    """(the --model argument, the environment) that make a run read the staged copy.

    `to` is the folder given to `hpcinfer stage --to`, with any placeholders already filled
    in. A model directory gives (TO/<dir name>, {}); an HF id gives (the id, {HF_HOME,
    HF_HUB_CACHE}). Pure apart from reading the working directory to tell a relative
    model directory from an HF id, exactly as `hpcinfer run` does.
    """
    return run_arguments(layout_of(model), model, to)


def run_arguments(
    layout: Layout, model: str, to: str, cwd: Path | None = None
) -> tuple[str, dict[str, str]]:
    """staged_location for a layout already known (rank 0 tells the others)."""
    if layout == "dir":
        return str(copy_dir(layout, model, to, cwd)), {}
    target = _abs(to, cwd)
    return model, {"HF_HOME": target, "HF_HUB_CACHE": os.path.join(target, HUB_FOLDER)}


def copy_dir(layout: Layout, model: str, to: str, cwd: Path | None = None) -> Path:
    """The folder a rank writes: TO/<dir name>, or TO/hub/models--org--name."""
    target = _abs(to, cwd)
    if layout == "dir":
        return Path(target, _dir_name(model, cwd))
    return Path(target, HUB_FOLDER, hf_repo_folder(model))


@dataclass(frozen=True)
class Source:
    """The model on the shared file system that rank 0 reads."""

    model: str  # as the user wrote it
    kind: Layout
    root: Path  # the model directory, or the HF cache's models--org--name folder
    revision: str | None = None  # HF: the snapshot refs/main names (None: stage them all)


def hub_cache_candidates(env: Mapping[str, str]) -> list[Path]:
    """Where the HF libraries look for models, in their order, then HF_HOME itself.

    The last one forgives ``export HF_HOME=.../hub`` (a common job-script slip): the
    source is still found, and the staged copy gets a correct environment either way.
    """
    found: list[Path] = []
    if env.get("HF_HUB_CACHE"):
        found.append(Path(env["HF_HUB_CACHE"]).expanduser())
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = Path(env.get("HF_HOME") or os.path.join(xdg, "huggingface")).expanduser()
    found += [home / HUB_FOLDER, home]
    return list(dict.fromkeys(found))


def _resolve_dir(model: str, cwd: Path) -> Source:
    root = Path(_abs(model, cwd))
    if not root.is_dir():
        raise InputError(
            f"model {model!r}: no such directory ({root}); pass the folder holding config.json "
            "and the weights, or a Hugging Face id that is in your HF cache"
        )
    if not (root / "config.json").exists() and not (root / "params.json").exists():
        raise InputError(
            f"model {model!r} is not a model directory (no config.json in {root}); point it at "
            "the folder holding config.json and the weights"
        )
    return Source(model=model, kind="dir", root=root)


def _revision(repo: Path) -> str | None:
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    revision = ref.read_text(encoding="utf-8").strip()
    if not (repo / "snapshots" / revision).is_dir():
        raise InputError(
            f"the HF cache entry {repo} is broken: refs/main names snapshot {revision!r}, which "
            f"is not in {repo / 'snapshots'}; download the model again"
        )
    return revision


def _resolve_hf(model: str, env: Mapping[str, str]) -> Source:
    folder = hf_repo_folder(model)
    candidates = hub_cache_candidates(env)
    for hub in candidates:
        repo = hub / folder
        if repo.is_dir():
            return Source(model=model, kind="hf", root=repo, revision=_revision(repo))
    looked = ", ".join(str(c) for c in candidates)
    home = env.get("HF_HOME") or "~/.cache/huggingface"
    raise InputError(
        f"model {model!r} is not a directory and not in the Hugging Face cache (no {folder} in "
        f"{looked}). Nothing is downloaded here: download it where there is network, e.g. "
        f"`HF_HOME={home} huggingface-cli download {model}`, set HF_HOME to the cache that "
        "holds it, or pass the model directory"
    )


def resolve_source(model: str, env: Mapping[str, str], cwd: Path) -> Source:
    """The model rank 0 will read, checked: a model directory or an HF cache entry."""
    if not model:
        raise SpecError("MODEL is empty; pass a model directory or a Hugging Face id")
    if is_model_path(model, cwd):
        return _resolve_dir(model, cwd)
    if not is_hf_id(model):
        raise InputError(
            f"model {model!r} is neither a directory nor a Hugging Face id (org/name); "
            "check the path"
        )
    return _resolve_hf(model, env)
