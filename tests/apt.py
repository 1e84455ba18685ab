"""apt-get installs for the integration tests that need a system program (Slurm, Chromium).

CI runs as root with access to Debian's package archive, so a missing program is installed
there rather than skipped; elsewhere the caller hands the returned problem to
`tests.conftest.require`, which skips locally and fails in CI. One install runs at a time
(a file lock, and apt's own lock waited for), so parallel test processes do not collide.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

APT_LOCK = Path(tempfile.gettempdir()) / "hpcinfer-tests-apt.lock"
_WAIT_FOR_APT = ("-o", "DPkg::Lock::Timeout=600")  # wait for another apt-get, do not fail


def missing_programs(programs: Sequence[str]) -> list[str]:
    return [name for name in programs if shutil.which(name) is None]


def apt_install(
    packages: Sequence[str],
    programs: Sequence[str],
    timeout: float = 900,
    recommends: bool = True,
) -> str | None:
    """Install `packages` unless every one of `programs` is on PATH already.

    Returns None when the programs are there afterwards, else what went wrong (for
    `require`). Tries the install first and runs `apt-get update` only when that fails, as a
    fresh image has no package lists and a prepared one needs no refresh.
    """
    if not missing_programs(programs):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"installing {' '.join(packages)} needs root and apt-get"
    install = ["apt-get", *_WAIT_FOR_APT, "install", "-y"]
    install += [] if recommends else ["--no-install-recommends"]
    install += list(packages)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with APT_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not missing_programs(programs):  # another test process installed them meanwhile
            return None
        try:
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                update = ["apt-get", *_WAIT_FOR_APT, "update"]
                subprocess.run(update, env=env, capture_output=True, text=True, timeout=timeout)
                done = subprocess.run(
                    install, env=env, capture_output=True, text=True, timeout=timeout
                )
        except subprocess.TimeoutExpired:
            return f"{' '.join(install)} took longer than {timeout:.0f}s"
    if done.returncode != 0:
        return (
            f"{' '.join(install)} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    still = missing_programs(programs)
    return f"still missing after apt-get: {', '.join(still)}" if still else None
