"""The baseline: what users run today (Aurora-Inferencing's simple_test.py), one LLM.generate
call over one prompt file. Used by bench/overhead.py with exactly hpcinfer's engine settings.

    python bench/plain_generate.py --model DIR --prompts FILE --llm-kwargs JSON --out FILE
Prompts: a text file (one per line) or JSONL with `prompt` and optional `max_tokens`.
Prints one JSON line: records, output_tokens, generate_s.
"""

from __future__ import annotations

import argparse
import json
import time


def read_prompts(path: str, default_max_tokens: int) -> tuple[list[str], list[int]]:
    prompts, budgets = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                obj = json.loads(line)
                prompts.append(obj["prompt"])
                budgets.append(int(obj.get("max_tokens", default_max_tokens)))
            else:
                prompts.append(line.rstrip("\n"))
                budgets.append(default_max_tokens)
    return prompts, budgets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--llm-kwargs", required=True, help="JSON of vllm.LLM keyword arguments")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    prompts, budgets = read_prompts(args.prompts, args.max_tokens)
    llm = LLM(**json.loads(args.llm_kwargs))
    params = [SamplingParams(max_tokens=b, ignore_eos=True, temperature=1.0) for b in budgets]
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    generate_s = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    with open(args.out, "w", encoding="utf-8") as handle:
        for prompt, output in zip(prompts, outputs, strict=True):
            handle.write(f"Prompt: {prompt!r}, Generated text: {output.outputs[0].text!r}\n")
    print(json.dumps({"records": len(outputs), "output_tokens": tokens, "generate_s": generate_s}))


if __name__ == "__main__":
    main()
