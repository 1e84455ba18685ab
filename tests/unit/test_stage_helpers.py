"""Builders shared by the stage tests (no tests here): model folders, HF caches, tree dumps."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from hpcinfer.stage.manifest import JOURNAL_NAME, MANIFEST_NAME

REVISION = "0123456789abcdef0123456789abcdef01234567"


def make_model_dir(path: Path, big_bytes: int = 3 * (1 << 20) + 12345) -> Path:
    """A model-like folder: config, a weight file spanning several 1 MiB chunks, an empty
    file, a nested file and a relative symlink inside the folder."""
    rng = random.Random(7)
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")
    (path / "big.safetensors").write_bytes(rng.randbytes(big_bytes))
    (path / "a_small.txt").write_text("small\n", encoding="utf-8")
    (path / "empty.bin").write_bytes(b"")
    (path / "sub").mkdir()
    (path / "sub" / "nested.json").write_text("{}\n", encoding="utf-8")
    os.symlink("config.json", path / "alias.json")
    return path


def make_hf_cache(hub: Path, model_id: str, source: Path, revision: str = REVISION) -> Path:
    """Lay `source`'s files out as the HF cache does: blobs by digest, snapshot links, ref."""
    repo = hub / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision, encoding="utf-8")
    for file in sorted(source.rglob("*")):
        if not file.is_file() or file.name.startswith("HPCINFER_"):
            continue
        data = file.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = len(link.relative_to(repo).parts) - 1
        os.symlink("../" * depth + f"blobs/{blob}", link)
    return repo


def tree(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every file (with its bytes) and link (with its target) under root, stage files aside."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if name in (MANIFEST_NAME, JOURNAL_NAME):
                continue
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_file():
                found[rel] = ("file", path.read_bytes())
    return found
