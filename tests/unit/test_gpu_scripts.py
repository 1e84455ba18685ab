"""scripts/gpu/serve_multinode.sh, run by bash with a stand-in for hpcinfer that records
its command lines (the real thing needs a GPU job)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "serve_multinode.sh"
FAKE_HPCINFER = """#!/bin/sh
printf '%s\\n' "$*" >> "$CALLS"
[ "$1" = endpoints ] && echo '[]' > endpoints.json
exit 0
"""


def run_script(
    tmp_path: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    fake = tmp_path / "hpcinfer"
    fake.write_text(FAKE_HPCINFER)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    base = {k: v for k, v in os.environ.items() if k not in ("HPCINFER_API_KEY", "API_KEY_ENV")}
    full = base | {"HPCINFER": str(fake), "CALLS": str(calls), "WORK_DIR": str(tmp_path / "w")}
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], env=full | env, capture_output=True, text=True, timeout=60
    )
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_servers_on_every_address_need_an_api_key(tmp_path: Path) -> None:
    done, calls = run_script(tmp_path, "mp", "/models/m", "2", "1")
    assert done.returncode == 2
    assert "need an API key: export HPCINFER_API_KEY" in done.stderr
    assert calls == []  # nothing started


def test_the_key_is_passed_by_name_and_no_interface_is_fine(tmp_path: Path) -> None:
    done, calls = run_script(tmp_path, "mp", "/models/m", "2", "1", HPCINFER_API_KEY="s3cret")
    assert done.returncode == 0, done.stderr
    serve = next(c for c in calls if c.startswith("serve "))
    assert "--host 0.0.0.0 --api-key-env HPCINFER_API_KEY" in serve
    assert "--interface" not in serve and "--ray-cluster" not in serve
    run = next(c for c in calls if c.startswith("run "))
    assert "--api-key-env HPCINFER_API_KEY" in run
    assert not any("s3cret" in c for c in calls)  # the key itself is never on a command line


def test_arrays_that_may_be_empty_are_expanded_safely_for_bash_before_4_4() -> None:
    """bash < 4.4 under `set -u` takes "${a[@]}" of an empty array for an unset variable."""
    text = SCRIPT.read_text()
    maybe_empty = set(re.findall(r"\b(\w+)=\(\)", text))
    assert {"iface", "cluster"} <= maybe_empty
    for name in maybe_empty:
        guarded = f'${{{name}[@]+"${{{name}[@]}}"}}'
        bare = text.replace(guarded, "").count(f'"${{{name}[@]}}"')
        assert bare == 0, f"{shlex.quote(name)} is expanded without the ${{a[@]+...}} guard"
