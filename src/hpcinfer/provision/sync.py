"""`hpcinfer cluster sync`: the project folder copied to the control node with rsync.

rsync over hpcinfer's ssh command (`rsync -e` with $HPCINFER_SSH's argv) into the cluster's
workdir, `--delete` so the copy is the project as it is here (what rsync skips is never
deleted there: outputs made on the control node stay). Skipped: virtual environments (any
folder holding pyvenv.cfg, and .venv/venv), run outputs (any folder holding run.json, and the
usual output folders), caches, __pycache__ and .git. The result lists what was copied and
deleted, from rsync's --itemize-changes.

--delete removes whatever the project lacks, so sync mirrors only into a folder it made: the
workdir holds the marker file WORKDIR_MARKER, and an existing non-empty folder without it
(someone's home, another project) is refused before anything is copied or deleted.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from hpcinfer.errors import InputError, ProvisionError
from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.reach import SSH_UNREACHABLE, ssh_argv, ssh_prefix, target, workdir

SKIPPED_NAMES = (
    ".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".cache", "outputs", "out", "runs", "hpcinfer-out", "node_modules",
)  # fmt: skip
"""Folders skipped wherever they are (by name)."""
MARKERS = ("pyvenv.cfg", "run.json")
"""A folder holding one of these is a venv or a run's output: skipped whatever its name."""
SYNC_TIMEOUT_S = 3600
WORKDIR_MARKER = ".hpcinfer-workdir"
"""The file that makes a folder sync's own (never copied, never deleted by --delete)."""
NOT_OURS = 3
"""CLAIM's exit status for an existing non-empty folder without the marker."""
CLAIM = (
    'd=$1; m="$d"/' + WORKDIR_MARKER + "; "
    'if [ -e "$d" ] && [ ! -e "$m" ] && [ -n "$(ls -A -- "$d" 2>/dev/null)" ]; then '
    f"exit {NOT_OURS}; fi; "
    'mkdir -p -- "$d" && : > "$m"'
)
"""bash, $1 the workdir: make it sync's own (the marker), unless it is a non-empty folder
that is not already."""


class SyncResult(BaseModel):
    """What `sync` did: where to, the files copied and deleted, the folders skipped."""

    source: str
    target: str
    copied: list[str]
    deleted: list[str]
    skipped: list[str]


def marked_folders(root: Path) -> list[str]:
    """Folders under `root` (relative, '/'-separated) that hold a venv or a run's output."""
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        if here != root and any(m in files for m in MARKERS):
            found.append(here.relative_to(root).as_posix())
            subfolders.clear()
            continue
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_NAMES)
    return sorted(found)


def rsync_argv(
    cluster: Cluster, source: Path, env: Mapping[str, str], local: bool
) -> tuple[list[str], list[str], str]:
    """(the rsync command, the folders it skips by marker, its destination)."""
    rsync = shutil.which("rsync", path=env.get("PATH"))
    if rsync is None:
        raise ProvisionError("sync needs rsync here (apt-get install rsync, brew install rsync)")
    marked = marked_folders(source)
    destination = workdir(cluster).rstrip("/") + "/"
    if local:
        destination = (
            str(Path.home() / destination) if not destination.startswith("/") else destination
        )
    else:
        destination = f"{target(cluster, cluster.file.control)}:{destination}"
    argv = [rsync, "--archive", "--delete", "--itemize-changes", "--mkpath"]
    if not local:
        argv += ["-e", shlex.join([*ssh_prefix(env), "-o", "BatchMode=yes"])]
    argv += [f"--exclude=/{WORKDIR_MARKER}"]
    argv += [f"--exclude=/{path}/" for path in marked]
    argv += [f"--exclude={name}/" for name in SKIPPED_NAMES]
    argv += [str(source).rstrip("/") + "/", destination]
    return argv, marked, destination


def parse_itemized(output: str) -> tuple[list[str], list[str]]:
    """(files copied, paths deleted) from rsync's --itemize-changes lines."""
    copied, deleted = [], []
    for line in output.splitlines():
        code, _, path = line.partition(" ")
        if line.startswith("*deleting"):
            deleted.append(line.split(None, 1)[1])
        elif len(code) == 11 and code[0] in "<>c" and code[1] == "f":
            copied.append(path)
    return copied, deleted


def sync_project(
    cluster: Cluster, source: Path, env: Mapping[str, str], *, local: bool
) -> SyncResult:
    """Copy the project folder `source` to the control node's workdir (`local`: this is
    the control node, so a local copy; nothing to do when it is the workdir itself)."""
    source = source.resolve()
    if not source.is_dir():
        raise InputError(f"sync: {source} is not a folder; give the project folder")
    argv, marked, destination = rsync_argv(cluster, source, env, local)
    if local and Path(destination).resolve() == source:
        return SyncResult(source=str(source), target=destination, copied=[], deleted=[],
                          skipped=[])  # fmt: skip
    claim_workdir(cluster, env, local=local)
    try:
        done = subprocess.run(
            argv, env=dict(env), capture_output=True, text=True, timeout=SYNC_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"rsync to {destination} took over {SYNC_TIMEOUT_S}s") from None
    if done.returncode != 0:
        node = cluster.file.control.name
        why = "ssh could not reach it" if done.returncode == SSH_UNREACHABLE else "rsync failed"
        raise ProvisionError(
            f"{node}: sync to {destination}: {why} (exit {done.returncode}):\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    copied, deleted = parse_itemized(done.stdout)
    skipped = sorted({*marked, *(n for n in SKIPPED_NAMES if _anywhere(source, n))})
    return SyncResult(source=str(source), target=destination, copied=copied, deleted=deleted,
                      skipped=skipped)  # fmt: skip


def claim_workdir(cluster: Cluster, env: Mapping[str, str], *, local: bool) -> None:
    """Make the workdir sync's own (WORKDIR_MARKER), or refuse: an existing non-empty folder
    without the marker would lose everything the project lacks to rsync --delete."""
    where = workdir(cluster)
    command = f"bash -c {shlex.quote(CLAIM)} hpcinfer-sync {shlex.quote(where)}"
    node = cluster.file.control
    if local:
        argv = ["bash", "-c", CLAIM, "hpcinfer-sync", where]
    else:
        argv = ssh_argv(cluster, node, command, env)
    try:
        done = subprocess.run(
            argv, env=dict(env), capture_output=True, text=True, timeout=SYNC_TIMEOUT_S,
            stdin=subprocess.DEVNULL, cwd=Path.home() if local else None,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"{node.name}: checking {where} took over {SYNC_TIMEOUT_S}s") from None
    if done.returncode == NOT_OURS:
        raise InputError(
            f"{node.name}: sync refuses to mirror into {where}: it holds files but no "
            f"{WORKDIR_MARKER}, so it is not a folder sync made, and --delete would remove "
            f"what the project lacks. Set control.workdir to a new or empty folder; or, if "
            f"{where} is only an earlier copy of this project, create {where}/"
            f"{WORKDIR_MARKER} there. Nothing was copied or deleted."
        )
    if done.returncode != 0:
        why = "ssh could not reach it" if done.returncode == SSH_UNREACHABLE else "failed"
        raise ProvisionError(
            f"{node.name}: preparing {where} for sync: {why} (exit {done.returncode}):\n"
            f"{done.stderr.strip()[-2000:]}"
        )


def _anywhere(root: Path, name: str) -> bool:
    return (root / name).exists()
