"""How much RAM a vLLM engine on CPU may take for its KV cache.

vLLM's CPU build reads `gpu_memory_utilization` as a share of the node's RAM *per worker
process*: a TP=2 engine has two, each taking the share. So the default share is split
between every process on the node (engines x tensor-parallel ranks); taken whole, two TP
ranks at 0.3 asked for 14 GiB of a 24 GiB machine and the second one was OOM-killed.
"""

from __future__ import annotations

CPU_KV_CACHE_SHARE = 0.3  # of RAM, for all of the node's engine processes together


def cpu_kv_cache_share(engines_on_node: int, tensor_parallel_size: int = 1) -> float:
    """The `gpu_memory_utilization` to give each worker process of each engine on CPU."""
    processes = max(1, engines_on_node) * max(1, tensor_parallel_size)
    return round(CPU_KV_CACHE_SHARE / processes, 4)
