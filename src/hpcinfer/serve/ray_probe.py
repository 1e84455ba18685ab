"""Can the live Ray cluster place these servers now? `python -m hpcinfer.serve.ray_probe
ADDRESS BUNDLES GROUPS TIMEOUT` creates GROUPS placement groups of BUNDLES {GPU: 1} bundles
(as vLLM's Ray executor asks: one GPU per rank, packed), waits up to TIMEOUT seconds for
them, removes them, and prints one JSON line: {"ready": [true, false, ...]}.

A child process, so Ray's driver (its threads, signal handlers and core worker) never lives
in hpcinfer's own process, and a Ray that hangs is killed with it. vLLM asks the same of
the cluster, and waits up to 30 minutes for it (vLLM issue 13909): asked here first, an
infeasible layout fails in seconds.
"""

from __future__ import annotations

import json
import logging
import sys


def probe(address: str, bundles: int, groups: int, timeout_s: float) -> list[bool]:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    ray.init(
        address=address,
        namespace="hpcinfer-placement-check",
        log_to_driver=False,
        logging_level=logging.ERROR,
        include_dashboard=False,
    )
    try:
        made = [placement_group([{"GPU": 1.0}] * bundles, strategy="PACK") for _ in range(groups)]
        waiting = {pg.ready(): i for i, pg in enumerate(made)}
        done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=timeout_s)
        ready = [False] * groups
        for ref in done:
            ready[waiting[ref]] = True
        for pg in made:
            remove_placement_group(pg)
        return ready
    finally:
        ray.shutdown()


def main(argv: list[str]) -> None:
    address, bundles, groups, timeout_s = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    print(json.dumps({"ready": probe(address, bundles, groups, timeout_s)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
