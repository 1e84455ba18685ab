"""Which port each server of a node listens on.

Server i of the serve rank with local rank r gets `port + r * servers + i`, so several
ranks on one host never pick the same port. A port already in use is skipped: the next
candidate is `stride` (every server of the node) further on, so a skip never lands on a
port another server of the node was given either.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from hpcinfer.errors import SpecError

MAX_PORT = 65535
MAX_SKIPS = 64


def port_in_use(host: str, port: int) -> bool:
    """True when binding `host:port` fails now (a listener holds it). SO_REUSEADDR as the
    server sets it, so connections of an earlier server in TIME_WAIT do not count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = "" if host in ("0.0.0.0", "::") else host
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class PortChoice:
    port: int
    skipped: tuple[int, ...]  # busy ports passed over, for the message

    @property
    def note(self) -> str | None:
        if not self.skipped:
            return None
        busy = ", ".join(str(p) for p in self.skipped)
        return f"port {busy} in use; using {self.port}"


def choose_port(
    host: str,
    preferred: int,
    stride: int,
    in_use: Callable[[str, int], bool] = port_in_use,
) -> PortChoice:
    """`preferred`, else the first free one of `preferred + k * stride`."""
    skipped: list[int] = []
    port = preferred
    while port <= MAX_PORT and len(skipped) <= MAX_SKIPS:
        if not in_use(host, port):
            return PortChoice(port, tuple(skipped))
        skipped.append(port)
        port += max(1, stride)
    raise SpecError(
        f"no free port for a server on {host}: tried {', '.join(map(str, skipped))}; "
        "pass another --port (servers take port, port+1, ...)"
    )


def server_ports(
    host: str,
    base: int,
    servers: int,
    local_rank: int = 0,
    local_size: int = 1,
    in_use: Callable[[str, int], bool] = port_in_use,
) -> list[PortChoice]:
    """One port per server of this rank (see the module docstring)."""
    stride = servers * local_size
    first = base + local_rank * servers
    if first + servers - 1 > MAX_PORT:
        raise SpecError(
            f"--port {base}: {stride} servers on this node need ports up to "
            f"{base + stride - 1}, beyond {MAX_PORT}; pass a lower --port"
        )
    return [choose_port(host, first + i, stride, in_use) for i in range(servers)]


def free_port(host: str) -> int:
    """A port free on `host` now, chosen by the kernel (for vLLM's master port: any will do,
    and it must not be one the servers take)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(("" if host in ("0.0.0.0", "::") else host, 0))
        port: int = sock.getsockname()[1]
    return port
