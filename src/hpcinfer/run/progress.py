"""Progress of a long run: the phase (planning, workers loading the model, generating,
exporting), records, rates and ETA as `run.figures` defines them, and workers that went
silent. A live bar on a terminal, a plain line every so often in batch logs, and a status
file (`run.status_file`) that `hpcinfer status OUT_DIR` reads."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from hpcinfer.run import figures
from hpcinfer.run.status_file import StatusFile

if TYPE_CHECKING:
    from hpcinfer.run.coordinator import Coordinator, WorkerState

PLAIN_INTERVAL_S = 15.0
STATUS_INTERVAL_S = 2.0


class ProgressView:
    """Watches a run for the user (stderr: stdout stays for --json) and for `hpcinfer
    status` (the status file, when given an output directory)."""

    def __init__(
        self, *, total: int = 0, done: int = 0, quiet: bool, out_dir: Path | None = None
    ) -> None:
        self.total = total
        self.done = done
        self.errors = 0
        self.records_run = 0
        self.output_tokens = 0
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.phase = "planning"
        self.generation_start: float | None = None
        self.last_report: float | None = None
        self.workers: list[WorkerState] = []
        self.stop_note = ""
        self.last_plain = 0.0
        self.last_plain_done = -1
        self.status = StatusFile(out_dir) if out_dir is not None else None
        self._last_status = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    # -- what the job and the coordinator tell it -------------------------------------------
    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {message}")

    def planned(self, total: int, done: int) -> None:
        """The plan is made: `total` records, `done` of them committed by earlier runs."""
        self.total, self.done = total, done

    def set_phase(self, phase: str, *, force: bool = False) -> None:
        """Show a new phase (a line in batch logs, the bar's label on a terminal)."""
        if phase == self.phase and not force:
            return
        self.phase = phase
        self._say(phase)
        self._write_status(force=True)

    def workers_ready(self, ready: int, total: int) -> None:
        if self.stop_note:
            return
        if ready < total:
            self.set_phase(f"generating; {ready} of {total} workers ready, the others loading")
        else:
            self.set_phase("generating")

    def workers_starting(self, total: int) -> None:
        self.set_phase(f"workers loading the model: 0 of {total} ready")

    def generation_started(self) -> None:
        """The first worker is ready: generation time starts (figures.py)."""
        if self.generation_start is None:
            self.generation_start = time.monotonic()

    def advance(self, stats: dict[str, int]) -> None:
        """Called with each worker's progress message (counts since its last message)."""
        now = time.monotonic()
        self.last_report = now
        records = stats.get("records", 0)
        self.done += records
        self.records_run += records
        self.errors += stats.get("errors", 0)
        self.output_tokens += stats.get("output_tokens", 0)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=self.done, description=self.phase, **self._fields()
            )
        elif not self.quiet and now - self.last_plain >= PLAIN_INTERVAL_S:
            self._plain_line()

    def stopping(self, reason: str, units_held: int, aborting: bool) -> None:
        """Said at once, so the user knows what the Ctrl-C does and what another one does."""
        if aborting:
            self.stop_note = "aborting: ending the workers now (committed units are kept)"
        else:
            self.stop_note = (
                f"stopping ({reason}): finishing {units_held} unit(s) in flight; "
                "Ctrl-C again to abort"
            )
        self.set_phase(self.stop_note)

    def tick(self, coordinator: Coordinator) -> None:
        """Every turn of the coordinator's loop: worker states, silent workers, status file."""
        self.workers = coordinator.worker_states()
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=self.phase, **self._fields())
        self._write_status()

    def exporting(self) -> None:
        self.set_phase("exporting results")

    def finished(self) -> None:
        """run.json now tells the finished job; the running job's status file goes."""
        if self.status is not None:
            self.status.remove()

    # -- the figures ------------------------------------------------------------------------
    def generation_s(self) -> float | None:
        """From the first worker ready to the latest progress report (figures.py)."""
        if self.generation_start is None or self.last_report is None:
            return None
        return max(self.last_report - self.generation_start, 0.0)

    def rate(self) -> float:
        """Output tokens/s of this run over its generation time."""
        return figures.per_s(self.output_tokens, self.generation_s())

    def records_per_s(self) -> float:
        return figures.per_s(self.records_run, self.generation_s())

    def eta_s(self) -> float | None:
        return figures.eta_s(self.total - self.done, self.records_run, self.generation_s())

    def silent(self) -> list[WorkerState]:
        return [w for w in self.workers if w.state == "silent"]

    # -- showing them ------------------------------------------------------------------------
    def __enter__(self) -> ProgressView:
        self._write_status(force=True)
        if self.quiet:
            return self
        if self.done:
            self.console.print(f"resuming: {self.done}/{self.total} records already committed")
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.0f} output tok/s"),
                TextColumn("[red]{task.fields[errors]} errors"),
                TextColumn("{task.fields[eta]}{task.fields[silent]}"),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.phase, total=self.total, completed=self.done, **self._fields()
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif not self.quiet and self.done != self.last_plain_done:
            self._plain_line()

    def _fields(self) -> dict[str, Any]:
        return {
            "rate": self.rate(),
            "errors": self.errors,
            "eta": self._eta_text(),
            "silent": self._silent_text(),
        }

    def _eta_text(self) -> str:
        eta = self.eta_s()
        return "" if eta is None else f"ETA {figures.duration_text(eta)}"

    def _silent_text(self) -> str:
        silent = self.silent()
        if not silent:
            return ""
        return "; " + ", ".join(
            f"worker {w.worker} silent {figures.duration_text(w.silent_s)}" for w in silent
        )

    def _say(self, text: str) -> None:
        if self.quiet:
            return
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text)
            self._progress.console.print(f"[hpcinfer] {text}", highlight=False)
        else:
            print(f"[hpcinfer] {text}", file=sys.stderr, flush=True)

    def _plain_line(self) -> None:
        self.last_plain = time.monotonic()
        self.last_plain_done = self.done
        eta = self._eta_text()
        print(
            f"[hpcinfer] {self.done}/{self.total} records, {self.errors} errors, "
            f"{self.rate():.0f} output tok/s, {self.records_per_s():.1f} records/s"
            + (f", {eta}" if eta else "")
            + self._silent_text(),
            file=sys.stderr,
            flush=True,
        )

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.status is None or (not force and now - self._last_status < STATUS_INTERVAL_S):
            return
        self._last_status = now
        self.status.write(
            phase=self.phase,
            records_total=self.total,
            records_done=self.done,
            records_failed_this_run=self.errors,
            records_this_run=self.records_run,
            output_tokens_this_run=self.output_tokens,
            generation_s=self.generation_s(),
            output_tokens_per_s=round(self.rate(), 1),
            records_per_s=round(self.records_per_s(), 2),
            eta_s=self.eta_s(),
            workers=self.workers,
        )
