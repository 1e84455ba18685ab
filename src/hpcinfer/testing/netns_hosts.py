"""Several hosts on this one machine, for tests of multi-node behaviour (root only).

Each host is a network namespace `hpci-<run>-h1`, `-h2`, ... with the interface `hpci0`
(the same name in every namespace, as on a real cluster's nodes) holding 10.213.<k>.<i>/24,
and lo up. The interfaces are veth pairs whose other ends sit on one bridge in a further
namespace `hpci-<run>-br`, so the link between the hosts exists only inside these
namespaces: the machine's own namespace has no address or route on it. Each host runs its
own sshd (Debian's openssh-server) on its address, with host keys and one client key made
for the run; the hosts are reached by name through an ssh config file (`ssh -F`), and a
hostfile lists them.

What the hosts share, because only the network is separate: the host name, the file
systems (a directory is "shared storage" for free) and the PID space. As the shared host
name resolves to loopback, each host's sshd sets `HPCINFER_COORDINATOR_HOST` to the host's
own address in every session: that is the address a rank 0 started there advertises.

What each host has of its own, as separate machines do:
- `node_dir`: one absolute path (`<run dir>/node`) that inside host hN is a bind mount of
  `<run dir>/hN/node` (`node_dir_of`), so a venv installed at node_dir/venv on h2 is h2's
  alone. `ip netns exec` gives every process it starts a mount namespace of its own (a
  slave of the machine's); the bind is made there before sshd (or a test's command) is
  exec'd, so it stays inside that host: sshd's sessions inherit it, nothing else sees it.
- /etc/hosts: `ip netns exec` bind-mounts /etc/netns/<namespace>/hosts over /etc/hosts; the
  run writes that file (a copy of this machine's) for every host, so editing /etc/hosts on
  a host edits its copy, never this machine's. As over any bind-mounted /etc/hosts (Docker's
  too), a rename onto it fails (EBUSY): an editor must write the file in place.

`close()` kills every process in the namespaces, deletes them, their /etc/netns folders and
the run's directory. A run killed before it could close leaves them behind; the next
`make_hosts` removes those of runs whose process is gone (the run id starts with the
creator's pid), and never touches a live run's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PREFIX = "hpci-"
INTERFACE = "hpci0"
BRIDGE = "br0"
SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd's privilege separation directory, required to exist
ETC_NETNS = Path("/etc/netns")  # `ip netns exec` bind-mounts ETC_NETNS/<namespace>/* over /etc
ETC_HOSTS = Path("/etc/hosts")
NODE_DIR = "node"
_BIND_THEN_EXEC = '"$1" --bind "$2" "$3" && shift 3 && exec "$@"'
"""Run inside the fresh mount namespace of `ip netns exec`: the host's own folder over the
shared path, then the command itself (exec: the same process, as tests expect)."""
COORDINATOR_HOST_ENV = "HPCINFER_COORDINATOR_HOST"  # see the module docstring
_RUN_NAME = re.compile(rf"{PREFIX}(\d+)-(\d+)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STOP_GRACE_S = 5.0
_POLL_S = 0.1
_runs = itertools.count(1)


class HostsError(RuntimeError):
    """The test hosts could not be made or changed; the message says what and why."""


def make_hosts(
    count: int = 3,
    base: Path | None = None,
    host_env: Mapping[str, Mapping[str, str]] | None = None,
    ready_timeout: float = 60.0,
) -> NetnsHosts:
    """Make `count` hosts h1..hN, each with a running sshd that h1 can reach by name.

    `base` holds the run's directory (default: the temp dir); `host_env` gives extra
    variables some hosts' sshd sets in every session ({"h2": {"NAME": "value"}}). On any
    failure everything made so far is removed before the error is raised."""
    _check_prerequisites()
    remove_stale()
    run = f"{os.getpid()}-{next(_runs)}"
    root = (base or Path(tempfile.gettempdir())) / f"{PREFIX}{run}"
    hosts = NetnsHosts(run, root, [f"h{i}" for i in range(1, count + 1)], random.randint(1, 254))
    try:
        hosts._build(dict(host_env or {}), ready_timeout)
    except BaseException:
        hosts.close()
        raise
    return hosts


class NetnsHosts:
    """The hosts of one run; make them with `make_hosts`, end them with `close()`."""

    def __init__(self, run: str, root: Path, names: Sequence[str], subnet: int):
        self.run_id = run
        self.directory = root
        self.names: tuple[str, ...] = tuple(names)
        self.interface = INTERFACE
        self.subnet = subnet
        self.ssh_config = root / "ssh_config"
        self.hostfile = root / "hostfile"
        self.node_dir = root / NODE_DIR
        """The path of each host's private folder, the same on every host (see the module
        docstring); from this machine it is an empty folder: read a host's through
        `node_dir_of`."""
        self._ip = shutil.which("ip") or "/usr/sbin/ip"
        self._mount = shutil.which("mount") or "/usr/bin/mount"
        self._host_env: dict[str, dict[str, str]] = {name: {} for name in self.names}
        self._sshd: dict[str, subprocess.Popen[bytes]] = {}
        self._started: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []
        self.closed = False

    # --- what tests use -----------------------------------------------------------------

    def namespace(self, name: str) -> str:
        self._check_name(name)
        return f"{PREFIX}{self.run_id}-{name}"

    @property
    def bridge_namespace(self) -> str:
        return f"{PREFIX}{self.run_id}-br"

    def address(self, name: str) -> str:
        self._check_name(name)
        return f"10.213.{self.subnet}.{self.names.index(name) + 1}"

    @property
    def ssh(self) -> list[str]:
        """The ssh argv prefix that reaches the hosts by name."""
        return ["ssh", "-F", str(self.ssh_config)]

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) plus what hpcinfer needs to reach
        the hosts: HPCINFER_SSH with the ssh config, this Python's directory first on PATH."""
        env = dict(os.environ if base is None else base)
        bindir = str(Path(sys.executable).parent)
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
        env["PATH"] = os.pathsep.join([bindir, *path])
        env["HPCINFER_SSH"] = shlex.join(self.ssh)
        return env

    def node_dir_of(self, name: str) -> Path:
        """Where host `name`'s `node_dir` really is, for inspection from this machine."""
        self._check_name(name)
        return self.directory / name / NODE_DIR

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside host `name` (`ip netns exec`), with its own `node_dir`."""
        bind = ["/bin/sh", "-c", _BIND_THEN_EXEC, "hpci-node-dir", self._mount]
        bind += [str(self.node_dir_of(name)), str(self.node_dir)]
        return [self._ip, "netns", "exec", self.namespace(name), *bind, *argv]

    def run(
        self, name: str, argv: Sequence[str], timeout: float = 600, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside host `name`, output captured as text (kwargs go to
        subprocess.run: env, cwd, input, ...)."""
        kwargs = {"capture_output": True, "text": True, **kwargs}
        return subprocess.run(self.command(name, argv), timeout=timeout, **kwargs)

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside host `name` (kwargs go to subprocess.Popen); `close()` kills
        it if it still runs then."""
        proc = subprocess.Popen(self.command(name, argv), **kwargs)
        self._started.append(proc)
        return proc

    def pids(self, name: str) -> list[int]:
        """Every process in host `name`'s network namespace."""
        return _namespace_pids(self._ip, self.namespace(name))

    def ssh_from_first(
        self, name: str, argv: Sequence[str], timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """`ssh NAME ARGV` run inside the first host, as hpcinfer's ssh launcher would."""
        remote = shlex.join(argv)
        return self.run(self.names[0], [*self.ssh, name, remote], timeout=timeout)

    def sshd_log(self, name: str) -> str:
        """Host `name`'s sshd log so far (each accepted login is a line)."""
        self._check_name(name)
        log = self._sshd_log(name)
        return log.read_text(errors="replace") if log.exists() else ""

    def set_env(self, name: str, values: Mapping[str, str], timeout: float = 30.0) -> None:
        """From now on, host `name`'s sshd sets `values` (besides the run's own variables) in
        every session, replacing what an earlier call set; returns once a new session sees
        them (sshd rereads its config on SIGHUP)."""
        self._check_name(name)
        dropped = set(self._host_env[name]) - set(values)
        self._host_env[name] = _checked_env(values)
        self._write_sshd_config(name)
        self._test_sshd_config(name)
        self._sshd[name].send_signal(signal.SIGHUP)
        wanted = self._session_env(name)
        self._wait(
            lambda: self._seen_env(name, wanted, dropped),
            timeout,
            f"{name}'s sshd to set {sorted(values)} after reloading its config",
            name,
        )

    def close(self) -> None:
        """Kill every process in the hosts' namespaces, delete them and the run's files.
        Safe to call more than once, and on hosts only partly made."""
        if self.closed:
            return
        self.closed = True
        namespaces = [*self._namespaces]
        _stop_namespaces(self._ip, namespaces)
        for proc in [*self._sshd.values(), *self._started]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_STOP_GRACE_S)
        for namespace in reversed(namespaces):
            _delete_namespace(self._ip, namespace)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> NetnsHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- making them --------------------------------------------------------------------

    def _build(self, host_env: dict[str, Mapping[str, str]], ready_timeout: float) -> None:
        unknown = sorted(set(host_env) - set(self.names))
        if unknown:
            raise HostsError(f"host_env names {unknown}; the hosts are {list(self.names)}")
        for name, values in host_env.items():
            self._host_env[name] = _checked_env(values)
        self.directory.mkdir(mode=0o700, parents=True)
        self.node_dir.mkdir(mode=0o755)
        self._make_link()
        self._write_keys()
        self._write_client_files()
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for name in self.names:
            self._write_sshd_config(name)
            self._test_sshd_config(name)
        for name in self.names:
            self._start_sshd(name)
        for name in self.names:
            self._wait(
                functools.partial(self._reachable, name),
                ready_timeout,
                f"`ssh {name} true` from {self.names[0]}",
                name,
            )

    def _reachable(self, name: str) -> bool:
        return self.ssh_from_first(name, ["true"]).returncode == 0

    def _make_link(self) -> None:
        bridge = self.bridge_namespace
        self._add_namespace(bridge)
        self._ip_cmd("-n", bridge, "link", "add", BRIDGE, "type", "bridge")
        self._ip_cmd("-n", bridge, "link", "set", BRIDGE, "up")
        for name in self.names:
            namespace = self.namespace(name)
            self._add_namespace(namespace)
            peer = f"veth-{name}"
            self._ip_cmd(
                "-n", bridge, "link", "add", peer, "type", "veth",
                "peer", "name", INTERFACE, "netns", namespace,
            )  # fmt: skip
            self._ip_cmd("-n", bridge, "link", "set", peer, "master", BRIDGE, "up")
            self._ip_cmd(
                "-n", namespace, "addr", "add", f"{self.address(name)}/24", "dev", INTERFACE
            )
            self._ip_cmd("-n", namespace, "link", "set", INTERFACE, "up")
            self._ip_cmd("-n", namespace, "link", "set", "lo", "up")
            _write_etc_hosts(namespace)

    def _add_namespace(self, namespace: str) -> None:
        self._namespaces.append(namespace)  # before it exists: close() deletes what was tried
        self._ip_cmd("netns", "add", namespace)

    def _write_keys(self) -> None:
        self._keygen(self.directory / "id_ed25519", f"{PREFIX}{self.run_id}-client")
        for name in self.names:
            (self.directory / name).mkdir(mode=0o700)
            self.node_dir_of(name).mkdir(mode=0o755)
            self._keygen(self._host_key(name), f"{PREFIX}{self.run_id}-{name}")

    def _write_client_files(self) -> None:
        key = self.directory / "id_ed25519"
        (self.directory / "authorized_keys").write_text(
            key.with_suffix(".pub").read_text(encoding="utf-8"), encoding="utf-8"
        )
        known = [
            f"{name},{self.address(name)} "
            + " ".join(self._host_key(name).with_suffix(".pub").read_text().split()[:2])
            for name in self.names
        ]
        known_hosts = self.directory / "known_hosts"
        known_hosts.write_text("\n".join(known) + "\n", encoding="utf-8")
        lines = []
        for name in self.names:
            lines += [f"Host {name}", f"  HostName {self.address(name)}", ""]
        lines += [
            "Host *",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            "  BatchMode yes",
            "  StrictHostKeyChecking yes",
            f"  UserKnownHostsFile {known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  ConnectTimeout 10",
            "  LogLevel ERROR",
        ]
        self.ssh_config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.hostfile.write_text("".join(f"{name}\n" for name in self.names), encoding="utf-8")

    def _host_key(self, name: str) -> Path:
        return self.directory / name / "ssh_host_ed25519_key"

    def _sshd_config(self, name: str) -> Path:
        return self.directory / name / "sshd_config"

    def _sshd_log(self, name: str) -> Path:
        return self.directory / name / "sshd.log"

    def _session_env(self, name: str) -> dict[str, str]:
        return {COORDINATOR_HOST_ENV: self.address(name), **self._host_env[name]}

    def _write_sshd_config(self, name: str) -> None:
        setenv = " ".join(f'"{k}={v}"' for k, v in self._session_env(name).items())
        lines = [
            f"ListenAddress {self.address(name)}",
            "Port 22",
            f"HostKey {self._host_key(name)}",
            f"PidFile {self.directory / name / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "X11Forwarding no",
            "PrintMotd no",
            "MaxStartups 100",
            "MaxSessions 100",
            f"SetEnv {setenv}",  # only the first SetEnv line counts: all on one
        ]
        self._sshd_config(name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _test_sshd_config(self, name: str) -> None:
        config = self._sshd_config(name)
        done = subprocess.run(
            [str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise HostsError(
                f"sshd rejects {name}'s config {config} (`sshd -t` exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr).strip()}\n--- {config}\n{config.read_text()}"
            )

    def _start_sshd(self, name: str) -> None:
        log = self._sshd_log(name)
        with log.open("ab") as out:
            argv = [str(SSHD), "-D", "-E", str(log), "-f", str(self._sshd_config(name))]
            self._sshd[name] = subprocess.Popen(
                self.command(name, argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

    def _seen_env(self, name: str, wanted: Mapping[str, str], dropped: set[str]) -> bool:
        """Whether a new session on `name` has `wanted` and none of `dropped`."""
        done = self.ssh_from_first(name, ["env"])
        if done.returncode != 0:
            return False
        seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        return all(seen.get(k) == v for k, v in wanted.items()) and not dropped & set(seen)

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str, name: str) -> None:
        """Poll `ready()` until true; past `timeout`, or when host `name`'s sshd has exited,
        a HostsError with that sshd's log."""
        deadline = time.monotonic() + timeout
        while not ready():
            sshd = self._sshd.get(name)
            exited = sshd is not None and sshd.poll() is not None
            if exited or time.monotonic() > deadline:
                why = f"sshd exited ({sshd.returncode})" if exited and sshd else f"{timeout:.0f}s"
                last = self.ssh_from_first(name, ["true"])
                raise HostsError(
                    f"waited for {what}: {why}; last ssh said: {last.stderr.strip() or '-'}\n"
                    f"--- {self._sshd_log(name)}\n{self.sshd_log(name)[-3000:]}"
                )
            time.sleep(0.2)

    def _keygen(self, path: Path, comment: str) -> None:
        _check_run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])

    def _ip_cmd(self, *args: str) -> None:
        _check_run([self._ip, *args])

    def _check_name(self, name: str) -> None:
        if name not in self.names:
            raise HostsError(f"no host {name!r}; the hosts are {list(self.names)}")


# --- namespaces of this run and of killed runs ---------------------------------------------


def remove_stale(base: Path | None = None) -> list[str]:
    """Remove the namespaces and directories (under `base`, default the temp dir) that runs
    whose process is gone left behind; returns the namespaces removed."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=30)
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    stale = [n for n in names if n.startswith(PREFIX) and not _owner_alive(n)]
    _stop_namespaces(ip, stale)
    for namespace in stale:
        _delete_namespace(ip, namespace)
    for etc in ETC_NETNS.glob(f"{PREFIX}*"):  # a killed run's, whose namespace went already
        if not _owner_alive(etc.name):
            shutil.rmtree(etc, ignore_errors=True)
    folder = base or Path(tempfile.gettempdir())
    for path in folder.glob(f"{PREFIX}*"):
        if _RUN_NAME.fullmatch(path.name) and not _owner_alive(path.name):
            shutil.rmtree(path, ignore_errors=True)
    return stale


def _write_etc_hosts(namespace: str) -> None:
    """The host's own /etc/hosts: a copy of this machine's, which `ip netns exec` mounts over
    /etc/hosts in every process of the namespace."""
    folder = ETC_NETNS / namespace
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ETC_HOSTS, folder / "hosts")


def _owner_alive(name: str) -> bool:
    found = _RUN_NAME.match(name)
    if found is None:
        return True  # not one of ours: leave it
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(ip: str, namespace: str) -> list[int]:
    done = subprocess.run(
        [ip, "netns", "pids", namespace], capture_output=True, text=True, timeout=30
    )
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def _stop_namespaces(ip: str, namespaces: Iterable[str]) -> None:
    """SIGTERM every process in `namespaces`, then SIGKILL what is left after a short wait
    (repeated, as a process may start another while being stopped)."""
    namespaces = list(namespaces)

    def remaining() -> list[int]:
        return [pid for ns in namespaces for pid in _namespace_pids(ip, ns)]

    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGKILL):
        pids = remaining()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + _STOP_GRACE_S
        while remaining() and time.monotonic() < deadline:
            time.sleep(_POLL_S)


def _delete_namespace(ip: str, namespace: str) -> None:
    """Delete the namespace and its /etc/netns folder (the host's /etc/hosts)."""
    subprocess.run([ip, "netns", "delete", namespace], capture_output=True, timeout=30)
    shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)


def _checked_env(values: Mapping[str, str]) -> dict[str, str]:
    """Variables sshd's SetEnv can carry: a name, and a value without quotes, backslashes or
    line breaks (its config quoting has no escape for them)."""
    for key, value in values.items():
        if not _ENV_NAME.fullmatch(key):
            raise HostsError(f"{key!r} is not an environment variable name")
        if any(c in value for c in '"\\\n\r'):
            raise HostsError(
                f"the value of {key} holds a quote, backslash or line break, which sshd's "
                "SetEnv cannot carry"
            )
    return dict(values)


def _check_run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise HostsError(
            f"`{shlex.join(argv)}` failed (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()}"
        )


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise HostsError("the test hosts need root (network namespaces, sshd)")
    missing = [p for p in ("ip", "ssh", "ssh-keygen", "mount") if shutil.which(p) is None]
    if not SSHD.exists():
        missing.append(f"{SSHD} (apt-get install openssh-server)")
    if missing:
        raise HostsError(f"the test hosts need {', '.join(missing)}")
