"""The API key from the environment variable that names it: one lookup for servers and clients.

The key itself is only ever returned, never printed, logged or put on a command line; an
error names the variable, not its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from hpcinfer.errors import SpecError

CLIENT_KEY_VAR = "OPENAI_API_KEY"
"""What clients read when no --api-key-env is given (as `vllm bench serve` and the OpenAI
clients do)."""


def resolve_api_key(
    name: str | None,
    env: Mapping[str, str] | None = None,
    *,
    default: str | None = CLIENT_KEY_VAR,
    for_what: str = "",
) -> str | None:
    """The value of the variable `name` (which must then be set), else of `default` when that
    is set, else None. `for_what` ("before `hpcinfer serve`") completes the error's fix."""
    env = os.environ if env is None else env
    if name is None:
        return (env.get(default) or None) if default is not None else None
    value = env.get(name, "")
    if not value:
        where = f" {for_what}" if for_what else ""
        raise SpecError(
            f"--api-key-env {name}: the environment variable ${name} is not set (or empty); "
            f"export {name}=<key>{where} (the key is never put on a command line, in a file "
            "or in a log)"
        )
    return value
