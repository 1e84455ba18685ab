"""The folder a rank writes its copy into: made, guarded, shared-folder detection, tidied.

Every file lands under a temporary name and is renamed into place whole, so a reader (or
a later check) never sees half a file under its real name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from hpcinfer.errors import InputError
from hpcinfer.stage.manifest import JOURNAL_NAME, MANIFEST_NAME, Entry
from hpcinfer.stage.scan import TEMP_SUFFIX
from hpcinfer.stage.verify import inside

_PROBE = ".hpcinfer-stage-probe-"


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_SUFFIX}")


def _not_writable(copy: Path, exc: OSError) -> InputError:
    return InputError(
        f"cannot write the staged copy to {copy}: {exc.strerror or exc}; choose a --to folder "
        "this job can write on every node (node-local: /tmp, /local/scratch, $TMPDIR)"
    )


def prepare(copy: Path, token: str, rank: int) -> None:
    """Make the folder, refuse one hpcinfer did not make, and leave a probe in it.

    The probe (a file named with this run's token and rank) proves the folder writable and
    tells ranks that share the folder (one node, or a shared file system) from each other.
    """
    try:
        copy.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _not_writable(copy, exc) from None
    try:
        names = os.listdir(copy)
    except OSError as exc:
        raise _not_writable(copy, exc) from None
    ours = MANIFEST_NAME in names or JOURNAL_NAME in names
    foreign = [n for n in names if not n.startswith(_PROBE)]
    if foreign and not ours:
        raise InputError(
            f"{copy} already exists and was not made by `hpcinfer stage` (no {MANIFEST_NAME} "
            "in it); staging would replace its files: remove it, or choose another --to"
        )
    probe = copy / f"{_PROBE}{token}-{rank}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise _not_writable(copy, exc) from None


def ranks_sharing(copy: Path, token: str) -> set[int]:
    """Ranks whose probe of this run is in `copy`: the ranks writing the same folder."""
    prefix = f"{_PROBE}{token}-"
    try:
        names = os.listdir(copy)
    except OSError:
        return set()
    return {
        int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()
    }


def remove_probe(copy: Path, token: str, rank: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(copy / f"{_PROBE}{token}-{rank}")


def remove_temps(copy: Path) -> None:
    """Temp files of a stage cut short: never part of a copy."""
    for folder, _dirs, files in os.walk(copy):
        for name in files:
            if name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _clear(path: Path) -> None:
    """Make room for an entry: a stale folder or file at its name goes."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def make_parent(copy: Path, path: Path) -> None:
    """Create the entry's folder inside `copy`, replacing a stale file or link of a
    previous stage that sits where a folder must be."""
    for parent in reversed(path.relative_to(copy).parents):
        folder = copy / parent
        if folder != copy and (folder.is_symlink() or (folder.exists() and not folder.is_dir())):
            folder.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)


def commit_file(temp: Path, final: Path) -> None:
    """Rename a finished temp file over its final name."""
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(temp, final)


def place_link(copy: Path, entry: Entry) -> None:
    """Create or fix a symbolic link, atomically (temp link, then rename)."""
    final = inside(copy, entry.path)
    if final.is_symlink() and os.readlink(final) == entry.target:
        return
    make_parent(copy, final)
    temp = temp_path(final)
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    os.symlink(entry.target, temp)
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(temp, final)


def remove_extras(copy: Path, keep: Iterable[str]) -> int:
    """Delete what the copy holds beyond `keep` (stale shards would be loaded by a run)."""
    wanted = set(keep)
    folders = {p for path in wanted for p in _folders_of(path)}
    removed = 0
    for folder, dirs, files in os.walk(copy, topdown=False):
        rel_folder = os.path.relpath(folder, copy).replace(os.sep, "/")
        for name in [*files, *dirs]:
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            path = Path(folder, name)
            if rel_folder == "." and name in (MANIFEST_NAME, JOURNAL_NAME):
                continue
            if rel in wanted or (rel in folders and path.is_dir() and not path.is_symlink()):
                continue
            _clear(path)
            removed += 1
    return removed


def _folders_of(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
