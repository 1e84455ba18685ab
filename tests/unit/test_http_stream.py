"""The load generator's HTTP/1.1 client: response framing fed in arbitrary pieces, bad
responses as named errors, and a kept-alive connection that the server dropped idle."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from hpcinfer.bench.arrivals import fixed_concurrency
from hpcinfer.bench.dataset import random_requests
from hpcinfer.bench.http_stream import HttpError, Origin, ResponseParser, post_bytes, request_head
from hpcinfer.bench.loadgen import LoadOptions, run_load


class Recorder:
    def __init__(self) -> None:
        self.head: tuple[int, str] | None = None
        self.body: list[tuple[bytes, float]] = []

    def on_head(self, status: int, reason: str) -> None:
        self.head = (status, reason)

    def on_body(self, data: bytes, now: float) -> None:
        self.body.append((data, now))

    def on_end(self) -> None:  # the connection calls it, not the parser
        raise AssertionError("not called by the parser")

    def on_error(self, error: HttpError, got_bytes: bool) -> None:
        raise AssertionError("not called by the parser")


def feed_in_pieces(raw: bytes, size: int) -> tuple[ResponseParser, Recorder]:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    for k, start in enumerate(range(0, len(raw), size)):
        parser.feed(raw[start : start + size], float(k))
    return parser, recorder


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_chunked_body_in_any_pieces(size: int) -> None:
    parser, recorder = feed_in_pieces(CHUNKED, size)
    assert parser.ended and parser.keep_alive
    assert recorder.head == (200, "OK")
    assert b"".join(data for data, _ in recorder.body) == b"hello world!"
    # each piece of body is passed on with the time of the read that brought it
    if size == 1000:
        assert {now for _, now in recorder.body} == {0.0}


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_content_length_and_read_to_close_bodies(size: int) -> None:
    raw = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope"
    parser, recorder = feed_in_pieces(raw, size)
    assert parser.ended and recorder.head == (500, "Internal Server Error")
    assert b"".join(d for d, _ in recorder.body) == b"nope"

    parser, recorder = feed_in_pieces(b"HTTP/1.0 200 OK\r\n\r\nstream until close", size)
    assert not parser.ended and not parser.keep_alive
    parser.eof()
    assert parser.ended and b"".join(d for d, _ in recorder.body) == b"stream until close"


def test_interim_responses_and_connection_close() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    parser, recorder = feed_in_pieces(raw, 1000)
    assert parser.ended and recorder.head == (204, "No Content") and not parser.keep_alive


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "malformed chunked"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", "bytes after the end"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "not an HTTP response"),
    ],
)
def test_bad_responses_are_named(raw: bytes, kind: str) -> None:
    with pytest.raises(HttpError, match=kind):
        feed_in_pieces(raw, 1000)


def test_a_cut_response_is_an_error_at_eof() -> None:
    parser, _ = feed_in_pieces(CHUNKED[:-20], 1000)
    with pytest.raises(HttpError, match="closed the connection mid-response"):
        parser.eof()


def test_request_bytes() -> None:
    origin = Origin.parse("http://[::1]:8000/v1")
    assert (origin.host, origin.port, origin.tls, origin.host_header) == (
        "::1",
        8000,
        False,
        "[::1]:8000",
    )
    assert Origin.parse("https://h").port == 443
    with pytest.raises(ValueError, match="not an http"):
        Origin.parse("ftp://h")
    head = request_head(Origin.parse("http://h:1"), "/v1/completions", {"Accept": "x"})
    raw = post_bytes(head, b'{"a":1}')
    assert raw == (
        b"POST /v1/completions HTTP/1.1\r\nHost: h:1\r\nAccept: x\r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}'
    )


def _sse_answer() -> bytes:
    events = [
        {"choices": [{"text": " t"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}},
    ]
    body = (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_a_kept_alive_connection_dropped_by_the_server_is_resent_once() -> None:
    """The server answers the first request of each connection and closes the connection
    when a second one comes on it (as a server does whose idle timeout fired as the request
    was written): nothing was answered, so the request goes again on a new connection and
    the benchmark sees no failure."""
    seen = {"requests": 0, "dropped": 0}
    open_handlers = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_handlers[0] += 1
        try:
            await answer_one_then_drop(reader, writer)
        except asyncio.IncompleteReadError:
            writer.close()  # the client closed its pool at the end
        finally:
            open_handlers[0] -= 1

    async def answer_one_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        answered = False
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            seen["requests"] += 1
            if answered:
                seen["dropped"] += 1
                writer.close()
                return
            writer.write(_sse_answer())
            await writer.drain()
            answered = True

    def main() -> tuple[int, dict[str, int]]:
        async def start() -> tuple[asyncio.Server, int]:
            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            return server, server.sockets[0].getsockname()[1]

        loop = asyncio.new_event_loop()
        server, port = loop.run_until_complete(start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            requests = random_requests(5, input_len=4, output_len=1, vocab=50)
            result = run_load(
                [f"http://127.0.0.1:{port}"], requests, fixed_concurrency(5, 1), LoadOptions("m")
            )
        finally:
            deadline = time.monotonic() + 5
            while open_handlers[0] and time.monotonic() < deadline:
                time.sleep(0.01)  # every handler sees its connection close, none left pending
            loop.call_soon_threadsafe(server.close)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
        return result.failed, seen

    failed, counts = main()
    assert failed == 0
    assert counts == {"requests": 9, "dropped": 4}
