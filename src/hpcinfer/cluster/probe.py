"""The one seam through which hpcinfer asks the machine about itself (nvidia-smi, udevadm,
squeue, qstat): tests replace it with a fake runner."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

Runner = Callable[[list[str]], "str | None"]
PROBE_TIMEOUT_S = 10.0


def run_probe(cmd: list[str]) -> str | None:
    """Run a query command; stdout on success, None if it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
