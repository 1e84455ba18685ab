"""`hpcinfer ray up` against the Aurora vLLM guide's Ray set-up script, on three test hosts.

    .venv/bin/python bench/ray_up.py [--repeat 2] [--out bench/ray_up.json]   (as root)

The hosts are `hpcinfer.testing.netns_hosts`' network namespaces h1 h2 h3 on this machine,
each with its own sshd; both approaches start from h1 (the allocation's first node), every
node declaring 2 GPUs and 1 CPU. Fresh hosts for every try, so no try inherits another's
processes. Two cases:

1. All hosts up.
2. The hostfile also lists a fourth host that is down (an address on the link that nothing
   answers), as a node that died in the allocation.

The set-up script's approach (ALCF's `setup_ray_cluster.sh`, rebuilt here as a shell
script): `ray start --head` on the first node, then `ssh` to each other host in turn to run
`ray start --address=HEAD` there (a failure is not checked), then poll `ray status` every
second until it answers, and declare the cluster ready. `hpcinfer ray up`: the same hosts
through `--hostfile`, `--launcher ssh --interface hpci0 --gpus-per-node 2 --cpus-per-node 1`.

For each try: the time from the start to "ready" (or, for `ray up`, to its refusal), and
whether "ready" was true at that moment: every host of the hostfile alive in the cluster
with its 2 GPUs, read from the head's GCS. The approaches alternate (A B, B A, ...), so a
drift of the machine's speed falls on both alike. Figures are printed and written as JSON
to --out; bench/RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hpcinfer.testing.netns_hosts import NetnsHosts, make_hosts  # noqa: E402

GPUS = 2
GCS_PORT = 6379
TRY_TIMEOUT_S = 300.0
RAY = str(Path(sys.executable).parent / "ray")
SCRIPT = "the guide's set-up script"
HPCINFER = "hpcinfer ray up"

# Run inside h1: the head's GCS address -> JSON [{address, alive, gpus}] of its nodes.
NODES = """
import json, sys
from hpcinfer.raycluster.gcs import live_nodes
nodes = live_nodes(sys.argv[1], timeout=10)
print(json.dumps([{"address": n.address, "alive": n.alive, "gpus": n.gpus} for n in nodes]))
"""


@dataclass
class Try:
    case: str
    approach: str
    seconds: float
    declared_ready: bool  # the approach said the cluster is ready
    truly_ready: bool  # every host of the hostfile alive with its GPUs at that moment
    nodes_alive: int
    hosts_expected: int
    note: str


def setup_script(hosts: NetnsHosts, names: list[str], addresses: dict[str, str]) -> str:
    """The set-up script's steps as a shell script run on h1 (node addresses given, as the
    script reads them from the high-speed network's host names)."""
    head = addresses[names[0]]
    common = f"--num-gpus={GPUS} --num-cpus=1 --disable-usage-stats"
    temp = hosts.directory / "ray"
    lines = [
        f"{RAY} start --head --node-ip-address={head} --port={GCS_PORT} "
        f"--include-dashboard=false --temp-dir={temp / names[0]} {common}",
    ]
    for name in names[1:]:
        remote = (
            f"{RAY} start --address={head}:{GCS_PORT} --node-ip-address={addresses[name]} "
            f"--temp-dir={temp / name} {common}"
        )
        lines.append(f"{shlex.join(hosts.ssh)} {name} {shlex.quote(remote)}")
    lines.append(
        f"until {RAY} status --address={head}:{GCS_PORT} >/dev/null 2>&1; do sleep 1; done"
    )
    return "\n".join(lines) + "\n"


def nodes_of(hosts: NetnsHosts, gcs: str) -> list[dict]:
    done = hosts.run("h1", [sys.executable, "-c", NODES, gcs], env=hosts.env(), timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else []


def judge(nodes: list[dict], addresses: dict[str, str]) -> tuple[bool, int]:
    alive = [n for n in nodes if n["alive"] and n["gpus"] == GPUS]
    found = {n["address"] for n in alive}
    return set(addresses.values()) <= found, len(alive)


def one_try(case: str, approach: str, down_host: bool) -> Try:
    hosts = make_hosts(3)
    try:
        names = list(hosts.names)
        addresses = {name: hosts.address(name) for name in names}
        hostfile = hosts.hostfile
        if down_host:  # the next address on the link, where nothing answers
            down = f"10.213.{hosts.subnet}.{len(names) + 1}"
            names.append(down)
            addresses[down] = down
            hostfile = hosts.directory / "hostfile-with-a-down-host"
            hostfile.write_text("".join(f"{name}\n" for name in names))
        gcs = f"{addresses['h1']}:{GCS_PORT}"
        started = time.monotonic()
        if approach == SCRIPT:
            script = hosts.directory / "setup_ray_cluster.sh"
            script.write_text(setup_script(hosts, names, addresses))
            done = hosts.run("h1", ["bash", str(script)], env=hosts.env(), timeout=TRY_TIMEOUT_S)
            seconds = time.monotonic() - started
            declared, note = done.returncode == 0, f"exit {done.returncode}"
        else:
            cluster_file = hosts.directory / "cluster.json"
            argv = [sys.executable, "-m", "hpcinfer", "ray", "up", "--hostfile", str(hostfile)]
            argv += ["--launcher", "ssh", "--interface", hosts.interface, "--name", "bench"]
            argv += ["--gpus-per-node", str(GPUS), "--cpus-per-node", "1"]
            argv += ["--cluster-file", str(cluster_file), "--ready-timeout", "4m", "--json"]
            done = hosts.run(
                "h1", argv, env=hosts.env(), cwd=hosts.directory, timeout=TRY_TIMEOUT_S
            )
            seconds = time.monotonic() - started
            declared = done.returncode == 0
            if declared:
                gcs = json.loads(done.stdout)["address"]
            note = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        truly, alive = judge(nodes_of(hosts, gcs), addresses)
        if approach == HPCINFER and declared:
            down_argv = [*argv[:4], "down", "--cluster-file", str(cluster_file)]
            hosts.run("h1", down_argv, env=hosts.env(), cwd=hosts.directory, timeout=120)
        return Try(case, approach, round(seconds, 2), declared, truly, alive, len(names), note)
    finally:
        hosts.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="pairs of tries per case")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "ray_up.json")
    args = parser.parse_args()
    tries: list[Try] = []
    for case, down_host in (("all hosts up", False), ("a listed host is down", True)):
        for pair in range(args.repeat):
            order = (SCRIPT, HPCINFER) if pair % 2 == 0 else (HPCINFER, SCRIPT)
            for approach in order:
                tried = one_try(case, approach, down_host)
                tries.append(tried)
                print(json.dumps(asdict(tried)), flush=True)
    print("\n| case | approach | median s to its answer | said ready | truly ready |")
    print("| --- | --- | ---: | --- | --- |")
    summary = []
    for case in dict.fromkeys(t.case for t in tries):
        for approach in (SCRIPT, HPCINFER):
            mine = [t for t in tries if t.case == case and t.approach == approach]
            row = {
                "case": case,
                "approach": approach,
                "median_s": round(statistics.median(t.seconds for t in mine), 2),
                "said_ready": f"{sum(t.declared_ready for t in mine)}/{len(mine)}",
                "truly_ready": f"{sum(t.truly_ready for t in mine)}/{len(mine)}",
            }
            summary.append(row)
            print("| " + " | ".join(str(v) for v in row.values()) + " |")
    args.out.write_text(
        json.dumps({"tries": [asdict(t) for t in tries], "summary": summary}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
