"""Stand-ins for vLLM servers in the serve unit tests: a real HTTP server (in a thread, or a
process started like a server) answering /health and /v1/models the way vLLM does (the
process one also a temperature-0 completion, for the verification request)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from hpcinfer.serve.fleet import ServerLaunch
from tests.harness import free_port

# A server process: `python fake_server.py PORT MODEL SICK_FILE`. /health answers 503 while
# SICK_FILE exists; /v1/models wants `Bearer $VLLM_API_KEY` when that variable is set;
# FAKE_DELAY seconds pass before it listens, and it waits for the file FAKE_GATE (when set)
# to exist: a test opens the gate when it wants the server up, instead of racing a delay.
FAKE_SERVER = r"""
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, model, sick = int(sys.argv[1]), sys.argv[2], sys.argv[3]
key = os.environ.get("VLLM_API_KEY")
print("fake server starting on", port, flush=True)
time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
while os.environ.get("FAKE_GATE") and not os.path.exists(os.environ["FAKE_GATE"]):
    time.sleep(0.05)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b""
        if self.path == "/health":
            code = 503 if os.path.exists(sick) else 200
        elif self.path == "/v1/models":
            if key and self.headers.get("Authorization") != "Bearer " + key:
                code = 401
            else:
                code, body = 200, json.dumps({"data": [{"id": model}]}).encode()
        else:
            code = 404
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        asked = json.loads(self.rfile.read(length) or b"{}")
        ok = self.path == "/v1/completions" and asked.get("temperature") == 0
        body = json.dumps({"choices": [{"text": " Paris, " + model}]}).encode() if ok else b""
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def fake_launch(
    tmp_path: Path,
    index: int,
    *,
    argv: list[str] | None = None,
    env: dict[str, str] | None = None,
    model: str = "m",
) -> tuple[ServerLaunch, Path]:
    """A launch of the fake server (or of `argv`), and the file that makes it sick."""
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER, encoding="utf-8")
    port = free_port()
    sick = tmp_path / f"sick-{index}"
    command = argv or [sys.executable, str(script), str(port), model, str(sick)]
    launch = ServerLaunch(
        index=index,
        argv=command,
        env=dict(env or {"PATH": "/usr/bin:/bin"}),
        log=tmp_path / "logs" / f"node-{index}.log",
        url=f"http://127.0.0.1:{port}",
        model=model,
        node="node",
        devices=(f"core{index}",),
    )
    return launch, sick


class _Handler(BaseHTTPRequestHandler):
    model = "m"
    key: str | None = None
    seen_auth: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        body = b""
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.path == "/health":
            code = 200
        elif self.path == "/v1/models":
            if self.key and self.headers.get("Authorization") != f"Bearer {self.key}":
                code = 401
            else:
                code, body = 200, json.dumps({"data": [{"id": self.model}]}).encode()
        else:
            code = 404
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on a free 127.0.0.1 port in a thread: its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def http_server(model: str = "m", key: str | None = None) -> Iterator[tuple[str, list]]:
    """An OpenAI-like server in a thread: (its URL, the Authorization headers it saw)."""
    seen: list[str | None] = []
    handler = type("Handler", (_Handler,), {"model": model, "key": key, "seen_auth": seen})
    with serving(handler) as url:
        yield url, seen


def outside_any_rank(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `hpcinfer serve` typed at a shell in `cwd`: no launcher's rank variables set (the
    command then launches the ranks itself)."""
    monkeypatch.chdir(cwd)
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "HPCINFER_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
