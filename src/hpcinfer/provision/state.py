"""Where a cluster's state lives on its control node: `~/.hpcinfer/clusters/<name>/`.

One place names every folder in it, for the runner, the forwarding and the roles (which get
it as `cluster_state_dir`): inventory/ (rendered on every run), dist/ (the hpcinfer wheel
installed on the nodes), answers/ (verify's recorded answers), logs/ (each playbook run's log
and summary), file/ (the cluster file a forwarded command was given).
"""

from __future__ import annotations

from pathlib import Path

STATE_ROOT = Path(".hpcinfer") / "clusters"
"""Relative to the login's home on the control node."""
DEFAULT_WORKDIR = "hpcinfer"
"""Where `sync` puts the project on the control node: this, under the login's home."""


def state_home_relative(name: str) -> Path:
    """The cluster's state folder, relative to the home directory (for remote commands)."""
    return STATE_ROOT / name


def state_dir(name: str, home: Path | None = None) -> Path:
    """The cluster's state folder on this machine (the control node)."""
    return (home or Path.home()) / state_home_relative(name)


def inventory_dir(state: Path) -> Path:
    return state / "inventory"


def dist_dir(state: Path) -> Path:
    return state / "dist"


WHEEL_BUILD_RECORD = "build.txt"
"""Beside the one wheel in dist/: that wheel's build label (version+source hash)."""


def logs_dir(state: Path) -> Path:
    return state / "logs"


def file_dir(state: Path) -> Path:
    return state / "file"


def server_registry(state: Path, shared_dir: str | None) -> Path:
    """The endpoints registry of the cluster's server (the roles' vllm_server_registry): in
    `server.shared_dir` when given (every node writes it), else in the state folder."""
    return (Path(shared_dir) if shared_dir else state / "server") / "endpoints.json"
