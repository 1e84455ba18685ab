"""`hpcinfer stage` under a real `mpiexec -n 3`: identical copies, skip, corruption, a real run.

All ranks share this machine's disk, so `--to` takes `{rank}` to give each its own folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcinfer.stage.manifest import MANIFEST_NAME
from tests.conftest import read_rows, require, run_cli
from tests.unit.test_stage_helpers import make_hf_cache, make_model_dir, tree

pytestmark = pytest.mark.integration

RANKS = 3
# A test seam, not a user option: rank 2 flips one byte of chunk 2 of the weights right
# after receiving it, as a bad link or bad memory would.
CORRUPT = """
import sys
from hpcinfer.stage.broadcast import Hooks
from hpcinfer.stage.errors import StageError
from hpcinfer.stage.stage import StageRequest, stage_model

def flip(rank, chunk, data):
    if rank == 2 and chunk.path == "big.safetensors" and chunk.index == 1:
        data[100] ^= 0xFF

try:
    stage_model(StageRequest(model=sys.argv[1], to=sys.argv[2], chunk_mib=1),
                hooks=Hooks(after_receive=flip))
except StageError as exc:
    print(f"ERROR {exc}", flush=True)
    sys.exit(exc.exit_code)
"""


@pytest.fixture(scope="module")
def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    present = found is not None and importlib.util.find_spec("mpi4py") is not None
    require("MPI (mpiexec + mpi4py)", present, "pip install mpi4py mpich")
    assert found is not None
    return found


def mpirun(
    mpiexec: str, args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mpiexec, "-n", str(RANKS), sys.executable, *args],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def stage_args(model: str, to: str, *extra: str) -> list[str]:
    return ["-m", "hpcinfer", "stage", model, "--to", to, "--chunk-mib", "1", *extra]


def test_three_ranks_get_identical_copies_and_a_rerun_skips_them(
    mpiexec: str, tmp_path: Path
) -> None:
    model = make_model_dir(tmp_path / "gen", big_bytes=3 * (1 << 20) + 4321)  # 4 chunks
    proc = mpirun(mpiexec, stage_args("gen", "copies/{rank}", "--json"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # one document: only rank 0 prints
    assert (data["ranks"], data["copies"], data["status"]) == (3, 3, "staged")
    assert (
        data["bytes_sent"]
        == data["bytes"]
        == sum(p.stat().st_size for p in model.rglob("*") if p.is_file() and not p.is_symlink())
    )
    for rank in range(RANKS):
        copy = tmp_path / "copies" / str(rank) / "gen"
        assert tree(copy) == tree(model), f"rank {rank}'s copy differs"
        assert (copy / MANIFEST_NAME).exists()
    again = mpirun(mpiexec, stage_args("gen", "copies/{rank}"), tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already staged and verified in 3 copies on 1 node (3 ranks)" in again.stdout
    assert "nothing sent" in again.stdout
    assert again.stdout.count("hpcinfer stage:") == 1


def test_ranks_sharing_a_folder_write_it_once(mpiexec: str, tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "gen", big_bytes=200_000)
    proc = mpirun(mpiexec, stage_args("gen", "shared", "--json"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["copies"] == 1 and [r["writer"] for r in data["per_rank"]] == [0, 0, 0]
    assert tree(tmp_path / "shared" / "gen") == tree(model)


def test_corrupted_chunk_fails_every_rank_and_a_clean_rerun_repairs(
    mpiexec: str, tmp_path: Path
) -> None:
    model = make_model_dir(tmp_path / "gen", big_bytes=3 * (1 << 20) + 4321)
    (tmp_path / "corrupt.py").write_text(CORRUPT, encoding="utf-8")
    proc = mpirun(mpiexec, ["corrupt.py", "gen", "copies/{rank}"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # Every rank reports the same agreed error (their lines may interleave).
    assert proc.stdout.count("ERROR staging failed on 1 of 3 ranks") == RANKS, proc.stdout
    assert proc.stdout.count("rank 2: chunk 2 of 4 of big.safetensors (bytes 1048576-2097151)") == 3
    assert "does not match the checksum rank 0 sent" in proc.stdout
    for rank in range(RANKS):
        assert not (tmp_path / "copies" / str(rank) / "gen" / MANIFEST_NAME).exists()

    rerun = mpirun(mpiexec, stage_args("gen", "copies/{rank}", "--json"), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    data = json.loads(rerun.stdout)
    # Files placed before the failure are checked and kept; the rest is sent again.
    assert data["bytes_sent"] == data["bytes"] - (model / "a_small.txt").stat().st_size
    for rank in range(RANKS):
        assert tree(tmp_path / "copies" / str(rank) / "gen") == tree(model)


def test_staged_hf_copy_runs_with_the_printed_arguments(
    mpiexec: str, tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Aurora scripts' bug: the copy and the run's HF_HOME must agree. The source cache is moved
    away before the run, so only the staged copy can serve it."""
    monkeypatch.setenv("HPCINFER_CACHE", cli_env["HPCINFER_CACHE"])
    from hpcinfer.core.tiny_model import ensure_tiny_model

    make_hf_cache(tmp_path / "hf" / "hub", "hpcinfer/tiny-llama", ensure_tiny_model())
    env = cli_env | {"HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    proc = mpirun(
        mpiexec, stage_args("hpcinfer/tiny-llama", "nodes/{rank}", "--json"), tmp_path, env
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)["run"]
    assert run["model"] == "hpcinfer/tiny-llama"
    assert run["env"]["HF_HOME"] == str(tmp_path / "nodes" / "0")
    repo = Path("hub", "models--hpcinfer--tiny-llama")
    for rank in (1, 2):
        assert tree(tmp_path / "nodes" / str(rank) / repo) == tree(tmp_path / "nodes/0" / repo)
    (tmp_path / "hf").rename(tmp_path / "hf-moved-away")

    (tmp_path / "prompts.txt").write_text("hello world\nthe model reads\n", encoding="utf-8")
    result = run_cli(
        ["run", "prompts.txt", "--model", run["model"], "-o", "out", "--max-tokens", "4"],
        cwd=tmp_path,
        env=cli_env | run["env"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["model"] == "hpcinfer/tiny-llama" and 0 < r["output_tokens"] <= 4 for r in rows)
