"""`bench serve` sends each input record's own sampling fields, as `run` does: through the
one body builder (`core.openai_wire.request_body`), over the benchmark's own settings; the
stub server keeps the bodies it received."""

from __future__ import annotations

import json
from pathlib import Path

from hpcinfer.bench.serve_bench import ServeBenchOptions, run_serve_bench
from hpcinfer.testing.stub_server import StubServer

RECORDS = [
    {"prompt": "own settings", "temperature": 0.7, "top_p": 0.5, "seed": 3, "max_tokens": 4,
     "presence_penalty": 1.5, "n": 2},
    {"prompt": "the run's settings"},
    {"messages": [{"role": "user", "content": "chat with its own"}], "stop": ["x"],
     "top_k": 5, "logprobs": 2, "choice": ["yes", "no"]},
]  # fmt: skip


def test_each_record_is_sent_with_its_own_sampling_fields(tmp_path: Path) -> None:
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    with StubServer(keep_bodies=True) as stub:
        options = ServeBenchOptions(
            out_dir=tmp_path / "o", urls=(stub.url,), dataset=str(data), output_len=6,
            temperature=0.0,
        )  # fmt: skip
        outcome = run_serve_bench(options, tmp_path)
        bodies = stub.bodies()
    assert outcome.outcome == "ok"
    by_prompt = {b.get("prompt") or b["messages"][0]["content"]: b for b in bodies}
    assert sorted(by_prompt) == ["chat with its own", "own settings", "the run's settings"]

    own = by_prompt["own settings"]
    assert (own["temperature"], own["top_p"], own["seed"], own["max_tokens"]) == (0.7, 0.5, 3, 4)
    assert (own["presence_penalty"], own["n"]) == (1.5, 2)
    plain = by_prompt["the run's settings"]
    assert plain["temperature"] == 0.0 and plain["max_tokens"] == 6
    assert not {"seed", "top_p", "n", "stop", "top_k"} & set(plain)
    chat = by_prompt["chat with its own"]
    assert (chat["stop"], chat["top_k"], chat["temperature"]) == (["x"], 5, 0.0)
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 3)  # chat asks one more
    assert chat["structured_outputs"] == {"choice": ["yes", "no"]}
    assert all(b["ignore_eos"] is True and b["stream"] is True for b in bodies)
