"""One reproducible vLLM answer, as the cluster's verify asks each compute node for it.

`python -m hpcinfer.provision.answer --model M --prompt P --max-tokens N --seed 0` loads the
model with hpcinfer's own offline engine (the one `hpcinfer run` uses, so the node is checked
the way it is used), answers the prompt at temperature 0 with the fixed sampling seed, and
prints one JSON line on stdout: {"answer": TEXT}. vLLM's own logging, which goes to stdout,
is sent to stderr meanwhile, so stdout holds nothing else. Exit 0 answered; 1 vLLM failed
(the reason on stderr); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from hpcinfer.errors import HpcinferError

CPU_KV_CACHE_BYTES = 256 * 2**20
"""On a CPU node the KV cache is sized, not a share of RAM: one short prompt needs little, and
vLLM then skips its check that a share of all RAM is free (a node that also holds a server
rank, or other work, has not that much)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpcinfer.provision.answer",
        description="Answer one prompt with vLLM at temperature 0 and a fixed seed; print "
        '{"answer": TEXT} on stdout.',
    )
    parser.add_argument("--model", required=True, help="Hugging Face id or model folder.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile", default=None, help="Hardware profile (default: detect this node's)."
    )
    parser.add_argument(
        "--memory-share",
        type=float,
        default=None,
        help="vLLM gpu_memory_utilization (default: vLLM's; on a GPU that also holds a server, "
        "a share that fits beside it).",
    )
    parser.add_argument(
        "--kv-cache-bytes",
        type=int,
        default=None,
        help=f"KV cache size (default on CPU: {CPU_KV_CACHE_BYTES}).",
    )
    return parser


def answer(
    model: str,
    prompt: str,
    max_tokens: int,
    seed: int,
    profile: str | None = None,
    memory_share: float | None = None,
    kv_cache_bytes: int | None = None,
) -> str:
    """The engine's completion of `prompt`: temperature 0, the given seed, `max_tokens`."""
    from hpcinfer.cluster import resolve_profile
    from hpcinfer.core.models import resolve_model
    from hpcinfer.engines.vllm_offline import EngineSetup, VllmOfflineEngine, engine_env
    from hpcinfer.errors import EngineError
    from hpcinfer.records import Record
    from hpcinfer.spec import JobSpec, SamplingSpec

    spec = JobSpec.model_validate({"model": model})
    model_path, model_name = resolve_model(spec, Path.cwd())
    on_cpu = resolve_profile(profile).is_cpu
    if kv_cache_bytes is None and memory_share is None and on_cpu:
        kv_cache_bytes = CPU_KV_CACHE_BYTES
    engine_spec = spec.engine.model_copy(
        update={"memory_share": memory_share, "kv_cache_bytes": kv_cache_bytes}
    )
    setup = EngineSetup(
        model_path=model_path,
        model_name=model_name,
        engine=engine_spec,
        sampling=SamplingSpec(temperature=0.0, seed=seed, max_tokens=max_tokens),
        on_cpu=on_cpu,
    )
    os.environ.update(engine_env(setup))
    engine = VllmOfflineEngine(setup)
    try:
        results = engine.submit([Record(id="verify", source="verify", line=1, prompt=prompt)])
        while engine.inflight():
            results += engine.poll()
    finally:
        engine.close()
    result = results[0]
    if result.status != "ok" or result.text is None:
        raise EngineError(f"vLLM did not answer the prompt: {result.error}")
    return result.text


@contextmanager
def _stdout_to_stderr() -> Iterator[TextIO]:
    """Point file descriptor 1 at stderr for the duration; yield a stream on the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(saved, "w", encoding="utf-8", closefd=True)
    try:
        yield real
    finally:
        sys.stdout.flush()
        real.flush()
        os.dup2(saved, 1)
        real.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_tokens < 1:
        print("--max-tokens must be at least 1", file=sys.stderr)
        return 2
    with _stdout_to_stderr() as out:
        try:
            text = answer(
                args.model,
                args.prompt,
                args.max_tokens,
                args.seed,
                args.profile,
                args.memory_share,
                args.kv_cache_bytes,
            )
        except HpcinferError as exc:
            print(f"answer: {exc}", file=sys.stderr)
            return 1
        out.write(json.dumps({"answer": text}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
