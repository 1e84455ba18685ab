"""Where a cluster's nodes keep Ray's files: one short temp dir per cluster and node.

Ray puts its Unix sockets under the temp dir (`.../session_<date>_<pid>/sockets/plasma_store`)
and a socket path may not exceed 107 bytes, so the root is short: `/tmp/hpcinfer-ray-<8 hex>`,
the hex from the user, the cluster's name and its file (two users' or two jobs' clusters
never share one). Each node has its own folder below, named after the node as the
allocation names it (its short name): nodes that share a /tmp (containers, namespaces, a
test's hosts on one machine) stay apart, and a node's stop touches only the processes of
its own folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from pathlib import Path

from hpcinfer.cluster.allocation import short_hostname
from hpcinfer.errors import RayClusterError, SpecError

TEMP_PARENT = Path("/tmp")
SOCKET_PATH_MAX = 107
"""sun_path's size less the terminating NUL, on Linux."""
_SESSION_TAIL = len("/session_2026-12-05_10-34-39_389333_4194304/sockets/plasma_store")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
NODE_NAME_MAX = 16
"""What is left of the 107 bytes for a node's folder under the root, with Ray's session
folder (43) and socket name (21) below it."""


def cluster_root(
    name: str, uid: int | None = None, parent: Path = TEMP_PARENT, record: str = ""
) -> Path:
    """The cluster's temp root on every node: `/tmp/hpcinfer-ray-<8 hex>` of the user, the
    name and the cluster file (`record`): a second cluster of the same name recorded
    elsewhere never shares (nor, failing, cleans up) the first one's folders."""
    who = os.getuid() if uid is None else uid
    digest = hashlib.sha256(f"{who}:{name}:{record}".encode()).hexdigest()[:8]
    return parent / f"hpcinfer-ray-{digest}"


def node_dir_name(host: str) -> str:
    """A node's folder name: its short host name in safe characters; a longer one than 16
    is cut to 7 and followed by 8 hex of the whole name (two long names differing at the
    end stay apart)."""
    name = _UNSAFE.sub("_", short_hostname(host)) or "node"
    if len(name) <= NODE_NAME_MAX:
        return name
    return f"{name[:7]}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"


def make_private_root(root: Path) -> Path:
    """Create the cluster's temp root for this user alone (mode 0700), or take the one
    already there when it is this user's own directory. /tmp is shared: a symlink or a
    directory of another user put there in advance would get this cluster's sockets and
    logs, so either is refused, naming it."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(root, 0o700)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise RayClusterError(
            f"the cluster's temp root {root} is {kind}; Ray's files go only into a directory "
            "of your own: remove it (or pass another --name)"
        )
    if info.st_uid != os.getuid():
        raise RayClusterError(
            f"the cluster's temp root {root} belongs to another user (uid {info.st_uid}); "
            "Ray's files go only into a directory of your own: pass another --name"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(root, 0o700)
    return root


def node_temp_dir(root: Path, host: str) -> Path:
    """Ray's `--temp-dir` on `host`; refused when Ray's socket paths below it would be too
    long for a Unix socket."""
    path = root / node_dir_name(host)
    if len(str(path)) + _SESSION_TAIL > SOCKET_PATH_MAX:
        raise SpecError(
            f"Ray's socket paths under {path} would exceed {SOCKET_PATH_MAX} bytes; use a "
            "shorter temp parent"
        )
    return path
