"""Benchmark requests: exact prompt lengths, seeded, drawn from the allowed ids; JSONL prompts
whose bad lines come back as errors naming file:line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hpcinfer.bench.dataset import BenchRequest, jsonl_requests, random_requests, vocabulary
from hpcinfer.errors import InputError
from tests.conftest import require


def test_random_prompts_have_exactly_the_requested_lengths() -> None:
    requests = random_requests(50, input_len=32, output_len=16, vocab=1000)
    assert len(requests) == 50
    for i, request in enumerate(requests):
        assert isinstance(request.prompt, list) and len(request.prompt) == 32
        assert request.prompt_len == 32 and request.output_len == 16
        assert request.messages is None
        assert request.source == f"random:{i}"


def test_same_seed_same_prompts_other_seed_other_prompts() -> None:
    first = random_requests(5, 20, 4, vocab=500, seed=3)
    assert random_requests(5, 20, 4, vocab=500, seed=3) == first
    assert random_requests(5, 20, 4, vocab=500, seed=4) != first
    # prompts differ from each other (not one prompt repeated, as the ALCF FOM's "France" was)
    assert len({tuple(r.prompt or ()) for r in first}) == 5


def test_ids_come_only_from_the_allowed_vocabulary() -> None:
    allowed = [5, 7, 11, 13]
    for request in random_requests(20, 64, 2, vocab=allowed):
        assert set(request.prompt or ()) <= set(allowed)
    ids = {t for r in random_requests(20, 64, 2, vocab=10) for t in r.prompt or ()}
    assert ids <= set(range(10)) and len(ids) > 5


def test_range_ratio_draws_lengths_in_vllms_interval() -> None:
    requests = random_requests(200, input_len=100, output_len=10, vocab=100, range_ratio=0.5)
    inputs = [len(r.prompt or ()) for r in requests]
    outputs = [r.output_len for r in requests]
    assert min(inputs) >= 50 and max(inputs) <= 150 and len(set(inputs)) > 20
    assert min(outputs) >= 5 and max(outputs) <= 15
    assert all(r.prompt_len == len(r.prompt or ()) for r in requests)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "number of requests"),
        ({"input_len": 0}, "1 token or more"),
        ({"output_len": 0}, "1 token or more"),
        ({"range_ratio": 1.0}, "range_ratio"),
        ({"vocab": []}, "vocabulary"),
        ({"input_len": 1, "range_ratio": 0.5}, "empty prompts"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"n": 2, "input_len": 8, "output_len": 2, "vocab": 10} | kwargs
    with pytest.raises(ValueError, match=message):
        random_requests(**args)  # type: ignore[arg-type]


def _save_tokenizer(directory: Path) -> list[int]:
    """A small fast tokenizer with special tokens, saved as a model directory would hold it;
    returns its special ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "hello", "world", "a", "b", "c"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(str(directory))
    return [0, 1, 2]


def test_vocabulary_is_the_tokenizers_ids_without_special_ones(tmp_path: Path) -> None:
    require(
        "transformers",
        importlib.util.find_spec("transformers") is not None,
        "pip install transformers",
    )
    special = _save_tokenizer(tmp_path)
    ids = vocabulary(str(tmp_path))
    assert ids == [i for i in range(8) if i not in special]


def test_vocabulary_of_a_bad_path_names_it(tmp_path: Path) -> None:
    require(
        "transformers",
        importlib.util.find_spec("transformers") is not None,
        "pip install transformers",
    )
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    with pytest.raises(InputError, match="no-such-model"):
        vocabulary(str(missing))


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_prompts_messages_and_per_line_lengths(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi there"}]
    path = _write_lines(
        tmp_path / "prompts.jsonl",
        [
            json.dumps({"prompt": "one two"}),
            json.dumps({"messages": messages, "max_tokens": 7}),
            "",
            json.dumps({"prompt": "three", "max_tokens": "5"}),
        ],
    )
    requests, errors = jsonl_requests(path, 16, cwd=tmp_path)
    assert errors == []
    assert requests == [
        BenchRequest(source="prompts.jsonl:1", output_len=16, prompt="one two"),
        BenchRequest(source="prompts.jsonl:2", output_len=7, messages=messages, api="chat"),
        BenchRequest(source="prompts.jsonl:4", output_len=5, prompt="three"),
    ]


def test_jsonl_bad_lines_come_back_as_errors_naming_file_and_line(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "prompts.jsonl",
        [
            json.dumps({"prompt": "fine"}),
            "{not json",
            json.dumps({"text": "no prompt field"}),
            json.dumps({"prompt": "bad length", "max_tokens": -3}),
            json.dumps({"prompt": "also fine"}),
        ],
    )
    requests, errors = jsonl_requests(path, 4, cwd=tmp_path)
    assert [r.source for r in requests] == ["prompts.jsonl:1", "prompts.jsonl:5"]
    assert len(errors) == 3
    assert errors[0].startswith("prompts.jsonl:2: ") and "invalid JSON" in errors[0]
    assert errors[1].startswith("prompts.jsonl:3: ") and "'prompt'" in errors[1]
    assert errors[2].startswith("prompts.jsonl:4: ") and "max_tokens" in errors[2]


def test_jsonl_without_any_output_length_asks_for_one(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "p.jsonl", [json.dumps({"prompt": "x"}), json.dumps({"prompt": "y", "n": 3})]
    )
    requests, errors = jsonl_requests(path, None, max_tokens_field="n", cwd=tmp_path)
    assert [r.output_len for r in requests] == [3]
    assert len(errors) == 1 and errors[0].startswith("p.jsonl:1: no output length")
    assert '"n" field' in errors[0]


def test_jsonl_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        jsonl_requests(tmp_path / "absent.jsonl", 8, cwd=tmp_path)


# -- input files read as `hpcinfer run` reads them ---------------------------------------------


def test_every_format_run_reads_gives_requests(tmp_path: Path) -> None:
    from hpcinfer.bench.dataset import file_requests
    from hpcinfer.inputs.template import PromptTemplate

    text = _write_lines(tmp_path / "p.txt", ["first prompt", "", "second prompt"])
    found = file_requests([text], 8, cwd=tmp_path)
    assert [(r.source, r.prompt, r.api, r.output_len) for r in found.requests] == [
        ("p.txt:1", "first prompt", None, 8),
        ("p.txt:3", "second prompt", None, 8),
    ]

    rows = ["city,country", "Paris,France", '"Rome, Italy",', "Oslo,Norway,extra"]
    table = _write_lines(tmp_path / "q.csv", rows)
    template = PromptTemplate("Tell me about {{ city }}.")
    found = file_requests([table], 8, template=template, cwd=tmp_path)
    assert [r.prompt for r in found.requests] == [
        "Tell me about Paris.",
        "Tell me about Rome, Italy.",
    ]
    assert len(found.errors) == 1 and found.errors[0].startswith("q.csv:4: row has 3 columns")

    tsv = _write_lines(tmp_path / "q.tsv", ["question\tid", "why?\ta", "\tb"])
    found = file_requests([tsv], 4, prompt_field="question", cwd=tmp_path)
    assert [r.prompt for r in found.requests] == ["why?"]
    assert len(found.errors) == 1 and found.errors[0].startswith("q.tsv:3: ")

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    jsonl = _write_lines(
        tmp_path / "c.jsonl", [json.dumps({"messages": chat}), json.dumps({"prompt": "p"})]
    )
    found = file_requests([jsonl], 4, cwd=tmp_path)
    assert [(r.messages, r.prompt, r.api) for r in found.requests] == [
        (chat, None, "chat"),
        (None, "p", None),
    ]


def test_reading_stops_at_the_limit_and_small_inputs_are_cycled(tmp_path: Path) -> None:
    from hpcinfer.bench.dataset import cycled, file_requests

    path = _write_lines(tmp_path / "p.txt", [f"prompt {i}" for i in range(10)])
    found = file_requests([path], 4, limit=3, cwd=tmp_path)
    assert [r.prompt for r in found.requests] == ["prompt 0", "prompt 1", "prompt 2"]
    assert found.stopped_early
    three = found.requests
    assert [r.prompt for r in cycled(three, 7)] == [
        "prompt 0", "prompt 1", "prompt 2", "prompt 0", "prompt 1", "prompt 2", "prompt 0",
    ]  # fmt: skip
    assert cycled(three, 2) == three[:2]
    with pytest.raises(ValueError, match="no requests"):
        cycled([], 3)
