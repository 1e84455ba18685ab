"""A cluster command started off the control node runs there: forwarded over ssh.

Three steps, each idempotent: the cluster file (and the hardware-profile YAML files it names
by relative path) is copied into the cluster's state folder on the control node; the control
node's venv gets this hpcinfer (the wheel of `provision.wheel`) when its hpcinfer is missing
or another build; then `cd <workdir> && <venv>/bin/hpcinfer cluster CMD ... --forwarded` runs
there. A forwarded command prints its progress on stderr, which comes back line by line, and
its result as one line `RESULT_PREFIX {json}`, which becomes the caller's typed result; it ends
when its ssh session does (it watches its stdin), so stopping us stops it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import ProvisionError, SpecError
from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.following import LineSink, run_following
from hpcinfer.provision.reach import (
    SSH_UNREACHABLE,
    held_stdin,
    home_path,
    in_workdir,
    session_bound,
    ssh_argv,
    target,
)
from hpcinfer.provision.state import (
    WHEEL_BUILD_RECORD,
    dist_dir,
    file_dir,
    state_home_relative,
)
from hpcinfer.provision.wheel import PROBE, Build, build_wheel, parse_probe, this_build

RESULT_PREFIX = "hpcinfer-cluster-result: "
SAID_LINES = 20
"""How many of a forwarded command's last lines an error without its result quotes."""
COPY_TIMEOUT_S = 300


def venv_python(cluster: Cluster) -> str:
    return f"{cluster.file.python.venv}/bin/python"


def venv_hpcinfer(cluster: Cluster) -> list[str]:
    """hpcinfer of the cluster's venv (through its Python: no console script needed)."""
    return [venv_python(cluster), "-m", "hpcinfer"]


def _ssh(cluster: Cluster, remote: str, env: Mapping[str, str], **kwargs: Any) -> Any:
    argv = ssh_argv(cluster, cluster.file.control, remote, env)
    try:
        return subprocess.run(
            argv, env=dict(env), capture_output=True, timeout=COPY_TIMEOUT_S, **kwargs
        )
    except subprocess.TimeoutExpired:
        raise ProvisionError(
            f"{cluster.file.control.name}: ssh {target(cluster, cluster.file.control)} did "
            f"not finish in {COPY_TIMEOUT_S}s"
        ) from None


def _check(cluster: Cluster, done: Any, what: str) -> None:
    if done.returncode == 0:
        return
    out = (done.stdout + done.stderr).decode("utf-8", "replace").strip()[-2000:]
    node = cluster.file.control
    if done.returncode == SSH_UNREACHABLE:
        raise ProvisionError(
            f"{node.name}: ssh could not reach the control node as {target(cluster, node)} "
            f"({out or 'exit 255'}); check its address and that `ssh -o BatchMode=yes "
            f"{target(cluster, node)} true` works (set HPCINFER_SSH for options)"
        )
    raise ProvisionError(f"{node.name}: {what} failed (exit {done.returncode}):\n{out}")


# --- the cluster file ----------------------------------------------------------------------


def cluster_files(cluster: Cluster) -> tuple[Path, list[Path]] | None:
    """(base folder, files relative to it) to copy for a cluster file given by path: the
    file and the profiles it names by relative path; None for a shipped NAME@VERSION."""
    source = Path(cluster.source).expanduser()
    if not source.is_file():
        return None
    source = source.resolve()
    files = [source]
    for node in cluster.file.nodes:
        name = node.hardware
        if name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
            files.append((source.parent / name).resolve())
    base = Path(os.path.commonpath([str(p.parent) for p in files]))
    return base, [p.relative_to(base) for p in files]


def send_cluster_file(cluster: Cluster, env: Mapping[str, str]) -> str:
    """Copy the cluster file (and its profiles) to the control node; how the command there
    names it, as a shell word (a path under the state folder, or the shipped NAME@VERSION)."""
    found = cluster_files(cluster)
    if found is None:
        return shlex.quote(cluster.source)
    base, files = found
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for relative in files:
            tar.add(base / relative, arcname=str(relative), recursive=False)
    where = str(file_dir(state_home_relative(cluster.file.name)))
    remote = (
        f"rm -rf {home_path(where)} && mkdir -p {home_path(where)} && "
        f"tar -x -f - -C {home_path(where)}"
    )
    done = _ssh(cluster, remote, env, input=packed.getvalue())
    _check(cluster, done, "copying the cluster file")
    return home_path(str(PurePosixPath(where) / PurePosixPath(*files[0].parts)))


# --- hpcinfer on the control node ---------------------------------------------------------


def run_bound(cluster: Cluster, command: str, env: Mapping[str, str]) -> Any:
    """`command` on the control node, `session_bound` with a held stdin: when its ssh ends
    (the timeout, Ctrl-C, our end) the command ends there too instead of running on."""
    with held_stdin() as stdin:
        return _ssh(cluster, session_bound(command), env, stdin=stdin)


def control_build(cluster: Cluster, env: Mapping[str, str]) -> Build | None:
    """The hpcinfer build in the control node's venv (None: none there)."""
    python = shlex.quote(venv_python(cluster))
    done = _ssh(cluster, f"test -x {python} && {python} -c {shlex.quote(PROBE)}", env)
    if done.returncode == SSH_UNREACHABLE:
        _check(cluster, done, "")
    return parse_probe(done.stdout.decode("utf-8", "replace"))


def pip_source_options(cluster: Cluster) -> list[str]:
    """pip's index options: the cluster's wheelhouse alone when it has one."""
    wheelhouse = cluster.file.python.wheelhouse
    return ["--no-index", "--find-links", wheelhouse] if wheelhouse else []


def install_script(cluster: Cluster, wheel: str | None, build: Build) -> str:
    """The shell script that makes the venv (if missing) and installs hpcinfer into it:
    `wheel` (a path under the home) with its `cluster` extra, else the same version."""
    venv = shlex.quote(cluster.file.python.venv)
    python = shlex.quote(venv_python(cluster))
    pip = f"{python} -m pip install --quiet --disable-pip-version-check"
    sources = shlex.join(pip_source_options(cluster))
    lines = [
        "set -e",
        f"test -x {python} || python{cluster.file.python.version} -m venv {venv}",
    ]
    if wheel is not None:
        lines.append(f"{pip} --no-deps --force-reinstall {home_path(wheel)}")
        lines.append(f"{pip} {sources} {home_path(wheel + '[cluster]')}")
    else:
        lines.append(f"{pip} {sources} {shlex.quote(f'hpcinfer[cluster]=={build.version}')}")
    return "\n".join(lines)


def ensure_hpcinfer(cluster: Cluster, env: Mapping[str, str], note: LineSink | None) -> Build:
    """The control node's venv holds this hpcinfer afterwards (installed when it had none
    or another build); its wheel also lands in the state folder's dist/ for the roles."""
    wanted = this_build()
    found = control_build(cluster, env)
    if found == wanted:
        return found
    node = cluster.file.control.name
    if note is not None:
        had = f"hpcinfer {found.label}" if found else "no hpcinfer"
        note(f"{node}: {cluster.file.python.venv} has {had}; installing {wanted.label}")
    wheel = build_wheel()
    remote_wheel = None
    if wheel is not None:
        dist = str(dist_dir(state_home_relative(cluster.file.name)))
        remote_wheel = f"{dist}/{wheel.name}"
        record = f"{dist}/{WHEEL_BUILD_RECORD}"
        remote = (
            f"mkdir -p {home_path(dist)} && rm -f {home_path(dist)}/*.whl && "
            f"cat > {home_path(remote_wheel)} && printf '%s\\n' {shlex.quote(wanted.label)} > "
            f"{home_path(record)}"
        )
        _check(cluster, _ssh(cluster, remote, env, input=wheel.read_bytes()), "copying the wheel")
    done = run_bound(cluster, install_script(cluster, remote_wheel, wanted), env)
    _check(cluster, done, f"installing hpcinfer into {cluster.file.python.venv}")
    found = control_build(cluster, env)
    if found != wanted:
        raise ProvisionError(
            f"{node}: after installing, {cluster.file.python.venv} has "
            f"{f'hpcinfer {found.label}' if found else 'no hpcinfer'}, not {wanted.label}"
        )
    return found


# --- the command itself -------------------------------------------------------------------


def forward(
    cluster: Cluster,
    command: str,
    options: Sequence[str],
    operands: Sequence[str],
    env: Mapping[str, str],
    *,
    note: LineSink | None = None,
    stop: StopSignal | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run `hpcinfer cluster COMMAND OPTIONS --cluster FILE --forwarded -- OPERANDS` on the
    control node: its exit code and the result it reported. Its progress lines go to `note`;
    one that reports no result is an error quoting its last lines (SpecError for a refusal)."""
    where = send_cluster_file(cluster, env)
    ensure_hpcinfer(cluster, env, note)
    argv = [*venv_hpcinfer(cluster), "cluster", command, *options]
    remote = f"{in_workdir(cluster, shlex.join(argv))} --cluster {where} --forwarded"
    if operands:
        remote += " -- " + shlex.join(operands)
    results: list[dict[str, Any]] = []
    said: list[str] = []

    def line(text: str) -> None:
        if text.startswith(RESULT_PREFIX):
            with contextlib.suppress(json.JSONDecodeError):
                results.append(json.loads(text[len(RESULT_PREFIX) :]))
            return
        said[:] = [*said[-(SAID_LINES - 1) :], text]
        if note is not None:
            note(text)

    # stdin held open while it runs: its end (it watches stdin) is our end
    with held_stdin() as stdin, tempfile.TemporaryDirectory(prefix="hpcinfer-forward-") as temp:
        code = run_following(
            ssh_argv(cluster, cluster.file.control, remote, env),
            env=env,
            log=Path(temp) / "forward.log",
            on_line=line,
            stop=stop,
            stdin=stdin,
        )
    if results:
        return code, results[-1]
    node = cluster.file.control.name
    told = "\n".join(f"  {text}" for text in said)
    if code == SSH_UNREACHABLE:
        raise ProvisionError(
            f"{node}: ssh could not reach the control node as "
            f"{target(cluster, cluster.file.control)}:\n{told}"
        )
    if code == SpecError.exit_code:
        raise SpecError(f"the control node {node} refused `hpcinfer cluster {command}`:\n{told}")
    raise ProvisionError(
        f"{node}: `hpcinfer cluster {command}` ended (exit {code}) without a result:\n{told}"
    )


def result_line(result: Any) -> str:
    """How a forwarded command reports its result (a pydantic model) to the caller."""
    return RESULT_PREFIX + result.model_dump_json()


def end_with_stdin(on_end: Callable[[], None]) -> None:
    """For a forwarded command: call `on_end` once stdin closes (the ssh session, hence
    the caller, ended), from a daemon thread."""

    def watch() -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except (OSError, ValueError):
            pass
        on_end()

    threading.Thread(target=watch, name="hpcinfer-forwarded-stdin", daemon=True).start()
