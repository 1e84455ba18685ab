"""Every child process hpcinfer starts: bound, in its own process group, tied to our life.

A run worker, a benchmark engine and a vLLM server all start through `spawn`, so they share
one set-up, done in the child between fork and exec (before a line of Python runs there):

- its CPU cores (`sched_setaffinity`, when the placement is a core set);
- the parent-death signal (PR_SET_PDEATHSIG), checked against `getppid()` afterwards: a
  parent that died between fork and prctl would otherwise leave an orphan for good;
- its own session (`start_new_session`), so a Ctrl-C meant for hpcinfer does not hit it
  halfway and one `killpg` reaches it and everything it forks (vLLM's EngineCore, TP
  workers). `Child.stop`/`stop_all` end the whole group: SIGTERM, a deadline, SIGKILL;
- a guard: a tiny process of its own that holds one end of a pipe from us. When hpcinfer
  dies without standing it down (kill -9), the pipe closes and the guard ends the child's
  whole group. The parent-death signal alone reaches only the child: vLLM's EngineCore and
  TP workers, re-parented to init, went on holding 7 GiB each (or the GPUs) for good.

The death signal follows the *thread* that forked the child: start children from a thread
that lives as long as they do. `bound_env` builds the environment such a child gets.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypedDict, Unpack

from hpcinfer.core.binding_env import BindingEnv, apply_env
from hpcinfer.launch.rank_env import RANK_ENV

PR_SET_PDEATHSIG = 1
GUARD_GRACE_S = 5.0
"""How long the guard gives a group to end on SIGTERM before it sends SIGKILL."""
GROUP_END_S = 10.0
"""How long `reap_group` waits for the SIGKILLed members of a group to leave the table."""

# The guard's whole program (run with `python -S`: no site, no hpcinfer import, about 10 ms
# and a few MB). It is started before the child, so that a kill -9 while the child starts
# finds it there: it first reads the group's id (a line), then waits for a byte or the end
# of its stdin: a byte is "stand down" (the group was stopped by us), the end means
# hpcinfer died, and then it ends the group. The end before the id: no child was started.
_GUARD_PROGRAM = """
import os, signal, sys, time
grace = float(sys.argv[1])
line = b""
while b"\\n" not in line:
    try:
        chunk = os.read(0, 32)
    except OSError:
        chunk = b""
    if not chunk:
        sys.exit(0)
    line += chunk
group, _, rest = line.partition(b"\\n")
group = int(group)
if rest:
    sys.exit(0)
try:
    word = os.read(0, 1)
except OSError:
    word = b""
if word:
    sys.exit(0)
def members():
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
try:
    os.killpg(group, signal.SIGTERM)
except OSError:
    sys.exit(0)
deadline = time.monotonic() + grace
while members() and time.monotonic() < deadline:
    time.sleep(0.1)
try:
    os.killpg(group, signal.SIGKILL)
except OSError:
    pass
"""

# Variables that make a process believe it is an MPI rank; a child is not one (an engine
# sets up its own torch.distributed group), so they are not passed on.
_RANK_VAR_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "PALS_", "MPI_LOCAL", "HYDI_", "HYDRA_")
_RANK_VARS = ("SLURM_PROCID", "SLURM_LOCALID", "RANK", "LOCAL_RANK", "WORLD_SIZE", *RANK_ENV)


def without_rank_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus the launcher's rank variables (see _RANK_VAR_PREFIXES)."""
    return {
        k: v for k, v in env.items() if not k.startswith(_RANK_VAR_PREFIXES) and k not in _RANK_VARS
    }


def bound_env(
    base: Mapping[str, str], binding: BindingEnv, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A child's environment: `base` without rank variables, the device binding applied (a
    None value unsets), the hub offline unless set (nothing is downloaded at run time), then
    `extra` (engine variables) on top."""
    env = apply_env(without_rank_vars(base), binding)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra or {})
    return env


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None  # not Linux: children are still stopped by hpcinfer, just not on a crash


_PRCTL = _load_prctl()


def _child_setup(
    parent: int, cores: frozenset[int] | None, death_signal: int, announce_fd: int | None
) -> Callable[[], None]:
    """Runs in the child between fork and exec: only system calls, nothing that allocates
    much or takes locks (the parent may have threads)."""

    def setup() -> None:
        if announce_fd is not None:  # the guard learns the group before anything runs in it
            with contextlib.suppress(OSError):
                os.write(announce_fd, b"%d\n" % os.getpid())
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl: follow it now
                os._exit(1)
        if cores:
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setaffinity(0, cores)

    return setup


class ProcessOptions(TypedDict, total=False):
    """How a child is set up, beyond its argv, environment and log (see `start_process`)."""

    fresh_log: bool
    cores: Iterable[int] | None
    cwd: Path | None
    stdin: int
    pass_fds: Sequence[int]
    death_signal: int
    announce_fd: int | None


def start_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path | None,
    **options: Unpack[ProcessOptions],
) -> subprocess.Popen[bytes]:
    """Start `argv` as a set-up child (see the module docstring), stdout and stderr to `log`
    (appended to, or truncated with `fresh_log`; None: ours, as a launcher's ranks print to
    the user), on `cores`, in `cwd`, with `stdin` and the `pass_fds` it inherits.
    `death_signal` is what the child gets when this thread dies: SIGTERM (the default) for a
    server, SIGKILL for a child that ignores SIGTERM. `announce_fd`: a pipe the child writes
    its pid (= its process group) to before exec, the guard's (see `Child`)."""
    cores = options.get("cores")
    death_signal = int(options.get("death_signal", signal.SIGTERM))
    with contextlib.ExitStack() as stack:
        output: IO[bytes] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            output = stack.enter_context(log.open("wb" if options.get("fresh_log") else "ab"))
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=options.get("cwd"),
            stdin=options.get("stdin", subprocess.DEVNULL),
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            pass_fds=tuple(options.get("pass_fds", ())),
            start_new_session=True,
            preexec_fn=_child_setup(
                os.getpid(),
                frozenset(cores) if cores else None,
                death_signal,
                options.get("announce_fd"),
            ),
        )


class _Guard:
    """The guard of one child's process group (see the module docstring): started before
    the child, which writes its group to the guard's pipe between fork and exec."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        read_end, self._write_end = os.pipe()  # not inherited by any other child
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-S", "-c", _GUARD_PROGRAM, str(GUARD_GRACE_S)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # no terminal signal and no killpg of ours reaches it
            )
        except OSError:
            self._proc = None  # no guard: the child still gets the parent-death signal
        finally:
            os.close(read_end)

    @property
    def announce_fd(self) -> int | None:
        """The pipe's end the child writes its group to (None: no guard)."""
        return self._write_end if self._proc is not None and self._write_end >= 0 else None

    def stand_down(self) -> None:
        """The group is gone (or was never started): the guard leaves without touching it
        (its id may be reused)."""
        with self._lock:  # a fleet's stop and a server's watcher may both reap one group
            write_end, self._write_end = self._write_end, -1
        if write_end < 0:
            return
        with contextlib.suppress(OSError):
            os.write(write_end, b"x")
        os.close(write_end)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5.0)


class Child:
    """A started child: its pid (also its process group id) and how to stop its group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path | None,
        **options: Unpack[ProcessOptions],
    ) -> None:
        """`start_process` with the group's guard started first; the child tells it its group
        between fork and exec, so a kill -9 of hpcinfer at any moment after the fork still
        ends what the child forks."""
        self._guard = _Guard()
        try:
            options["announce_fd"] = self._guard.announce_fd
            self.proc = start_process(argv, env=env, log=log, **options)
        except BaseException:
            self._guard.stand_down()
            raise
        self.pid = self.proc.pid
        self._group_gone = False

    @property
    def returncode(self) -> int | None:
        """None while the child runs; its exit code (negative: killed by that signal)."""
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, signum: int) -> None:
        """Signal the child and everything it started (they share its process group)."""
        if self._group_gone:
            return  # its id may belong to another process group by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self, timeout: float | None) -> bool:
        """True when the child exited within `timeout` seconds (None: however long)."""
        try:
            self.proc.wait(timeout=None if timeout is None else max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True

    def reap_group(self) -> None:
        """After the child exited: kill whatever it left in its group (an EngineCore that
        outlived its parent), collect the exit status and wait until the group's last
        member is gone: hpcinfer returning with a TP worker still in its exit (holding its
        memory or devices) would fail the next job started right after it."""
        self.signal_group(signal.SIGKILL)
        if self.wait(5.0):
            deadline = time.monotonic() + GROUP_END_S
            while group_alive(self.pid) and time.monotonic() < deadline:
                self.signal_group(signal.SIGKILL)  # also a member forked during the last one
                time.sleep(0.02)
            self._group_gone = True
            self._guard.stand_down()

    def stop(self, grace_s: float, first_signal: int | None = signal.SIGTERM) -> None:
        """`stop_all` for this one child."""
        stop_all([self], grace_s, first_signal)

    def exit_text(self) -> str:
        code = self.returncode
        if code is None:
            return "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


def _live_member(stat: Path, group: int) -> bool:
    """Whether the process of /proc/PID/stat `stat` is in `group` and not a zombie."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False  # gone meanwhile
    return fields[0] != "Z" and int(fields[2]) == group


def group_alive(group: int) -> bool:
    """Whether a live process is still in process group `group`. A zombie does not count:
    it holds nothing, and one re-parented to init is init's to collect."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # no process table to tell zombies apart: the group is there
    return any(
        _live_member(entry / "stat", group) for entry in proc.iterdir() if entry.name.isdigit()
    )


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path | None,
    **options: Unpack[ProcessOptions],
) -> Child:
    """`start_process`, as a Child (with its group's guard)."""
    return Child(argv, env=env, log=log, **options)


def stop_all(
    children: Sequence[Child], grace_s: float, first_signal: int | None = signal.SIGTERM
) -> None:
    """Signal every child's group at once (`first_signal`; None: only wait for children
    that exit by themselves), wait up to `grace_s` for all of them, SIGKILL the groups still
    there; afterwards no process of any group is left."""
    if first_signal is not None:
        for child in children:
            if child.alive():
                child.signal_group(first_signal)
    deadline = time.monotonic() + grace_s
    for child in children:
        if not child.wait(deadline - time.monotonic()):
            child.signal_group(signal.SIGKILL)
    for child in children:
        child.reap_group()
