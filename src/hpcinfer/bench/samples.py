"""What one timed batch of an offline benchmark measured, and the figures made from it.

A batch is `batch_size` requests submitted together to an in-process engine; every time is
seconds after the batch was submitted (before the first `add_request`), on one monotonic
clock, as the process driving the engine saw it:

- a request's TTFT: submit -> the engine step that returned its first output token;
- a request's E2E: submit -> the step that returned its last token;
- the batch's latency: submit -> the last request finished, the ALCF inference FOM's end-to-end L.

From several timed iterations of the same batch shape:

- throughput (the FOM's): (input + output tokens) / L, computed as the tokens of all timed
  iterations over the sum of their latencies, i.e. one iteration's tokens / mean latency;
- prefill rate: input tokens / time to the batch's last first token (every prompt has been
  prefilled by then; with chunked prefill some decoding overlaps, so this is a lower bound
  on the pure prefill speed);
- decode rate: output tokens after each request's first / (L - time to the last first token).
Both rates pool the iterations the same way as throughput (sum of tokens / sum of times).

Pure Python, no engine: the engine child sends samples as JSON, the parent makes figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hpcinfer.bench.metrics import describe
from hpcinfer.engines.batch_steps import FinishedRequest
from hpcinfer.errors import EngineError

RequestSample = FinishedRequest
"""One request of a batch (times after the batch's submit, token counts as vLLM reported
them), as `engines.batch_steps.step_batch` measures it."""


@dataclass(frozen=True)
class IterationSample:
    """One batch, submitted together and run to completion."""

    latency_s: float
    requests: tuple[RequestSample, ...]

    @property
    def input_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.requests)

    @property
    def cached_tokens(self) -> int:
        return sum(r.cached_tokens for r in self.requests)

    @property
    def prefill_s(self) -> float:
        """Submit -> the batch's last first token: by then every prompt is prefilled."""
        return max((r.ttft_s for r in self.requests), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"latency_s": self.latency_s, "requests": [asdict(r) for r in self.requests]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IterationSample:
        return cls(
            latency_s=float(data["latency_s"]),
            requests=tuple(RequestSample(**r) for r in data["requests"]),
        )


def check_exact(
    name: str,
    iterations: Sequence[IterationSample],
    *,
    input_len: int,
    output_len: int,
    batch_size: int,
) -> None:
    """Every request of every iteration had exactly the asked lengths, or an EngineError
    saying which one did not: a benchmark of other lengths than asked is not one."""
    for i, iteration in enumerate(iterations, start=1):
        if len(iteration.requests) != batch_size:
            raise EngineError(
                f"{name}: iteration {i} finished {len(iteration.requests)} requests, not the "
                f"batch of {batch_size}"
            )
        for j, request in enumerate(iteration.requests):
            if request.prompt_tokens != input_len:
                raise EngineError(
                    f"{name}: iteration {i}, request {j}: the engine saw {request.prompt_tokens} "
                    f"prompt tokens, not exactly {input_len}"
                )
            if request.output_tokens != output_len:
                raise EngineError(
                    f"{name}: iteration {i}, request {j}: the engine generated "
                    f"{request.output_tokens} tokens, not exactly {output_len} (ignore_eos "
                    "and max_tokens should guarantee it; is a stop condition set in the "
                    "model's generation config?)"
                )


def latency_stats(values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    """mean, median, std (population) and percentiles of latencies, in seconds, computed as
    numpy (and vLLM) compute them: `{"mean", "median", "std", "p50", "p99", ...}`."""
    if not values_s:
        raise ValueError("no timed iteration: nothing to describe")
    in_ms = describe(values_s, percentiles, "latency")
    stats: dict[str, float] = {}
    for key, value in in_ms.items():
        if key.endswith("_latency_ms"):
            stats[key.removesuffix("_latency_ms")] = value / 1000
    return stats


def _ratio(tokens: int, seconds: float) -> float | None:
    """tokens / seconds, None when there was no such phase (no tokens or no time)."""
    if tokens <= 0 or not (math.isfinite(seconds) and seconds > 0):
        return None
    return tokens / seconds


def prefill_rate(iterations: Sequence[IterationSample]) -> float | None:
    """Input tokens / time to the batch's last first token, pooled over iterations."""
    tokens = sum(it.input_tokens for it in iterations)
    return _ratio(tokens, math.fsum(it.prefill_s for it in iterations))


def decode_rate(iterations: Sequence[IterationSample]) -> float | None:
    """Output tokens after each request's first / (L - time to the last first token), pooled
    over iterations; None when every request generated one token (no decode phase)."""
    tokens = sum(max(r.output_tokens - 1, 0) for it in iterations for r in it.requests)
    return _ratio(tokens, math.fsum(it.latency_s - it.prefill_s for it in iterations))


def request_stats(
    iterations: Sequence[IterationSample], percentiles: Sequence[float]
) -> dict[str, float]:
    """Per-request TTFT and E2E statistics over every timed request, in vLLM's key style
    (`mean_ttft_ms`, `p99_e2el_ms`, ...)."""
    requests = [r for it in iterations for r in it.requests]
    stats = describe([r.ttft_s for r in requests], percentiles, "ttft")
    stats.update(describe([r.e2e_s for r in requests], percentiles, "e2el"))
    return stats
