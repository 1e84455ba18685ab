"""The client of the Aurora vLLM server scripts (Aurora-Inferencing), rebuilt
for a fair benchmark against hpcinfer's dispatcher.

    .venv/bin/python bench/aurora_vllm_client.py WORKLOAD.jsonl --url http://127.0.0.1:8000 \
        --model tiny --out rows.jsonl

What is kept from the scripts (their `test.coli_v2.py`, run once per host on that host's file):
the OpenAI Python client; one non-streaming `chat.completions.create` per prompt with the
prompt as one user message and `temperature=0.0`; batches of 32 prompts, each batch
submitted at once to a fresh thread pool of 32 and waited for with `as_completed` until its
slowest request is back, before the next batch starts; one retry of a failed request, then
the record is lost; requests go to the one server of its host.

What is changed, so that both clients do exactly the same token work: each request asks
for the record's own `max_tokens` with `ignore_eos` (the scripts asked for 1,024 and stopped
at EOS), and answers are kept with their own record id (the scripts paired answers with ids
in completion order, a correctness bug that costs no time). Rows go to a JSONL file instead
of timestamped prints. The last line on stdout is a JSON object with the dispatch window
(wall-clock start and end of the batches), so the bench can time several of these processes
running at once, as the scripts ran one per host.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path
from typing import Any

from openai import OpenAI

BATCH_SIZE = 32
POOL_SIZE = 32


def call_batch(
    client: OpenAI, model: str, batch: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], Any]]:
    """The scripts' call_model: the whole batch at once, back when the slowest answer is."""

    def one(record: dict[str, Any]) -> Any:
        def create() -> Any:
            return client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": record["prompt"]}],
                temperature=0.0,
                max_tokens=record["max_tokens"],
                stream=False,
                extra_body={"ignore_eos": True},
            )

        try:
            return create()
        except Exception:  # the scripts retried once, then gave up on the record
            try:
                return create()
            except Exception:
                return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=POOL_SIZE) as pool:
        futures = {pool.submit(one, record): record for record in batch}
        return [(futures[f], f.result()) for f in concurrent.futures.as_completed(futures)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", help="JSONL with id, prompt, max_tokens")
    parser.add_argument("--url", required=True, help="Server base URL, e.g. http://host:8000")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", required=True, help="Rows: id, prompt/output tokens, text")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv)

    records = [
        json.loads(line)
        for line in Path(args.workload).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    client = OpenAI(api_key="EMPTY", base_url=args.url.rstrip("/") + "/v1", timeout=600.0)
    failed = 0
    start = time.time()
    with open(args.out, "w", encoding="utf-8") as out:
        for i in range(0, len(records), args.batch_size):
            for record, response in call_batch(
                client, args.model, records[i : i + args.batch_size]
            ):
                if response is None:
                    failed += 1
                    row = {"id": record["id"], "status": "error"}
                else:
                    usage = response.usage
                    row = {
                        "id": record["id"],
                        "status": "ok",
                        "prompt_tokens": usage.prompt_tokens,
                        "output_tokens": usage.completion_tokens,
                        "text": response.choices[0].message.content,
                    }
                out.write(json.dumps(row) + "\n")
    end = time.time()
    window = {"start": start, "end": end, "records": len(records), "failed": failed}
    print(json.dumps(window), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
