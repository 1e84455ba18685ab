"""`cluster configure` and `cluster verify`: ansible-playbook run on the control node.

The inventory is rendered from the cluster file into the state folder on every run (the one
source of truth), then the shipped playbook runs with the shipped ansible.cfg and roles, the
ssh program and options of $HPCINFER_SSH (ANSIBLE_SSH_EXECUTABLE, ANSIBLE_SSH_COMMON_ARGS),
no ControlPersist (no ssh master outlives the command), pipelining on, and
`-e cluster_state_dir=... -e hpcinfer_wheel=...`. Ansible's output is the progress (and a log
in the state folder's logs/); the shipped callback `hpcinfer_summary` writes the per-host
counts and failed tasks, which become the typed result.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import ProvisionError, SpecError
from hpcinfer.logtail import log_tail
from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.following import LineSink, run_following
from hpcinfer.provision.inventory import INVENTORY, write_inventory
from hpcinfer.provision.playbooks import ansible_dir
from hpcinfer.provision.reach import ssh_prefix
from hpcinfer.provision.remote import pip_source_options
from hpcinfer.provision.state import (
    WHEEL_BUILD_RECORD,
    dist_dir,
    inventory_dir,
    logs_dir,
    state_dir,
)
from hpcinfer.provision.wheel import build_wheel, this_build

PLAYBOOKS = ("configure", "verify")
SUMMARY_CALLBACK = "hpcinfer_summary"
SUMMARY_ENV = "HPCINFER_ANSIBLE_SUMMARY"
GROUPS = ("all", "control", "compute")


class HostTally(BaseModel):
    """One host's task counts, as Ansible's recap has them."""

    host: str
    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


class TaskFailure(BaseModel):
    """A task that failed on a host (or could not reach it), with what it said."""

    host: str
    task: str
    message: str
    unreachable: bool = False


class PlaybookResult(BaseModel):
    """The outcome of `configure` or `verify`: per-host counts, the failed tasks, the log."""

    cluster: str
    playbook: str
    check: bool
    limit: str | None
    exit_code: int  # ansible-playbook's
    hosts: list[HostTally]
    failures: list[TaskFailure]
    log: str

    @property
    def failed_hosts(self) -> list[str]:
        return [h.host for h in self.hosts if h.failed or h.unreachable]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failed_hosts

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts)

    def problem(self) -> str:
        """The failed and unreachable hosts, each with its first failed task ('' if ok)."""
        if self.ok:
            return ""
        lines = [f"{self.playbook} failed on {', '.join(self.failed_hosts) or 'the control node'}"]
        for failure in self.failures:
            what = "unreachable" if failure.unreachable else f"task {failure.task!r}"
            message = failure.message.strip().replace("\n", "\n    ")
            lines.append(f"  {failure.host}: {what}: {message}")
        lines.append(f"  log: {self.log}")
        return "\n".join(lines)


def ansible_playbook(env: Mapping[str, str]) -> list[str]:
    """ansible-playbook of this Python's environment (the cluster venv): the one its
    ansible-core installs (`python -m ansible.cli.playbook`, also where the venv has no
    console script), else the one on PATH."""
    if importlib.util.find_spec("ansible") is not None:
        return [sys.executable, "-m", "ansible.cli.playbook"]
    found = shutil.which("ansible-playbook", path=env.get("PATH"))
    if found is None:
        raise ProvisionError(
            "ansible-playbook is not installed on the control node: "
            f"pip install 'hpcinfer[cluster]' into {Path(sys.executable).parent.parent}"
        )
    return [found]


def check_limit(cluster: Cluster, limit: str | None) -> str | None:
    """--limit: host and group names of this cluster, comma-separated; else a SpecError
    naming them (Ansible would run on nothing and call it a success)."""
    if limit is None:
        return None
    known = [n.name for n in cluster.file.nodes]
    names = [part.strip() for part in limit.replace(":", ",").split(",") if part.strip()]
    unknown = [n for n in names if n.lstrip("!&") not in (*known, *GROUPS)]
    if not names or unknown:
        raise SpecError(
            f"--limit {limit!r}: {', '.join(unknown) or 'no host'} is not a node of "
            f"{cluster.file.label}; name nodes ({', '.join(known)}) or groups "
            f"({', '.join(GROUPS)}), comma-separated"
        )
    return ",".join(names)


def ssh_env(env: Mapping[str, str]) -> dict[str, str]:
    """Ansible's ssh settings from $HPCINFER_SSH: the program and its options; no master."""
    prefix = ssh_prefix(env)
    return {
        "ANSIBLE_SSH_EXECUTABLE": prefix[0],
        "ANSIBLE_SSH_COMMON_ARGS": shlex.join(prefix[1:]),
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPersist=no",
        "ANSIBLE_PIPELINING": "True",
    }


def hpcinfer_wheel(cluster: Cluster, state: Path, env: Mapping[str, str]) -> str:
    """The wheel the roles install as hpcinfer on the nodes: this build's, in dist/ (copied
    there by forwarding, else built here from the checkout, else this version downloaded
    from the index or the cluster's wheelhouse)."""
    build = this_build()
    dist = dist_dir(state)
    record = dist / WHEEL_BUILD_RECORD
    wheels = sorted(dist.glob("hpcinfer-*.whl"))
    if wheels and record.is_file() and record.read_text().strip() == build.label:
        return str(wheels[0])
    dist.mkdir(parents=True, exist_ok=True)
    for old in wheels:
        old.unlink()
    built = build_wheel()
    if built is not None:
        shutil.copy2(built, dist / built.name)
    else:
        _download_wheel(cluster, build.version, dist, env)
    record.write_text(build.label + "\n", encoding="utf-8")
    return str(sorted(dist.glob("hpcinfer-*.whl"))[0])


def _download_wheel(cluster: Cluster, version: str, dist: Path, env: Mapping[str, str]) -> None:
    wheelhouse = cluster.file.python.wheelhouse
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
            ":all:", "-d", str(dist), *pip_source_options(cluster),
            f"hpcinfer=={version}"]  # fmt: skip
    done = subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not list(dist.glob("hpcinfer-*.whl")):
        raise ProvisionError(
            f"no hpcinfer {version} wheel for the nodes: this hpcinfer has no source checkout "
            f"to build one from and `pip download` failed: {done.stderr.strip()[-1500:]}; put "
            f"hpcinfer-{version}-py3-none-any.whl into the wheelhouse"
            + (f" {wheelhouse}" if wheelhouse else " (python.wheelhouse)")
        )


def run_files(logs: Path, playbook: str) -> tuple[Path, Path]:
    """(log, summary) of a new run: PLAYBOOK-DATE-TIME-PID, so that runs in the same second
    (from two processes, or one process's runs: then -N) never share a file."""
    stem = f"{playbook}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    name, taken = stem, 0
    while (logs / f"{name}.log").exists() or (logs / f"{name}.json").exists():
        taken += 1
        name = f"{stem}-{taken}"
    return logs / f"{name}.log", logs / f"{name}.json"


def run_playbook(
    cluster: Cluster,
    playbook: str,
    env: Mapping[str, str],
    *,
    limit: str | None = None,
    check: bool = False,
    progress: LineSink | None = None,
    stop: StopSignal | None = None,
) -> PlaybookResult:
    """Run a shipped playbook (configure, verify) on this, the control node."""
    if playbook not in PLAYBOOKS:
        raise SpecError(f"no playbook {playbook!r}; choose one of {', '.join(PLAYBOOKS)}")
    if limit is not None and playbook == "verify":
        raise SpecError(
            "the verify playbook takes no limit: its checks compare every node with the "
            "others; run it on the whole cluster"
        )
    limit = check_limit(cluster, limit)
    content = ansible_dir()
    book = content / f"{playbook}.yml"
    if not book.is_file():
        raise ProvisionError(f"the {playbook} playbook is not shipped with this hpcinfer ({book})")
    state = state_dir(cluster.file.name)
    write_inventory(cluster, inventory_dir(state))
    log, summary = run_files(logs_dir(state), playbook)
    extra = {"cluster_state_dir": str(state), "hpcinfer_wheel": hpcinfer_wheel(cluster, state, env)}
    argv = [*ansible_playbook(env), "-i", str(inventory_dir(state) / INVENTORY), str(book),
            "-e", json.dumps(extra)]  # fmt: skip
    argv += ["--limit", limit] if limit else []
    argv += ["--check"] if check else []
    run_env = {
        **env,
        **ssh_env(env),
        "ANSIBLE_ROLES_PATH": str(content / "roles"),
        "ANSIBLE_CALLBACK_PLUGINS": str(content / "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": SUMMARY_CALLBACK,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        SUMMARY_ENV: str(summary),
    }
    if (content / "ansible.cfg").is_file():
        run_env["ANSIBLE_CONFIG"] = str(content / "ansible.cfg")
    code = run_following(argv, env=run_env, log=log, on_line=progress, stop=stop, cwd=state)
    if not summary.is_file():
        raise ProvisionError(
            f"ansible-playbook {playbook}.yml ended (exit {code}) before running a play on "
            f"{cluster.file.label}; its output ({log}):\n{log_tail(log)}"
        )
    found = json.loads(summary.read_text(encoding="utf-8"))
    return PlaybookResult(
        cluster=cluster.file.label,
        playbook=playbook,
        check=check,
        limit=limit,
        exit_code=code,
        hosts=[HostTally.model_validate(h) for h in found["hosts"]],
        failures=[TaskFailure.model_validate(f) for f in found["failures"]],
        log=str(log),
    )
