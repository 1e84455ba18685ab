"""The address a node gives Ray: the IPv4 address of a chosen interface, read on the node.

Every node must be reached on the network the job uses (the high-speed one on a
supercomputer), and vLLM, Gloo and NCCL must agree with Ray about it; a node whose Ray
address differs from VLLM_HOST_IP leaves vLLM's placement group unsatisfiable while
`ray status` looks fine. So the interface is named once (`--interface`, else the hardware
profile's `network_interface`) and each node reads its own address on it; with none named,
the address the node's host name resolves to.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Callable

from hpcinfer.errors import HardwareError

_SIOCGIFADDR = 0x8915
_IFNAMSIZ = 16


def interface_address(interface: str) -> str:
    """The IPv4 address of `interface` on this node (Linux SIOCGIFADDR)."""
    if not interface or len(interface.encode()) >= _IFNAMSIZ or "/" in interface:
        raise HardwareError(f"--interface {interface!r} is not an interface name")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(
                probe.fileno(), _SIOCGIFADDR, struct.pack("256s", interface.encode())
            )
        except OSError as exc:
            known = ", ".join(name for _, name in socket.if_nameindex())
            raise HardwareError(
                f"interface {interface!r} on {socket.gethostname()} has no IPv4 address "
                f"({exc.strerror}); interfaces here: {known}; pass --interface with one of them"
            ) from None
    return socket.inet_ntoa(packed[20:24])


def route_address() -> str | None:
    """The address this node sends from on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
            return str(probe.getsockname()[0])
        except OSError:
            return None


def hostname_address(resolve: Callable[[str], str] = socket.gethostbyname) -> str:
    """The address this node's host name resolves to; where that is a loopback address
    (Debian's 127.0.1.1), the default route's, as Ray would pick: other nodes cannot
    reach a loopback address."""
    name = socket.gethostname()
    try:
        address = resolve(name)
    except OSError as exc:
        raise HardwareError(
            f"host name {name!r} does not resolve ({exc}); pass --interface (e.g. hsn0)"
        ) from None
    if address.startswith("127."):
        return route_address() or address
    return address


def node_address(interface: str | None) -> str:
    """This node's address for Ray: the interface's, or the host name's when none is named."""
    return interface_address(interface) if interface else hostname_address()
