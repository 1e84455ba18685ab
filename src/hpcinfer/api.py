"""hpcinfer as a library: for a notebook, a workflow system (Parsl) or a Ray task.

Nothing here installs a signal handler, prints on stdout, reads `sys.argv` or exits: a run
stops when the caller's `StopSignal` says so, results come back as typed models, failures
raise `HpcinferError` subclasses. Every call works from any thread.

    spec = hpcinfer.JobSpec.model_validate({"inputs": {"paths": ["prompts.txt"]}})
    summary = hpcinfer.run_batch(spec, cwd=work)      # RunSummary
    with hpcinfer.fleet(spec, cwd=work) as f:         # servers stopped on exit, always
        hpcinfer.bench_serve(out_dir, urls=f.urls)    # ServeDocument
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpcinfer.raycluster.request import DEFAULT_READY_TIMEOUT_S, DEFAULT_STAGGER_S

if TYPE_CHECKING:
    from hpcinfer.bench.documents import FomDocument, OfflineDocument, ServeDocument
    from hpcinfer.bench.fom_server import FomServer
    from hpcinfer.bench.offline import BenchSettings
    from hpcinfer.bench.serve_bench import ServeBenchOptions
    from hpcinfer.core.endpoints_registry import Endpoint
    from hpcinfer.core.stop import StopSignal
    from hpcinfer.profile.result import ProfileResult
    from hpcinfer.raycluster.cluster_file import RayClusterFile
    from hpcinfer.raycluster.down import DownReport
    from hpcinfer.raycluster.status import ClusterStatus
    from hpcinfer.run.summary import RunSummary
    from hpcinfer.serve.fleet import Fleet
    from hpcinfer.spec import JobSpec
    from hpcinfer.traces import TraceAnalysis


def run_batch(
    spec: JobSpec,
    *,
    cwd: Path | None = None,
    restart: bool = False,
    retry_errors: bool = False,
    stop: StopSignal | None = None,
    progress: bool = False,
) -> RunSummary:
    """Run the job (resuming what an earlier run of the same spec committed) and return its
    summary, the content of `run.json`'s `summary`. (Not `hpcinfer.run`: that name is the
    `hpcinfer.run` package once anything imports it.) `stop.drain()` from another thread ends
    it early (status "incomplete"; committed work is kept). `progress` draws the progress
    line on stderr. `retry_errors` reruns only the error rows already in the output directory.
    Raises HpcinferError subclasses (SpecError, InputError, EngineError...)."""
    from hpcinfer.run.job import RunOptions, run_job

    options = RunOptions(
        restart=restart,
        retry_errors=retry_errors,
        quiet=not progress,
        cwd=cwd or Path.cwd(),
        stop=stop,
    )
    return run_job(spec, options)


@dataclass(frozen=True)
class FleetHandle:
    """The running fleet inside `with fleet(...)`: its registry and endpoints."""

    fleet: Fleet
    registry: Path

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every server's current registry entry (state ready, failed, dead, ...)."""
        return self.fleet.endpoints

    @property
    def urls(self) -> list[str]:
        """The base URLs of the servers ready now."""
        return [e.url for e in self.fleet.ready()]


@contextmanager
def fleet(
    spec: JobSpec,
    *,
    cwd: Path | None = None,
    registry: Path | None = None,
    wait: Literal["all", "first"] = "all",
    stop: StopSignal | None = None,
) -> Iterator[FleetHandle]:
    """Start this node's vLLM servers (the spec's `serve` and `engine` sections), wait until
    they are ready (`wait`: all of them, or the first), yield their endpoints, and stop
    every server on leaving the block, also on an exception. ServeError when none becomes
    ready. The servers die with the thread that started them (their parent-death signal
    follows the thread): keep the block in one thread."""
    from hpcinfer.run.fleet_job import stop_closes
    from hpcinfer.serve.node import registry_path
    from hpcinfer.serve.plan import plan_fleet

    where = cwd or Path.cwd()
    path = registry or registry_path(spec, where)
    started = plan_fleet(spec, where, path)
    with started:
        started.start()
        with stop_closes(stop, started):
            started.wait_ready(spec.serve.ready_timeout_s, return_when=wait)
        started.start_monitor()
        yield FleetHandle(started, path)


def bench_offline(
    settings: BenchSettings, input_len: int, output_len: int, batch_size: int
) -> OfflineDocument:
    """`hpcinfer bench offline`: time one batch shape on an offline engine; writes
    offline.json (and the CSV row) into `settings.out_dir` and returns the document."""
    from hpcinfer.bench.documents import OfflineDocument
    from hpcinfer.bench.offline import run_offline

    outcome = run_offline(settings, input_len, output_len, batch_size, _silent)
    return OfflineDocument.model_validate(outcome.document)


def bench_fom(
    settings: BenchSettings,
    preset: str | None = None,
    cases: Sequence[str] = (),
    *,
    only: Sequence[str] = (),
    server: FomServer | None = None,
) -> FomDocument:
    """`hpcinfer bench fom`: the ALCF inference FOM over its cases (`only`: just those named);
    writes fom.json/fom.csv into `settings.out_dir` and returns the document. With `server`
    (`FomServer(urls=("http://host:8000",))` or `registry=Path("endpoints.json")`) the cases
    run on that running server, whose max-model-len each case's must equal (SpecError
    otherwise, before anything is sent); `settings` then sets no engine
    (`bench_settings(JobSpec(), out_dir, iters=...)`)."""
    from hpcinfer.bench.documents import FomDocument
    from hpcinfer.bench.fom_bench import run_fom
    from hpcinfer.bench.fom_server import run_fom_on_server

    if server is not None:
        outcome = run_fom_on_server(settings, server, preset, list(cases), _silent, list(only))
    else:
        outcome = run_fom(settings, preset, list(cases), _silent, list(only))
    return FomDocument.model_validate(outcome.document)


def bench_serve(options: ServeBenchOptions, *, cwd: Path | None = None) -> ServeDocument:
    """`hpcinfer bench serve`: load running servers and measure them; writes serve.json and
    serve.csv into `options.out_dir` and returns the document (each point's `errors` say
    what failed). BenchError when the servers cannot be reached or no request succeeded."""
    from hpcinfer.bench.documents import ServeDocument
    from hpcinfer.bench.serve_bench import BenchError, run_serve_bench

    outcome = run_serve_bench(options, cwd or Path.cwd())
    if outcome.outcome == "none_succeeded":
        raise BenchError(outcome.message or f"no request succeeded; see {outcome.path}")
    return ServeDocument.model_validate(outcome.document)


def bench_settings(spec: JobSpec, out_dir: Path, **settings: Any) -> BenchSettings:
    """The settings `bench_offline`/`bench_fom` take: the engine from `spec`, the rest
    (iters, warmup_iters, seed, percentiles, peak_tflops, pp, ...) by keyword."""
    from hpcinfer.bench.offline import BenchSettings

    made = BenchSettings(spec=spec, out_dir=out_dir, **settings)
    return replace(made, out_dir=out_dir if out_dir.is_absolute() else made.cwd / out_dir)


def analyze_traces(
    trace_dir: Path | str, out_dir: Path | str | None = None, *, workers: int | None = None
) -> TraceAnalysis:
    """`hpcinfer profile analyze`: read every rank's Kineto trace in `trace_dir` (streamed,
    gzip, damaged files reported in `data_quality`) and write analysis.json and the CSV
    tables into `out_dir` (default `trace_dir`). InputError when it holds no trace."""
    from hpcinfer.traces import analyze_traces as analyze

    return analyze(trace_dir, out_dir, workers=workers)


def profile_run(
    config: Path,
    *,
    cwd: Path | None = None,
    nsys: bool = False,
    hardware_profile: str | None = None,
    kv_cache_bytes: int | None = None,
    memory_share: float | None = None,
    execution_trace: bool = True,
    analyze: bool = True,
) -> ProfileResult:
    """`hpcinfer profile run CONFIG`: profile one experiment config (as `profile grid`
    writes them) on an offline vLLM engine, every rank traced; writes the run folder (the
    config's output_dir) and returns its profile.json. SpecError before anything starts
    (bad config, a plan vLLM cannot run, nsys missing), EngineError when the engine fails,
    MissingRanksError (after profile.json is written) when a rank wrote no trace."""
    from hpcinfer.profile.runner import ProfileRunOptions, run_profile

    options = ProfileRunOptions(
        nsys=nsys,
        hardware_profile=hardware_profile,
        kv_cache_bytes=kv_cache_bytes,
        memory_share=memory_share,
        execution_trace=execution_trace,
        analyze=analyze,
        cwd=cwd or Path.cwd(),
    )
    return run_profile(config, options).result


def ray_up(
    *,
    hostfile: Path | str | None = None,
    launcher: str | None = None,
    interface: str | None = None,
    gpus_per_node: int | None = None,
    cpus_per_node: int | None = None,
    name: str | None = None,
    cluster_file: Path | str | None = None,
    port_base: int | None = None,
    head_gpus: int | None = None,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    stagger_s: float = DEFAULT_STAGGER_S,
    profile: str | None = None,
    note: Callable[[str], None] | None = None,
) -> RayClusterFile:
    """`hpcinfer ray up`: start Ray on every host of the allocation (the head on the first),
    wait until every node joined with its GPUs and the same Python/Ray/vLLM/torch versions,
    write the cluster file and return it. RayClusterError (naming each host at fault) when
    it is not ready by `ready_timeout_s`; nothing of the cluster is left running then.
    `head_gpus`: what the head declares when it differs from the other nodes (a control
    node with no GPU as the head: 0). `note` receives progress lines."""
    from hpcinfer.raycluster.request import resolve_up_request
    from hpcinfer.raycluster.up import ray_up as start_cluster

    request = resolve_up_request(
        hostfile=Path(hostfile) if hostfile is not None else None,
        launcher=launcher,
        interface=interface,
        gpus_per_node=gpus_per_node,
        head_gpus=head_gpus,
        cpus_per_node=cpus_per_node,
        name=name,
        cluster_file=cluster_file,
        port_base=port_base,
        ready_timeout_s=ready_timeout_s,
        stagger_s=stagger_s,
        profile=profile,
    )
    return start_cluster(request, note=note)


def ray_status(cluster_file: Path | str | None = None, *, name: str | None = None) -> ClusterStatus:
    """`hpcinfer ray status`: the live cluster against its cluster file (`.ok`, `.rows`,
    `.problems` naming each host at fault). InputError when there is no cluster file."""
    from hpcinfer.raycluster.status import ray_status as read_status

    return read_status(cluster_file, name)


def ray_down(
    cluster_file: Path | str | None = None, *, name: str | None = None, forget: bool = False
) -> DownReport:
    """`hpcinfer ray down`: stop every node's Ray processes (only this cluster's; the head
    even when a worker fails), check none is left and remove the cluster file.
    RayClusterError naming the hosts that could not be stopped (the file is kept for another
    try; `forget`: removed anyway when those hosts did not answer at all)."""
    from hpcinfer.raycluster.down import ray_down as stop_cluster

    return stop_cluster(cluster_file, name, forget=forget)


def _silent(_line: str) -> None:
    """A library call reports no progress lines."""
