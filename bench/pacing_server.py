"""A minimal OpenAI-style streaming server that timestamps every request's arrival.

    python bench/pacing_server.py [--port 0]      # prints its URL once listening

Why not the stub server: to judge a client's pacing from outside, the server must note each
request's arrival the moment its first byte is read, and must itself add as little delay as
possible at thousands of requests/s. This is a bare asyncio protocol (uvloop when present):
it parses just enough HTTP/1.1 (keep-alive, Content-Length bodies), answers every POST with a
whole `/v1/completions` stream in vLLM's format (`max_tokens` tokens, a usage event,
`[DONE]`) in one write, and keeps the arrival times (CLOCK_MONOTONIC, the clock every process
on the machine shares) for `GET /arrivals` (`?reset=1` empties the list after reading).
`GET /v1/models` and `/health` answer as vLLM's do, enough for `vllm bench serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

MODEL = "tiny"
_HEAD_END = b"\r\n\r\n"


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _stream_body(prompt_tokens: int, max_tokens: int) -> bytes:
    """The whole event stream of a completion of `max_tokens` tokens, as vLLM sends it."""
    events = []
    for i in range(max_tokens):
        finish = "length" if i == max_tokens - 1 else None
        choice = {"index": 0, "text": f" tok{i}", "logprobs": None, "finish_reason": finish}
        chunk = {"id": "cmpl-p", "object": "text_completion", "created": 0, "model": MODEL}
        events.append({**chunk, "choices": [choice]})
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": max_tokens,
        "total_tokens": prompt_tokens + max_tokens,
    }
    events.append({"id": "cmpl-p", "object": "text_completion", "created": 0, "model": MODEL,
                   "choices": [], "usage": usage})  # fmt: skip
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return data + b"data: [DONE]\n\n"


class _Http(asyncio.Protocol):
    """One connection: requests in, answers out, arrival of each request's first byte kept."""

    def __init__(self, arrivals: list[float]) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.first_byte_s = 0.0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.buffer:
            self.first_byte_s = time.monotonic()
        self.buffer += data
        while True:
            end = self.buffer.find(_HEAD_END)
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            total = end + len(_HEAD_END) + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + len(_HEAD_END) : total]
            self.buffer = self.buffer[total:]
            arrived = self.first_byte_s
            if self.buffer:
                self.first_byte_s = time.monotonic()
            self.transport.write(self._answer(head.split(" ", 2), body, arrived))

    def _answer(self, request_line: list[str], body: bytes, arrived: float) -> bytes:
        method, path = request_line[0], request_line[1] if len(request_line) > 1 else "/"
        if method == "POST":
            self.arrivals.append(arrived)
            request: dict[str, Any] = json.loads(body or b"{}")
            prompt = request.get("prompt", "")
            prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
            max_tokens = int(request.get("max_tokens") or 1)
            return _response("200 OK", _stream_body(prompt_tokens, max_tokens), "text/event-stream")
        if path.startswith("/arrivals"):
            payload = json.dumps(self.arrivals).encode()
            if "reset=1" in path:
                self.arrivals.clear()
            return _response("200 OK", payload, "application/json")
        if path.startswith("/v1/models"):
            card = {"id": MODEL, "object": "model", "owned_by": "pacing", "root": MODEL}
            payload = json.dumps({"object": "list", "data": [card]}).encode()
            return _response("200 OK", payload, "application/json")
        return _response("200 OK", b"", "text/plain")


async def serve(port: int) -> None:
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(arrivals), "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        run: Any = uvloop.run
    except (ImportError, AttributeError):
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.port))


if __name__ == "__main__":
    main()
