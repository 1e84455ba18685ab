"""`stage_model` in one process (no MPI): copies, verification, skip, repair, bad input."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hpcinfer.errors import HpcinferError
from hpcinfer.stage.broadcast import Hooks
from hpcinfer.stage.comm import LocalComm
from hpcinfer.stage.errors import StageError
from hpcinfer.stage.manifest import JOURNAL_NAME, MANIFEST_NAME, append_journal, read_manifest
from hpcinfer.stage.report import StageResult
from hpcinfer.stage.stage import StageRequest, stage_model
from hpcinfer.stage.wire import ChunkInfo
from tests.unit.test_stage_helpers import make_hf_cache, make_model_dir, tree


def stage(
    model: Path | str,
    to: Path,
    env: dict[str, str] | None = None,
    hooks: Hooks | None = None,
    **options: object,
) -> StageResult:
    request = StageRequest(model=str(model), to=str(to), chunk_mib=1, **options)  # type: ignore[arg-type]
    return stage_model(request, comm=LocalComm(), env=env or {}, cwd=to.parent, hooks=hooks)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "src" / "tiny")


def test_copy_is_byte_identical_and_manifest_lists_digests(model: Path, tmp_path: Path) -> None:
    result = stage(model, tmp_path / "local")
    copy = tmp_path / "local" / "tiny"
    assert tree(copy) == tree(model)
    assert result.status == "staged" and result.bytes_sent == result.bytes_total > 3 << 20
    assert result.run_model == str(copy) and result.run_env == {}
    manifest = read_manifest(copy)
    assert manifest is not None
    big = next(e for e in manifest.entries if e.path == "big.safetensors")
    assert big.sha256 == hashlib.sha256((model / "big.safetensors").read_bytes()).hexdigest()
    assert not (copy / JOURNAL_NAME).exists()
    assert not list(copy.rglob("*.hpcinfer-tmp"))


def test_verified_copy_is_skipped(model: Path, tmp_path: Path) -> None:
    stage(model, tmp_path / "local")
    again = stage(model, tmp_path / "local")
    assert again.status == "skipped" and again.bytes_sent == 0
    assert "already staged and verified" in again.text()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: os.truncate(p, 1000), "truncated"),
        (lambda p: _flip_byte(p, 2_000_000), "content differs"),
        (lambda p: os.unlink(p), "missing"),
    ],
)
def test_damaged_file_is_sent_again_and_only_that_file(
    model: Path, tmp_path: Path, damage: Callable[[Path], None], why: str
) -> None:
    stage(model, tmp_path / "local")
    copy = tmp_path / "local" / "tiny"
    damage(copy / "big.safetensors")
    again = stage(model, tmp_path / "local")
    assert again.status == "staged"
    assert again.bytes_sent == (model / "big.safetensors").stat().st_size
    assert why in again.text() and "re-sent" in again.text()
    assert tree(copy) == tree(model)


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_changed_source_is_sent_again(model: Path, tmp_path: Path) -> None:
    stage(model, tmp_path / "local")
    (model / "config.json").write_text('{"model_type": "opt"}\n', encoding="utf-8")
    again = stage(model, tmp_path / "local")
    assert again.bytes_sent == (model / "config.json").stat().st_size
    assert (tmp_path / "local" / "tiny" / "config.json").read_text() == '{"model_type": "opt"}\n'


def test_stale_files_and_wrong_links_are_repaired(model: Path, tmp_path: Path) -> None:
    stage(model, tmp_path / "local")
    copy = tmp_path / "local" / "tiny"
    (copy / "model-00009-of-00009.safetensors").write_bytes(b"stale shard")
    os.unlink(copy / "alias.json")
    os.symlink("big.safetensors", copy / "alias.json")
    again = stage(model, tmp_path / "local")
    assert again.status == "staged" and again.bytes_sent == 0
    assert tree(copy) == tree(model)


def test_interrupted_stage_is_not_verified_and_a_rerun_keeps_finished_files(
    model: Path, tmp_path: Path
) -> None:
    stage(model, tmp_path / "local")
    copy = tmp_path / "local" / "tiny"
    manifest = read_manifest(copy)
    assert manifest is not None
    # What a kill mid-stage leaves: no manifest, a journal of the files in place, a temp file.
    os.unlink(copy / MANIFEST_NAME)
    for entry in manifest.entries:
        if entry.path != "big.safetensors" and entry.kind == "file":
            append_journal(copy, entry)
    os.unlink(copy / "big.safetensors")
    (copy / ".big.safetensors.hpcinfer-tmp").write_bytes(b"half")
    again = stage(model, tmp_path / "local")
    assert again.status == "staged"
    assert again.bytes_sent == (model / "big.safetensors").stat().st_size
    assert tree(copy) == tree(model) and (copy / MANIFEST_NAME).exists()


def test_corruption_after_receive_is_caught_by_the_read_back(model: Path, tmp_path: Path) -> None:
    def flip(rank: int, chunk: ChunkInfo, data: memoryview) -> None:
        if chunk.path == "big.safetensors" and chunk.index == 2:
            data[5] ^= 0xFF

    with pytest.raises(StageError, match=r"big.safetensors: content differs") as info:
        stage(model, tmp_path / "local", hooks=Hooks(after_receive=flip))
    assert "rerun the same command" in str(info.value)
    assert not (tmp_path / "local" / "tiny" / MANIFEST_NAME).exists()
    assert stage(model, tmp_path / "local").status == "staged"
    assert tree(tmp_path / "local" / "tiny") == tree(model)


def test_force_sends_everything_again(model: Path, tmp_path: Path) -> None:
    stage(model, tmp_path / "local")
    again = stage(model, tmp_path / "local", force=True)
    assert again.status == "staged" and again.bytes_sent == again.bytes_total


def test_hf_cache_copy_keeps_its_links_and_gives_the_run_environment(tmp_path: Path) -> None:
    plain = make_model_dir(tmp_path / "plain")
    repo = make_hf_cache(tmp_path / "hf" / "hub", "org/tiny", plain)
    result = stage("org/tiny", tmp_path / "node", env={"HF_HOME": str(tmp_path / "hf")})
    copy = tmp_path / "node" / "hub" / "models--org--tiny"
    assert tree(copy) == tree(repo)
    assert result.run_model == "org/tiny"
    assert result.run_env == {
        "HF_HOME": str(tmp_path / "node"),
        "HF_HUB_CACHE": str(tmp_path / "node" / "hub"),
    }
    snapshot = next((copy / "snapshots").iterdir())
    assert (snapshot / "big.safetensors").read_bytes() == (plain / "big.safetensors").read_bytes()
    assert (snapshot / "config.json").is_symlink()


def test_exact_multiple_of_the_chunk_and_empty_files(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", big_bytes=2 << 20)
    stage(model, tmp_path / "out")
    assert tree(tmp_path / "out" / "m") == tree(model)


def test_missing_model_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(HpcinferError, match="no such directory") as info:
        stage(tmp_path / "absent", tmp_path / "out")
    assert info.value.exit_code == 2


def test_folder_that_cannot_be_created_is_named_with_the_fix(model: Path, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    with pytest.raises(HpcinferError, match="cannot write the staged copy") as info:
        stage(model, tmp_path / "a_file" / "sub")
    assert "node-local" in str(info.value) and info.value.exit_code == 2


def test_folder_not_made_by_stage_is_left_alone(model: Path, tmp_path: Path) -> None:
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    (tmp_path / "out" / "tiny" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(HpcinferError, match="not made by `hpcinfer stage`"):
        stage(model, tmp_path / "out")
    assert (tmp_path / "out" / "tiny" / "notes.txt").read_text() == "mine"


def test_copy_overlapping_the_source_is_refused(model: Path, tmp_path: Path) -> None:
    with pytest.raises(HpcinferError, match="overlaps the source"):
        stage(model, model.parent)
    with pytest.raises(HpcinferError, match="overlaps the source"):
        stage(model, model / "inner")


def test_source_changing_while_read_is_reported(model: Path, tmp_path: Path) -> None:
    def shrink(rank: int, chunk: ChunkInfo, data: memoryview) -> None:
        if chunk.path == "a_small.txt":
            os.truncate(model / "big.safetensors", 100)

    with pytest.raises(StageError, match="changed while it was being staged"):
        stage(model, tmp_path / "out", hooks=Hooks(after_receive=shrink))


def test_json_summary_has_bytes_seconds_and_rate(model: Path, tmp_path: Path) -> None:
    data = stage(model, tmp_path / "out").as_dict()
    assert data["bytes_sent"] == data["bytes"] and data["seconds"] > 0
    # seconds are rounded to the millisecond in the JSON: a fast copy's rate is only close
    expected = data["bytes_sent"] / data["seconds"] / 1e9
    assert data["gb_per_s"] == pytest.approx(expected, rel=0.1, abs=1e-3)
    assert data["run"] == {"model": str(tmp_path / "out" / "tiny"), "env": {}}
    json.dumps(data)


def test_failed_repair_does_not_forget_the_files_that_were_fine(
    model: Path, tmp_path: Path
) -> None:
    stage(model, tmp_path / "local")
    os.truncate(tmp_path / "local" / "tiny" / "big.safetensors", 10)

    def flip(rank: int, chunk: ChunkInfo, data: memoryview) -> None:
        data[0] ^= 0xFF

    with pytest.raises(StageError):
        stage(model, tmp_path / "local", hooks=Hooks(after_receive=flip))
    again = stage(model, tmp_path / "local")
    assert again.bytes_sent == (model / "big.safetensors").stat().st_size
    assert tree(tmp_path / "local" / "tiny") == tree(model)
