"""hpcinfer: LLM batch inference on HPC machines, from one job spec.

The public API is what `__all__` lists; everything else may change. Importing hpcinfer
imports no engine (vLLM, torch): adapters import them lazily.
"""

from typing import TYPE_CHECKING

from hpcinfer.errors import (
    HpcinferError,
    InputError,
    ResumeConflictError,
    SpecError,
    StoppedError,
)
from hpcinfer.exitcodes import ExitCode
from hpcinfer.records import Record, Result
from hpcinfer.spec import JobSpec, build_spec

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from hpcinfer.api import (
        FleetHandle,
        analyze_traces,
        bench_fom,
        bench_offline,
        bench_serve,
        bench_settings,
        fleet,
        profile_run,
        run_batch,
    )
    from hpcinfer.bench.documents import FomDocument, OfflineDocument, ServeDocument
    from hpcinfer.bench.fom_server import FomServer
    from hpcinfer.bench.offline import BenchSettings
    from hpcinfer.bench.serve_bench import ServeBenchOptions
    from hpcinfer.core.spec_loading import load_job_spec
    from hpcinfer.core.stop import StopSignal
    from hpcinfer.run.job import RunOptions, run_job
    from hpcinfer.run.runinfo import read_run_json
    from hpcinfer.run.summary import RunDocument, RunSummary
    from hpcinfer.traces import TraceAnalysis

__version__ = "0.1.0"

__all__ = [
    "BenchSettings",
    "ExitCode",
    "FleetHandle",
    "FomDocument",
    "FomServer",
    "HpcinferError",
    "InputError",
    "JobSpec",
    "OfflineDocument",
    "Record",
    "Result",
    "ResumeConflictError",
    "RunDocument",
    "RunOptions",
    "RunSummary",
    "ServeBenchOptions",
    "ServeDocument",
    "SpecError",
    "StopSignal",
    "StoppedError",
    "TraceAnalysis",
    "__version__",
    "analyze_traces",
    "bench_fom",
    "bench_offline",
    "bench_serve",
    "bench_settings",
    "build_spec",
    "fleet",
    "load_job_spec",
    "profile_run",
    "read_run_json",
    "run_batch",
    "run_job",
]

# Exported names loaded on first use, so `import hpcinfer` stays light (no engine, no rich).
_LAZY = {
    "BenchSettings": "hpcinfer.bench.offline",
    "FleetHandle": "hpcinfer.api",
    "FomDocument": "hpcinfer.bench.documents",
    "FomServer": "hpcinfer.bench.fom_server",
    "OfflineDocument": "hpcinfer.bench.documents",
    "RunDocument": "hpcinfer.run.summary",
    "RunOptions": "hpcinfer.run.job",
    "RunSummary": "hpcinfer.run.summary",
    "ServeBenchOptions": "hpcinfer.bench.serve_bench",
    "ServeDocument": "hpcinfer.bench.documents",
    "StopSignal": "hpcinfer.core.stop",
    "TraceAnalysis": "hpcinfer.traces",
    "analyze_traces": "hpcinfer.api",
    "bench_fom": "hpcinfer.api",
    "bench_offline": "hpcinfer.api",
    "bench_serve": "hpcinfer.api",
    "bench_settings": "hpcinfer.api",
    "fleet": "hpcinfer.api",
    "load_job_spec": "hpcinfer.core.spec_loading",
    "profile_run": "hpcinfer.api",
    "read_run_json": "hpcinfer.run.runinfo",
    "run_batch": "hpcinfer.api",
    "run_job": "hpcinfer.run.job",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hpcinfer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
