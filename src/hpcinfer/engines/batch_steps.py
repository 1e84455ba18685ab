"""One batch of random-token prompts through an offline vLLM engine, timed per request.

`bench offline`/`bench fom` and `profile run` time a batch the same way: `batch_size`
prompts of exactly the asked length (random token ids, special ids excluded, seeded by a
key so every iteration gets fresh ones and nothing comes from the prefix cache), submitted
together with `llm_engine.add_request`, the engine stepped until all finish. The step loop
sees when each request's first and last tokens come out (vLLM keeps no per-request metrics
with stats logging off), and counts the tokens that really came out.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FinishedRequest:
    """One request of a batch: its times after the batch's submit, and its token counts as
    vLLM reported them (`cached_tokens`: prompt tokens served from the prefix cache)."""

    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0


def allowed_token_ids(vocab_size: int, special_ids: Iterable[int]) -> list[int]:
    """Token ids a random prompt may use: the vocabulary less the special tokens (a stray
    BOS/EOS in the middle of a prompt is not ordinary text), as vLLM's random dataset does."""
    special = set(special_ids)
    allowed = [token for token in range(vocab_size) if token not in special]
    if not allowed:
        raise ValueError(f"a vocabulary of {vocab_size} has no ordinary token to sample from")
    return allowed


def random_prompts(
    allowed: Sequence[int], batch_size: int, length: int, key: str
) -> list[list[int]]:
    """`batch_size` prompts of exactly `length` token ids, the same for the same `key`."""
    rng = random.Random(key)
    return [[rng.choice(allowed) for _ in range(length)] for _ in range(batch_size)]


def step_batch(
    engine: Any, prompts: list[list[int]], params: Any, key: str, delta: bool
) -> list[FinishedRequest]:
    """Submit every prompt at once to `engine` (an `LLM.llm_engine`), step it until all are
    finished; the requests in the order of `prompts`. `delta`: the params ask for DELTA
    outputs (each step's new tokens), else outputs are cumulative (older vLLM)."""
    ids = [f"{key}/{i}" for i in range(len(prompts))]
    start = time.perf_counter()
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
    first: dict[str, float] = {}
    tokens = dict.fromkeys(ids, 0)
    done: dict[str, FinishedRequest] = {}
    while len(done) < len(ids):
        if not engine.has_unfinished_requests():
            raise RuntimeError(f"the engine dropped {len(ids) - len(done)} request(s)")
        outputs = engine.step()
        now = time.perf_counter() - start
        for output in outputs:
            request_id = output.request_id
            if request_id not in tokens:
                continue
            count = len(output.outputs[0].token_ids)
            tokens[request_id] = tokens[request_id] + count if delta else count
            if tokens[request_id] and request_id not in first:
                first[request_id] = now
            if output.finished:
                done[request_id] = FinishedRequest(
                    ttft_s=first.get(request_id, now),
                    e2e_s=now,
                    prompt_tokens=len(output.prompt_token_ids or []),
                    output_tokens=tokens[request_id],
                    cached_tokens=int(getattr(output, "num_cached_tokens", 0) or 0),
                )
    return [done[i] for i in ids]


def shutdown_engine(engine: Any) -> None:
    """Stop an `LLM.llm_engine`'s engine core (its processes), ignoring a failure: the
    process that drives it is about to exit, and its group is reaped by its parent."""
    core = getattr(engine, "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(Exception):
            shutdown()
