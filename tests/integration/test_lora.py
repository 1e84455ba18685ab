"""LoRA adapters chosen per record, through the real CPU vLLM and the tiny model with a real
adapter (tests/lora.py): the adapted records answer differently from the base model, a
record naming an adapter the job lacks is an error row while the rest complete, and an
adapter directory vLLM could not load is refused before any engine starts."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from tests.conftest import read_rows, run_cli
from tests.harness import free_port
from tests.lora import write_tiny_lora
from tests.processes import assert_no_orphans

PROMPT = "the model reads a prompt and predicts"


def write_records(path: Path) -> None:
    records = [
        {"id": "base", "prompt": PROMPT},
        {"id": "sql", "prompt": PROMPT, "lora": "sql"},
        {"id": "sql-again", "prompt": PROMPT, "lora": "sql"},
        {"id": "ghost", "prompt": PROMPT, "lora": "chat"},
        {"id": "plain", "prompt": "one step at a time"},
    ]
    lines = (json.dumps({**record, "temperature": 0, "max_tokens": 8}) for record in records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_records_choose_a_lora_adapter(tmp_path: Path, cli_env: dict[str, str]) -> None:
    write_tiny_lora(tmp_path / "adapters" / "sql")
    write_records(tmp_path / "records.jsonl")
    args = ["run", "records.jsonl", "-o", "out", "--workers", "1",
            "--set", "engine.lora_adapters.sql=adapters/sql"]  # fmt: skip
    proc = run_cli(args, tmp_path, cli_env)
    assert proc.returncode == 3, proc.stderr[-3000:]  # the ghost record is an error row
    rows = {row["id"]: row for row in read_rows(tmp_path / "out" / "results.jsonl")}
    assert sorted(rows) == ["base", "ghost", "plain", "sql", "sql-again"]
    for name in ("base", "sql", "sql-again", "plain"):
        assert rows[name]["status"] == "ok" and rows[name]["output_tokens"] > 0, rows[name]
    assert rows["sql"]["text"] == rows["sql-again"]["text"]  # greedy: the adapter, each time
    assert rows["sql"]["text"] != rows["base"]["text"]  # the adapter changed the answer
    ghost = rows["ghost"]
    assert ghost["status"] == "error"
    assert "lora='chat' is not one of the job's adapters (sql)" in ghost["error"]
    assert "--set engine.lora_adapters.chat=" in ghost["error"]


def test_an_adapter_vllm_cannot_load_is_refused_up_front(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """vLLM itself finds a bad adapter only when a record first asks for it, and its engine
    dies then (every record in flight fails): hpcinfer checks the directory first."""
    (tmp_path / "adapters" / "sql").mkdir(parents=True)  # no adapter_config.json
    write_records(tmp_path / "records.jsonl")
    args = ["run", "records.jsonl", "-o", "out", "--workers", "1",
            "--set", "engine.lora_adapters.sql=adapters/sql"]  # fmt: skip
    started = time.monotonic()
    proc = run_cli(args, tmp_path, cli_env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert time.monotonic() - started < 60  # no engine loaded
    config = tmp_path / "adapters" / "sql" / "adapter_config.json"
    assert f"engine.lora_adapters.sql=adapters/sql: {config} does not exist" in proc.stderr
    assert "adapter_model.safetensors" in proc.stderr  # the fix: what the directory must hold
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_records_choose_a_lora_adapter_through_a_vllm_server(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The one-shot fleet (`--engine vllm-server`) serves each adapter under its name: the
    same answers as the offline engine's promises, every process gone after."""
    mark = uuid.uuid4().hex
    write_tiny_lora(tmp_path / "adapters" / "sql")
    write_records(tmp_path / "records.jsonl")
    args = ["run", "records.jsonl", "-o", "out", "--engine", "vllm-server", "--servers", "1",
            "--set", f"serve.port={free_port()}",
            "--set", "engine.lora_adapters.sql=adapters/sql"]  # fmt: skip
    proc = run_cli(args, tmp_path, dict(cli_env, HPCINFER_TEST_MARK=mark))
    assert proc.returncode == 3, proc.stderr[-3000:]  # the ghost record is an error row
    rows = {row["id"]: row for row in read_rows(tmp_path / "out" / "results.jsonl")}
    for name in ("base", "sql", "sql-again", "plain"):
        assert rows[name]["status"] == "ok" and rows[name]["output_tokens"] > 0, rows[name]
    assert rows["sql"]["text"] == rows["sql-again"]["text"]
    assert rows["sql"]["text"] != rows["base"]["text"]
    assert rows["ghost"]["status"] == "error" and "chat" in rows["ghost"]["error"]
    assert_no_orphans(mark)
