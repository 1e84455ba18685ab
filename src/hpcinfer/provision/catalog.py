"""The cluster files shipped with hpcinfer, addressed NAME@VERSION (e.g. a770-cluster@0.1).

They are package data (provision/clusters/NAME/VERSION.yaml), read through importlib.resources,
so a plain pip install finds them; a user's own file is given by its path instead.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from hpcinfer.errors import SpecError

_SUFFIX = ".yaml"


def _clusters_dir() -> Any:
    return resources.files("hpcinfer.provision").joinpath("clusters")


def shipped_clusters() -> list[str]:
    """Every shipped cluster file as NAME@VERSION, sorted."""
    found = []
    for folder in _clusters_dir().iterdir():
        if folder.is_dir():
            found += [
                f"{folder.name}@{entry.name[: -len(_SUFFIX)]}"
                for entry in folder.iterdir()
                if entry.name.endswith(_SUFFIX)
            ]
    return sorted(found)


def is_shipped_address(value: str) -> bool:
    """NAME@VERSION with no path separator: an address in the catalog, not a file."""
    return "@" in value and "/" not in value and not value.endswith((".yaml", ".yml"))


def shipped_text(address: str) -> str:
    """The YAML text of a shipped cluster file; an unknown address lists the known ones."""
    name, _, version = address.partition("@")
    known = shipped_clusters()
    if address not in known:
        raise SpecError(
            f"no shipped cluster file {address}; shipped: {', '.join(known)} "
            "(or give the path to your own cluster file)"
        )
    return str(_clusters_dir().joinpath(name, version + _SUFFIX).read_text("utf-8"))
