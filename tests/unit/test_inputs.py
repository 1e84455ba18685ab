"""Input files to Records: path expansion, formats, templates, and every per-record error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcinfer.errors import InputError
from hpcinfer.inputs import (
    PromptTemplate,
    TemplateFieldError,
    TemplateRenderError,
    detect_format,
    display_name,
    expand_inputs,
    read_records,
)
from hpcinfer.records import Record


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def read(tmp_path: Path, name: str, text: str | bytes, **kwargs: object) -> list[Record]:
    path = write(tmp_path / name, text)
    return list(read_records([path], cwd=tmp_path, **kwargs))  # type: ignore[arg-type]


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# --- paths -----------------------------------------------------------------------------------


def test_expand_file_directory_and_glob_in_deterministic_order(tmp_path: Path) -> None:
    write(tmp_path / "data/b.jsonl", "")
    write(tmp_path / "data/a.txt", "")
    write(tmp_path / "data/sub/c.csv", "")
    write(tmp_path / "data/notes.md", "")
    write(tmp_path / "data/.hidden/d.txt", "")
    write(tmp_path / "g/2.in", "")
    write(tmp_path / "g/10.in", "")
    write(tmp_path / "single.dat", "")

    found = expand_inputs(["single.dat", "data", "g/*.in"], cwd=tmp_path)

    names = [display_name(p, tmp_path) for p in found]
    assert names == [
        "single.dat",
        "data/a.txt",
        "data/b.jsonl",
        "data/sub/c.csv",
        "g/10.in",
        "g/2.in",
    ]


def test_expand_deduplicates_by_resolved_path(tmp_path: Path) -> None:
    write(tmp_path / "d/a.txt", "")
    write(tmp_path / "d/b.txt", "")
    found = expand_inputs(["d/b.txt", "d", "d/./a.txt", "d/*.txt"], cwd=tmp_path)
    assert [p.name for p in found] == ["b.txt", "a.txt"]


def test_expand_recursive_glob_and_absolute_pattern(tmp_path: Path) -> None:
    write(tmp_path / "x/y/z.jsonl", "")
    write(tmp_path / "x/top.jsonl", "")
    rel = expand_inputs(["x/**/*.jsonl"], cwd=tmp_path)
    absolute = expand_inputs([str(tmp_path / "x" / "*.jsonl")], cwd=Path("/"))
    assert [display_name(p, tmp_path) for p in rel] == ["x/top.jsonl", "x/y/z.jsonl"]
    assert absolute == [tmp_path / "x" / "top.jsonl"]


def test_glob_matching_nothing_names_pattern_and_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        expand_inputs(["prompts/*.jsonl"], cwd=tmp_path)
    message = str(caught.value)
    assert "prompts/*.jsonl" in message
    assert "matched no files" in message
    assert "quote" in message


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'nope\.txt' does not exist.*check the path"):
        expand_inputs(["nope.txt"], cwd=tmp_path)


def test_directory_without_input_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "docs/readme.md", "")
    with pytest.raises(InputError, match=r"'docs' holds no input files.*\.jsonl"):
        expand_inputs(["docs"], cwd=tmp_path)


def test_empty_pattern_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        expand_inputs([""], cwd=tmp_path)


def test_display_name_relative_under_cwd_else_absolute(tmp_path: Path) -> None:
    inside = tmp_path / "a" / "b.txt"
    assert display_name(inside, tmp_path) == "a/b.txt"
    assert display_name(Path("a/../a/b.txt"), tmp_path) == "a/b.txt"
    outside = tmp_path.parent / "elsewhere.txt"
    assert display_name(outside, tmp_path / "a") == outside.as_posix()


# --- format detection ------------------------------------------------------------------------


def test_detect_format_by_extension_and_override() -> None:
    assert detect_format(Path("a.jsonl")) == "jsonl"
    assert detect_format(Path("a.CSV")) == "csv"
    assert detect_format(Path("a.tsv")) == "tsv"
    assert detect_format(Path("a.in")) == "text"
    assert detect_format(Path("prompts")) == "text"
    assert detect_format(Path("a.txt"), "jsonl") == "jsonl"


def test_unknown_format_lists_choices(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "hi\n")
    with pytest.raises(InputError, match=r"'xml'.*text, jsonl, batch, csv, tsv, parquet"):
        read_records([path], fmt="xml")


def test_missing_file_in_read_records_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_records([tmp_path / "gone.jsonl"], cwd=tmp_path)


# --- text ------------------------------------------------------------------------------------


def test_text_seed_file_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    text = "What is DNA?\n\nExplain  RNA splicing.\n   \n\n  Name a kinase.\r\nLast line"
    records = read(tmp_path, "x.in", text)
    assert [(r.id, r.line, r.prompt) for r in records] == [
        ("x.in:1", 1, "What is DNA?"),
        ("x.in:3", 3, "Explain  RNA splicing."),
        ("x.in:6", 6, "  Name a kinase."),
        ("x.in:7", 7, "Last line"),
    ]
    assert all(r.source == "x.in" and r.error is None and r.messages is None for r in records)


def test_text_with_template_and_bom(tmp_path: Path) -> None:
    template = PromptTemplate("Q: {{ text }}\nA:")
    records = read(tmp_path, "q.txt", b"\xef\xbb\xbfhello\nworld\n", template=template)
    assert [r.prompt for r in records] == ["Q: hello\nA:", "Q: world\nA:"]


def test_text_invalid_utf8_line_is_one_error_record(tmp_path: Path) -> None:
    records = read(tmp_path, "p.txt", b"good one\nbad \xff line\nanother\n")
    assert [r.id for r in records] == ["p.txt:1", "p.txt:2", "p.txt:3"]
    bad = records[1]
    assert bad.prompt is None
    assert bad.error == (
        "line is not valid UTF-8 (byte 0xff at position 5); re-save the file as UTF-8"
    )
    assert records[2].prompt == "another"


def test_text_template_rendering_empty_is_error(tmp_path: Path) -> None:
    template = PromptTemplate("{% if text != 'skip' %}{{ text }}{% endif %}")
    records = read(tmp_path, "p.txt", "keep\nskip\n", template=template)
    assert records[0].prompt == "keep"
    assert records[1].where == "p.txt:2"
    assert records[1].error is not None and records[1].error.startswith("empty prompt")


# --- jsonl -----------------------------------------------------------------------------------


def test_jsonl_id_prompt_messages_and_extra_fields(tmp_path: Path) -> None:
    text = jsonl(
        {"id": "a1", "prompt": "Hello", "lang": "en", "n": 3},
        {"prompt": "No id here", "meta": {"k": [1, 2]}},
        {"id": 7, "messages": [{"role": "user", "content": "Hi"}], "topic": "x"},
        {"id": "", "prompt": "empty id falls back"},
    )
    records = read(tmp_path, "in.jsonl", text)
    assert [r.id for r in records] == ["a1", "in.jsonl:2", "7", "in.jsonl:4"]
    assert [r.line for r in records] == [1, 2, 3, 4]
    assert records[0].prompt == "Hello"
    assert records[0].fields == {"lang": "en", "n": 3}
    assert records[1].fields == {"meta": {"k": [1, 2]}}
    assert records[2].prompt is None
    assert records[2].messages == [{"role": "user", "content": "Hi"}]
    assert records[2].fields == {"topic": "x"}
    assert all(r.error is None for r in records)


def test_jsonl_malformed_line_in_middle(tmp_path: Path) -> None:
    text = jsonl({"prompt": "one"}) + '{"prompt": "two",, }\n\n' + jsonl({"prompt": "three"})
    records = read(tmp_path, "m.jsonl", text)
    assert [r.prompt for r in records] == ["one", None, "three"]
    bad = records[1]
    assert bad.id == "m.jsonl:2" and bad.where == "m.jsonl:2"
    assert bad.error is not None
    assert bad.error.startswith("invalid JSON: Expecting property name")
    assert "(column 18)" in bad.error
    assert records[2].line == 4


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[1, 2]", "line is a JSON array, not an object"),
        ('"just text"', "line is a JSON string, not an object"),
        ('{"text": "x"}', "no 'prompt' or 'messages' field (fields: 'text')"),
        ('{"prompt": 5}', "field 'prompt' is a JSON number, not a string"),
        ('{"prompt": "  "}', "empty prompt"),
        ('{"messages": []}', "'messages' must be a non-empty list"),
        ('{"messages": "hi"}', "'messages' must be a non-empty list"),
        ('{"messages": ["hi"]}', "message 1 is a string, not an object"),
        ('{"messages": [{"role": "user"}]}', "message 1 has no string 'content'"),
        ('{"messages": [{"role": 1, "content": "x"}]}', "message 1 has no string 'role'"),
        ('{"messages": [{"role": "user", "content": " "}]}', "empty prompt"),
    ],
)
def test_jsonl_bad_records_become_error_records(tmp_path: Path, line: str, expected: str) -> None:
    (record,) = read(tmp_path, "e.jsonl", line + "\n")
    assert record.error is not None
    assert record.error.startswith(expected), record.error
    assert record.prompt is None and record.messages is None
    assert record.where == "e.jsonl:1"


def test_jsonl_missing_prompt_error_names_the_fix(tmp_path: Path) -> None:
    (record,) = read(tmp_path, "e.jsonl", jsonl({"id": "q", "question": "x"}))
    assert record.id == "q"
    assert record.error is not None
    assert "--prompt-column" in record.error and "--template" in record.error
    assert record.fields == {"question": "x"}


def test_jsonl_prompt_field_option(tmp_path: Path) -> None:
    text = jsonl({"question": "Why?", "prompt": "ignored"}, {"prompt": "no question"})
    records = read(tmp_path, "q.jsonl", text, prompt_field="question")
    assert records[0].prompt == "Why?"
    assert records[0].fields == {"question": "Why?"}
    assert records[1].error is not None
    assert records[1].error.startswith("no 'question' field")


def test_jsonl_template_uses_all_keys(tmp_path: Path) -> None:
    template = PromptTemplate("[{{ id }}] {{ q }} ({{ tags | join(', ') }})")
    text = jsonl({"id": "r1", "q": "Why?", "tags": ["a", "b"]}, {"id": "r2", "tags": []})
    records = read(tmp_path, "t.jsonl", text, template=template)
    assert records[0].prompt == "[r1] Why? (a, b)"
    assert records[1].id == "r2"
    assert records[1].error is not None
    assert "'q'" in records[1].error and "'id', 'tags'" in records[1].error


def test_jsonl_invalid_utf8_and_custom_id_field(tmp_path: Path) -> None:
    data = b'{"key": "k1", "prompt": "ok"}\n{"key": "k2", "prompt": "caf\xe9"}\n'
    records = read(tmp_path, "u.jsonl", data, id_field="key")
    assert records[0].id == "k1" and records[0].fields == {}
    assert records[1].id == "u.jsonl:2"
    assert records[1].error is not None
    assert "not valid UTF-8 (byte 0xe9 at position 29)" in records[1].error


# --- csv / tsv -------------------------------------------------------------------------------


def test_tsv_with_template_keeps_fields(tmp_path: Path) -> None:
    text = "genome_id\torganism\tgene\nGCF_1\tE. coli\trecA\n\nGCF_2\tB. subtilis\tspo0A\n"
    template = PromptTemplate("What is the function of {{ gene }} in {{ organism }}?")
    records = read(tmp_path, "genes.tsv", text, template=template)
    assert [(r.id, r.line, r.prompt) for r in records] == [
        ("genes.tsv:2", 2, "What is the function of recA in E. coli?"),
        ("genes.tsv:4", 4, "What is the function of spo0A in B. subtilis?"),
    ]
    assert records[0].fields == {"genome_id": "GCF_1", "organism": "E. coli", "gene": "recA"}


def test_tsv_template_missing_column_is_error_record(tmp_path: Path) -> None:
    text = "genome_id\torganism\nGCF_1\tE. coli\n"
    template = PromptTemplate("What does {{ gene }} do in {{ organism }}?")
    (record,) = read(tmp_path, "g.tsv", text, template=template, id_field="genome_id")
    assert record.id == "GCF_1"
    assert record.error is not None
    assert "field 'gene'" in record.error
    assert "available fields: 'genome_id', 'organism'" in record.error
    assert record.fields == {"organism": "E. coli"}


def test_csv_prompt_column_id_and_quoted_multiline(tmp_path: Path) -> None:
    text = 'id,prompt,note\nr1,"Line one\nline two, with comma",x\n,plain,"say ""hi"""\n'
    records = read(tmp_path, "c.csv", text)
    assert [(r.id, r.line) for r in records] == [("r1", 2), ("c.csv:4", 4)]
    assert records[0].prompt == "Line one\nline two, with comma"
    assert records[0].fields == {"prompt": "Line one\nline two, with comma", "note": "x"}
    assert records[1].fields["note"] == 'say "hi"'


def test_csv_wrong_column_count_then_continues(tmp_path: Path) -> None:
    text = "prompt,label\na,1\nb,2,extra\nc\nd,4\n"
    records = read(tmp_path, "w.csv", text)
    assert [r.prompt for r in records] == ["a", None, None, "d"]
    assert records[1].where == "w.csv:3"
    assert records[1].error is not None
    assert "row has 3 columns but the header has 2" in records[1].error
    assert records[2].error is not None and "row has 1 columns" in records[2].error


def test_csv_without_prompt_column_raises_before_any_record(tmp_path: Path) -> None:
    first = write(tmp_path / "first.txt", "fine\n")
    table = write(tmp_path / "t.csv", "question,answer\nq,a\n")
    with pytest.raises(InputError) as caught:
        read_records([first, table], cwd=tmp_path)
    message = str(caught.value)
    assert "t.csv" in message
    assert "'question', 'answer'" in message
    assert "--prompt-column NAME" in message and "--template" in message


def test_csv_prompt_column_option_missing_raises(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "question,answer\nq,a\n")
    with pytest.raises(InputError, match="no 'text' column"):
        read_records([table], cwd=tmp_path, prompt_field="text")
    (record,) = read_records([table], cwd=tmp_path, prompt_field="question")
    assert record.prompt == "q"


def test_csv_invalid_utf8_row_and_empty_prompt(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbfid,prompt\na,"multi\nline \xff here"\nb,  \nc,fine\n'
    records = read(tmp_path, "u.csv", data)
    assert [r.id for r in records] == ["u.csv:2", "b", "c"]
    assert records[0].error is not None
    assert records[0].error.startswith("line 3 of this row is not valid UTF-8 (byte 0xff")
    assert records[1].error is not None and records[1].error.startswith("empty prompt")
    assert records[2].prompt == "fine"


def test_csv_invalid_utf8_header_raises(tmp_path: Path) -> None:
    table = write(tmp_path / "h.csv", b"pr\xffompt\nx\n")
    with pytest.raises(InputError, match="header line 1 is not valid UTF-8"):
        read_records([table], cwd=tmp_path)


def test_csv_duplicate_header_raises(tmp_path: Path) -> None:
    table = write(tmp_path / "d.csv", "prompt,prompt\nx,y\n")
    with pytest.raises(InputError, match="repeats column"):
        read_records([table], cwd=tmp_path)


def test_empty_files_yield_nothing(tmp_path: Path) -> None:
    files = [write(tmp_path / n, "") for n in ("a.txt", "b.jsonl", "c.csv")]
    assert list(read_records(files, cwd=tmp_path)) == []


def test_records_stream_in_file_then_line_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "a1\na2\n")
    b = write(tmp_path / "b.jsonl", jsonl({"prompt": "b1"}))
    c = write(tmp_path / "c.csv", "prompt\nc1\n")
    stream = read_records([a, b, c], cwd=tmp_path)
    assert next(stream).id == "a.txt:1"
    assert [r.id for r in stream] == ["a.txt:2", "b.jsonl:1", "c.csv:2"]


def test_format_override_reads_txt_as_jsonl(tmp_path: Path) -> None:
    (record,) = read(tmp_path, "rows.txt", jsonl({"id": "z", "prompt": "p"}), fmt="jsonl")
    assert (record.id, record.prompt) == ("z", "p")


# --- templates -------------------------------------------------------------------------------


def test_template_compile_error_raises_input_error() -> None:
    with pytest.raises(InputError, match=r"does not compile: .*template line 2"):
        PromptTemplate("ok\n{{ gene ")


def test_template_missing_field_error_names_field() -> None:
    template = PromptTemplate("{{ a }} {{ b }}")
    with pytest.raises(TemplateFieldError) as caught:
        template.render({"a": 1})
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "b"
    assert "field 'b'" in str(caught.value) and "available fields: 'a'" in str(caught.value)


def test_template_is_sandboxed_and_strict() -> None:
    unsafe = PromptTemplate("{{ x.__class__.__mro__ }}")
    with pytest.raises(TemplateRenderError):
        unsafe.render({"x": "s"})
    assert PromptTemplate("{{ x | default('none') }}").render({}) == "none"
    assert PromptTemplate("<{{ x }}>").render({"x": "&"}) == "<&>"
    assert PromptTemplate("{{ a }}{{ b }}").variables == {"a", "b"}


def test_template_from_option(tmp_path: Path) -> None:
    assert PromptTemplate.from_option(None) is None
    inline = PromptTemplate.from_option("Hi {{ name }}")
    assert inline is not None and inline.render({"name": "Ada"}) == "Hi Ada"
    path = write(tmp_path / "t.j2", "Gene: {{ gene }}\n")
    from_file = PromptTemplate.from_option(f"@{path}")
    assert from_file is not None and from_file.render({"gene": "recA"}) == "Gene: recA"


def test_template_from_option_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.j2.*does not exist"):
        PromptTemplate.from_option(f"@{tmp_path / 'missing.j2'}")
    with pytest.raises(InputError, match="names no file"):
        PromptTemplate.from_option("@")
    with pytest.raises(InputError, match="empty"):
        PromptTemplate.from_option("   ")
    bad = write(tmp_path / "bad.j2", "{% if %}")
    with pytest.raises(InputError, match=r"bad\.j2.*does not compile"):
        PromptTemplate.from_option(f"@{bad}")


def test_jsonl_keys_named_like_sampling_fields_set_the_records_sampling(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"prompt": "a", "temperature": 0.2, "n": 2}\n')
    (record,) = read_records([path])
    assert record.sampling == {"temperature": 0.2, "n": 2}


def test_the_max_tokens_field_is_not_read_as_a_sampling_setting(tmp_path: Path) -> None:
    """`--max-tokens-field n`: the key `n` is each record's budget, not samples per prompt."""
    path = write(tmp_path / "p.jsonl", '{"prompt": "a", "n": 7, "seed": 3}\n')
    (record,) = read_records([path], max_tokens_field="n")
    assert record.error is None
    assert record.sampling == {"seed": 3}


def test_sampling_fields_off_leaves_such_keys_as_data(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"prompt": "a", "n": "many", "seed": 3}\n')
    (record,) = read_records([path], sampling_fields=False)
    assert record.error is None and not record.sampling
    assert record.fields["n"] == "many"
