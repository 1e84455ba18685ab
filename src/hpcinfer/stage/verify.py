"""Checking a copy on its node's disk: sizes, digests and link targets.

A copy counts as verified only when its files, read back from disk, hash to the digests
rank 0 computed from the source. Files are hashed in parallel (hashlib releases the GIL),
so checking a sharded model costs about one read of it at the node's hashing speed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hpcinfer.stage.manifest import Entry

_READ_BYTES = 8 << 20


def verify_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def inside(copy: Path, rel: str) -> Path:
    """`copy/rel`, refusing paths that would leave the copy (a listing is data, not trust)."""
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise ValueError(f"unsafe path {rel!r} in a stage listing")
    return copy / rel


def check_entry(copy: Path, entry: Entry) -> str | None:
    """Why the copy's `entry` is not right, or None when it checks out."""
    path = inside(copy, entry.path)
    if entry.kind == "link":
        if not path.is_symlink():
            return f"{entry.path}: not a symbolic link"
        target = os.readlink(path)
        return None if target == entry.target else f"{entry.path}: links to {target!r}"
    try:
        st = path.lstat()
    except FileNotFoundError:
        return f"{entry.path}: missing"
    except OSError as exc:
        return f"{entry.path}: {exc}"
    if path.is_symlink() or not path.is_file():
        return f"{entry.path}: not a regular file"
    if st.st_size != entry.size:
        return f"{entry.path}: {st.st_size} bytes, expected {entry.size} (truncated or changed)"
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return f"{entry.path}: cannot read it back: {exc}"
    if digest != entry.sha256:
        return f"{entry.path}: content differs from the source (sha256 {digest[:12]}…)"
    return None


def check_entries(copy: Path, entries: Iterable[Entry]) -> dict[str, str]:
    """Problems by path, for every entry that does not check out (hashed in parallel)."""
    todo = list(entries)
    with ThreadPoolExecutor(verify_threads(), thread_name_prefix="stage-verify") as pool:
        results = pool.map(lambda e: check_entry(copy, e), todo)
        return {e.path: why for e, why in zip(todo, results, strict=True) if why is not None}
