"""Spec loading as a library function: spec file + inputs + field values + `--set` -> JobSpec.

The command line and a library user load specs through `load_job_spec`, so both get the
same rules: paths written in a spec file are relative to that file (a spec works from any
directory), inputs given apart from the file replace the file's, field values left unset
(None or an empty list) keep the file's value, and `--set FIELD=VALUE` items win over all.
The spec is validated once, after everything is applied, and a bad value is a SpecError
naming the file (or "command-line options") and the field.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcinfer.errors import SpecError
from hpcinfer.spec import JobSpec, build_spec, load_spec_file, parse_set_option, set_dotted

DEFAULT_OUT_ROOT = "hpcinfer-out"
"""Jobs without an output directory of their own get one inside this folder, named after
them (`default_output_dir`), so two different jobs never share one by default."""

SPEC_SUFFIXES = (".yaml", ".yml")
"""A positional argument with one of these suffixes is the spec file, not an input."""


def is_spec_file(arg: str | Path) -> bool:
    """True for a path that names a spec file (by its suffix)."""
    return str(arg).endswith(SPEC_SUFFIXES)


def split_spec_and_inputs(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The command line's `[SPEC.yaml] [INPUT...]`: a spec file may come first, only once."""
    inputs = list(args)
    spec_file = inputs.pop(0) if inputs and is_spec_file(inputs[0]) else None
    bad = [a for a in inputs if is_spec_file(a)]
    if bad:
        raise SpecError(f"only one spec file can be given, and it must come first: {bad[0]}")
    return spec_file, inputs


def load_job_spec(
    spec_file: str | Path | None = None,
    inputs: Sequence[str] = (),
    fields: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    cwd: Path | None = None,
) -> JobSpec:
    """A validated JobSpec from a spec file (optional), input paths, dotted field values
    (e.g. {"engine.dtype": "float16"}; None or [] leaves the file's value) and `--set`
    items ("sampling.top_k=20", the value read as YAML). Relative paths are read from `cwd`
    (default: the current directory); paths inside the spec file from the file's folder."""
    here = Path.cwd() if cwd is None else cwd
    data: dict[str, Any] = {}
    source = "command-line options"
    if spec_file is not None:
        if not is_spec_file(spec_file):
            raise SpecError(f"{spec_file}: give the job spec as a .yaml or .yml file")
        path = here / spec_file
        data = load_spec_file(path)
        source = str(path)
        if path.resolve().parent != here.resolve():
            rebase_spec_paths(data, path.resolve().parent)
    if inputs:
        set_dotted(data, "inputs.paths", list(inputs))
    for dotted, value in (fields or {}).items():
        if value is not None and value != []:
            set_dotted(data, dotted, value)
    for item in sets:
        key, value = parse_set_option(item)
        set_dotted(data, key, value)
    output = data.get("output")
    if (spec_file is not None or inputs) and not (isinstance(output, dict) and "dir" in output):
        set_dotted(data, "output.dir", default_output_dir(spec_file, inputs))
    return build_spec(data, source)


def default_output_dir(spec_file: str | Path | None, inputs: Sequence[str]) -> str:
    """`hpcinfer-out/NAME`, NAME from the spec file's stem and/or the first input's: the
    same command finds the same directory again (so it resumes), a different job another.
    `hpcinfer run job.yaml` -> hpcinfer-out/job; `run prompts.txt` -> hpcinfer-out/prompts;
    `run job.yaml data/*.jsonl` -> hpcinfer-out/job-data."""
    names = [Path(spec_file).stem] if spec_file is not None else []
    if inputs:
        names.append(_input_name(inputs[0]))
    name = "-".join(n for n in names if n) or "job"
    return f"{DEFAULT_OUT_ROOT}/{name}"


def _input_name(path: str) -> str:
    """An input's name without its suffix; for a glob, the last folder before the pattern."""
    parts = [p for p in Path(path).expanduser().parts if p not in ("/", ".", "..")]
    plain = list(itertools.takewhile(lambda p: not any(c in p for c in "*?["), parts))
    if not plain:
        return ""
    last = plain[-1]
    name = last if len(plain) < len(parts) else Path(last).stem or last
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")


def rebase_spec_paths(data: dict[str, Any], spec_dir: Path) -> None:
    """Paths written in a spec file are relative to that file, so a spec works from anywhere:
    the model when written ./ or ../, inputs.paths, an @file template, output.dir."""

    def rebase(value: Any) -> Any:
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        return os.path.normpath(spec_dir / value)

    model = data.get("model")
    if isinstance(model, str) and model.startswith(("./", "../")):
        data["model"] = rebase(model)
    section = data.get("inputs")
    if isinstance(section, dict):
        paths = section.get("paths")
        if isinstance(paths, str):
            section["paths"] = [rebase(paths)]
        elif isinstance(paths, list):
            section["paths"] = [rebase(p) for p in paths]
        template = section.get("template")
        if isinstance(template, str) and template.startswith("@"):
            section["template"] = "@" + rebase(template[1:])
    section = data.get("output")
    if isinstance(section, dict) and "dir" in section:
        section["dir"] = rebase(section["dir"])


SAVED_SPEC_HEADER = (
    "# Written by `hpcinfer run --save-spec`: the command line's job, non-default fields only;\n"
    "# paths are relative to this file. Run it with `hpcinfer run FILE`, submit it with\n"
    "# `hpcinfer submit FILE`.\n"
)


def save_job_spec(spec: JobSpec, path: str | Path, cwd: Path | None = None) -> Path:
    """Write `spec` as a spec file at `path` (relative to `cwd`) that loads back to the same
    job: its non-default fields, with every path written relative to the file, as
    `load_job_spec` reads them. Holds no secret: API keys are named by variable only."""
    import yaml

    here = Path.cwd() if cwd is None else cwd
    target = here / path
    if not is_spec_file(target):
        raise SpecError(f"--save-spec {path}: give the spec file a .yaml or .yml name")
    data: dict[str, Any] = spec.model_dump(mode="json", exclude_defaults=True)
    relative_spec_paths(data, target.resolve().parent, here)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = SAVED_SPEC_HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    target.write_text(text, encoding="utf-8")
    return target


def relative_spec_paths(data: dict[str, Any], spec_dir: Path, cwd: Path) -> None:
    """The inverse of `rebase_spec_paths`: paths read from `cwd` rewritten relative to
    `spec_dir`, where a spec file's paths are read from (globs stay globs)."""

    def relative(value: Any) -> Any:
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        return os.path.relpath(os.path.normpath(cwd.resolve() / value), spec_dir)

    model = data.get("model")
    if isinstance(model, str) and (model.startswith(("./", "../")) or (cwd / model).exists()):
        moved = relative(model)
        data["model"] = moved if moved.startswith(("/", "../")) else "./" + moved
    section = data.get("inputs")
    if isinstance(section, dict):
        if isinstance(section.get("paths"), list):
            section["paths"] = [relative(p) for p in section["paths"]]
        template = section.get("template")
        if isinstance(template, str) and template.startswith("@"):
            section["template"] = "@" + relative(template[1:])
    section = data.get("output")
    if isinstance(section, dict) and "dir" in section:
        section["dir"] = relative(section["dir"])
