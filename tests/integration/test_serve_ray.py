"""`hpcinfer serve --backend ray` against a real Ray cluster: one node on this machine
declaring 4 GPUs (`hpcinfer ray up --launcher local --gpus-per-node 4`), which Ray's
scheduler honours without GPUs. The CPU build of vLLM cannot run its Ray backend ("current
platform cpu does not support ray"), so what is checked here is everything before it: the
placement check against the live cluster (a feasible TP x PP accepted in seconds, an
infeasible one refused in seconds naming what is missing) and the command that reaches
vLLM. `scripts/gpu/serve_multinode.sh` runs the real thing on a GPU job.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcinfer import api
from hpcinfer.core.endpoints_registry import read_registry
from hpcinfer.raycluster.cluster_file import RayClusterFile, load_cluster, save_cluster
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.ray_backend import check_placement, ray_layout
from hpcinfer.spec import JobSpec
from tests.conftest import hpcinfer_cmd, require
from tests.harness import free_port

pytestmark = pytest.mark.integration

QUICK_S = 60.0  # "in seconds": the check's own deadline is 10 s, Ray's start-up adds some

HOLD = """
import sys, time, ray
from ray.util.placement_group import placement_group
ray.init(address=sys.argv[1], log_to_driver=False)
pg = placement_group([{"GPU": 1.0}] * int(sys.argv[2]))
ray.get(pg.ready(), timeout=60)
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayClusterFile]:
    require("Ray", _has_ray(), "pip install 'hpcinfer[ray]'")
    folder = tmp_path_factory.mktemp("ray")
    path = folder / "cluster.json"
    made = api.ray_up(
        launcher="local", gpus_per_node=4, name=f"serve-test-{time.time_ns() % 10**6}",
        cluster_file=path, ready_timeout_s=120,
    )  # fmt: skip
    try:
        yield made
    finally:
        api.ray_down(cluster_file=path)


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _spec(tp: int, pp: int, path: Path | None = None) -> JobSpec:
    serve = {"backend": "ray", "pipeline_parallel_size": pp}
    return JobSpec.model_validate(
        {
            "engine": {"tensor_parallel_size": tp},
            "serve": serve,
            "workers": {"ray_cluster": str(path) if path else None},
        }
    )


def _file(cluster: RayClusterFile, tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "cluster.json"
    save_cluster(cluster.model_copy(update=changes), path)
    return path


def test_a_feasible_layout_is_placed_in_seconds(cluster: RayClusterFile, tmp_path: Path) -> None:
    path = _file(cluster, tmp_path)
    layout, groups = ray_layout(_spec(2, 2, path), load_cluster(path))
    assert (layout.world, layout.nodes, groups) == (4, 1, [tuple(cluster.hosts)])
    began = time.monotonic()
    check_placement(cluster, layout, groups)
    assert time.monotonic() - began < QUICK_S


def test_a_layout_the_live_cluster_cannot_hold_is_refused_naming_what_is_missing(
    cluster: RayClusterFile, tmp_path: Path
) -> None:
    # The file says 8 GPUs per node; the live node has 4: the GCS's node list says so.
    claimed = _file(cluster, tmp_path, gpus_per_node=8)
    layout, groups = ray_layout(_spec(8, 1, claimed), load_cluster(claimed))
    began = time.monotonic()
    with pytest.raises(ServeError) as refused:
        check_placement(load_cluster(claimed), layout, groups)
    assert time.monotonic() - began < QUICK_S
    host = cluster.hosts[0]
    assert f"needs 8 GPUs in 1 node of 8; the cluster has {host} with 4" in str(refused.value)


def test_gpus_taken_by_other_work_fail_the_placement_check_in_seconds(
    cluster: RayClusterFile, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, cluster.address, "2"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        layout, groups = ray_layout(_spec(2, 2), cluster)
        began = time.monotonic()
        with pytest.raises(ServeError, match=r"did not place 1 of 1 placement groups of 4"):
            check_placement(cluster, layout, groups)
        assert time.monotonic() - began < QUICK_S
    finally:
        holder.kill()
        holder.wait()


def test_serve_starts_vllm_with_the_ray_backend_named_and_the_cluster_given(
    cluster: RayClusterFile, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    path = _file(cluster, tmp_path)
    args = ["serve", "--backend", "ray", "--tp", "2", "--pp", "2", "--ray-cluster", str(path)]
    args += ["--port", str(free_port()), "--ready-timeout", "5m", "--kv-cache-bytes", str(64 << 20)]
    done = subprocess.run(
        hpcinfer_cmd(*args), cwd=tmp_path, env=cli_env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    # The placement check passed; vLLM started and, on the CPU build, refused Ray.
    assert done.returncode == 1, done.stderr[-3000:]
    (entry,) = read_registry(tmp_path / "endpoints.json")
    assert entry.state == "failed"
    assert [n["node"] for n in entry.nodes] == cluster.hosts
    text = Path(entry.log or "").read_text(errors="replace") + done.stderr
    assert "does not support ray" in text  # vLLM reached its Ray executor ...
    assert cluster.address in text  # ... and joined this cluster (RAY_ADDRESS) first


def test_a_refused_placement_ends_the_job_scripts_endpoints_wait_at_once(
    cluster: RayClusterFile, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The Aurora job script's `hpcinfer serve ... & hpcinfer endpoints --expect 1 --wait
    55m`: a placement the cluster cannot hold fails the serve in seconds, and the wait with it
    (the failed entry it lists), not 55 minutes later."""
    claimed = _file(cluster, tmp_path, gpus_per_node=8)
    env = cli_env | {"PBS_JOBID": "4242.test"}
    args = ["serve", "--backend", "ray", "--tp", "8", "--ray-cluster", str(claimed)]
    serve = subprocess.Popen(
        hpcinfer_cmd(*args, "--endpoints", "endpoints.json"), cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        began = time.monotonic()
        wait = ["endpoints", "--endpoints", "endpoints.json", "--expect", "1", "--wait", "55m"]
        done = subprocess.run(
            hpcinfer_cmd(*wait), cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert time.monotonic() - began < 2 * QUICK_S
        assert done.returncode == 1, done.stderr[-3000:]
        assert "will not come up" in done.stderr and "needs 8 GPUs" in done.stderr
        assert serve.wait(timeout=60) == 1
    finally:
        serve.kill()
        serve.wait()
    (entry,) = read_registry(tmp_path / "endpoints.json")
    assert entry.state == "failed" and "needs 8 GPUs" in (entry.error or "")
