"""A lean HTTP/1.1 client for the load generator: POST prebuilt bytes, stamp every read.

Why not aiohttp (which the dispatcher uses, where convenience matters more than
microseconds): a benchmark's latency is only as exact as its clocks. With aiohttp a request
costs about 0.3 ms of Python between "send now" and its bytes reaching the socket, so a burst
of 32 sends at a fixed concurrency puts the last one about 10 ms late; and a chunk's time is
taken when the reading coroutine wakes, after every other socket that was ready in the same
poll has been parsed and its coroutine run. Here a request is bytes built before the clock
starts and written with one `transport.write`, and each read is stamped in `data_received`,
the first Python that sees it: the figures measure the server, not the client.

What it speaks: HTTP/1.1 over TCP (TLS for https), one request at a time per connection,
keep-alive, responses with chunked transfer encoding, a Content-Length or read to the close.
Enough for OpenAI-compatible servers (vLLM's uvicorn, the stub, most proxies); no redirects,
no proxies (a benchmark must not go through http_proxy), no compression (never asked for).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
"""A status line and headers longer than this are not an HTTP server talking."""


class HttpError(Exception):
    """A response that broke the protocol, or a connection that failed under a request.

    `kind` names the failure for counting (no per-request detail), `detail` says the rest."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail or kind


@dataclass(frozen=True)
class Origin:
    """Where a server is: what to connect to and what to name in the Host header."""

    host: str
    port: int
    tls: bool
    host_header: str

    @classmethod
    def parse(cls, root: str) -> Origin:
        """'http://h:8000' -> Origin('h', 8000, ...); a URL path is ignored (the caller
        gives the request path)."""
        parts = urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{root!r} is not an http(s) URL, e.g. http://host:8000")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(host=host, port=port, tls=tls, host_header=f"{shown}:{port}")


def request_head(origin: Origin, path: str, headers: dict[str, str]) -> bytes:
    """The start of a POST's head, up to and including 'Content-Length: ' (the caller
    appends the length, a blank line and the body)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {origin.host_header}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


def post_bytes(head: bytes, body: bytes) -> bytes:
    """One whole request: `head` from request_head, then the body's length and the body."""
    return b"".join((head, str(len(body)).encode(), b"\r\n\r\n", body))


class ResponseHandler(Protocol):
    """What a connection reports about the response to the request it carries."""

    def on_head(self, status: int, reason: str) -> None: ...
    def on_body(self, data: bytes, now: float) -> None: ...
    def on_end(self) -> None: ...
    def on_error(self, error: HttpError, got_bytes: bool) -> None: ...


# -------------------------------------------------------------------------- response parsing

_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _TO_CLOSE, _DONE = range(8)


class ResponseParser:
    """Incremental HTTP/1.1 response parser: feed it reads, it calls the handler.

    `feed(data, now)` passes body bytes on with `now`, the time the read arrived; it raises
    HttpError on a malformed response. Its caller checks `ended` after each feed and calls
    the handler's `on_end` itself; `keep_alive` tells, once the response ended, whether the
    connection may carry another request."""

    __slots__ = ("_buffer", "_left", "_state", "handler", "keep_alive")

    def __init__(self, handler: ResponseHandler) -> None:
        self.handler = handler
        self._state = _HEAD
        self._buffer = b""
        self._left = 0
        self.keep_alive = True

    @property
    def ended(self) -> bool:
        return self._state == _DONE

    @property
    def started(self) -> bool:
        """True once any byte of the response arrived."""
        return self._state != _HEAD or bool(self._buffer)

    def feed(self, data: bytes, now: float) -> None:
        buf = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos = 0
        end = len(buf)
        handler = self.handler
        while pos < end:
            state = self._state
            if state in (_DATA, _LENGTH):
                take = min(self._left, end - pos)
                handler.on_body(buf[pos : pos + take], now)
                pos += take
                self._left -= take
                if self._left == 0:
                    if state == _LENGTH:
                        self._end()
                    else:
                        self._state = _DATA_END
            elif state == _TO_CLOSE:
                handler.on_body(buf[pos:], now)
                pos = end
            elif state == _DONE:
                raise HttpError("bytes after the end of the response", _snippet(buf[pos:]))
            elif state == _HEAD:
                cut = buf.find(b"\r\n\r\n", pos)
                if cut < 0:
                    if end - pos > MAX_HEAD_BYTES:
                        raise HttpError("not an HTTP response", _snippet(buf[pos:]))
                    self._buffer = buf[pos:]
                    return
                self._head(buf[pos:cut])
                pos = cut + 4
            else:  # a line: chunk size, the CRLF after a chunk, or a trailer
                cut = buf.find(b"\r\n", pos)
                if cut < 0:
                    if end - pos > 1024:
                        raise HttpError("malformed chunked body", _snippet(buf[pos:]))
                    self._buffer = buf[pos:]
                    return
                self._line(buf[pos:cut])
                pos = cut + 2

    def eof(self) -> None:
        """The server closed the connection: the end of a read-to-close body, else an error."""
        if self._state == _TO_CLOSE:
            self._end()
        elif self._state != _DONE:
            raise HttpError(
                "the server closed the connection mid-response",
                "the server closed the connection before the response ended",
            )

    def _head(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            raise HttpError("not an HTTP response", _snippet(raw))
        try:
            status = int(status_line[1])
        except ValueError:
            raise HttpError("not an HTTP response", _snippet(raw)) from None
        reason = status_line[2] if len(status_line) > 2 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        self.keep_alive = status_line[0] != "HTTP/1.0" and "close" not in connection
        if status < 200:  # an interim response (100 Continue): the real one follows
            return
        self.handler.on_head(status, reason)
        if status in (204, 304):
            self._end()
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _SIZE
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise HttpError("bad Content-Length", headers["content-length"]) from None
            if self._left == 0:
                self._end()
            else:
                self._state = _LENGTH
        else:
            self.keep_alive = False
            self._state = _TO_CLOSE

    def _line(self, line: bytes) -> None:
        state = self._state
        if state == _SIZE:
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError("malformed chunked body", _snippet(line)) from None
            if size == 0:
                self._state = _TRAILER
            else:
                self._left = size
                self._state = _DATA
        elif state == _DATA_END:
            if line:
                raise HttpError("malformed chunked body", _snippet(line))
            self._state = _SIZE
        elif not line:  # _TRAILER: the blank line ends the response
            self._end()

    def _end(self) -> None:
        self._state = _DONE  # the connection tells the handler, once it is free again


def _snippet(data: bytes) -> str:
    return data[:120].decode("utf-8", errors="replace")


# -------------------------------------------------------------------------- connections


class Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time for its pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.closed = False
        self.used = False  # it carried a request before (a server may have dropped it idle)

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        """Stamp the read, and parse it later in this loop iteration's callbacks: when many
        connections are readable at once (a burst of tokens at a fixed concurrency), each
        read is stamped before any is parsed, so no read's time waits on another's parsing.
        The end and loss of the connection are queued behind the reads, in order."""
        self.loop.call_soon(self._feed, data, time.monotonic())

    def eof_received(self) -> bool | None:
        self.loop.call_soon(self._eof)
        return True  # keep the transport until the queued reads are parsed

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True  # at once: an idle connection must not be taken from now on
        self.pool.forget(self)
        self.loop.call_soon(self._lost, exc)

    # -- the events, in arrival order

    def _feed(self, data: bytes, now: float) -> None:
        parser = self.parser
        if parser is None:
            self._close()  # bytes while idle: not a server to trust with the next request
            return
        try:
            parser.feed(data, now)
        except HttpError as exc:
            self._fail(exc)
            return
        if parser.ended:
            self._done(parser)

    def _eof(self) -> None:
        parser = self.parser
        if parser is not None:
            try:
                parser.eof()
            except HttpError as exc:
                self._fail(exc)
                return
            self._done(parser)
        self._close()

    def _lost(self, exc: Exception | None) -> None:
        if self.parser is not None:
            text = f": {exc}" if exc else ""
            self._fail(
                HttpError(
                    "the server closed the connection mid-response",
                    f"the connection was lost before the response ended{text}",
                )
            )

    # -- used by the pool

    def send(self, data: bytes, handler: ResponseHandler) -> None:
        assert self.transport is not None and self.parser is None
        self.parser = ResponseParser(handler)
        self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection under a request that is given up (timeout): no callbacks."""
        self.parser = None
        self._close()

    # -- internals

    def _done(self, parser: ResponseParser) -> None:
        """The response ended: free the connection first, then tell the handler (which may
        send the next request at once, on this very connection)."""
        self.parser = None
        self.used = True
        if parser.keep_alive and not self.closed:
            self.pool.release(self)
        else:
            self._close()
        parser.handler.on_end()

    def _fail(self, error: HttpError) -> None:
        parser, self.parser = self.parser, None
        self._close()
        if parser is not None:
            parser.handler.on_error(error, parser.started)

    def _close(self) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one server; the most recently used is reused first (the one
    least likely to have been closed by the server's idle timeout)."""

    def __init__(self, root: str, connect_timeout_s: float = 30.0) -> None:
        self.root = root
        self.origin = Origin.parse(root)
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[Connection] = []
        self.open: set[Connection] = set()
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.origin.tls else None

    def take_idle(self) -> Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
        return None

    async def connect(self) -> Connection:
        """A new connection (HttpError 'cannot connect to ...' when it fails)."""
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl else None,
                ),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            raise HttpError(f"cannot connect to {self.root}", detail) from None
        self.open.add(protocol)
        return protocol

    async def warm(self, count: int) -> None:
        """Open up to `count` idle connections now, so the first sends need no handshake
        (failures are ignored here: a server that is down shows in the requests)."""
        results = await asyncio.gather(
            *(self.connect() for _ in range(count - len(self.idle))), return_exceptions=True
        )
        self.idle += [c for c in results if isinstance(c, Connection)]

    def release(self, connection: Connection) -> None:
        self.idle.append(connection)

    def forget(self, connection: Connection) -> None:
        self.open.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        """Drop every connection, idle or carrying a request (whose handler is not told)."""
        for connection in list(self.open):
            connection.abort()
        self.idle.clear()
