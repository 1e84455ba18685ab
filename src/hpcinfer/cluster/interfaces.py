"""This node's address on a chosen network interface, read on the node itself.

Ranks of one server spanning nodes must talk over the same network: a node whose address
differs from the one its peers use leaves vLLM waiting, and Gloo on the wrong interface
hangs start-up (vLLM issues 5094, 7074, 7815). So each node reads its own address from the
interface the user names (`--interface hsn0`), and without one takes its host name's
address and the interface that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from dataclasses import dataclass

from hpcinfer.errors import HardwareError

_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


@dataclass(frozen=True)
class NodeNetwork:
    """Where this node is reached: its IPv4 address and the interface holding it (None when
    no interface of this node holds the address its host name resolves to)."""

    address: str
    interface: str | None


def interface_names() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def _ioctl_address(name: str) -> str | None:
    import fcntl

    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return None
            raise
    return socket.inet_ntoa(answer[20:24])


def interface_address(name: str) -> str:
    """The IPv4 address of interface `name` on this node; HardwareError naming the node's
    interfaces when it has none by that name, or no address on it."""
    host = socket.gethostname()
    names = interface_names()
    if name not in names:
        raise HardwareError(
            f"--interface {name}: {host} has no such network interface (it has "
            f"{', '.join(names) or 'none'}); pass the interface of the network the nodes "
            "share (e.g. the high-speed network's)"
        )
    address = _ioctl_address(name)
    if address is None:
        raise HardwareError(
            f"--interface {name}: the interface has no IPv4 address on {host}; pass an "
            f"interface that has one ({', '.join(names)})"
        )
    return address


def interface_holding(address: str) -> str | None:
    """The interface of this node holding `address`, if any."""
    for name in interface_names():
        with contextlib.suppress(OSError):
            if _ioctl_address(name) == address:
                return name
    return None


def route_address() -> str | None:
    """The address this node sends from on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
            return str(probe.getsockname()[0])
        except OSError:
            return None


def node_network(interface: str | None) -> NodeNetwork:
    """This node's address on `interface`, else its host name's address (where that is a
    loopback address, as Debian's 127.0.1.1, the default route's: other nodes cannot reach
    a loopback address), and the interface holding it."""
    if interface:
        return NodeNetwork(interface_address(interface), interface)
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError as exc:
        raise HardwareError(
            f"cannot resolve this node's host name {host!r} ({exc}); pass --interface NAME "
            f"(this node has {', '.join(interface_names())})"
        ) from None
    if address.startswith("127."):
        address = route_address() or address
    return NodeNetwork(address, interface_holding(address))
