"""Rank 0's listing (symlinks included) and the manifest/journal that record a copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcinfer.errors import InputError
from hpcinfer.stage.layout import Source, resolve_source
from hpcinfer.stage.manifest import (
    JOURNAL_NAME,
    MANIFEST_NAME,
    Entry,
    Manifest,
    append_journal,
    known_entries,
    read_manifest,
    write_manifest,
)
from hpcinfer.stage.scan import link_destination, scan_source
from tests.unit.test_stage_helpers import REVISION, make_hf_cache, make_model_dir


def _dir_source(path: Path) -> Source:
    return Source(model=str(path), kind="dir", root=path)


def test_listing_has_sizes_and_sorted_paths(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", big_bytes=5000)
    entries = scan_source(_dir_source(model))
    assert [e.path for e in entries] == [
        "a_small.txt",
        "alias.json",
        "big.safetensors",
        "config.json",
        "empty.bin",
        "sub/nested.json",
    ]
    by_path = {e.path: e for e in entries}
    assert by_path["big.safetensors"].size == 5000
    assert by_path["empty.bin"].size == 0
    assert by_path["alias.json"] == Entry(path="alias.json", kind="link", target="config.json")


def test_absolute_link_inside_the_model_becomes_relative(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", big_bytes=10)
    os.symlink(model / "sub" / "nested.json", model / "abs.json")
    os.symlink(model / "config.json", model / "sub" / "up.json")
    by_path = {e.path: e for e in scan_source(_dir_source(model))}
    assert by_path["abs.json"].target == "sub/nested.json"
    assert by_path["sub/up.json"].target == "../config.json"


def test_links_leaving_the_model_are_copied_as_what_they_point_to(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "shards").mkdir(parents=True)
    (store / "w.bin").write_bytes(b"weights")
    (store / "shards" / "s1.bin").write_bytes(b"shard1")
    model = make_model_dir(tmp_path / "m", big_bytes=10)
    os.symlink(store / "w.bin", model / "w.bin")
    os.symlink("../store/shards", model / "shards")
    by_path = {e.path: e for e in scan_source(_dir_source(model))}
    assert by_path["w.bin"].kind == "file" and by_path["w.bin"].size == 7
    assert by_path["w.bin"].origin == str(store / "w.bin")
    assert by_path["shards/s1.bin"].kind == "file"


def test_snapshot_folder_passed_as_a_directory_is_dereferenced(tmp_path: Path) -> None:
    plain = make_model_dir(tmp_path / "plain", big_bytes=100)
    repo = make_hf_cache(tmp_path / "hub", "org/m", plain)
    snapshot = repo / "snapshots" / REVISION
    entries = scan_source(resolve_source(str(snapshot), {}, tmp_path))
    assert all(e.kind == "file" for e in entries)
    assert {e.path for e in entries} >= {"config.json", "big.safetensors", "sub/nested.json"}


def test_hf_cache_keeps_snapshot_links_and_only_the_blobs_of_refs_main(tmp_path: Path) -> None:
    plain = make_model_dir(tmp_path / "plain", big_bytes=100)
    hub = tmp_path / "hf" / "hub"
    repo = make_hf_cache(hub, "org/m", plain)
    old = repo / "snapshots" / ("e" * 40)
    old.mkdir()
    (repo / "blobs" / "oldblob").write_bytes(b"old revision only")
    os.symlink("../../blobs/oldblob", old / "config.json")
    os.symlink("../../blobs/missing", old / "gone.json")  # broken, but not staged
    (repo / ".no_exist" / REVISION).mkdir(parents=True)
    (repo / ".no_exist" / REVISION / "generation_config.json").write_bytes(b"")
    source = resolve_source("org/m", {"HF_HOME": str(tmp_path / "hf")}, tmp_path)
    entries = scan_source(source)
    paths = {e.path for e in entries}
    assert "refs/main" in paths
    assert f".no_exist/{REVISION}/generation_config.json" in paths
    assert "blobs/oldblob" not in paths and not any(p.startswith("snapshots/eee") for p in paths)
    links = [e for e in entries if e.kind == "link"]
    assert links and all(link_destination(e).startswith("blobs/") for e in links)
    assert all(e.target == os.readlink(repo / e.path) for e in links)
    blobs = {e.path for e in entries if e.path.startswith("blobs/")}
    assert blobs == {link_destination(e) for e in links}


def test_broken_link_is_named(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", big_bytes=10)
    os.symlink("missing.safetensors", model / "model-00002.safetensors")
    with pytest.raises(InputError, match=r"model-00002.safetensors is a broken symbolic link"):
        scan_source(_dir_source(model))


def test_link_loop_outside_the_model_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, outside / "again")
    model = make_model_dir(tmp_path / "m", big_bytes=10)
    os.symlink(outside, model / "ext")
    with pytest.raises(InputError, match="symbolic link loop"):
        scan_source(_dir_source(model))


def test_stage_files_in_the_source_are_not_listed(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", big_bytes=10)
    (model / MANIFEST_NAME).write_text("{}", encoding="utf-8")
    (model / ".config.json.hpcinfer-tmp").write_text("x", encoding="utf-8")
    paths = {e.path for e in scan_source(_dir_source(model))}
    assert MANIFEST_NAME not in paths and ".config.json.hpcinfer-tmp" not in paths


def test_manifest_round_trip_and_unreadable_manifest_means_unverified(tmp_path: Path) -> None:
    entries = (
        Entry("a.bin", "file", size=3, mtime_ns=5, sha256="ab" * 32),
        Entry("l", "link", target="a.bin"),
    )
    write_manifest(tmp_path, Manifest(model="m", source="/src", layout="dir", entries=entries))
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest.entries == entries and manifest.total_bytes == 3
    (tmp_path / MANIFEST_NAME).write_text('{"format": "hpcinfer-stage/1", "entr', "utf-8")
    assert read_manifest(tmp_path) is None


def test_journal_updates_the_manifest_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    first = Entry("a.bin", "file", size=3, mtime_ns=5, sha256="11" * 32)
    write_manifest(tmp_path, Manifest(model="m", source="/s", layout="dir", entries=(first,)))
    newer = Entry("a.bin", "file", size=4, mtime_ns=6, sha256="22" * 32)
    append_journal(tmp_path, newer)
    with (tmp_path / JOURNAL_NAME).open("a", encoding="utf-8") as handle:
        handle.write('{"path": "b.bin", "ki')
    assert known_entries(tmp_path) == {"a.bin": newer}
