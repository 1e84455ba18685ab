"""`hpcinfer endpoints`: UP/DOWN per endpoint, exit codes, --wait, and registry errors."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.core.endpoints_registry import Endpoint, write_registry
from hpcinfer.serve.checks import wait_until_up
from hpcinfer.serve.errors import ServeError
from tests.harness import call_main, free_port
from tests.unit.serve_fakes import http_server


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> tuple[int, str]:
    """hpcinfer.cli.main.main() as the console script runs it: (exit code, stdout + stderr)."""
    ran = call_main(args, monkeypatch, capsys)
    return ran.code, ran.output


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def write(path: Path, *entries: Endpoint) -> Path:
    write_registry(path, list(entries))
    return path


def test_up_and_down_are_checked_and_summed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with http_server(model="m") as (url, _):
        down = closed_url()
        registry = write(
            tmp_path / "endpoints.json",
            Endpoint(url=url, model="m", node="n1", state="ready"),
            Endpoint(url=down, model="m", node="n2", state="ready"),
        )
        code, out = run_main(["endpoints", str(registry)], monkeypatch, capsys)
        assert code == 1
        assert "1 up, 1 down" in out
        assert "UP" in out and "DOWN" in out and "refused" in out.lower()
        code, out = run_main(["endpoints", str(registry), "--json"], monkeypatch, capsys)
        document = json.loads(out)
        assert (document["up"], document["down"]) == (1, 1)
        assert [e["up"] for e in document["endpoints"]] == [True, False]
        assert document["endpoints"][1]["check_error"].startswith("/health")
        code, out = run_main(["endpoints", "--url", url], monkeypatch, capsys)
        assert code == 0 and "1 up, 0 down" in out


def test_a_wrong_model_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    with http_server(model="other") as (url, _):
        registry = write(tmp_path / "e.json", Endpoint(url=url, model="m", state="ready"))
        code, out = run_main(["endpoints", str(registry)], monkeypatch, capsys)
    assert code == 1 and "serves other, not m" in out


def test_the_api_key_is_sent_from_the_named_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("MY_KEY", "k3y")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with http_server(key="k3y") as (url, seen):
        registry = write(tmp_path / "e.json", Endpoint(url=url, model="m", state="ready"))
        code, out = run_main(["endpoints", str(registry)], monkeypatch, capsys)
        assert code == 1 and "401" in out and "--api-key-env" in out
        code, out = run_main(
            ["endpoints", str(registry), "--api-key-env", "MY_KEY"], monkeypatch, capsys
        )
        assert code == 0, out
        assert "Bearer k3y" in seen
        assert "k3y" not in out
        monkeypatch.setenv("OPENAI_API_KEY", "k3y")  # the client default
        assert run_main(["endpoints", str(registry)], monkeypatch, capsys)[0] == 0
    code, out = run_main(
        ["endpoints", str(registry), "--api-key-env", "UNSET_VAR"], monkeypatch, capsys
    )
    assert code == 2 and "$UNSET_VAR is not set" in out


def test_bad_or_missing_registry_exits_2_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"endpoints": [')
    code, out = run_main(["endpoints", str(bad)], monkeypatch, capsys)
    assert code == 2
    assert str(bad) in out and "not valid JSON" in out
    missing = tmp_path / "missing.json"
    code, out = run_main(["endpoints", str(missing)], monkeypatch, capsys)
    assert code == 2 and str(missing) in out and "hpcinfer serve" in out


def test_empty_registry_is_not_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    registry = write(tmp_path / "e.json")
    code, out = run_main(["endpoints", str(registry)], monkeypatch, capsys)
    assert code == 1 and "lists no endpoint" in out


def test_wait_until_a_registry_appears_and_is_ready(tmp_path: Path) -> None:
    registry = tmp_path / "endpoints.json"
    with http_server() as (url, _):

        def serve_later() -> None:
            time.sleep(0.5)
            write(registry, Endpoint(url=url, model="m", state="starting"))
            time.sleep(0.5)
            write(registry, Endpoint(url=url, model="m", state="ready"))

        writer = threading.Thread(target=serve_later)
        writer.start()
        polls: list[str] = []
        statuses = wait_until_up(registry, [], 20, None, poll_s=0.1, on_poll=polls.append)
        writer.join()
    assert [s.up for s in statuses] == [True]
    assert any("does not exist" in p for p in polls)
    assert any("not ready yet" in p for p in polls)


def test_wait_fails_fast_on_a_failed_endpoint_and_times_out_clearly(tmp_path: Path) -> None:
    registry = tmp_path / "endpoints.json"
    closed = closed_url()

    def fail_later() -> None:
        time.sleep(0.3)
        failed = Endpoint(url=closed, model="m", state="failed", error="exited with code 1")
        write(registry, failed)

    writer = threading.Thread(target=fail_later)
    writer.start()
    started = time.monotonic()
    with pytest.raises(ServeError, match=r"(?s)will not come up.*exited with code 1"):
        wait_until_up(registry, [], 600, None, poll_s=0.1)
    writer.join()
    assert time.monotonic() - started < 120  # at the failure, not after the 600 s wait
    # A registry that is just 'starting' forever: the timeout names what is missing.
    write(registry, Endpoint(url=closed, model="m", state="starting"))
    with pytest.raises(ServeError, match=r"not all up after 1s: not ready yet: .* starting"):
        wait_until_up(registry, [], 1, None, poll_s=0.1)


def test_wait_for_an_expected_count(tmp_path: Path) -> None:
    with http_server() as (url, _):
        registry = write(tmp_path / "e.json", Endpoint(url=url, model="m", state="ready"))
        with pytest.raises(ServeError, match="1 endpoint"):
            wait_until_up(registry, [], 0.5, None, expect=2, poll_s=0.1)
        assert len(wait_until_up(registry, [], 5, None, expect=1)) == 1


def test_wait_cli_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    with http_server() as (url, _):
        registry = write(tmp_path / "e.json", Endpoint(url=url, model="m", state="ready"))
        code, out = run_main(["endpoints", str(registry), "--wait", "5"], monkeypatch, capsys)
    assert code == 0 and "1 up, 0 down" in out
