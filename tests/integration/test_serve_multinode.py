"""One model served across two hosts: real vLLM (the CPU build) at TP=2 with the mp backend,
one rank on each of two test hosts (network namespaces with an sshd each), started by
`hpcinfer serve --launcher ssh` inside h1 and talking over the hosts' own link.

Three servers for the whole module, started at once (each start costs about a minute of this
machine's CPU): one spanning h1 and h2, a one-host TP=2 reference server on this machine, and
one spanning h2 and h3 for the stop. The spanning server must be ready, verified, listed as
ONE endpoint naming both hosts, answer at temperature 0 exactly as the reference does, and
serve a dispatcher job; then its headless rank on h2 is killed and the server must fail, not
hang. SIGTERM to the other must stop every rank on both hosts (an ssh client passes no
signal on).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.core.endpoints_registry import read_registry
from hpcinfer.core.server_probe import verify_completion
from hpcinfer.testing.netns_hosts import NetnsHosts
from tests.conftest import hpcinfer_cmd, read_rows, write_prompts
from tests.harness import exited, free_port, wait_for
from tests.processes import processes_in

pytestmark = pytest.mark.integration

ONE_CORE = "name: one-core\nvendor: cpu\ngpus_per_node: 0\ncores_per_node: 1\n"
TWO_CORES = "name: two-cores\nvendor: cpu\ngpus_per_node: 0\ncores_per_node: 2\n"
READY_S = 480.0  # both servers start at once on a loaded 2-core machine
KV_CACHE = ["--kv-cache-bytes", str(256 << 20)]  # four engine processes share this machine
PROMPTS = 6


@dataclass
class Server:
    """A running `hpcinfer serve` and where it writes."""

    proc: subprocess.Popen[str]
    folder: Path
    registry: Path
    out: Path

    def entries(self) -> list[Any]:
        try:
            return read_registry(self.registry)
        except Exception:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)  # as a user's kill: the command stops
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _ready(server: Server) -> bool:
    entries = server.entries()
    if entries and entries[0].state in ("failed", "dead"):
        raise AssertionError(f"server failed: {entries[0].error}\n{_output(server)}")
    return bool(entries) and entries[0].state == "ready"


def _output(server: Server) -> str:
    return server.out.read_text(errors="replace")[-6000:] if server.out.exists() else ""


def _start(argv: list[str], folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    out = (folder / "serve.out").open("w")
    return subprocess.Popen(
        argv, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _span(hosts: NetnsHosts, env: dict[str, str], folder: Path, on: str, port: int) -> Server:
    """`hpcinfer serve --backend mp --tp 2 --launcher ssh` over the hosts `on`, started
    inside h1 as on an allocation's first node."""
    (folder / "hosts").write_text(on.replace(",", "\n") + "\n")
    # One core, one thread per rank, as the reference's TP ranks (one core each): the same
    # arithmetic, so temperature-0 answers can be compared token for token.
    (folder / "one-core.yaml").write_text(ONE_CORE)
    args = ["serve", "--backend", "mp", "--tp", "2", "--launcher", "ssh", "--hostfile", "hosts"]
    args += ["--interface", hosts.interface, "--host", "0.0.0.0", "--port", str(port)]
    args += ["--profile", "one-core.yaml", "--ready-timeout", "8m", *KV_CACHE]
    out = folder / "serve.out"
    proc = hosts.popen(
        "h1", hpcinfer_cmd(*args), cwd=folder, env=hosts.env(env), stdout=out.open("w"),
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    return Server(proc, folder, folder / "endpoints.json", out)


@pytest.fixture(scope="module")
def servers(
    test_hosts: NetnsHosts, cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server, Server]]:
    """(the server spanning h1 and h2, the one-host reference, a server spanning h2 and h3
    for the stop test), all ready; started at once."""
    span = _span(test_hosts, cli_env, tmp_path_factory.mktemp("span"), "h1,h2", 8100)
    other = _span(test_hosts, cli_env, tmp_path_factory.mktemp("other"), "h2,h3", 8101)
    ref_dir = tmp_path_factory.mktemp("reference")
    (ref_dir / "two-cores.yaml").write_text(TWO_CORES)
    ref_args = ["serve", "--tp", "2", "--profile", "two-cores.yaml", "--port", str(free_port())]
    ref = Server(
        _start(hpcinfer_cmd(*ref_args, *KV_CACHE), ref_dir, cli_env),
        ref_dir,
        ref_dir / "endpoints.json",
        ref_dir / "serve.out",
    )
    try:
        for server in (span, ref, other):
            wait_for(
                lambda s=server: _ready(s),  # type: ignore[misc]
                READY_S,
                f"{server.folder.name} server ready",
                give_up=lambda s=server: exited(s.proc),  # type: ignore[misc]
                interval=1.0,
            )
        yield span, ref, other
    finally:
        for server in (span, ref, other):
            server.stop()


def test_one_endpoint_lists_both_hosts_and_answers_as_one_host_does(
    servers: tuple[Server, Server, Server], test_hosts: NetnsHosts
) -> None:
    span, ref, _ = servers
    (entry,) = span.entries()  # one endpoint for the server, whichever nodes it spans
    assert entry.state == "ready"
    assert [n["node_rank"] for n in entry.nodes] == [0, 1]
    addresses = [n["address"] for n in entry.nodes]
    assert addresses == [test_hosts.address("h1"), test_hosts.address("h2")]
    assert entry.url == f"http://{test_hosts.address('h1')}:8100"
    assert len(entry.devices) == 2 and all(":" in d for d in entry.devices)
    (reference,) = ref.entries()
    asked = verify_completion(reference.url, reference.model, 120)  # the same request
    assert entry.verified is not None and asked.ok, asked.error
    assert entry.verified["text"] == asked.text  # temperature 0, fixed seed: token for token
    assert entry.verified["text"].strip()
    log = _output(span)
    assert "is node rank 0" in log and "joining" in log


def test_the_dispatcher_runs_a_job_through_it_with_the_one_hosts_answers(
    servers: tuple[Server, Server, Server], test_hosts: NetnsHosts, cli_env: dict[str, str]
) -> None:
    span, ref, _ = servers
    rows = {}
    for server in (span, ref):
        write_prompts(server.folder / "prompts.txt", PROMPTS)
        args = ["run", "prompts.txt", "--engine", "openai", "--endpoints", "endpoints.json"]
        args += ["-o", "out", "--temperature", "0", "--seed", "7", "--max-tokens", "6", "--json"]
        if server is span:  # the spanning server is reached only on the hosts' link
            done = test_hosts.run(
                "h1", hpcinfer_cmd(*args), env=test_hosts.env(cli_env), cwd=server.folder
            )
        else:
            done = subprocess.run(
                hpcinfer_cmd(*args), cwd=server.folder, env=cli_env, capture_output=True,
                text=True, timeout=300,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["records_ok"] == PROMPTS
        rows[server.folder.name] = read_rows(server.folder / "out" / "results.jsonl")
    spanned, reference = rows[span.folder.name], rows[ref.folder.name]
    assert [r["id"] for r in spanned] == [r["id"] for r in reference]
    assert all(r["status"] == "ok" for r in spanned)
    assert [r["text"] for r in spanned] == [r["text"] for r in reference]


def test_a_dead_headless_rank_fails_the_server_instead_of_hanging(
    servers: tuple[Server, Server, Server], test_hosts: NetnsHosts
) -> None:
    span, _, _ = servers
    member = span.folder / "endpoints.json.parts" / "span" / "server-0-node-1.json"
    headless = int(json.loads(member.read_text())["pid"])
    assert headless in test_hosts.pids("h2")
    os.kill(headless, signal.SIGKILL)
    began = time.monotonic()
    wait_for(lambda: exited(span.proc), 120, "hpcinfer serve to end after its headless rank died")
    took = time.monotonic() - began
    assert span.proc.returncode == 1, _output(span)
    (entry,) = span.entries()
    assert entry.state == "dead" and "node rank 1" in (entry.error or ""), entry
    print(f"headless rank death ended the server in {took:.1f}s")
    wait_for(lambda: not processes_in(span.folder), 60, "every process of the server gone")


def test_sigterm_stops_every_rank_on_every_host(servers: tuple[Server, Server, Server]) -> None:
    _, _, other = servers
    os.kill(other.proc.pid, signal.SIGTERM)  # as a user (or the scheduler) stops it
    wait_for(lambda: exited(other.proc), 180, "hpcinfer serve to stop")
    assert other.proc.returncode == 0, _output(other)
    (entry,) = other.entries()
    assert entry.state == "stopped"
    assert "could not reach" not in _output(other)  # the ssh clients were not shot down
    assert not (other.folder / "endpoints.json.stop").exists()
    wait_for(lambda: not processes_in(other.folder), 60, "every process on h2 and h3 gone")
