"""Cluster files (hpcinfer cluster): the shipped versions, every refusal with its message,
hostile values, and the NPU that vLLM cannot drive."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.cluster import DeviceGroup, load_profile
from hpcinfer.cluster.binding import device_env
from hpcinfer.cluster.devices import Device
from hpcinfer.errors import HardwareError, SpecError
from hpcinfer.provision.catalog import shipped_clusters, shipped_text
from hpcinfer.provision.cluster import load_cluster
from hpcinfer.provision.inventory import render_inventory

SHIPPED = ["a770-cluster@0.1", "ryzen-ai-cluster@0.2"]


def base() -> dict[str, Any]:
    """A small valid cluster file: a control node and two CPU compute nodes."""
    return {
        "name": "lab",
        "version": "1.0",
        "remote_user": "compute",
        "python": {"venv": "/opt/venvs/lab", "version": "3.11"},
        "ray": {"version": "2.60.0"},
        "vllm": {"version": "0.11.1"},
        "control": {"name": "head", "address": "10.0.0.1"},
        "compute": [
            {"name": "node0", "address": "10.0.0.10", "mac": "02:00:00:00:00:10"},
            {"name": "node1", "address": "10.0.0.11", "mac": "02:00:00:00:00:11"},
        ],
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def refusal(tmp_path: Path, data: dict[str, Any]) -> str:
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as caught:
        load_cluster(str(path))
    message = str(caught.value)
    assert str(path) in message  # every refusal names the file
    return message


def test_shipped_clusters_are_listed_and_load_as_what_they_say() -> None:
    assert shipped_clusters() == SHIPPED
    for address in SHIPPED:
        assert load_cluster(address).file.label == address


def test_the_a770_cluster_is_the_home_cluster_of_two_arc_nodes() -> None:
    cluster = load_cluster("a770-cluster@0.1")
    file = cluster.file
    assert file.control.name == "control_0_1"
    assert file.control.interface == "enx8cae4cf44e21"
    assert [n.name for n in file.compute] == ["compute0", "compute1"]
    assert {cluster.profiles[n.name].name for n in file.compute} == {"arc-a770"}
    assert cluster.vllm_device == "xpu"
    assert file.vllm is not None and file.vllm.git is not None
    assert (file.vllm.git.url, file.vllm.git.ref) == (
        "https://github.com/analytics-zoo/vllm.git",
        "sycl_xpu",
    )
    assert (cluster.tensor_parallel, cluster.expert_parallel) == (2, 2)


def test_a_users_file_loads_with_a_profile_beside_it(tmp_path: Path) -> None:
    (tmp_path / "quad.yaml").write_text(
        "name: quad\nvendor: nvidia\ngpus_per_node: 4\naccelerator: NVIDIA L4\n", "utf-8"
    )
    data = base()
    for node in data["compute"]:
        node["hardware"] = "quad.yaml"  # relative to the cluster file, not the cwd
    cluster = load_cluster(str(write(tmp_path, data)))
    assert cluster.vllm_device == "cuda"
    assert cluster.tensor_parallel == 8  # 2 nodes x 4 GPUs, one server over all
    assert cluster.profiles["head"].name == "cpu"


def test_cpu_compute_nodes_hold_one_rank_each(tmp_path: Path) -> None:
    cluster = load_cluster(str(write(tmp_path, base())))
    assert (cluster.vllm_device, cluster.ranks_per_node, cluster.tensor_parallel) == ("cpu", 1, 2)


def test_macs_are_written_lower_case(tmp_path: Path) -> None:
    data = base()
    data["compute"][0]["mac"] = "02-00-00-AA-BB-CC"
    assert load_cluster(str(write(tmp_path, data))).file.compute[0].mac == "02:00:00:aa:bb:cc"


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    here: Any = data
    for part in parents:
        here = here[int(part)] if isinstance(here, list) else here[part]
    if value is _DELETE:
        del here[last]
    elif isinstance(here, list):
        here[int(last)] = value
    else:
        here[last] = value
    return data


_DELETE = object()

BAD = [
    ("version", 0.1, ["version:", 'write it quoted, e.g. version: "0.1"']),
    ("python.version", 3.11, ["python.version:", "quoted"]),
    ("control.port", 22, ["control.port:", "Extra inputs are not permitted"]),
    ("remote_user", _DELETE, ["remote_user:", "Field required"]),
    ("compute.1.mac", _DELETE, ["node1 have no mac", "write each one's MAC address"]),
    ("compute.1.address", "10.0.0.10", ["two nodes have address 10.0.0.10"]),
    ("compute.1.name", "head", ["two nodes have name head"]),
    ("compute.0.mac", "02:00:00:00:00", ["compute.0.mac:", "not a MAC address"]),
    ("remote_user", "Compute", ["remote_user:", "not a login name"]),
    ("python.venv", "venvs/lab", ["python.venv:", "not a plain absolute path"]),
    ("python.venv", "/opt/../etc", ["python.venv:", "no '..'"]),
    ("ray.version", "latest", ["ray.version:", "not a release version (e.g. 2.60.0)"]),
    ("vllm.git", {"url": "https://github.com/vllm-project/vllm.git", "ref": "main"},
     ["vllm:", "exactly one of version"]),
    ("name", "My Lab", ["name:", "not a cluster name"]),
    ("compute", [], ["compute:", "at least 1 item"]),
    ("compute.0.hardware", "no-such-profile", ["compute.0.hardware:", "unknown hardware profile"]),
    ("compute.1.hardware", "arc-a770", ["profiles arc-a770, cpu", "one profile"]),
    ("python.wheelhouse", "wheels", ["python.wheelhouse:", "not a plain absolute path"]),
    ("control.workdir", "~/hpcinfer", ["control.workdir:", "not a plain absolute path"]),
    ("control.workdir", "/", ["control.workdir:", "the root, a top-level folder or a home"]),
    ("control.workdir", "/root", ["control.workdir:", "a folder of its own"]),
    ("control.workdir", "/srv/", ["control.workdir:", "a folder of its own"]),
    ("control.workdir", "/home/compute", ["control.workdir:", "/home/compute/hpcinfer"]),
    ("compute.0.workdir", "/srv/x", ["compute.0.workdir:", "Extra inputs are not permitted"]),
    ("vllm.verify", {"model": "gemma"}, ["vllm.verify.model:", "Hugging Face id ORG/NAME"]),
    ("vllm.verify", {"prompt": ""}, ["vllm.verify.prompt:", "one line of printable text"]),
    ("vllm.verify", {"max_tokens": 0}, ["vllm.verify.max_tokens:", "greater than or equal"]),
    ("server", {"model": "org/m", "port": 70000}, ["server.port:", "less than or equal"]),
    ("server", {"port": 8000}, ["server.model:", "Field required"]),
    ("server", {"model": "org/m"}, ["server.shared_dir: required", "CPU build"]),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "expected"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_value_is_refused_naming_field_and_fix(
    tmp_path: Path, field: str, value: Any, expected: list[str]
) -> None:
    message = refusal(tmp_path, _set(base(), field, value))
    for text in expected:
        assert text in message


HOSTILE = [
    ("control.name", "head;rm -rf /"),
    ("compute.0.name", "$(id)"),
    ("compute.0.name", "-oProxyCommand=id"),
    ("compute.0.address", "10.0.0.1 && id"),
    ("compute.0.address", "`id`.lan"),
    ("remote_user", "compute`id`"),
    ("compute.0.user", "root x"),
    ("python.venv", "/opt/venvs/my lab"),
    ("python.venv", "/opt/$HOME"),
    ("python.venv", "/opt/x'\n- evil"),
    ("control.interface", "eth0;reboot"),
    ("vllm.oneapi_setvars", "/opt/intel/setvars.sh; curl x|sh"),
    ("python.wheelhouse", "/srv/wheels;id"),
    ("control.workdir", "/home/c/$(id)"),
    ("vllm.verify.model", "org/m;id"),
    ("vllm.verify.model", "../../etc/passwd"),
    ("vllm.verify.prompt", "Hi\n- evil"),
    ("vllm.verify.prompt", "{{ lookup('pipe', 'id') }}"),
    ("server.shared_dir", "/srv/$HOME"),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[h[1] for h in HOSTILE])
def test_values_that_could_break_out_of_a_shell_are_refused(
    tmp_path: Path, field: str, value: str
) -> None:
    data = base()
    data["vllm"]["verify"] = {}
    data["server"] = {"model": "org/m", "shared_dir": "/srv/shared"}
    message = refusal(tmp_path, _set(data, field, value))
    assert f"{field}:" in message


def test_a_profiles_name_must_be_plain_and_its_free_text_stays_data(tmp_path: Path) -> None:
    (tmp_path / "odd.yaml").write_text(
        'name: "gpu; reboot"\nvendor: nvidia\ngpus_per_node: 1\n', "utf-8"
    )
    data = base()
    data["control"]["hardware"] = "odd.yaml"
    assert "control.hardware: 'gpu; reboot' is not a host name" in refusal(tmp_path, data)
    accelerator = "L4 'x'\n- $(id): {y}"
    (tmp_path / "odd.yaml").write_text(
        f"name: l4\nvendor: nvidia\ngpus_per_node: 1\naccelerator: {json.dumps(accelerator)}\n",
        "utf-8",
    )
    for node in data["compute"]:
        node["hardware"] = "odd.yaml"
    data["control"]["hardware"] = "cpu"
    rendered = render_inventory(load_cluster(str(write(tmp_path, data))))
    assert yaml.safe_load(rendered["group_vars/compute.yml"])["accelerator"] == accelerator


@pytest.mark.parametrize(
    ("git", "field"),
    [
        ({"url": "https://example.org/v.git;id", "ref": "main"}, "vllm.git.url"),
        ({"url": "file:///etc/passwd", "ref": "main"}, "vllm.git.url"),
        ({"url": "https://example.org/v.git", "ref": "--upload-pack=id"}, "vllm.git.ref"),
        ({"url": "https://example.org/v.git", "ref": "a..b"}, "vllm.git.ref"),
    ],
)
def test_git_sources_are_plain_https_and_plain_refs(
    tmp_path: Path, git: dict[str, str], field: str
) -> None:
    data = base()
    data["vllm"] = {"git": git}
    assert f"{field}:" in refusal(tmp_path, data)


def test_not_a_mapping_bad_yaml_and_a_missing_file_are_named(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", "utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", "utf-8")
    for path, text in [
        (listed, "must be a YAML mapping"),
        (broken, "is not valid YAML"),
        (tmp_path / "missing.yaml", "cannot read cluster file"),
    ]:
        with pytest.raises(SpecError, match=text) as caught:
            load_cluster(str(path))
        assert str(path) in str(caught.value)


def test_an_unknown_shipped_address_lists_the_shipped_ones() -> None:
    with pytest.raises(SpecError) as caught:
        load_cluster("a770-cluster@9.9")
    assert "a770-cluster@0.1, ryzen-ai-cluster@0.2" in str(caught.value)


def test_new_settings_default_and_render_into_the_group_variables(tmp_path: Path) -> None:
    data = base()
    cluster = load_cluster(str(write(tmp_path, data)))
    file = cluster.file
    assert (file.control.workdir, file.python.wheelhouse, file.server) == (None, None, None)
    assert file.vllm is not None
    check = file.vllm.verify
    assert (check.model, check.prompt, check.max_tokens) == (
        "shuyuej/gemma-2b-it-GPTQ",
        "The capital of France is",
        16,
    )
    data["python"]["wheelhouse"] = "/srv/wheels/"
    data["control"]["workdir"] = "/home/compute/work"
    data["vllm"]["verify"] = {"model": "/srv/models/tiny", "prompt": "Say 'hi' & $HOME"}
    data["server"] = {"model": "org/tiny", "shared_dir": "/srv/shared", "max_model_len": 512}
    every = yaml.safe_load(
        render_inventory(load_cluster(str(write(tmp_path, data))))["group_vars/all.yml"]
    )
    assert every["wheelhouse"] == "/srv/wheels"
    assert every["workdir"] == "/home/compute/work"
    assert every["vllm_verify_model"] == "/srv/models/tiny"
    assert every["vllm_verify_prompt"] == "Say 'hi' & $HOME"  # data: the roles quote it
    assert (every["vllm_server_model"], every["vllm_server_port"]) == ("org/tiny", 8000)
    assert (every["vllm_server_backend"], every["vllm_server_shared_dir"]) == ("mp", "/srv/shared")
    assert every["vllm_server_max_model_len"] == 512


def test_a_server_needs_vllm(tmp_path: Path) -> None:
    data = base()
    del data["vllm"]
    data["server"] = {"model": "org/m", "shared_dir": "/srv/shared"}
    assert "server: needs a vllm: section" in refusal(tmp_path, data)


# --- the NPU ---------------------------------------------------------------------------


def test_the_ryzen_plan_installs_no_vllm_and_says_why() -> None:
    cluster = load_cluster("ryzen-ai-cluster@0.2")
    assert len(cluster.file.compute) == 4
    assert cluster.vllm_device is None
    assert cluster.file.vllm is None
    reason = cluster.no_vllm_reason()
    assert "AMD XDNA 2 NPU" in reason and "vLLM has no NPU backend" in reason


def test_asking_for_vllm_on_the_npu_is_refused_plainly(tmp_path: Path) -> None:
    data = yaml.safe_load(shipped_text("ryzen-ai-cluster@0.2"))
    data["vllm"] = {"version": "0.11.1"}
    message = refusal(tmp_path, data)
    assert "vLLM has no NPU backend" in message
    assert "remove the vllm: section" in message


def test_run_and_serve_refuse_to_bind_work_to_an_npu() -> None:
    profile = load_profile("ryzen-ai-max-395")
    assert (profile.vendor, profile.device_type, profile.has_vllm_backend) == ("amd", "npu", False)
    group = DeviceGroup((Device(index=0, gpu=0, tile=None),))
    with pytest.raises(HardwareError, match="vLLM has no NPU backend; use profile cpu"):
        device_env(profile, group, 1)
