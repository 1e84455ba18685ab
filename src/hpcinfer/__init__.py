"""hpcinfer: LLM batch inference on HPC machines, from one job spec.

The public API is what `__all__` lists; everything else may change. Importing hpcinfer
imports no engine (vLLM, torch): adapters import them lazily.
"""

from hpcinfer.errors import HpcinferError, InputError, ResumeConflictError, SpecError
from hpcinfer.exitcodes import ExitCode
from hpcinfer.records import Record, Result
from hpcinfer.spec import JobSpec, build_spec

__version__ = "0.1.0"

__all__ = [
    "ExitCode",
    "HpcinferError",
    "InputError",
    "JobSpec",
    "Record",
    "Result",
    "ResumeConflictError",
    "SpecError",
    "__version__",
    "build_spec",
    "run_job",
]


def __getattr__(name: str) -> object:
    if name == "run_job":
        from hpcinfer.run.job import run_job

        return run_job
    raise AttributeError(name)
