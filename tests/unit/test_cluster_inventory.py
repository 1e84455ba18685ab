"""hpcinfer cluster inventory and doc: the Ansible inventory and group variables rendered from
the cluster file alone (golden files for both shipped versions), and the description."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinfer.provision.catalog import shipped_text
from hpcinfer.provision.cluster import load_cluster
from hpcinfer.provision.describe import node_rows
from hpcinfer.provision.inventory import render_inventory
from tests.conftest import assert_golden
from tests.harness import InProcessCLI

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cluster"
SHIPPED = ["a770-cluster@0.1", "ryzen-ai-cluster@0.2"]
FILES = ["inventory.yml", "group_vars/all.yml", "group_vars/control.yml", "group_vars/compute.yml"]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    return InProcessCLI(monkeypatch, capsys, cwd=tmp_path)


@pytest.mark.parametrize("address", SHIPPED)
def test_golden_inventories(address: str) -> None:
    rendered = render_inventory(load_cluster(address))
    assert list(rendered) == FILES
    for name, text in rendered.items():
        assert_golden(GOLDEN / address.replace("@", "-") / name, text)
    assert rendered == render_inventory(load_cluster(address))  # same file, same bytes


def _read(rendered: dict[str, str], name: str) -> Any:
    return yaml.safe_load(rendered[name])


def test_the_inventory_holds_the_files_nodes_logins_and_versions() -> None:
    rendered = render_inventory(load_cluster("a770-cluster@0.1"))
    groups = _read(rendered, "inventory.yml")["all"]["children"]
    assert list(groups) == ["control", "compute"]
    assert groups["control"]["hosts"]["control_0_1"]["ansible_host"] == "192.168.50.1"
    compute = groups["compute"]["hosts"]
    assert list(compute) == ["compute0", "compute1"]
    assert {h["ansible_user"] for h in compute.values()} == {"compute"}
    assert compute["compute1"]["mac_address"] == "02:00:00:50:00:11"
    every = _read(rendered, "group_vars/all.yml")
    assert (every["ray_version"], every["vllm_device"], every["venv"]) == (
        "2.60.0",
        "xpu",
        "/opt/venvs/onedotzero",
    )
    assert every["cluster_version"] == "0.1"  # a string, never the float 0.1
    assert every["oneapi_setvars"] == "/opt/intel/oneapi/setvars.sh"
    assert (every["vllm_tensor_parallel_size"], every["vllm_expert_parallel_size"]) == (2, 2)
    assert _read(rendered, "group_vars/compute.yml")["accelerator"] == "Intel Arc A770"


def test_the_login_is_one_variable_and_a_node_may_override_it(tmp_path: Path) -> None:
    source = yaml.safe_load(shipped_text("a770-cluster@0.1"))
    source["remote_user"] = "ops"
    source["compute"][1]["user"] = "builder"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(source), "utf-8")
    rendered = render_inventory(load_cluster(str(path)))
    hosts = _read(rendered, "inventory.yml")["all"]["children"]["compute"]["hosts"]
    assert [h["ansible_user"] for h in hosts.values()] == ["ops", "builder"]
    assert _read(rendered, "group_vars/all.yml")["cluster_user"] == "ops"
    assert "ansible_user: compute" not in rendered["inventory.yml"]  # nothing hard-coded


def test_the_npu_cluster_renders_without_vllm_and_says_so(cli: Any) -> None:
    rendered = render_inventory(load_cluster("ryzen-ai-cluster@0.2"))
    every = _read(rendered, "group_vars/all.yml")
    assert (every["vllm_install"], every["vllm_device"]) == (False, "none")
    assert "vLLM has no NPU backend" in every["vllm_unavailable"]
    assert "vllm_tensor_parallel_size" not in every
    assert _read(rendered, "group_vars/control.yml")["cluster_role"] == "ray head"
    ran = cli("cluster", "inventory", "ryzen-ai-cluster@0.2")
    assert ran.code == 0
    assert "vLLM has no NPU backend" in ran.err
    assert "--- # group_vars/compute.yml" in ran.out


def test_inventory_out_writes_the_files_and_names_them(cli: Any, tmp_path: Path) -> None:
    ran = cli("cluster", "inventory", "a770-cluster@0.1", "--out", "inv")
    assert ran.code == 0, ran.output
    assert ran.out.split() == [f"inv/{name}" for name in FILES]
    expected = render_inventory(load_cluster("a770-cluster@0.1"))
    for name in FILES:
        assert (tmp_path / "inv" / name).read_text("utf-8") == expected[name]


def test_the_file_is_named_as_every_cluster_command_names_it(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """inventory and doc take the file as `-c/--cluster`, $HPCINFER_CLUSTER or ./cluster.yaml,
    like sync, configure and the rest; the positional form stays."""
    printed = cli("cluster", "inventory", "a770-cluster@0.1").out
    assert cli("cluster", "inventory", "-c", "a770-cluster@0.1").out == printed
    monkeypatch.setenv("HPCINFER_CLUSTER", "a770-cluster@0.1")
    assert cli("cluster", "inventory").out == printed
    monkeypatch.delenv("HPCINFER_CLUSTER")
    (tmp_path / "cluster.yaml").write_text(shipped_text("a770-cluster@0.1"), "utf-8")
    assert cli("cluster", "doc").out == cli("cluster", "doc", "--cluster", "a770-cluster@0.1").out
    (tmp_path / "cluster.yaml").unlink()
    ran = cli("cluster", "doc")
    assert ran.code == 2 and "which cluster? give --cluster" in ran.err


def test_a_bad_file_exits_2_naming_file_and_field(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: lab\nversion: 0.1\n", "utf-8")
    ran = cli("cluster", "inventory", "bad.yaml")
    assert ran.code == 2
    assert "cluster file bad.yaml is invalid" in ran.err
    assert 'version: 0.1 was read as a number; write it quoted, e.g. version: "0.1"' in ran.err
    assert "remote_user: Field required" in ran.err
    assert not (tmp_path / "inventory.yml").exists()


def test_doc_describes_nodes_addresses_accelerators_and_what_runs_where(cli: Any) -> None:
    ran = cli("cluster", "doc", "a770-cluster@0.1")
    assert ran.code == 0, ran.output
    lines = ran.out.splitlines()
    assert "ray: 2.60.0 on every node; head on control_0_1" in lines
    assert (
        "server: AMead10/Mistral-Small-Instruct-2409-awq on control_0_1:8000, max model len "
        "4096: tensor parallel 2, expert parallel 2 over 2 compute node(s) (ray)" in lines
    )
    assert any(line.startswith("verify: shuyuej/gemma-2b-it-GPTQ answers") for line in lines)
    rows = {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}
    assert list(rows) == ["control_0_1", "compute0", "compute1"]
    assert "192.168.50.1 (enx8cae4cf44e21)" in rows["control_0_1"]
    assert "Ray head, vLLM server" in rows["control_0_1"]
    assert "Intel Arc A770" in rows["compute1"] and "Ray worker, vLLM (xpu) x 1" in rows["compute1"]


def test_doc_of_the_npu_plan_says_no_vllm_on_each_compute_node() -> None:
    rows = node_rows(load_cluster("ryzen-ai-cluster@0.2"))
    assert [r.runs for r in rows] == ["Ray head"] + ["Ray worker (no vLLM: NPU)"] * 4
    assert {r.accelerator for r in rows[1:]} == {"AMD XDNA 2 NPU"}


def test_ansible_runs_on_the_control_node_and_reaches_compute_nodes_over_ssh() -> None:
    rendered = render_inventory(load_cluster("a770-cluster@0.1"))
    groups = _read(rendered, "inventory.yml")["all"]["children"]
    assert groups["control"]["hosts"]["control_0_1"]["ansible_connection"] == "local"
    assert all("ansible_connection" not in h for h in groups["compute"]["hosts"].values())


def test_the_a770_cluster_verifies_gemma_and_serves_mistral_over_ray() -> None:
    every = _read(render_inventory(load_cluster("a770-cluster@0.1")), "group_vars/all.yml")
    assert every["vllm_verify_model"] == "shuyuej/gemma-2b-it-GPTQ"
    assert every["vllm_verify_max_tokens"] == 16
    assert every["vllm_server_model"] == "AMead10/Mistral-Small-Instruct-2409-awq"
    assert (every["vllm_server_port"], every["vllm_server_backend"]) == (8000, "ray")
    assert "wheelhouse" not in every and "workdir" not in every  # unset: left out
    ryzen = _read(render_inventory(load_cluster("ryzen-ai-cluster@0.2")), "group_vars/all.yml")
    assert not any(key.startswith(("vllm_verify", "vllm_server")) for key in ryzen)
