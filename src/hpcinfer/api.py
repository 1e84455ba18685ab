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

from collections.abc import Callable, Iterator, Mapping, Sequence
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
    from hpcinfer.provision.cluster import Cluster
    from hpcinfer.provision.fanout import FanoutResult
    from hpcinfer.provision.runner import PlaybookResult
    from hpcinfer.provision.status import ClusterStatus
    from hpcinfer.provision.sync import SyncResult
    from hpcinfer.raycluster.cluster_file import RayClusterFile
    from hpcinfer.raycluster.down import DownReport
    from hpcinfer.raycluster.status import ClusterStatus as RayStatus
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


def ray_status(cluster_file: Path | str | None = None, *, name: str | None = None) -> RayStatus:
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


def cluster_sync(
    cluster: str | Path,
    project: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> SyncResult:
    """`hpcinfer cluster sync`: copy the project folder (default: the current one) to the
    control node's workdir with rsync over ssh, skipping venvs, run outputs, caches and .git,
    and the cluster file into the cluster's state folder there. ProvisionError when rsync or
    ssh fails (the control node named)."""
    from hpcinfer.provision.cluster import load_cluster
    from hpcinfer.provision.remote import send_cluster_file
    from hpcinfer.provision.sync import sync_project
    from hpcinfer.provision.where import is_control_node

    loaded = load_cluster(str(cluster))
    environ = _environ(env)
    here = is_control_node(loaded)
    if not here:
        send_cluster_file(loaded, environ)
    return sync_project(loaded, Path(project or Path.cwd()), environ, local=here)


def cluster_configure(
    cluster: str | Path,
    *,
    limit: str | None = None,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    stop: StopSignal | None = None,
    here: bool | None = None,
) -> PlaybookResult:
    """`hpcinfer cluster configure`: the configure playbook on the control node (forwarded
    there from elsewhere), on `limit`'s hosts, `check`: Ansible's dry run. Ansible's output
    goes to `progress` line by line. The result's `.ok`, `.failed_hosts` and `.problem()`
    say how it went (a failed host is a result, not an exception); SpecError for a bad
    cluster file or --limit, ProvisionError when the playbook could not run at all."""
    return _playbook(cluster, "configure", limit, check, env, progress, stop, here)


def cluster_verify(
    cluster: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    stop: StopSignal | None = None,
    here: bool | None = None,
) -> PlaybookResult:
    """`hpcinfer cluster verify`: the verify playbook (vLLM's recorded answer, the Ray
    cluster's nodes, the server), as `cluster_configure`; always on the whole cluster (its
    checks compare the nodes with each other: a subset would fail or skip them)."""
    return _playbook(cluster, "verify", None, False, env, progress, stop, here)


def cluster_compute(
    cluster: str | Path,
    command: str,
    *,
    env: Mapping[str, str] | None = None,
    stop: StopSignal | None = None,
    here: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> FanoutResult:
    """`hpcinfer cluster compute CMD`: the shell command on every compute node at once
    (from the control node); each node's output and exit status (`.ok`, `.failed`).
    `progress` gets the control node's notes when the command is forwarded there."""
    from hpcinfer.provision.fanout import FanoutResult, run_on_compute

    loaded, environ = _load(cluster, env)
    return _on_control(
        loaded,
        FanoutResult,
        lambda: run_on_compute(loaded, command, environ, stop=stop),
        ("compute", [], [command]),
        environ,
        here,
        progress,
        stop,
    )


def cluster_control(
    cluster: str | Path,
    command: str,
    *,
    env: Mapping[str, str] | None = None,
    stop: StopSignal | None = None,
) -> FanoutResult:
    """`hpcinfer cluster control CMD`: the shell command on the control node, in the
    project folder (here when this is the control node, else over ssh)."""
    from hpcinfer.provision.fanout import run_on_control
    from hpcinfer.provision.where import is_control_node

    loaded, environ = _load(cluster, env)
    here = is_control_node(loaded)
    return run_on_control(loaded, command, environ, here=here, stop=stop)


def cluster_status(
    cluster: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    here: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> ClusterStatus:
    """`hpcinfer cluster status`: each node reachable and its venv's versions (Python,
    hpcinfer, Ray, vLLM), the Ray cluster's status and the server's endpoints (`.ok`,
    `.problems()`), read on the control node."""
    from hpcinfer.provision.status import ClusterStatus, cluster_status

    loaded, environ = _load(cluster, env)
    return _on_control(
        loaded,
        ClusterStatus,
        lambda: cluster_status(loaded, environ),
        ("status", [], []),
        environ,
        here,
        progress,
        None,
    )


def _playbook(
    cluster: str | Path,
    playbook: str,
    limit: str | None,
    check: bool,
    env: Mapping[str, str] | None,
    progress: Callable[[str], None] | None,
    stop: StopSignal | None,
    here: bool | None,
) -> PlaybookResult:
    from hpcinfer.provision.runner import PlaybookResult, check_limit, run_playbook

    loaded, environ = _load(cluster, env)
    check_limit(loaded, limit)  # refused here, before anything is copied
    options = [*(["--limit", limit] if limit else []), *(["--check"] if check else [])]
    return _on_control(
        loaded,
        PlaybookResult,
        lambda: run_playbook(
            loaded, playbook, environ, limit=limit, check=check, progress=progress, stop=stop
        ),
        (playbook, options, []),
        environ,
        here,
        progress,
        stop,
    )


def _load(cluster: str | Path, env: Mapping[str, str] | None) -> tuple[Cluster, dict[str, str]]:
    from hpcinfer.provision.cluster import load_cluster

    return load_cluster(str(cluster)), _environ(env)


def _environ(env: Mapping[str, str] | None) -> dict[str, str]:
    import os

    return dict(os.environ if env is None else env)


def _on_control(
    cluster: Cluster,
    model: Any,
    local: Callable[[], Any],
    forwarded: tuple[str, list[str], list[str]],
    env: dict[str, str],
    here: bool | None,
    note: Callable[[str], None] | None,
    stop: StopSignal | None,
) -> Any:
    from hpcinfer.provision.dispatch import on_control

    return on_control(cluster, model, local, forwarded, env, here=here, note=note, stop=stop)
