"""Where each cluster command runs: here on the control node, else forwarded to it.

Every `cluster` command but `sync` (which copies from here) comes through `on_control`: on
the control node (see `where`) it calls the local function; elsewhere it forwards the same
command (see `remote`) and turns the result the control node reported back into the same
typed model, so a caller sees one result whichever way it went.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from pydantic import BaseModel

from hpcinfer.core.stop import StopSignal
from hpcinfer.provision.cluster import Cluster
from hpcinfer.provision.following import LineSink
from hpcinfer.provision.remote import forward
from hpcinfer.provision.where import is_control_node

Result = TypeVar("Result", bound=BaseModel)


def on_control(
    cluster: Cluster,
    model: type[Result],
    local: Callable[[], Result],
    forwarded: tuple[str, Sequence[str], Sequence[str]],
    env: Mapping[str, str],
    *,
    here: bool | None = None,
    note: LineSink | None = None,
    stop: StopSignal | None = None,
) -> Result:
    """`local()` on the control node, else `hpcinfer cluster COMMAND OPTIONS -- OPERANDS`
    (`forwarded`) run there; `here` (None: find out) says which this host is."""
    if here is None:
        here = is_control_node(cluster)
    if here:
        return local()
    command, options, operands = forwarded
    _code, found = forward(cluster, command, options, operands, env, note=note, stop=stop)
    return model.model_validate(found)
