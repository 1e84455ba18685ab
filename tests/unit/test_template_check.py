"""A template variable no input has is caught before any engine starts (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpcinfer.errors import InputError
from hpcinfer.inputs import PromptTemplate
from hpcinfer.inputs.template_check import check_template
from tests.harness import InProcessCLI


def check(tmp_path: Path, template: str, *files: Path) -> None:
    check_template(PromptTemplate(template), list(files), cwd=tmp_path)


def test_a_typo_names_variable_file_fields_and_the_close_name(tmp_path: Path) -> None:
    csv_file = tmp_path / "genes.csv"
    csv_file.write_text("\ufeffgene,organism\nlacZ,E. coli\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        check(tmp_path, "What does {{ gene }} do in {{ organsim }}?", csv_file)
    assert str(caught.value) == (
        "the prompt template uses 'organsim', which the records of genes.csv do not have "
        "(fields: 'gene', 'organism'); did you mean 'organism'? fix the template (--template) "
        "or the input"
    )


def test_every_input_kind_is_checked_by_its_first_record(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('\n{"q": "x", "ctx": "y"}\n{"q": "z"}\n', encoding="utf-8")
    text = tmp_path / "b.txt"
    text.write_text("hello\n", encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"q": ["x"]}), parquet)
    check(tmp_path, "{{ q }} {{ ctx }}", jsonl)
    check(tmp_path, "Say {{ text | upper }} {% for i in range(2) %}!{% endfor %}", text)
    check(tmp_path, "{{ q }}{% if extra is defined %}{{ extra }}{% endif %}", jsonl, parquet)
    for path, fields in ((text, "'text'"), (parquet, "'q'"), (jsonl, "'q', 'ctx'")):
        with pytest.raises(InputError, match=f"'missing', which the records of {path.name} "
                           rf"do not have \(fields: {fields}\)"):  # fmt: skip
            check(tmp_path, "{{ missing }}", path)


def test_nothing_to_check_passes(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("", encoding="utf-8")
    batch = tmp_path / "b.jsonl"
    line: dict[str, Any] = {"custom_id": "1", "url": "/v1/completions", "body": {"prompt": "a"}}
    batch.write_text(json.dumps(line) + "\n", encoding="utf-8")
    check(tmp_path, "{{ anything }}", empty, batch)
    check_template(None, [empty], cwd=tmp_path)


def test_run_with_a_template_typo_exits_2_before_any_engine(
    tmp_path: Path, main_cli: InProcessCLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's "a job with a template typo exits 2 with no engine started": the check
    runs before the output directory is locked and before any worker is spawned."""
    import hpcinfer.run.job as job

    spawned: list[object] = []
    monkeypatch.setattr(job, "spawn_worker", lambda *a, **k: spawned.append(a))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "genes.tsv").write_text("gene\torganism\nlacZ\tE. coli\n", encoding="utf-8")
    ran = main_cli(
        "run", "genes.tsv", "--template", "Explain {{ gen }} in {{ organism }}", "-o", "out"
    )
    assert ran.code == 2, ran.output
    assert "the prompt template uses 'gen'" in ran.err
    assert "did you mean 'gene'?" in ran.err
    assert spawned == []
    assert not (tmp_path / "out" / "logs").exists()
