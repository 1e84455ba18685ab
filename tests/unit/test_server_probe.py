"""The server probe against real servers on 127.0.0.1: the stub (vLLM's answers), a port
that refuses, a server that never answers, and one that is not an OpenAI server."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import aiohttp
import pytest

from hpcinfer.core.server_probe import (
    ProbeError,
    check_health,
    check_server,
    check_servers,
    healthy_async,
    list_models,
    list_models_async,
)
from hpcinfer.testing.stub_server import StubServer
from tests.unit.serve_fakes import serving


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer(model="served", api_key="k3y") as server:
        yield server


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A bound port with no listener: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A listening port nobody accepts from: requests connect and never get an answer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def not_openai_url() -> Iterator[str]:
    """A server whose /health is fine and whose /v1/models is not a model list."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"{}" if self.path == "/health" else b'{"data": "nope"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        yield url


def test_a_ready_server_lists_its_model(stub: StubServer) -> None:
    check = check_server(stub.url, 5.0, "k3y", "served")
    assert check.up and check.models == ["served"] and check.error is None
    assert check.latency_s is not None and check.latency_s >= 0
    cards = list_models(stub.url, 5.0, "k3y")
    assert [(c["id"], c["root"]) for c in cards] == [("served", "served")]


def test_a_wrong_model_or_key_is_down_with_the_reason(stub: StubServer) -> None:
    check = check_server(stub.url, 5.0, "k3y", "other")
    assert not check.up and check.error == "serves served, not other"
    check = check_server(stub.url, 5.0, "s3cr3t-guess", None)
    assert not check.up
    assert check.error == "/v1/models: HTTP 401 (wrong or missing API key: --api-key-env)"
    assert "s3cr3t" not in check.error  # the key is never in a message
    with pytest.raises(ProbeError) as caught:
        list_models(stub.url, 5.0, None)
    assert caught.value.status == 401 and str(caught.value).startswith(f"{stub.url}/v1/models:")
    assert check_health(stub.url).up  # /health needs no key, as with vLLM


def test_unreachable_servers_name_the_url_and_why(refusing_url: str, silent_url: str) -> None:
    check = check_server(refusing_url, 2.0)
    assert not check.up and check.error == "/health: Connection refused"
    with pytest.raises(ProbeError, match=f"^{refusing_url}/v1/models: Connection refused$"):
        list_models(refusing_url, 2.0)
    check = check_health(silent_url, 0.3)
    assert not check.up and check.error == "/health: timed out"
    with pytest.raises(ProbeError, match=f"^{silent_url}/v1/models: timed out$"):
        list_models(silent_url, 0.3)


@pytest.fixture
def rendezvous_url() -> Iterator[str]:
    """A server whose /health answers only once two /health requests are in flight together
    (else, after 20 s, it answers 503): two checks of it pass only if they run at once."""
    both_in = threading.Barrier(2, timeout=20)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = 200, b'{"data": [{"id": "served"}]}'
            if self.path == "/health":
                try:
                    both_in.wait()
                except threading.BrokenBarrierError:
                    status = 503
                body = b"{}"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        try:
            yield url
        finally:
            both_in.abort()  # release handlers still waiting before the server stops



def test_many_servers_are_checked_at_once_in_their_order(
    stub: StubServer, rendezvous_url: str, refusing_url: str
) -> None:
    # Both checks of the rendezvous server pass only if neither waits for the other; the
    # timeout is generous, so a loaded machine changes nothing.
    servers = [
        (rendezvous_url, "served"),
        (stub.url, "served"),
        (refusing_url, None),
        (rendezvous_url, "x"),
    ]
    checks = check_servers(servers, "k3y", timeout_s=60)
    assert [c.error for c in checks] == [
        None,
        None,
        "/health: Connection refused",
        "serves served, not x",
    ]
    assert check_servers([], None) == []


def test_a_server_that_is_not_openai_compatible(not_openai_url: str) -> None:
    check = check_server(not_openai_url, 2.0)
    assert not check.up and check.error == "/v1/models: not an OpenAI model list"
    with pytest.raises(ProbeError, match="not an OpenAI model list"):
        list_models(not_openai_url, 2.0)


def test_the_async_probe_on_a_session(stub: StubServer, refusing_url: str) -> None:
    async def main() -> tuple[Any, ...]:
        timeout = aiohttp.ClientTimeout(total=5)
        headers = {"Authorization": "Bearer k3y"}
        async with aiohttp.ClientSession(headers=headers) as session:
            cards = await list_models_async(session, stub.url, timeout)
            healthy = await healthy_async(session, stub.url, timeout)
            down = await healthy_async(session, refusing_url, timeout)
            with pytest.raises(ProbeError) as refused:
                await list_models_async(session, refusing_url, timeout)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ProbeError) as unauthorized:
                await list_models_async(session, stub.url, timeout)
        return cards, healthy, down, refused.value, unauthorized.value

    cards, healthy, down, refused, unauthorized = asyncio.run(main())
    assert [c["id"] for c in cards] == ["served"] and healthy and not down
    assert refused.url == f"{refusing_url}/v1/models" and refused.status is None
    assert "ClientConnectorError" in refused.reason
    assert unauthorized.status == 401 and unauthorized.reason.startswith("HTTP 401: ")
