"""The stub OpenAI server: vLLM's wire format, exact token counts, and each injected fault.

Clients are tested against this stub, so it must be right first: a stub that miscounts or
fails differently from what it claims would make every dispatcher test wrong.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from hpcinfer.testing.stub_server import Fault, FaultSpecError, StubServer


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def post(
    server: StubServer,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """POST and read the whole answer; raises what http.client raises on a cut connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(server: StubServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def events(raw: bytes) -> list[str]:
    """The SSE `data:` payloads in order; every event must be `data: ...` then a blank line."""
    text = raw.decode()
    assert text.endswith("\n\n")
    parts = text[:-2].split("\n\n")
    assert all(p.startswith("data: ") for p in parts), parts
    return [p[len("data: ") :] for p in parts]


def completion(prompt: str, max_tokens: int, stream: bool = True, usage: bool = True) -> dict:
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": usage}}
    return body


def test_completions_stream_exact_tokens_usage_and_done(stub: StubServer) -> None:
    status, raw = post(stub, "/v1/completions", completion("one two  three\nfour", 5))
    assert status == 200
    payloads = events(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    tokens, usage = chunks[:-1], chunks[-1]
    assert len(tokens) == 5
    assert "".join(c["choices"][0]["text"] for c in tokens) == " tok0 tok1 tok2 tok3 tok4"
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["length"]
    assert all(c["object"] == "text_completion" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_no_usage_chunk_unless_asked(stub: StubServer) -> None:
    _, raw = post(stub, "/v1/completions", completion("a b", 3, usage=False))
    payloads = events(raw)
    assert payloads[-1] == "[DONE]"
    assert len(payloads) == 4
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


def test_chat_stream_role_chunk_deltas_and_prompt_words_of_all_messages(
    stub: StubServer,
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "why is the sky"}]},
    ]
    body = {
        "model": "tiny",
        "messages": messages,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, raw = post(stub, "/v1/chat/completions", body)
    assert status == 200
    chunks = [json.loads(p) for p in events(raw)[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert [c["choices"][0]["delta"]["content"] for c in tokens] == [" tok0", " tok1", " tok2"]
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


def test_non_streaming_completions_and_chat(stub: StubServer) -> None:
    status, raw = post(stub, "/v1/completions", completion("x y z", 4, stream=False))
    body = json.loads(raw)
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " tok0 tok1 tok2 tok3"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status, raw = post(stub, "/v1/chat/completions", chat)
    body = json.loads(raw)
    assert status == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": " tok0 tok1"}
    assert body["usage"]["completion_tokens"] == 2


def test_health_models_metrics_and_stats(stub: StubServer) -> None:
    assert get(stub, "/health")[0] == 200
    status, raw = get(stub, "/v1/models")
    assert status == 200
    models = json.loads(raw)
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    post(stub, "/v1/completions", completion("a b c", 7))
    post(stub, "/v1/completions", completion("d e", 1, stream=False))
    text = get(stub, "/metrics")[1].decode()
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:")
    }
    assert values == {
        "vllm:num_requests_running": 0.0,
        "vllm:num_requests_waiting": 0.0,
        "vllm:prompt_tokens_total": 5.0,
        "vllm:generation_tokens_total": 8.0,
    }
    stats = json.loads(get(stub, "/stats")[1])
    assert stats == stub.stats()
    assert stats["requests"] == stats["ok"] == 2 and stats["failed"] == 0


def test_bad_requests_are_400_and_unknown_model_404(stub: StubServer) -> None:
    assert post(stub, "/v1/completions", completion("a", 0))[0] == 400
    assert post(stub, "/v1/completions", {"prompt": 3, "max_tokens": 1})[0] == 400
    assert post(stub, "/v1/chat/completions", {"messages": [], "max_tokens": 1})[0] == 400
    status, raw = post(stub, "/v1/completions", {"model": "other", "prompt": "a", "max_tokens": 1})
    assert status == 404 and json.loads(raw)["error"]["type"] == "NotFoundError"
    assert stub.stats()["bad_request"] == 4
    assert stub.stats()["requests"] == 0


def test_api_key() -> None:
    with StubServer(api_key="s3cret") as server:
        assert post(server, "/v1/completions", completion("a", 1))[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert post(server, "/v1/completions", completion("a", 1), wrong)[0] == 401
        assert get(server, "/v1/models")[0] == 401
        right = {"Authorization": "Bearer s3cret"}
        assert post(server, "/v1/completions", completion("a", 1), right)[0] == 200
        assert get(server, "/v1/models", right)[0] == 200
        assert get(server, "/health")[0] == 200  # probes need no key, as with vLLM
        assert server.stats()["unauthorized"] == 3


def test_http500_on_the_nth_request_only() -> None:
    with StubServer(faults=["http500@n=2"]) as server:
        statuses = [post(server, "/v1/completions", completion("a", 2))[0] for _ in range(3)]
        stats = server.stats()
    assert statuses == [200, 500, 200]
    assert stats["faults"]["http500"] == 1 and stats["ok"] == 2 and stats["failed"] == 1


def test_http500_body_is_a_vllm_style_json_error() -> None:
    with StubServer(faults=["http500"]) as server:
        status, raw = post(server, "/v1/completions", completion("a", 2))
    assert status == 500
    error = json.loads(raw)["error"]
    assert error["code"] == 500 and error["type"] == "InternalServerError"


def test_malformed_event_mid_stream_then_the_rest() -> None:
    with StubServer(faults=["malformed:2"]) as server:
        status, raw = post(server, "/v1/completions", completion("a", 4))
    assert status == 200
    payloads = events(raw)
    assert payloads[2] == "{not json"
    assert payloads[-1] == "[DONE]"
    good = [json.loads(p) for i, p in enumerate(payloads[:-1]) if i != 2]
    assert len(good) == 5  # 4 tokens + usage: nothing else is missing


def test_truncate_cuts_the_connection_after_k_events() -> None:
    async def read(url: str) -> tuple[bytes, BaseException | None]:
        received = b""
        async with aiohttp.ClientSession() as session:
            try:
                async with session.post(url, json=completion("a", 10)) as resp:
                    async for piece in resp.content.iter_any():
                        received += piece
            except aiohttp.ClientError as exc:
                return received, exc
        return received, None

    with StubServer(faults=["truncate:3"]) as server:
        received, error = asyncio.run(read(server.url + "/v1/completions"))
        stats = server.stats()
    assert isinstance(error, aiohttp.ClientPayloadError)  # not a clean end of stream
    payloads = events(received)
    assert len(payloads) == 3 and "[DONE]" not in payloads
    assert stats["faults"]["truncate"] == 1 and stats["ok"] == 0


def test_truncate_non_streaming_sends_part_of_the_body() -> None:
    with StubServer(faults=["truncate"]) as server, pytest.raises(http.client.IncompleteRead):
        post(server, "/v1/completions", completion("a", 10, stream=False))


def test_drop_closes_before_any_response() -> None:
    with StubServer(faults=["drop@n=1"]) as server:
        with pytest.raises(http.client.RemoteDisconnected):
            post(server, "/v1/completions", completion("a", 2))
        assert post(server, "/v1/completions", completion("a", 2))[0] == 200
        assert server.stats()["faults"]["drop"] == 1


def test_hang_never_answers_and_does_not_hold_up_shutdown() -> None:
    server = StubServer(faults=["hang@n=1"]).start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        post(server, "/v1/completions", completion("a", 2), timeout=0.5)
    assert time.monotonic() - started >= 0.5
    assert post(server, "/v1/completions", completion("a", 2))[0] == 200
    assert server.stats()["faults"]["hang"] == 1
    stopping = time.monotonic()
    server.stop()
    assert time.monotonic() - stopping < 3.0


def test_hang_answers_nothing_until_the_server_stops() -> None:
    """A hung request stays open (the client is not disconnected) while the server runs."""
    server = StubServer(faults=["hang"]).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("POST", "/v1/completions", json.dumps(completion("a", 1)))
    time.sleep(0.3)
    assert server.stats()["running"] == 1
    server.stop()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.getresponse()
    conn.close()


def test_fail_always_prompt_fails_every_attempt_others_pass(stub: StubServer) -> None:
    results = [post(stub, "/v1/completions", completion("x FAIL_ALWAYS y", 2))[0] for _ in range(3)]
    assert results == [500, 500, 500]
    assert post(stub, "/v1/completions", completion("fine", 2))[0] == 200
    stats = stub.stats()
    assert stats["triggers"]["FAIL_ALWAYS"] == 3 and stats["faults"]["http500"] == 3


def test_fail_always_with_a_mode(stub: StubServer) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        post(stub, "/v1/completions", completion("FAIL_ALWAYS:drop", 2))
    assert stub.stats()["faults"]["drop"] == 1


def test_fail_once_fails_only_the_first_attempt_per_id(stub: StubServer) -> None:
    statuses = [post(stub, "/v1/completions", completion("q FAIL_ONCE:r7", 2))[0] for _ in range(3)]
    assert statuses == [500, 200, 200]
    assert post(stub, "/v1/completions", completion("q FAIL_ONCE:r8", 2))[0] == 500
    chat = {"messages": [{"role": "user", "content": "FAIL_N:2:r9:malformed"}], "max_tokens": 1}
    raws = [post(stub, "/v1/chat/completions", chat | {"stream": True})[1] for _ in range(3)]
    assert [b"{not json" in raw for raw in raws] == [True, True, False]
    stats = stub.stats()
    assert stats["attempts"] == {"r7": 3, "r8": 1, "r9": 3}
    assert stats["triggers"] == {"FAIL_ALWAYS": 0, "FAIL_ONCE": 2, "FAIL_N": 2}
    assert stats["faults"]["http500"] == 2 and stats["faults"]["malformed"] == 2


def test_probability_faults_are_deterministic_per_seed() -> None:
    fault = Fault.parse("http500@p=0.3")
    hits = [n for n in range(1, 1001) if fault.applies(n, seed=7, rule=0)]
    again = [n for n in range(1, 1001) if fault.applies(n, seed=7, rule=0)]
    other = [n for n in range(1, 1001) if fault.applies(n, seed=8, rule=0)]
    assert hits == again and hits != other
    assert 250 < len(hits) < 350
    with StubServer(faults=[fault], seed=7) as server:
        statuses = [post(server, "/v1/completions", completion("a", 1))[0] for _ in range(20)]
    assert [n for n, s in enumerate(statuses, 1) if s == 500] == [n for n in hits if n <= 20]


def test_fault_spec_grammar() -> None:
    assert Fault.parse("truncate:3@n=1,4-6") == Fault(
        "truncate", 3, requests=frozenset({1, 4, 5, 6})
    )
    assert Fault.parse("drop@every=10").applies(20, 0, 0)
    assert not Fault.parse("drop@every=10").applies(21, 0, 0)
    assert Fault.parse("hang") == Fault("hang")
    for bad in ("explode", "truncate:x", "http500@q=1", "http500@p=2", "http500@every=0"):
        with pytest.raises(FaultSpecError):
            Fault.parse(bad)


def test_ttft_and_itl_delays() -> None:
    async def arrival_times(url: str) -> list[float]:
        times: list[float] = []
        async with aiohttp.ClientSession() as session:
            start = time.monotonic()
            async with session.post(url, json=completion("a", 3, usage=False)) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        times.append(time.monotonic() - start)
        return times

    with StubServer(ttft_s=0.2, itl_s=0.1) as server:
        times = asyncio.run(arrival_times(server.url + "/v1/completions"))
    assert len(times) == 3
    assert 0.19 <= times[0] < 0.6
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.09 <= gap < 0.5 for gap in gaps), gaps


def test_subprocess_prints_its_url_and_stops_on_sigterm() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "hpcinfer.testing.stub_server", "--port", "0", "--itl-ms", "1"]
    proc = subprocess.Popen(
        [*cmd, "--fault", "http500@n=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            url + "/v1/completions",
            data=json.dumps(completion("a b", 3, stream=False)).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=5)
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.loads(resp.read())["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_subprocess_rejects_a_bad_fault_spec() -> None:
    cmd = [sys.executable, "-m", "hpcinfer.testing.stub_server", "--fault", "explode"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unknown fault mode" in done.stderr


def test_a_held_stub_answers_nothing_until_released() -> None:
    """`held=True` lets a test hold every client at work at once, whatever order they start."""
    import concurrent.futures

    from tests.harness import wait_for

    with (
        StubServer(held=True) as server,
        concurrent.futures.ThreadPoolExecutor(3) as pool,
    ):
        asks = [
            pool.submit(post, server, "/v1/completions", completion("a b", 2)) for _ in range(3)
        ]
        wait_for(lambda: server.stats()["running"] == 3, 10, "3 held requests", state=server.stats)
        assert server.stats()["ok"] == 0 and not any(a.done() for a in asks)
        server.release()
        assert [a.result(timeout=10)[0] for a in asks] == [200, 200, 200]
        assert server.stats()["ok"] == 3


def test_n_samples_and_logprobs_in_vllm_order(stub: StubServer) -> None:
    """vLLM 0.32: one choice per event tagged with its index, the chat role chunk of every
    sample first; the sampled token listed first, then ranks 1..N, cut at N + 1 entries
    (completions `logprobs`) or N (chat `top_logprobs`)."""
    body = completion("a b", 2) | {"n": 2, "logprobs": 1}
    chunks = [json.loads(p) for p in events(post(stub, "/v1/completions", body)[1])[:-1]]
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in chunks[:-1]] == [
        (0, " tok0"), (1, " s1tok0"), (0, " tok1"), (1, " s1tok1"),
    ]  # fmt: skip
    first, second = (chunks[i]["choices"][0]["logprobs"] for i in (1, 3))
    assert first == {"text_offset": [0], "token_logprobs": [-0.5], "tokens": [" s1tok0"],
                     "top_logprobs": [{" s1tok0": -0.5}]}  # fmt: skip
    assert second["text_offset"] == [7] and second["top_logprobs"] == [
        {" s1tok1": -1.0, " alt1": -0.5}  # sampled (rank 2) first, then rank 1
    ]
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "n": 2, "logprobs": True, "top_logprobs": 1, "stream": True}  # fmt: skip
    chunks = [json.loads(p) for p in events(post(stub, "/v1/chat/completions", chat)[1])[:-1]]
    assert [c["choices"][0]["delta"].get("role") for c in chunks[:2]] == ["assistant"] * 2
    odd = chunks[4]["choices"][0]["logprobs"]["content"][0]
    assert (odd["token"], odd["logprob"], odd["bytes"]) == (" tok1", -1.0, list(b" tok1"))
    assert odd["top_logprobs"] == [{"token": " tok1", "logprob": -1.0, "bytes": list(b" tok1")}]
    whole = json.loads(post(stub, "/v1/completions", completion("x", 2, stream=False)
                            | {"n": 3, "logprobs": 0})[1])  # fmt: skip
    assert [c["text"] for c in whole["choices"]] == [" tok0 tok1", " s1tok0 s1tok1",
                                                     " s2tok0 s2tok1"]  # fmt: skip
    assert whole["choices"][2]["logprobs"]["tokens"] == [" s2tok0", " s2tok1"]
    assert whole["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize(
    ("path", "extra", "message"),
    [
        ("/v1/completions", {"n": 0}, "'n' must be an integer >= 1"),
        ("/v1/completions", {"logprobs": 21}, "greater than max allowed: 20"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "`logprobs` must be set to true"),
        ("/v1/completions", {"structured_outputs": {"json": {}, "regex": "a"}}, "one kind"),
        ("/v1/completions", {"structured_outputs": {"json_schema": {}}}, "unknown field"),
    ],
)
def test_sampling_fields_vllm_refuses_are_400(
    stub: StubServer, path: str, extra: dict[str, Any], message: str
) -> None:
    body = {"model": "tiny", "max_tokens": 2, **extra}
    body |= (
        {"prompt": "x"}
        if path == "/v1/completions"
        else {"messages": [{"role": "user", "content": "x"}]}
    )
    status, raw = post(stub, path, body)
    assert status == 400 and message in json.loads(raw)["error"]["message"]
