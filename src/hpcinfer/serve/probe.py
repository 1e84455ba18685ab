"""HTTP checks of an OpenAI-compatible server: `/health`, then `/v1/models`.

Plain `urllib` with proxies switched off: HPC login and compute nodes often export
`http_proxy`, and a request to a compute node's port must never go through it. The API key
goes in an Authorization header and in no message.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Check:
    """One look at a server: up or not, how long it took to answer, and why not."""

    up: bool
    latency_s: float | None = None
    error: str | None = None
    models: list[str] = field(default_factory=list)


def _get(url: str, timeout_s: float, api_key: str | None) -> bytes:
    request = urllib.request.Request(url, method="GET")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with _OPENER.open(request, timeout=timeout_s) as response:
        body: bytes = response.read(1 << 20)
        return body


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        hint = " (wrong or missing API key: --api-key-env)" if exc.code == 401 else ""
        return f"HTTP {exc.code}{hint}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def check_health(base_url: str, timeout_s: float = 5.0) -> Check:
    """GET /health (vLLM answers it without a key once the engine is up)."""
    started = time.monotonic()
    try:
        _get(f"{base_url}/health", timeout_s, None)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Check(False, error=f"/health: {_reason(exc)}")
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
        body = _get(f"{base_url}/v1/models", timeout_s, api_key)
        data = json.loads(body)
        models = [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Check(False, error=f"/v1/models: {_reason(exc)}")
    except AttributeError:
        return Check(False, error="/v1/models: not an OpenAI model list")
    if model and models and model not in models:
        return Check(False, error=f"serves {', '.join(models)}, not {model}", models=models)
    return Check(True, latency_s=time.monotonic() - started, models=models)
