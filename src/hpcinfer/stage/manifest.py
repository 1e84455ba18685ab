"""What a staged copy holds: entries (files and links) and the manifest that marks it verified.

The manifest is written last, atomically, and only once every file of the copy has been
read back and matched its digest; an interrupted stage leaves no manifest and is never
taken as verified. While a stage runs, a journal lists the files already in place, so a
rerun re-checks and keeps them instead of sending them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcinfer.outputs.atomic import write_text_atomic

MANIFEST_NAME = ".hpcinfer-stage.json"
JOURNAL_NAME = ".hpcinfer-stage.journal"
MANIFEST_FORMAT = "hpcinfer-stage/1"
DIGEST = "sha256"


@dataclass(frozen=True)
class Entry:
    """One file or symbolic link of a model, by its path inside the copy.

    `size` and `mtime_ns` are the source's: they tell a changed source without re-reading
    it from the shared file system. `sha256` is the content digest rank 0 computed while
    reading. `origin` (rank 0 only, never written) is the path rank 0 reads.
    """

    path: str
    kind: Literal["file", "link", "broken"]
    size: int = 0
    mtime_ns: int = 0
    target: str = ""
    sha256: str = ""
    origin: str = field(default="", compare=False)

    def same_source(self, other: Entry) -> bool:
        """Same kind, size, modification time and link target: the same source content."""
        return (self.kind, self.size, self.mtime_ns, self.target) == (
            other.kind,
            other.size,
            other.mtime_ns,
            other.target,
        )

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["origin"]
        if self.kind == "link":
            for key in ("size", "mtime_ns", "sha256"):
                del data[key]
        else:
            del data["target"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(
            path=str(data["path"]),
            kind=data["kind"],
            size=int(data.get("size", 0)),
            mtime_ns=int(data.get("mtime_ns", 0)),
            target=str(data.get("target", "")),
            sha256=str(data.get("sha256", "")),
        )


@dataclass(frozen=True)
class Manifest:
    """The verified state of one staged copy."""

    model: str
    source: str
    layout: str
    entries: tuple[Entry, ...]
    created: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")

    def as_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "digest": DIGEST,
            "model": self.model,
            "source": self.source,
            "layout": self.layout,
            "created": self.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": sum(1 for e in self.entries if e.kind == "file"),
            "bytes": self.total_bytes,
            "entries": [e.as_json() for e in self.entries],
        }


def read_manifest(copy: Path) -> Manifest | None:
    """The copy's manifest, or None when it is missing or unreadable (= not verified)."""
    try:
        data = json.loads((copy / MANIFEST_NAME).read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT or data.get("digest") != DIGEST:
            return None
        return Manifest(
            model=str(data["model"]),
            source=str(data["source"]),
            layout=str(data["layout"]),
            entries=tuple(Entry.from_json(e) for e in data["entries"]),
            created=str(data.get("created", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(copy: Path, manifest: Manifest) -> None:
    write_text_atomic(copy / MANIFEST_NAME, json.dumps(manifest.as_json(), indent=1) + "\n")


def remove_manifest(copy: Path) -> None:
    """Un-verify the copy before changing any of its files."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(copy / MANIFEST_NAME)


def start_journal(copy: Path, kept: Iterable[Entry]) -> None:
    """Before the first change: the journal records the files the copy keeps (so a stage cut
    short does not forget them along with the manifest) and tells a rerun the folder is ours.
    """
    with (copy / JOURNAL_NAME).open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(e.as_json()) + "\n" for e in kept)


def append_journal(copy: Path, entry: Entry) -> None:
    """Note a file now in place; a torn last line is ignored on reading."""
    with (copy / JOURNAL_NAME).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry.as_json()) + "\n")


def read_journal(copy: Path) -> list[Entry]:
    try:
        lines = (copy / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(Entry.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def remove_journal(copy: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(copy / JOURNAL_NAME)


def known_entries(copy: Path) -> dict[str, Entry]:
    """What the copy is believed to hold: its manifest, updated by the journal of a later,
    unfinished stage. Nothing here is trusted until the files are checked."""
    known: dict[str, Entry] = {}
    manifest = read_manifest(copy)
    if manifest is not None:
        known.update((e.path, e) for e in manifest.entries)
    known.update((e.path, e) for e in read_journal(copy))
    return known
