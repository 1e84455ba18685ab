"""A job's inputs and its plan: the files it reads, the units they are cut into, and which
units are committed already (a resumed job skips them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.errors import SpecError
from hpcinfer.inputs import PromptTemplate, display_name, expand_inputs, read_records
from hpcinfer.inputs.options import apply_max_tokens_field
from hpcinfer.inputs.template_check import check_template
from hpcinfer.outputs.store import OutputStore, unit_file_name
from hpcinfer.run.plan import UnitSummary, WorkUnit, cut_units, mark_duplicates, summarize
from hpcinfer.run.retry import RetryPlan, plan_retry, retry_unit
from hpcinfer.spec import JobSpec


@dataclass
class JobInputs:
    """The input files, their names as rows and logs show them, and the prompt template."""

    files: list[Path]
    names: list[str]
    template: PromptTemplate | None


PLAN_FIRST_BYTES = 8 << 20


@dataclass
class JobPlan:
    """Every unit of the job (id and size) and those already committed."""

    summaries: list[UnitSummary]
    done: list[UnitSummary]
    retry: RetryPlan | None = None  # --retry-errors: committed units rerun for their errors

    @property
    def todo_units(self) -> int:
        retried = len(self.retry.failed) if self.retry else 0
        return len(self.summaries) - len(self.done) + retried

    @property
    def total_records(self) -> int:
        return sum(s.size for s in self.summaries)

    @property
    def todo_records(self) -> int:
        retried = self.retry.records if self.retry else 0
        return self.total_records - sum(s.size for s in self.done) + retried


def is_small(inputs: JobInputs) -> bool:
    """Small enough to plan before the workers start (milliseconds)."""
    return sum(f.stat().st_size for f in inputs.files) <= PLAN_FIRST_BYTES


def make_plan(
    spec: JobSpec, inputs: JobInputs, cwd: Path, store: OutputStore, retry_errors: bool = False
) -> JobPlan:
    """Pass 1: every unit's id and size, without holding prompts; recorded in the manifest.
    With `retry_errors`, the committed units are read for their error rows."""
    summaries = [summarize(u) for u in job_units(spec, inputs, cwd)]
    store.record_plan((s.id, s.size) for s in summaries)
    committed = store.committed()
    done = [s for s in summaries if unit_file_name(s.id) in committed]
    return JobPlan(summaries, done, plan_retry(store, done) if retry_errors else None)


def pending_units(
    spec: JobSpec, inputs: JobInputs, cwd: Path, store: OutputStore, plan: JobPlan
) -> Iterator[WorkUnit]:
    """Pass 2, lazily: the units not committed, and (--retry-errors) the committed units
    with error rows, narrowed to those records and carrying the rows they keep."""
    failed = plan.retry.failed if plan.retry else {}
    for unit in job_units(spec, inputs, cwd):
        if not store.is_committed(unit.id):
            yield unit
        elif unit.id in failed:
            yield retry_unit(unit, store.read_unit(unit.id), str(store.root))


def open_inputs(spec: JobSpec, cwd: Path) -> JobInputs:
    """The spec's input paths expanded (directories, globs) relative to `cwd`."""
    if not spec.inputs.paths:
        raise SpecError(
            "inputs.paths is empty: name input files, e.g. `hpcinfer run prompts.txt`, "
            "or set inputs.paths in the spec"
        )
    files = expand_inputs(spec.inputs.paths, cwd=cwd)
    names = [display_name(f, cwd=cwd) for f in files]
    template = PromptTemplate.from_option(spec.inputs.template)
    check_template(
        template, files, cwd=cwd, fmt=None if spec.inputs.format == "auto" else spec.inputs.format
    )
    return JobInputs(files, names, template)


def job_units(spec: JobSpec, inputs: JobInputs, cwd: Path) -> Iterator[WorkUnit]:
    """The job's records cut into units, read lazily (pass 2 runs while the job does)."""
    fmt = None if spec.inputs.format == "auto" else spec.inputs.format
    records = read_records(
        inputs.files,
        cwd=cwd,
        fmt=fmt,
        prompt_field=spec.inputs.prompt_field,
        template=inputs.template,
        id_field=spec.inputs.id_field,
        sampling_fields=spec.inputs.sampling_fields,
        max_tokens_field=spec.inputs.max_tokens_field,
    )
    records = apply_max_tokens_field(records, spec.inputs.max_tokens_field)
    return cut_units(mark_duplicates(records), spec.workers.unit_size)
