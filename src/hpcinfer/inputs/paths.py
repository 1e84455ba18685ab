"""Turn the input arguments a user typed (files, directories, globs) into a fixed list of files.

The order is deterministic (sorted, de-duplicated) because record ids and resume both depend
on reading the same files in the same order on every run and every machine.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from hpcinfer.errors import InputError
from hpcinfer.inputs.columnar import is_saved_dataset

INPUT_EXTENSIONS = (".txt", ".in", ".jsonl", ".csv", ".tsv", ".parquet")
"""Extensions picked up when a directory is given; anything else inside it is ignored."""

_GLOB_CHARS = frozenset("*?[")


def expand_inputs(patterns: Sequence[str], cwd: Path | None = None) -> list[Path]:
    """Expand files, directories and globs into files, in argument order then sorted order.

    A file is taken as is (whatever its extension: the user named it). A directory gives every
    file under it, recursively, with an extension in INPUT_EXTENSIONS, skipping hidden files
    and directories. A glob gives the files it matches (directories it matches are ignored).
    The same file reached twice (same resolved path) is kept once, at its first place.
    Relative patterns are taken from `cwd` (default: the current directory).
    """
    base = _absolute(cwd)
    found: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        for path in _expand_one(pattern, base):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def display_name(path: Path, cwd: Path | None = None) -> str:
    """How a file is named in ids and messages: relative to `cwd` when under it, else absolute.

    Relative names keep record ids the same when a project directory is moved or copied to
    another machine.
    """
    base = _absolute(cwd)
    full = Path(os.path.abspath(base / path))
    for root, target in ((base, full), (base.resolve(), full.resolve())):
        if target != root and target.is_relative_to(root):
            return target.relative_to(root).as_posix()
    return full.as_posix()


def _absolute(cwd: Path | None) -> Path:
    return Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))


def _expand_one(pattern: str, base: Path) -> list[Path]:
    if not pattern.strip():
        raise InputError("an input path is empty; give a file, a directory or a quoted glob")
    expanded = os.path.expanduser(pattern)
    path = base / expanded
    if path.is_dir() and is_saved_dataset(path):
        return [path]  # a Hugging Face dataset saved with save_to_disk is one input
    if path.is_dir():
        return _directory_files(pattern, path)
    if path.exists():
        return [path]
    if _GLOB_CHARS.intersection(expanded):
        return _glob_files(pattern, expanded, base)
    raise InputError(
        f"input {pattern!r} does not exist (looked for {path}); check the path, or quote a glob "
        "pattern so hpcinfer expands it"
    )


def _directory_files(pattern: str, directory: Path) -> list[Path]:
    files = [
        path
        for path in directory.rglob("*")
        if path.suffix.lower() in INPUT_EXTENSIONS
        and not _is_hidden(path.relative_to(directory))
        and path.is_file()
    ]
    if not files:
        raise InputError(
            f"input directory {pattern!r} holds no input files (looked for "
            f"{', '.join(INPUT_EXTENSIONS)}, recursively); name the files directly or use a glob"
        )
    return sorted(files, key=lambda p: p.relative_to(directory).parts)


def _glob_files(pattern: str, expanded: str, base: Path) -> list[Path]:
    matches = sorted(glob.glob(expanded, root_dir=base, recursive=True))
    files = [base / match for match in matches if (base / match).is_file()]
    if not files:
        raise InputError(
            f"input pattern {pattern!r} matched no files; check the path, and quote the pattern "
            f"(e.g. '{pattern}') so the shell passes it to hpcinfer unexpanded"
        )
    return files


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
