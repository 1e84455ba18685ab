"""The versioned table of communication names: which kernel or operator is a collective,
of which type, from which library.

Holistic Trace Analysis matches `^nccl|ncclKernel` and so misses `ncclDevKernel_*` and vLLM's
own all-reduce kernels; this table names them all, and the names that look like
communication but match no entry are counted (`unknown_comm_share`) so a gap shows up in the
result instead of as missing time. Bump TABLE_VERSION whenever an entry changes: results
record it, so figures from two versions are never compared silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

TABLE_VERSION = "2026.12.2"


@dataclass(frozen=True)
class Collective:
    """What a communication name is: its collective type and the library that runs it."""

    op: str  # all_reduce, all_gather, reduce_scatter, broadcast, all_to_all, send_recv, ...
    # ("wait": time blocked on communication, not a collective of its own)
    library: str


# (pattern, library, op): op None means "read the type from the name's first group".
# Kernels (GPU and XPU traces):
_KERNELS: tuple[tuple[str, str, str | None], ...] = (
    (r"^nccl(?:Dev)?Kernel_([A-Za-z]+)", "nccl", None),  # NCCL and RCCL, old and new names
    (r"cross_device_reduce_\w+", "vllm-custom-allreduce", "all_reduce"),
    (r"multimem_\w*?(all_gather|reduce_scatter)", "symm-mem", None),
    (r"multimem_\w+", "symm-mem", "all_reduce"),
    (r"(?:two|one)_shot_\w*?(all_reduce|all_gather|reduce_scatter)", "symm-mem", None),
    (r"(?:two|one)_shot_\w+", "symm-mem", "all_reduce"),
    (r"quick_?(?:all_?)?reduce", "vllm-quick-allreduce", "all_reduce"),
    (
        r"(?i)^(?:one)?ccl\w*?(allreduce|allgatherv?|reduce_?scatter|alltoallv?|bcast|broadcast)",
        "oneccl",
        None,
    ),
    (r"(?i)^(?:xccl|ccl|oneccl)[:_]+(\w+)", "oneccl", None),
)
# CPU operators and annotations (CPU traces, where the operators are the timeline):
_OPERATORS: tuple[tuple[str, str, str | None], ...] = (
    (r"^_C::shm_(allreduce|all_gather|gather|send_tensor_list|recv_tensor_list)", "vllm-shm", None),
    (r"^vllm::(all_reduce|all_gather|reduce_scatter|all_to_all)", "vllm", None),
    (r"^gloo:(\w+)", "gloo", None),
    (r"^c10d::_?(\w+?)_?$", "c10d", None),
    (r"^_c10d_functional::(wait_tensor)$", "c10d", "wait"),
    (r"^_c10d_functional::(\w+)", "c10d", None),
    (r"^(?:nccl|xccl|ccl|oneccl|mpi):(\w+)", "c10d-backend", None),
    (r"^record_param_comms$", "c10d", "from_args"),
)

BACKEND_ANNOTATIONS = ("gloo", "c10d-backend")
"""Libraries whose names annotate, often on a thread of their own, the same call a c10d
operator (`c10d::allreduce_`) records: their time is communication, but a call is counted
from them only in a trace without c10d operators."""

COMM_LIKE = re.compile(
    r"(?i:all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|send_?recv|multimem|"
    r"cross_device)"
    r"|(?<![A-Za-z0-9])(?i:nccl|rccl|oneccl|xccl|ccl|gloo|c10d|mpi|custom_?ar)(?![a-z])"
    r"|^_C(?:_\w+)?::(?i:shm_)"
)
"""Names that look like communication; those the table does not know are reported. A
collective's name, or a communication library's token standing alone (`nccl` in
`ncclFoo`, `c10d::`, `gloo:`): `broadcast` or `barrier` alone is no sign, compute is full
of them (`aten::broadcast_tensors`, `BroadcastFunctor` kernels)."""

_COMPILED = {
    "kernel": [(re.compile(p), lib, op) for p, lib, op in _KERNELS],
    "operator": [(re.compile(p), lib, op) for p, lib, op in _OPERATORS],
}

_OPS = (  # normalised spelling (lower case, no underscores) -> type, longest prefix first
    ("reducescatter", "reduce_scatter"),
    ("allreduce", "all_reduce"),
    ("allgather", "all_gather"),
    ("alltoall", "all_to_all"),
    ("sendrecv", "send_recv"),
    ("broadcast", "broadcast"),
    ("bcast", "broadcast"),
    ("barrier", "barrier"),
    ("reduce", "reduce"),
    ("gather", "gather"),
    ("scatter", "scatter"),
    ("sendtensorlist", "send"),
    ("recvtensorlist", "recv"),
    ("send", "send"),
    ("recv", "recv"),
)


def op_type(token: str) -> str:
    """`AllReduce`, `allreduce_`, `_allgather_base_`, `all_gather` -> one spelling per type."""
    flat = token.lower().replace("_", "")
    for prefix, op in _OPS:
        if flat.startswith(prefix):
            return op
    return flat or "unknown"


@lru_cache(maxsize=65536)
def classify(name: str, kind: str) -> Collective | None:
    """The collective `name` is, looked up among kernels (kind "kernel") or CPU operators
    (kind "operator"); None when it is not communication the table knows."""
    for pattern, library, op in _COMPILED[kind]:
        found = pattern.search(name)
        if found:
            token = op or (found.group(1) if found.groups() else "unknown")
            return Collective(op if op in ("from_args", "wait") else op_type(token), library)
    return None


def looks_like_comm(name: str) -> bool:
    """A name the table may have missed: it reads like communication."""
    return COMM_LIKE.search(name) is not None
