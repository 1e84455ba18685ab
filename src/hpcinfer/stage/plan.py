"""What one copy needs: which files it can keep, which must be sent, and whether it is done.

A file is kept only when the copy's record of it (manifest, or journal of a stage cut short)
describes the same source file (size, modification time) and the file on disk, read back,
still hashes to the recorded digest. A truncated, corrupted or missing file is sent again;
the rest stay. A copy is skipped outright only if its manifest matches the source listing
and every file and link checks out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpcinfer.stage.manifest import Entry, known_entries, read_manifest
from hpcinfer.stage.verify import check_entries


@dataclass
class CopyPlan:
    """One writer's view of its copy before the broadcast."""

    wanted: set[str] = field(default_factory=set)  # files to receive
    kept: dict[str, Entry] = field(default_factory=dict)  # files that check out, with digests
    verified: bool = False  # the manifest matches and everything checks out: nothing to do
    problems: list[str] = field(default_factory=list)  # why recorded files are sent again


def _manifest_matches(copy: Path, listing: list[Entry]) -> bool:
    manifest = read_manifest(copy)
    if manifest is None:
        return False
    recorded = {e.path: e for e in manifest.entries}
    return recorded.keys() == {e.path for e in listing} and all(
        recorded[e.path].same_source(e) for e in listing
    )


def plan_copy(copy: Path, listing: list[Entry], force: bool = False) -> CopyPlan:
    """Check the copy against the source listing (reads back every recorded file)."""
    files = [e for e in listing if e.kind == "file"]
    links = [e for e in listing if e.kind == "link"]
    if force:
        return CopyPlan(wanted={e.path for e in files})
    known = known_entries(copy)
    plan = CopyPlan()
    candidates = []
    for entry in files:
        record = known.get(entry.path)
        if record is None:
            continue
        if record.same_source(entry) and record.sha256:
            candidates.append(record)
        else:
            plan.problems.append(f"{entry.path}: changed at the source")
    bad = check_entries(copy, candidates + links)
    plan.problems += [why for path, why in bad.items() if path in {c.path for c in candidates}]
    plan.kept = {c.path: c for c in candidates if c.path not in bad}
    plan.wanted = {e.path for e in files if e.path not in plan.kept}
    links_ok = not any(link.path in bad for link in links)
    plan.verified = not plan.wanted and links_ok and _manifest_matches(copy, listing)
    return plan
