"""A device binding as environment changes, and how a child's environment takes it.

The cluster layer computes the binding for a device group (ZE_AFFINITY_MASK,
CUDA_VISIBLE_DEVICES, ...); core applies it when it starts a child (`processes.bound_env`).
The type lives here, below both, so core needs nothing from cluster.
"""

from __future__ import annotations

from collections.abc import Mapping

BindingEnv = dict[str, str | None]
"""Variable -> value to set, or None to unset it (a binding may remove what the parent had)."""


def apply_env(base: Mapping[str, str], changes: BindingEnv) -> dict[str, str]:
    """`base` with a binding applied: a value sets the variable, None removes it."""
    env = dict(base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
