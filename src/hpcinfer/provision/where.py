"""Is this host the control node? Where a cluster command runs decides where Ansible runs.

Yes when this host can bind a socket to the control node's address (it holds that address),
or its short host name is the control node's name. No flag: a command started on a laptop
forwards itself to the control node, one started on the control node runs there.
"""

from __future__ import annotations

import contextlib
import socket

from hpcinfer.provision.cluster import Cluster


def short_host_name() -> str:
    return socket.gethostname().split(".")[0]


def holds_address(address: str) -> bool:
    """Whether a socket on this host can bind `address` (an IP, or a name resolved here)."""
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _name, sockaddr in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as probe:
            probe.bind((sockaddr[0], 0, *sockaddr[2:]))
            return True
    return False


def is_control_node(cluster: Cluster) -> bool:
    control = cluster.file.control
    return short_host_name() == control.name.split(".")[0] or holds_address(control.address)
