"""`hpcinfer stage` as a library call: one rank reads the model, every node gets a checked copy.

    rank 0 lists the source ─ bcast ─> every rank: its folder (placeholders filled in),
    ranks sharing a folder elect one writer ─> each writer checks its copy (keeps what
    verifies) ─> allgather of needs ─> rank 0 broadcasts the files anyone needs to the
    writers that need them ─> writers read back, place links, drop extras, write the
    manifest last ─> rank 0 gathers the reports.

Every failure goes through `agree`, so all ranks raise the same error and exit alike; an
unexpected exception aborts the MPI job rather than leaving the other ranks waiting.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from hpcinfer.cluster.allocation import short_hostname
from hpcinfer.errors import HpcinferError, InputError, SpecError
from hpcinfer.stage.broadcast import Broadcaster, Hooks, Outcome
from hpcinfer.stage.comm import Comm, abort_on_surprise, agree, open_comm
from hpcinfer.stage.errors import StageError
from hpcinfer.stage.layout import (
    Source,
    check_placeholders,
    copy_dir,
    expand_target,
    has_placeholders,
    resolve_source,
    run_arguments,
)
from hpcinfer.stage.manifest import (
    Entry,
    Manifest,
    append_journal,
    remove_journal,
    remove_manifest,
    start_journal,
    write_manifest,
)
from hpcinfer.stage.plan import CopyPlan, plan_copy
from hpcinfer.stage.report import RankReport, StageResult
from hpcinfer.stage.scan import scan_source
from hpcinfer.stage.target import (
    place_link,
    prepare,
    ranks_sharing,
    remove_extras,
    remove_probe,
    remove_temps,
)
from hpcinfer.stage.verify import check_entry, verify_threads

MAX_CHUNK_MIB = 1024
_RERUN = (
    "no copy was marked verified; rerun the same command: files already in place are "
    "checked and kept, the rest is sent again"
)


@dataclass(frozen=True)
class StageRequest:
    model: str
    to: str
    chunk_mib: int = 64
    force: bool = False  # send everything again, even to verified copies


def check_request(request: StageRequest) -> None:
    """Errors every rank finds alike, before any collective."""
    check_placeholders(request.to)
    if not 1 <= request.chunk_mib <= MAX_CHUNK_MIB:
        raise SpecError(f"--chunk-mib {request.chunk_mib}: choose 1 to {MAX_CHUNK_MIB} (MiB)")
    if not request.to.strip():
        raise SpecError("--to is empty; name the node-local folder for the copy, e.g. /tmp")


def stage_model(
    request: StageRequest,
    *,
    comm: Comm | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    hooks: Hooks | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> StageResult:
    """Stage `request.model` to every rank's `request.to`; the same outcome on every rank.

    `progress(bytes_sent, bytes_to_send, seconds)` is called on rank 0 after each file.
    """
    check_request(request)
    env = os.environ if env is None else env
    comm = comm if comm is not None else open_comm(env)
    with abort_on_surprise(comm):
        return _Stage(request, comm, env, cwd or Path.cwd(), hooks, progress).run()


class _Stage:
    def __init__(
        self,
        request: StageRequest,
        comm: Comm,
        env: Mapping[str, str],
        cwd: Path,
        hooks: Hooks | None,
        progress: Callable[[int, int, float], None] | None,
    ) -> None:
        self.request = request
        self.comm = comm
        self.env = env
        self.cwd = cwd
        self.hooks = hooks
        self.progress = progress
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.host = short_hostname(socket.gethostname())
        self.started = time.monotonic()

    def run(self) -> StageResult:
        source, listing, token = self._source()
        to, copy, node = self._folder(source, token)
        writer = self._elect(copy, token)
        plan = self._plan(copy, listing, writer == self.rank)
        outcome = self._broadcast(copy, listing, plan)
        self._finish(copy, source, listing, plan, outcome)
        report = RankReport(
            rank=self.rank,
            host=self.host,
            node=node,
            copy=str(copy),
            writer=writer,
            verified=plan.verified if plan is not None else False,
            received=sorted(plan.wanted) if plan is not None else [],
            problems=plan.problems[:3] if plan is not None else [],
        )
        reports = self.comm.gather(report, root=0) or [report]
        model_arg, run_env = run_arguments(source.kind, source.model, to, self.cwd)
        return StageResult(
            rank=self.rank,
            model=source.model,
            source=str(source.root),
            layout=source.kind,
            to=self.request.to,
            templated=has_placeholders(self.request.to),
            run_model=model_arg,
            run_env=run_env,
            files=sum(1 for e in listing if e.kind == "file"),
            links=sum(1 for e in listing if e.kind == "link"),
            bytes_total=sum(e.size for e in listing if e.kind == "file"),
            bytes_sent=outcome.bytes_sent,
            seconds=time.monotonic() - self.started,
            broadcast_seconds=outcome.seconds,
            chunk_mib=self.request.chunk_mib,
            ranks=self.size,
            reports=reports if self.rank == 0 else [report],
        )

    # -- 1. rank 0 lists the source ------------------------------------------------------

    def _source(self) -> tuple[Source, list[Entry], str]:
        error: HpcinferError | None = None
        shared = None
        if self.rank == 0:
            try:
                source = resolve_source(self.request.model, self.env, self.cwd)
                shared = (source, scan_source(source), secrets.token_hex(6))
            except HpcinferError as exc:
                error = exc
            except OSError as exc:
                error = InputError(f"cannot read the model {self.request.model!r}: {exc}")
        agree(self.comm, error, "reading the model")
        source, listing, token = self.comm.bcast(shared, root=0)
        return source, listing, token

    # -- 2. this rank's folder -------------------------------------------------------------

    def _folder(self, source: Source, token: str) -> tuple[str, Path, int]:
        hosts = self.comm.allgather(self.host)
        node = list(dict.fromkeys(hosts)).index(self.host)
        to = expand_target(self.request.to, rank=self.rank, node=node, hostname=self.host)
        copy = copy_dir(source.kind, source.model, to, self.cwd)
        error: HpcinferError | None = None
        try:
            _check_apart(copy, source.root, self.request.to)
            prepare(copy, token, self.rank)
        except HpcinferError as exc:
            error = exc
        try:
            agree(self.comm, error, "preparing the copies")
        except StageError:
            remove_probe(copy, token, self.rank)
            raise
        return to, copy, node

    # -- 3. one writer per folder -------------------------------------------------------

    def _elect(self, copy: Path, token: str) -> int:
        """The lowest rank among those writing the same folder (one node without {rank},
        or a shared file system) writes it; the others only wait. Returns that rank."""
        self.comm.Barrier()
        seen = self.comm.allgather(ranks_sharing(copy, token) | {self.rank})
        remove_probe(copy, token, self.rank)
        group = {self.rank}
        grew = True
        while grew:
            merged = set().union(*(seen[r] for r in group))
            grew = merged != group
            group = merged
        return min(group)

    # -- 4. what each copy needs ------------------------------------------------------------

    def _plan(self, copy: Path, listing: list[Entry], writer: bool) -> CopyPlan | None:
        """Writers check their copies (in parallel on all nodes); the others have none."""
        error: HpcinferError | None = None
        plan = None
        try:
            if writer:
                remove_temps(copy)
                if self.request.force:
                    remove_manifest(copy)
                plan = plan_copy(copy, listing, force=self.request.force)
        except (OSError, ValueError) as exc:
            error = StageError(f"checking the existing copy in {copy}: {exc}")
        agree(self.comm, error, "checking the copies")
        return plan

    # -- 5. the broadcast -----------------------------------------------------------------

    def _broadcast(self, copy: Path, listing: list[Entry], plan: CopyPlan | None) -> Outcome:
        wanted = plan.wanted if plan is not None else set()
        needs = self.comm.allgather(sorted(wanted))
        union = {path for need in needs for path in need}
        files = [e for e in listing if e.kind == "file" and e.path in union]
        participants = {0} | {rank for rank, need in enumerate(needs) if need}
        sub = self.comm.Split(0 if self.rank in participants else 1, self.rank)
        outcome = Outcome()
        error: str | None = None
        try:
            if files and self.rank in participants:
                outcome, error = self._send_or_receive(sub, copy, files, wanted, plan)
        finally:
            sub.Free()
        agree(self.comm, StageError(error) if error else None, "staging", fix=_RERUN)
        return outcome

    def _send_or_receive(
        self, sub: Comm, copy: Path, files: list[Entry], wanted: set[str], plan: CopyPlan | None
    ) -> tuple[Outcome, str | None]:
        writing = plan is not None and bool(wanted)
        if writing:
            assert plan is not None
            start_journal(copy, plan.kept.values())
            remove_manifest(copy)  # un-verify before any file changes
        total = sum(e.size for e in files)
        checks: list[Future[str | None]] = []
        with (
            Broadcaster(
                sub,
                copy if writing else None,
                self._chunk_bytes(),
                self.rank,
                self.hooks,
                largest=max(e.size for e in files),
            ) as broadcaster,
            ThreadPoolExecutor(verify_threads(), thread_name_prefix="stage-check") as checker,
        ):

            def placed(entry: Entry) -> None:
                append_journal(copy, entry)
                checks.append(checker.submit(check_entry, copy, entry))

            def progress(sent: int) -> None:
                if self.progress is not None and self.rank == 0:
                    self.progress(sent, total, time.monotonic() - self.started)

            outcome = broadcaster.run(files, wanted, placed, progress)
            problems = [why for why in (c.result() for c in checks) if why is not None]
        if outcome.error is not None:
            return outcome, outcome.error
        if problems:
            return outcome, f"read back after writing: {problems[0]}"
        return outcome, None

    def _chunk_bytes(self) -> int:
        return self.request.chunk_mib << 20

    # -- 6. writers finish their copies -------------------------------------------------

    def _finish(
        self,
        copy: Path,
        source: Source,
        listing: list[Entry],
        plan: CopyPlan | None,
        outcome: Outcome,
    ) -> None:
        """Links, extras, then the manifest, last: only now is the copy verified."""
        error: HpcinferError | None = None
        if plan is None or plan.verified:
            agree(self.comm, None, "finishing the copies")
            return
        try:
            entries = []
            for entry in listing:
                if entry.kind == "link":
                    place_link(copy, entry)
                    entries.append(entry)
                    continue
                kept = plan.kept.get(entry.path)
                digest = kept.sha256 if kept is not None else outcome.digests[entry.path]
                entries.append(replace(entry, sha256=digest))
            remove_extras(copy, [e.path for e in listing])
            write_manifest(
                copy,
                Manifest(
                    model=source.model,
                    source=str(source.root),
                    layout=source.kind,
                    entries=tuple(entries),
                ),
            )
            remove_journal(copy)
        except OSError as exc:
            error = StageError(f"finishing the copy in {copy}: {exc}")
        agree(self.comm, error, "finishing the copies")


def _check_apart(copy: Path, source: Path, to: str) -> None:
    """The copy must not be, hold, or sit inside the source (a restage would eat it)."""
    mine, theirs = os.path.realpath(copy), os.path.realpath(source)
    if os.path.commonpath([mine, theirs]) in (mine, theirs):
        raise InputError(
            f"--to {to} puts the copy at {copy}, which is or overlaps the source {source}; "
            "choose a node-local folder such as /tmp or /local/scratch"
        )
