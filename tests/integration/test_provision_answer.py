"""The cluster verify's answer (`python -m hpcinfer.provision.answer`) on the real CPU vLLM:
one JSON line on stdout (vLLM's logs go to stderr), the same text every time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _answer(cwd: Path, env: dict[str, str], model: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hpcinfer.provision.answer", "--model", model]
    argv += ["--prompt", "The capital of France is", "--max-tokens", "8", "--seed", "0"]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_answer_is_one_json_line_and_reproducible(
    tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcinfer.core.tiny_model import ensure_tiny_model

    monkeypatch.setenv("HPCINFER_CACHE", cli_env["HPCINFER_CACHE"])  # the session's cache
    model = str(ensure_tiny_model())
    first, second = _answer(tmp_path, cli_env, model), _answer(tmp_path, cli_env, model)
    for done in (first, second):
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(done.stdout.splitlines()) == 1, done.stdout[-2000:]
    answer = json.loads(first.stdout)["answer"]
    assert isinstance(answer, str) and answer
    assert json.loads(second.stdout) == {"answer": answer}


def test_a_model_that_is_no_model_folder_fails_naming_it(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    done = _answer(tmp_path, cli_env, str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert done.stdout == ""
    assert "is not a model directory" in done.stderr
