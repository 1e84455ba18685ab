"""Is an OpenAI-compatible server up, and what does it serve? `/health` and `/v1/models`, once;
and does it answer? (one short completion at temperature 0 with a fixed seed).

Used by serve's readiness wait and health monitor, `hpcinfer endpoints`, the serving
benchmark (blocking, plain `urllib`) and the dispatcher (async, on its aiohttp session).
`urllib` runs with proxies switched off: HPC login and compute nodes often export
`http_proxy`, and a request to a compute node's port must never go through it. The API key
goes in an Authorization header and in no message.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcinfer.core.openai_wire import error_text

if TYPE_CHECKING:
    import aiohttp

MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"
MAX_BODY_BYTES = 1 << 20
CHECK_TIMEOUT_S = 5.0
_MAX_THREADS = 64
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProbeError(Exception):
    """A probe that got no usable answer. `url` is what was asked, `reason` why it failed,
    `status` the HTTP status when the server answered one (401/403: the API key)."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(f"{url}: {reason}")


@dataclass(frozen=True)
class Check:
    """One look at a server: up or not, how long it took to answer, and why not."""

    up: bool
    latency_s: float | None = None
    error: str | None = None
    models: list[str] = field(default_factory=list)


def failure_reason(exc: BaseException) -> str:
    """A short reason a user can act on (urllib's and aiohttp's messages are often empty)."""
    if isinstance(exc, urllib.error.HTTPError):
        hint = " (wrong or missing API key: --api-key-env)" if exc.code == 401 else ""
        return f"HTTP {exc.code}{hint}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def model_cards(body: bytes) -> list[dict[str, Any]]:
    """The model cards (each with an `id`) of a /v1/models answer; ValueError if it is none."""
    data = json.loads(body)
    cards = (data.get("data") or []) if isinstance(data, dict) else None
    if not isinstance(cards, list):
        raise ValueError("not an OpenAI model list")
    return [card for card in cards if isinstance(card, dict) and card.get("id")]


# ------------------------------------------------------------------------------ blocking


def _get(url: str, timeout_s: float, api_key: str | None) -> bytes:
    request = urllib.request.Request(url, method="GET")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with _OPENER.open(request, timeout=timeout_s) as response:
        body: bytes = response.read(MAX_BODY_BYTES)
        return body


def list_models(
    base_url: str, timeout_s: float = 5.0, api_key: str | None = None
) -> list[dict[str, Any]]:
    """The model cards `base_url` serves (each has `id`; vLLM adds `root`, where it loaded
    from). Raises ProbeError naming the URL when the server does not answer with a list."""
    url = base_url + MODELS_PATH
    try:
        return model_cards(_get(url, timeout_s, api_key))
    except urllib.error.HTTPError as exc:
        raise ProbeError(url, failure_reason(exc), exc.code) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ProbeError(url, failure_reason(exc)) from None
    except ValueError:
        raise ProbeError(url, "not an OpenAI model list") from None


def check_health(base_url: str, timeout_s: float = 5.0) -> Check:
    """GET /health (vLLM answers it without a key once the engine is up)."""
    started = time.monotonic()
    try:
        _get(base_url + HEALTH_PATH, timeout_s, None)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Check(False, error=f"{HEALTH_PATH}: {failure_reason(exc)}")
    return Check(True, latency_s=time.monotonic() - started)


def check_server(
    base_url: str, timeout_s: float = 5.0, api_key: str | None = None, model: str | None = None
) -> Check:
    """/health and /v1/models; up when both answer (and `model`, if given, is served)."""
    started = time.monotonic()
    health = check_health(base_url, timeout_s)
    if not health.up:
        return health
    try:
        models = [str(card["id"]) for card in list_models(base_url, timeout_s, api_key)]
    except ProbeError as exc:
        return Check(False, error=f"{MODELS_PATH}: {exc.reason}")
    if model and models and model not in models:
        return Check(False, error=f"serves {', '.join(models)}, not {model}", models=models)
    return Check(True, latency_s=time.monotonic() - started, models=models)


VERIFY_PROMPT = "The capital of France is"
VERIFY_TOKENS = 4
VERIFY_SEED = 0


@dataclass(frozen=True)
class Verification:
    """A completion asked of a just-ready server: its text (the same for the same model and
    prompt wherever it runs: temperature 0, fixed seed) or why there was none."""

    ok: bool
    text: str = ""
    latency_s: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        latency = None if self.latency_s is None else round(self.latency_s, 3)
        return {"prompt": VERIFY_PROMPT, "text": self.text, "latency_s": latency}


def verify_completion(
    base_url: str, model: str, timeout_s: float, api_key: str | None = None
) -> Verification:
    """POST one completion of VERIFY_TOKENS tokens at temperature 0 with VERIFY_SEED: a
    server whose ranks cannot talk fails here, though /health answers."""
    body = {
        "model": model,
        "prompt": VERIFY_PROMPT,
        "max_tokens": VERIFY_TOKENS,
        "temperature": 0,
        "seed": VERIFY_SEED,
    }
    url = base_url + "/v1/completions"
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    started = time.monotonic()
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            answer = json.loads(response.read(MAX_BODY_BYTES))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Verification(False, error=f"verification request: {failure_reason(exc)}")
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or not isinstance(choices[0], dict) or not choices[0].get("text"):
        return Verification(False, error=f"verification request: no text in {str(answer)[:200]}")
    return Verification(True, str(choices[0]["text"]), time.monotonic() - started)


def check_servers(
    servers: Sequence[tuple[str, str | None]],
    api_key: str | None,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> list[Check]:
    """`check_server` on every (base URL, model or None) at once, so one hung server hides
    no other; the checks come back in the servers' order."""
    if not servers:
        return []

    def one(server: tuple[str, str | None]) -> Check:
        return check_server(server[0], timeout_s, api_key, server[1])

    with ThreadPoolExecutor(max_workers=min(len(servers), _MAX_THREADS)) as pool:
        return list(pool.map(one, servers))


# ------------------------------------------------------------------------------ async


async def list_models_async(
    session: aiohttp.ClientSession, base_url: str, timeout: aiohttp.ClientTimeout
) -> list[dict[str, Any]]:
    """`list_models` on an aiohttp session (which carries the API key in its headers)."""
    url = base_url + MODELS_PATH
    try:
        async with session.get(url, timeout=timeout) as response:
            status, body = response.status, await response.read()
    except Exception as exc:  # connection refused, timeout, DNS: the endpoint is down
        raise ProbeError(url, failure_reason(exc)) from None
    if status != 200:
        raise ProbeError(url, error_text(status, body), status)
    try:
        return model_cards(body)
    except ValueError:
        raise ProbeError(url, "not an OpenAI model list") from None


async def healthy_async(
    session: aiohttp.ClientSession, base_url: str, timeout: aiohttp.ClientTimeout
) -> bool:
    """Whether GET /health answers 200 now."""
    try:
        async with session.get(base_url + HEALTH_PATH, timeout=timeout) as response:
            return response.status == 200
    except Exception:
        return False
