"""hpcinfer cluster sync/configure/verify/control/compute/status on this machine alone.

The control node is 127.0.0.1 (so this host is it, and commands run here), compute nodes are
reached through a stand-in ssh ($HPCINFER_SSH) that runs the remote command here with the
host it was given in $FAKE_SSH_HOST; Ansible, rsync and pip run for real. The test hosts'
real ssh is in tests/integration/test_cluster_commands.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.core.stop import StopSignal
from hpcinfer.errors import ProvisionError, SpecError, StoppedError
from hpcinfer.provision import remote, runner, status, wheel
from hpcinfer.provision.cluster import load_cluster
from hpcinfer.provision.fanout import run_on_compute
from hpcinfer.provision.reach import ssh_argv
from hpcinfer.provision.remote import cluster_files, install_script
from hpcinfer.provision.sync import marked_folders, parse_itemized
from hpcinfer.provision.where import holds_address, is_control_node
from tests.harness import InProcessCLI, wait_for

CALLBACKS = Path(runner.__file__).parent / "ansible" / "callback_plugins"


def borrowing_venv(folder: Path) -> Path:
    """A venv of the test's own that sees this venv's packages (a .pth line), so that a
    cluster command that installs into the cluster's venv never touches this one."""
    venv = folder / "cluster-venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def write_cluster(folder: Path, control: str = "127.0.0.1", **extra: Any) -> Path:
    data = {
        "name": "unit",
        "version": "0.1",
        "remote_user": "root",
        "python": {"venv": str(borrowing_venv(folder)), "version": "3.11"},
        "ray": {"version": "2.49.0"},
        "control": {"name": "ctl", "address": control},
        "compute": [
            {"name": "c0", "address": "10.255.0.10", "mac": "02:00:00:00:00:10"},
            {"name": "c1", "address": "10.255.0.11", "mac": "02:00:00:00:00:11"},
        ],
        **extra,
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def fake_ssh(folder: Path) -> str:
    """An ssh stand-in: `ssh -o BatchMode=yes USER@HOST CMD` runs CMD here with bash in a
    session of its own (as sshd would: stopping the ssh does not reach it), with ssh's
    stdin; a host ending in .99 is unreachable (exit 255, as ssh)."""
    script = folder / "fake-ssh"
    script.write_text(
        "#!/bin/bash\n"
        'while [ "${1:0:1}" = - ]; do shift 2; done\n'
        'case "$1" in *.99) echo "ssh: connect to host $1: No route" >&2; exit 255;; esac\n'
        'export FAKE_SSH_HOST="$1"; shift\n'
        'cd "$HOME" && exec setsid -w bash -c "$*"\n',
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own: the state folder and the workdir land there."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    return folder


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    return InProcessCLI(monkeypatch, capsys, cwd=tmp_path)


# --- where ---------------------------------------------------------------------------------


def test_this_host_is_the_control_node_when_it_holds_its_address(tmp_path: Path) -> None:
    assert holds_address("127.0.0.1")
    assert not holds_address("192.0.2.77")  # TEST-NET-1: no host holds it
    assert is_control_node(load_cluster(str(write_cluster(tmp_path))))
    assert not is_control_node(load_cluster(str(write_cluster(tmp_path, "192.0.2.77"))))


# --- compute and control -------------------------------------------------------------------


def test_compute_prints_each_nodes_answer_and_names_the_one_that_failed(
    cli: InProcessCLI, tmp_path: Path, home: Path
) -> None:
    write_cluster(tmp_path)
    env = {"HPCINFER_SSH": fake_ssh(tmp_path)}
    ran = cli("cluster", "compute", 'echo "I am $FAKE_SSH_HOST"', env=env)
    assert ran.code == 0, ran.output
    assert "c0: I am root@10.255.0.10" in ran.out
    assert "c1: I am root@10.255.0.11" in ran.out
    assert "c0: exit 0" in ran.out and "c1: exit 0" in ran.out

    failing = '[ "$FAKE_SSH_HOST" != root@10.255.0.11 ] || { echo broken >&2; exit 3; }'
    ran = cli("cluster", "compute", failing, env=env)
    assert ran.code == 1
    assert "c1: broken" in ran.out and "c1: exit 3" in ran.out and "c0: exit 0" in ran.out
    assert "failed on 1 of 2 node(s): c1 (exit 3)" in ran.err


def test_compute_names_an_unreachable_node(tmp_path: Path, home: Path) -> None:
    data = yaml.safe_load(write_cluster(tmp_path).read_text())
    data["compute"][1]["address"] = "10.255.0.99"
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "HPCINFER_SSH": fake_ssh(tmp_path)}
    result = run_on_compute(load_cluster(str(tmp_path / "cluster.yaml")), "true", env)
    assert result.failed == ["c1"]
    assert not result.hosts[1].reached
    assert "c1 (exit 255: ssh could not reach it)" in result.problem()


def test_a_stopped_compute_command_ends_on_the_nodes_too(tmp_path: Path, home: Path) -> None:
    """ssh leaves a remote command running when its session drops; a compute command ends
    with the ssh that started it (its stdin closes), also when that ssh is killed."""
    marker = f"300.{uuid.uuid4().int % 10**9}"  # the sleep's argument tells it apart
    env = {**os.environ, "HPCINFER_SSH": fake_ssh(tmp_path)}
    cluster = load_cluster(str(write_cluster(tmp_path)))
    stop = StopSignal()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_on_compute(cluster, f"sleep {marker}", env, stop=stop)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(lambda: len(_sleeping(marker)) == 2, 60, f"both nodes' {marker} sleep")
    finally:
        stop.abort("test")
        worker.join(60)
    assert isinstance(outcome[0], StoppedError)
    wait_for(
        lambda: not _sleeping(marker),
        30,
        f"no {marker} sleep left",
        state=lambda: _sleeping(marker),
    )


def test_an_install_that_runs_out_of_time_ends_on_the_control_node_too(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The install on the control node is session_bound: when its ssh is ended (the
    timeout, Ctrl-C) it ends there too instead of installing on, unseen."""
    marker = f"301.{uuid.uuid4().int % 10**9}"
    env = {**os.environ, "HPCINFER_SSH": fake_ssh(tmp_path)}
    cluster = load_cluster(str(write_cluster(tmp_path, "192.0.2.77")))
    monkeypatch.setattr(remote, "COPY_TIMEOUT_S", 2)
    with pytest.raises(ProvisionError, match="did not finish in 2s"):
        remote.run_bound(cluster, f"set -e\nsleep {marker}\ntouch {home}/installed", env)
    wait_for(lambda: not _sleeping(marker), 30, f"no {marker} sleep left",
             state=lambda: _sleeping(marker))  # fmt: skip
    assert remote.run_bound(cluster, "set -e\nfalse\necho not reached", env).returncode == 1
    assert not (home / "installed").exists()


def _sleeping(marker: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_control_runs_in_the_project_folder_here_with_its_exit_code(
    cli: InProcessCLI, tmp_path: Path, home: Path
) -> None:
    write_cluster(tmp_path)
    ran = cli("cluster", "control", "pwd; exit 7")
    assert ran.code == 7
    assert ran.out.strip() == str(home / "hpcinfer")
    ran = cli("cluster", "control", "--json", "echo hi")
    assert json.loads(ran.out)["hosts"][0] == {
        "host": "ctl", "exit_code": 0, "output": "hi\n", "reached": True
    }  # fmt: skip
    ran = cli("cluster", "control", "cat; echo read to the end")  # stdin: at its end at once
    assert ran.code == 0 and ran.out.strip() == "read to the end"


def test_forwarded_compute_runs_on_the_control_node_and_reports_the_same(
    cli: InProcessCLI, tmp_path: Path, home: Path
) -> None:
    """Off the control node (192.0.2.1 is not this host) the command goes over ssh: the
    cluster file is copied into the state folder there, this hpcinfer is found in the venv
    (same build: nothing installed), and its result comes back as this command's."""
    write_cluster(tmp_path, "192.0.2.1")
    env = {"HPCINFER_SSH": fake_ssh(tmp_path)}
    ran = cli("cluster", "compute", "--json", 'echo "$FAKE_SSH_HOST in $PWD"', env=env)
    assert ran.code == 0, ran.output
    result = json.loads(ran.out)
    assert [h["output"] for h in result["hosts"]] == [
        f"root@10.255.0.10 in {home}\n",
        f"root@10.255.0.11 in {home}\n",
    ]
    copied = home / ".hpcinfer" / "clusters" / "unit" / "file" / "cluster.yaml"
    assert copied.read_text() == (tmp_path / "cluster.yaml").read_text()
    assert (home / "hpcinfer").is_dir()  # it ran in the workdir

    ran = cli("cluster", "compute", "exit 4", env=env)
    assert ran.code == 1
    assert "c0: exit 4" in ran.out
    assert "failed on 2 of 2 node(s): c0 (exit 4), c1 (exit 4)" in ran.err


def test_an_unreachable_control_node_is_named(
    cli: InProcessCLI, tmp_path: Path, home: Path
) -> None:
    write_cluster(tmp_path, "192.0.2.99")
    ran = cli("cluster", "compute", "true", env={"HPCINFER_SSH": fake_ssh(tmp_path)})
    assert ran.code == 1
    assert "ctl: ssh could not reach the control node as root@192.0.2.99" in ran.err


# --- sync ----------------------------------------------------------------------------------


def test_sync_copies_the_project_and_leaves_venvs_outputs_and_caches_out(
    cli: InProcessCLI, tmp_path: Path, home: Path, rsync: str
) -> None:
    project = tmp_path / "project"
    files = {
        "spec.yaml": "a",
        "src/mod.py": "b",
        "data/prompts.txt": "c",
        "env/pyvenv.cfg": "venv",
        "env/lib/x.py": "venv",
        ".venv/bin/python": "venv",
        "results/run.json": "{}",
        "results/rows.jsonl": "{}",
        "out/rows.jsonl": "{}",
        "src/__pycache__/mod.pyc": "cache",
        ".git/HEAD": "git",
        ".mypy_cache/x": "cache",
    }
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    write_cluster(tmp_path)
    assert marked_folders(project) == ["env", "results"]
    ran = cli("cluster", "sync", str(project), "--json")
    assert ran.code == 0, ran.output
    result = json.loads(ran.out)
    target = home / "hpcinfer"
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == [".hpcinfer-workdir", "data/prompts.txt", "spec.yaml", "src/mod.py"]
    copied.remove(".hpcinfer-workdir")
    assert sorted(result["copied"]) == copied
    assert {"env", "results", ".venv", "out", ".git"} <= set(result["skipped"])

    (project / "spec.yaml").unlink()
    (target / "made-there.txt").write_text("kept?")
    ran = cli("cluster", "sync", str(project))
    assert ran.code == 0, ran.output
    assert not (target / "spec.yaml").exists()  # deleted here, deleted there
    assert "0 file(s) copied, 2 deleted" in ran.err
    assert (target / ".hpcinfer-workdir").is_file()  # the marker outlives --delete


def test_sync_refuses_to_mirror_into_a_folder_it_did_not_make(
    cli: InProcessCLI, tmp_path: Path, home: Path, rsync: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "spec.yaml").write_text("a")
    theirs = home / "hpcinfer"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    write_cluster(tmp_path)
    ran = cli("cluster", "sync", str(project))
    assert ran.code == 2
    assert "refuses to mirror into hpcinfer" in ran.err and ".hpcinfer-workdir" in ran.err
    assert sorted(p.name for p in theirs.iterdir()) == ["thesis.tex"]  # nothing copied or lost


def test_rsyncs_itemized_lines_are_read() -> None:
    out = ">f+++++++++ a.txt\ncd+++++++++ src/\n>f.st...... src/b.py\n*deleting   old.txt\n"
    assert parse_itemized(out) == (["a.txt", "src/b.py"], ["old.txt"])


# --- the forwarding's pieces ---------------------------------------------------------------


def test_the_cluster_file_travels_with_the_profiles_it_names(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    shutil.copy(
        Path(runner.__file__).parents[1] / "cluster" / "profiles" / "cpu.yaml",
        profiles / "mine.yaml",
    )
    folder = tmp_path / "clusters"
    folder.mkdir()
    path = write_cluster(folder)
    data = yaml.safe_load(path.read_text())
    data["control"]["hardware"] = "../profiles/mine.yaml"
    path.write_text(yaml.safe_dump(data))
    found = cluster_files(load_cluster(str(path)))
    assert found == (tmp_path, [Path("clusters/cluster.yaml"), Path("profiles/mine.yaml")])
    assert cluster_files(load_cluster("a770-cluster@0.1")) is None


def test_install_script_quotes_paths_and_uses_the_wheelhouse_alone(tmp_path: Path) -> None:
    cluster = load_cluster(str(write_cluster(tmp_path)))
    script = install_script(cluster, ".hpcinfer/clusters/unit/dist/h.whl", wheel.this_build())
    assert f"python3.11 -m venv {cluster.file.python.venv}" in script
    assert '--no-deps --force-reinstall "$HOME"/.hpcinfer/clusters/unit/dist/h.whl' in script
    assert "\"$HOME\"/'.hpcinfer/clusters/unit/dist/h.whl[cluster]'" in script


def test_the_wheel_is_built_once_per_source_and_says_which(tmp_path: Path) -> None:
    built = wheel.build_wheel(tmp_path)
    assert built is not None and built.name.startswith("hpcinfer-")
    build = wheel.this_build()
    assert built.parent.name == build.label
    with zipfile.ZipFile(built) as archive:
        assert f"SOURCE_HASH = {build.source!r}" in archive.read("hpcinfer/_build.py").decode()
    mtime = built.stat().st_mtime
    assert wheel.build_wheel(tmp_path) == built and built.stat().st_mtime == mtime
    assert wheel.parse_probe(f"noise\nhpcinfer-build 0.1.0 {build.source}\n") == build


def test_the_roles_get_this_builds_wheel_in_the_state_folder(tmp_path: Path, home: Path) -> None:
    cluster = load_cluster(str(write_cluster(tmp_path)))
    state = home / ".hpcinfer" / "clusters" / "unit"
    given = Path(runner.hpcinfer_wheel(cluster, state, dict(os.environ)))
    assert given.parent == state / "dist" and given.name.startswith("hpcinfer-")
    assert (state / "dist" / "build.txt").read_text().strip() == wheel.this_build().label
    assert runner.hpcinfer_wheel(cluster, state, dict(os.environ)) == str(given)


# --- configure and verify ------------------------------------------------------------------

PLAYBOOK = """
- name: Control node
  hosts: control
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: {python}
  tasks:
    - name: Say hello
      ansible.builtin.command: echo hello
      changed_when: true
    - name: Fail when asked
      ansible.builtin.fail:
        msg: "asked to fail on {{{{ inventory_hostname }}}}"
      when: fail_it | default(false) | bool
- name: Compute nodes
  hosts: compute
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


@pytest.fixture
def content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Shipped-content stand-in: a small configure playbook and the real callback."""
    folder = tmp_path / "content"
    folder.mkdir()
    (folder / "configure.yml").write_text(PLAYBOOK.format(python=sys.executable))
    shutil.copytree(CALLBACKS, folder / "callback_plugins")
    monkeypatch.setattr(runner, "ansible_dir", lambda: folder)
    monkeypatch.setattr(runner, "hpcinfer_wheel", lambda *_: "/nowhere/hpcinfer.whl")
    return folder


def test_configure_runs_ansible_and_names_the_failed_hosts(
    cli: InProcessCLI, tmp_path: Path, home: Path, content: Path
) -> None:
    write_cluster(tmp_path)
    ran = cli("cluster", "configure", "--limit", "control", "--json")
    assert ran.code == 0, ran.output
    result = json.loads(ran.out)
    assert result["hosts"] == [
        {"host": "ctl", "ok": 1, "changed": 1, "unreachable": 0, "failed": 0, "skipped": 1,
         "rescued": 0, "ignored": 0}
    ]  # fmt: skip
    assert "TASK [Say hello]" in ran.err  # Ansible's output is the progress
    assert "TASK [Say hello]" in Path(result["log"]).read_text()
    inventory = home / ".hpcinfer" / "clusters" / "unit" / "inventory" / "inventory.yml"
    assert "c1:" in inventory.read_text()

    # the compute nodes are unreachable (no such hosts), the control node fails a task
    ran = cli("cluster", "configure", "-q", env={"ANSIBLE_EXTRA": "", "HPCINFER_SSH": "ssh"})
    assert ran.code == 1
    assert "configure failed on c0, c1" in ran.err
    assert "c0: unreachable" in ran.err and "log: " in ran.err
    assert "TASK" not in ran.err  # --quiet


def test_a_failed_task_is_named_with_its_message(tmp_path: Path, home: Path, content: Path) -> None:
    (content / "configure.yml").write_text(
        PLAYBOOK.format(python=sys.executable).replace("default(false)", "default(true)")
    )
    cluster = load_cluster(str(write_cluster(tmp_path)))
    result = runner.run_playbook(cluster, "configure", dict(os.environ), limit="ctl")
    assert not result.ok and result.failed_hosts == ["ctl"]
    assert result.failures[0].task == "Fail when asked"
    assert "asked to fail on ctl" in result.problem()


def test_a_limit_naming_no_node_is_refused_before_anything_runs(
    cli: InProcessCLI, tmp_path: Path, home: Path, content: Path
) -> None:
    write_cluster(tmp_path)
    ran = cli("cluster", "configure", "--limit", "c0,compute9")
    assert ran.code == 2
    assert "compute9 is not a node of unit@0.1" in ran.err and "ctl, c0, c1" in ran.err
    assert not (home / ".hpcinfer" / "clusters" / "unit" / "logs").exists()
    with pytest.raises(SpecError):
        runner.check_limit(load_cluster(str(tmp_path / "cluster.yaml")), "")


def test_verify_always_checks_the_whole_cluster(
    cli: InProcessCLI, tmp_path: Path, home: Path
) -> None:
    write_cluster(tmp_path)
    ran = cli("cluster", "verify", "--limit", "c0")
    assert ran.code == 2 and "--limit" in ran.err
    assert "--limit HOSTS" not in cli("cluster", "verify", "--help").out
    assert "--limit HOSTS" in cli("cluster", "configure", "--help").out
    with pytest.raises(SpecError, match="verify playbook takes no limit"):
        runner.run_playbook(load_cluster(str(tmp_path / "cluster.yaml")), "verify", {}, limit="c0")
    assert not (home / ".hpcinfer" / "clusters" / "unit" / "logs").exists()


def test_runs_in_the_same_second_never_share_a_log(tmp_path: Path) -> None:
    log, summary = runner.run_files(tmp_path, "verify")
    assert log.name.endswith(f"-{os.getpid()}.log") and summary == log.with_suffix(".json")
    log.write_text("first run")
    again, _ = runner.run_files(tmp_path, "verify")
    assert again != log and not again.exists()  # the same process, perhaps the same second
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from hpcinfer.provision.runner import run_files; "
         "print(run_files(Path(sys.argv[1]), 'verify')[0].name)", str(tmp_path)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert other != log.name and other.startswith("verify-")


def test_ansible_gets_the_ssh_command_without_a_lasting_master() -> None:
    env = runner.ssh_env({"HPCINFER_SSH": "ssh -F '/cfg dir/ssh_config'"})
    assert env["ANSIBLE_SSH_EXECUTABLE"] == "ssh"
    assert env["ANSIBLE_SSH_COMMON_ARGS"] == "-F '/cfg dir/ssh_config'"
    assert "ControlPersist=no" in env["ANSIBLE_SSH_ARGS"]


def test_ssh_gives_up_on_a_silent_node_unless_told_how_long_to_wait(tmp_path: Path) -> None:
    cluster = load_cluster(str(write_cluster(tmp_path)))
    node = cluster.file.compute[0]
    argv = ssh_argv(cluster, node, "true", {"HPCINFER_SSH": "ssh -F /cfg"})
    assert argv[:5] == ["ssh", "-F", "/cfg", "-o", "ConnectTimeout=10"]
    argv = ssh_argv(cluster, node, "true", {"HPCINFER_SSH": "ssh -o ConnectTimeout=3"})
    assert argv.count("ConnectTimeout=3") == 1 and "ConnectTimeout=10" not in argv


def test_status_reports_a_node_whose_probe_never_answers_as_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging = tmp_path / "hanging-ssh"
    hanging.write_text("#!/bin/bash\nexec sleep 60\n", encoding="utf-8")
    hanging.chmod(0o755)
    monkeypatch.setattr(status, "PROBE_TIMEOUT_S", 1)
    cluster = load_cluster(str(write_cluster(tmp_path)))
    found = status.node_status(
        cluster, cluster.file.compute[0], {"HPCINFER_SSH": str(hanging)}, here=False
    )
    assert not found.reachable
    assert found.problem == "ssh could not reach it (no answer in 1s)"


def test_no_cluster_file_is_a_usage_error(cli: InProcessCLI) -> None:
    ran = cli("cluster", "status")
    assert ran.code == 2
    assert "--cluster" in ran.err and "HPCINFER_CLUSTER" in ran.err
