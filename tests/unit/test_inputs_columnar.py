"""Parquet files and Hugging Face datasets saved with `save_to_disk`, read batch by batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpcinfer.errors import InputError
from hpcinfer.inputs import PromptTemplate, detect_format, expand_inputs, read_records
from hpcinfer.run.plan import file_digests


def save_dataset(directory: Path, columns: dict[str, list[Any]], shards: int = 1) -> Path:
    """A dataset directory exactly as `datasets.Dataset.save_to_disk` writes it: Arrow
    *stream* files named in state.json, beside dataset_info.json."""
    directory.mkdir(parents=True)
    table = pa.table(columns)
    per = -(-table.num_rows // shards)
    names = []
    for shard in range(shards):
        name = f"data-{shard:05d}-of-{shards:05d}.arrow"
        with pa.ipc.new_stream(str(directory / name), table.schema) as writer:
            for batch in table.slice(shard * per, per).to_batches(max_chunksize=2):
                writer.write_batch(batch)
        names.append({"filename": name})
    features = {name: {"dtype": "string", "_type": "Value"} for name in columns}
    (directory / "dataset_info.json").write_text(json.dumps({"features": features}))
    (directory / "state.json").write_text(
        json.dumps({"_data_files": names, "_fingerprint": "0", "_format_type": None})
    )
    return directory


def test_parquet_prompt_column_row_groups_and_sampling(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.table(
        {
            "id": ["a", None, "c", "d"],
            "prompt": ["one", "two", "", "four"],
            "temperature": [0.5, None, None, 9.0],
            "topic": ["x", "y", "z", "w"],
        }
    )
    pq.write_table(table, path, row_group_size=1)
    assert detect_format(path) == "parquet"
    records = list(read_records([path], cwd=tmp_path))
    assert [r.id for r in records] == ["a", "p.parquet:2", "c", "d"]
    assert records[0].prompt == "one" and records[0].sampling == {"temperature": 0.5}
    assert records[0].fields == {"temperature": 0.5, "topic": "x"}
    assert records[1].sampling == {}  # a null cell: the job's settings
    assert records[2].line == 3 and "empty prompt" in (records[2].error or "")
    assert "p.parquet:4: temperature=9.0" not in (records[3].error or "")
    assert records[3].error is None  # temperature has no upper bound


def test_parquet_template_over_columns_and_missing_prompt_column(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"gene": ["lacZ"], "organism": ["E. coli"]}), path)
    template = PromptTemplate("What does {{ gene }} do in {{ organism }}?")
    (record,) = read_records([path], cwd=tmp_path, template=template)
    assert record.prompt == "What does lacZ do in E. coli?"
    with pytest.raises(InputError, match=r"q.parquet has no 'prompt' column \(columns: 'gene'"):
        read_records([path], cwd=tmp_path)


def test_saved_dataset_is_one_input_read_in_shard_order(tmp_path: Path) -> None:
    data = save_dataset(
        tmp_path / "ds",
        {"question": [f"q{i}" for i in range(5)], "n": ["1", "2", "1", "0", "1"]},
        shards=2,
    )
    assert expand_inputs(["ds"], cwd=tmp_path) == [data]
    assert detect_format(data) == "hf-dataset"
    records = list(read_records([data], cwd=tmp_path, prompt_field="question"))
    assert [r.prompt for r in records] == ["q0", "q1", "q2", None, "q4"]
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert records[1].sampling == {"n": 2}
    assert "ds:4: n='0' is out of range" in (records[3].error or "")
    digests = file_digests([data], ["ds"])
    (data / "data-00001-of-00002.arrow").write_bytes(b"changed")
    assert file_digests([data], ["ds"]) != digests  # a resume notices a changed shard


def test_saved_dataset_problems_are_input_errors(tmp_path: Path) -> None:
    data = save_dataset(tmp_path / "ds", {"prompt": ["a"]})
    (data / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(InputError, match=r"lists 'data-00000-of-00001\.arrow' in state\.json"):
        list(read_records([data], cwd=tmp_path))


def test_dataset_dict_directory_names_its_splits(tmp_path: Path) -> None:
    split = save_dataset(tmp_path / "dd" / "train", {"prompt": ["a"]})
    (split.parent / "dataset_dict.json").write_text('{"splits": ["train"]}')
    assert expand_inputs(["dd"], cwd=tmp_path) == [split.parent]
    with pytest.raises(InputError, match=r"dd is a saved DatasetDict; name one split .*'train'"):
        list(read_records([split.parent], cwd=tmp_path))
