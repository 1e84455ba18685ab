"""Rank 0's listing of the source: which files and links the copy must hold.

Symbolic links are the subtle part. An HF cache stores each file once in ``blobs/`` and
links ``snapshots/<rev>/config.json -> ../../blobs/<hash>``; copying both sides and keeping
the relative links gives a copy the HF libraries read as they read the original. So:

- a link whose target lies inside the model folder stays a link, rewritten relative to its
  own place (absolute links become relative, so the copy does not point back at the source);
- a link that leaves the folder (a snapshot folder passed as a model directory, or a model
  whose shards link to a shared store) is copied as what it points to;
- a broken link is an error, named, unless an HF revision that is not staged holds it.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from hpcinfer.errors import InputError
from hpcinfer.stage.layout import Source
from hpcinfer.stage.manifest import JOURNAL_NAME, MANIFEST_NAME, Entry

TEMP_SUFFIX = ".hpcinfer-tmp"
_OWN_NAMES = (MANIFEST_NAME, JOURNAL_NAME)


def is_own_file(name: str) -> bool:
    """Files `hpcinfer stage` keeps beside a copy: never part of a model."""
    return name in _OWN_NAMES or name.endswith(TEMP_SUFFIX) or name.startswith(".hpcinfer-stage")


class _Walker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = Path(os.path.realpath(root))
        self.entries: list[Entry] = []
        self._stack: list[str] = []

    def walk(self, real_dir: str, rel: str) -> None:
        if real_dir in self._stack:
            raise InputError(
                f"symbolic link loop at {rel!r} in {self.root} ({real_dir} contains itself); "
                "remove the link"
            )
        self._stack.append(real_dir)
        try:
            with os.scandir(real_dir) as listing:
                items = sorted(listing, key=lambda item: item.name)
        except OSError as exc:
            raise InputError(f"cannot list {real_dir} while reading the model: {exc}") from None
        for item in items:
            path = posixpath.join(rel, item.name) if rel else item.name
            if is_own_file(item.name):
                continue
            if item.is_symlink():
                self._link(item.path, path)
            elif item.is_dir(follow_symlinks=False):
                self.walk(item.path, path)
            elif item.is_file(follow_symlinks=False):
                self._file(item.path, path)
        self._stack.pop()

    def _file(self, origin: str, path: str) -> None:
        try:
            st = os.stat(origin)
        except OSError as exc:
            raise InputError(f"cannot read {origin} while reading the model: {exc}") from None
        self.entries.append(
            Entry(path=path, kind="file", size=st.st_size, mtime_ns=st.st_mtime_ns, origin=origin)
        )

    def _link(self, origin: str, path: str) -> None:
        real = os.path.realpath(origin)
        if not os.path.exists(real):
            self.entries.append(Entry(path=path, kind="broken", target=os.readlink(origin)))
            return
        inside = os.path.commonpath([real, str(self.real_root)]) == str(self.real_root)
        if inside:
            from_root = os.path.relpath(real, self.real_root).replace(os.sep, "/")
            target = posixpath.relpath(from_root, posixpath.dirname(path) or ".")
            self.entries.append(Entry(path=path, kind="link", target=target))
        elif os.path.isdir(real):
            self.walk(real, path)
        else:
            self._file(real, path)


def link_destination(entry: Entry) -> str:
    """The copy-relative path a link points to."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), entry.target))


def _hf_selection(entries: list[Entry], revision: str) -> list[Entry]:
    """refs/main, the snapshot it names, its .no_exist notes, and what their links reach."""
    prefixes = (f"snapshots/{revision}/", f".no_exist/{revision}/")
    by_path = {e.path: e for e in entries}
    keep = {e.path for e in entries if e.path == "refs/main" or e.path.startswith(prefixes)}
    pending = [by_path[p] for p in keep if by_path[p].kind == "link"]
    while pending:
        destination = link_destination(pending.pop())
        for e in entries:
            if e.path not in keep and (
                e.path == destination or e.path.startswith(destination + "/")
            ):
                keep.add(e.path)
                if e.kind == "link":
                    pending.append(e)
    return [e for e in entries if e.path in keep]


def scan_source(source: Source) -> list[Entry]:
    """Every file and link to stage, sorted by path; raises InputError naming a bad one."""
    walker = _Walker(source.root)
    walker.walk(str(walker.real_root), "")
    entries = walker.entries
    if source.kind == "hf" and source.revision is not None:
        entries = _hf_selection(entries, source.revision)
    broken = [e for e in entries if e.kind == "broken"]
    if broken:
        first = broken[0]
        raise InputError(
            f"{source.root / first.path} is a broken symbolic link (-> {first.target})"
            + (f" and {len(broken) - 1} more" if len(broken) > 1 else "")
            + "; the model is incomplete: download it again or remove the link"
        )
    files = [e for e in entries if e.kind == "file"]
    if not files:
        raise InputError(f"the model folder {source.root} holds no files to stage")
    return sorted(entries, key=lambda e: e.path)
