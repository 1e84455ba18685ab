"""Finding processes a test started, including vLLM's renamed children (`VLLM::EngineCore`
does not show its command line): tests mark their processes with HPCINFER_TEST_MARK in the
environment, which every child inherits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def marked(mark: str) -> list[int]:
    """Pids of live processes whose environment holds the test's mark (not zombies)."""
    needle = f"HPCINFER_TEST_MARK={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle not in (proc / "environ").read_bytes():
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(proc.name))
    return found


def with_text(pids: list[int], text: str) -> list[int]:
    """Pids (among all) whose command line contains `text` (a port, a model path)."""
    hits = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                hits.append(int(proc.name))
        except OSError:
            continue
    return [p for p in hits if p in pids or not pids]


def assert_no_orphans(mark: str, *texts: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert marked(mark) == [], "processes left behind: " + ", ".join(
        (Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        for p in marked(mark)
        if Path(f"/proc/{p}").exists()
    )
    for text in texts:
        assert with_text([], text) == [], f"a process still names {text}"


@contextmanager
def stub_process(*args: str, cores: set[int] | None = None) -> Iterator[str]:
    """`python -m hpcinfer.testing.stub_server --port 0 ARGS` in its own process (client and
    server must not share a GIL), as a user starts it, optionally pinned to `cores`; its URL.
    Stopped with SIGTERM, then killed, at the end."""
    cmd = [sys.executable, "-m", "hpcinfer.testing.stub_server", "--port", "0", *args]
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=pin,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            proc.kill()
            pytest.fail(f"the stub server did not start: {proc.communicate(timeout=10)[1]}")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
