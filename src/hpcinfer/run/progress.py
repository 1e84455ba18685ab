"""Progress of a long run: a live bar on a terminal, a plain line every so often in batch logs."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_INTERVAL_S = 15.0


class ProgressView:
    """Records done / total, tokens/s, ETA and errors, on stderr (stdout stays for --json)."""

    def __init__(self, *, total: int, done: int, quiet: bool) -> None:
        self.total = total
        self.done = done
        self.initial_done = done
        self.errors = 0
        self.output_tokens = 0
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.started = time.monotonic()
        self.generation_start: float | None = None
        self.first_progress: float | None = None
        self.tokens_before_first = 0
        self.last_plain = 0.0
        self.last_plain_done = -1
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {message}")

    def __enter__(self) -> ProgressView:
        if self.quiet:
            return self
        if self.done:
            self.console.print(f"resuming: {self.done}/{self.total} records already committed")
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]records"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.0f} tok/s"),
                TextColumn("[red]{task.fields[errors]} errors"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "run", total=self.total, completed=self.done, rate=0.0, errors=0
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
        elif not self.quiet and self.done != self.last_plain_done:
            self._plain_line()

    def generation_started(self) -> None:
        """The first worker is ready: from now on tokens/s is measured (engine start-up is
        not), over the same window as the run summary's figure."""
        if self.generation_start is None:
            self.generation_start = time.monotonic()

    def advance(self, stats: dict[str, int]) -> None:
        """Called with each worker's progress message (counts since its last message)."""
        self.done += stats.get("records", 0)
        self.errors += stats.get("errors", 0)
        self.output_tokens += stats.get("output_tokens", 0)
        if self.first_progress is None:
            # The clock starts at the first finished records; their tokens took unmeasured
            # time, so they are left out of the rate (else the first line shows millions).
            self.first_progress = time.monotonic()
            self.tokens_before_first = self.output_tokens
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=self.done, rate=self.rate(), errors=self.errors
            )
        elif not self.quiet and time.monotonic() - self.last_plain >= PLAIN_INTERVAL_S:
            self._plain_line()

    def rate(self) -> float:
        """Output tokens/s since generation started (engine start-up excluded). Without that
        mark, since the first records finished, leaving their tokens out: they took time
        that was not measured."""
        if self.generation_start is not None:
            since, tokens = self.generation_start, self.output_tokens
        elif self.first_progress is not None:
            since, tokens = self.first_progress, self.output_tokens - self.tokens_before_first
        else:
            return 0.0
        elapsed = time.monotonic() - since
        return tokens / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at this run's pace so far (None before the first records finish)."""
        finished = self.done - self.initial_done
        elapsed = time.monotonic() - self.started
        if finished <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) / (finished / elapsed)

    def _plain_line(self) -> None:
        self.last_plain = time.monotonic()
        self.last_plain_done = self.done
        eta = self.eta_s()
        eta_text = "" if eta is None else f", ETA {int(eta) // 60}m{int(eta) % 60:02d}s"
        print(
            f"[hpcinfer] {self.done}/{self.total} records, {self.errors} errors, "
            f"{self.rate():.0f} output tok/s{eta_text}",
            file=sys.stderr,
            flush=True,
        )
