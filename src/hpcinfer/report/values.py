"""Reading numbers out of result documents, and writing them for people.

Result files come from several benchmarks and several hpcinfer versions, so every figure is
optional: a missing, null or non-numeric value reads as None and prints as "n/a", never as
an invented 0. Secrets are the producers' job to leave out; the redaction here is a second
line of defence for a command line or config copied into a page people share.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

NA = "n/a"

_SECRET_NAMES = frozenset({"api_key", "apikey", "password", "secret", "token", "authorization"})
_SECRET_FLAGS = ("--api-key", "--password", "--token", "--hf-token")


def num(value: Any) -> float | None:
    """A finite number, or None (missing, null, text, bool, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def get_num(mapping: Mapping[str, Any] | None, key: str) -> float | None:
    """`mapping[key]` as a number, or None when the mapping or the key is missing."""
    if not isinstance(mapping, Mapping):
        return None
    return num(mapping.get(key))


def fmt(value: Any, unit: str = "") -> str:
    """A figure with as many digits as a person needs: 12,345 / 123 / 12.3 / 1.23 / 0.0123.

    Whole numbers (ints) print exactly with thousands separators; None prints "n/a"; text
    prints as it is (the template escapes it).
    """
    if value is None:
        return NA
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        text = f"{value:,}"
    elif not math.isfinite(value):
        return NA
    else:
        size = abs(value)
        if size == 0:
            text = "0"
        elif size >= 1000:
            text = f"{value:,.0f}"
        elif size >= 100:
            text = f"{value:.0f}"
        elif size >= 10:
            text = f"{value:.1f}"
        elif size >= 1:
            text = f"{value:.2f}"
        else:
            text = f"{value:.3g}"
    return f"{text} {unit}" if unit else text


def fmt_count(value: Any) -> str:
    """A count (completed, tokens): exact, even when JSON stored it as 12.0."""
    number = num(value)
    if number is None:
        return fmt(value) if value is not None else NA
    return f"{round(number):,}" if number == round(number) else fmt(number)


def fmt_pct(fraction: float | None) -> str:
    """0.123 -> '12.3%'; small shares keep two significant digits ('0.042%')."""
    if fraction is None:
        return NA
    percent = fraction * 100
    return f"{percent:.1f}%" if abs(percent) >= 1 or percent == 0 else f"{percent:.2g}%"


def fmt_flops(value: float | None) -> str:
    """FLOP/s with an SI prefix: '3.21 TFLOP/s'."""
    if value is None:
        return NA
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}FLOP/s"
    return f"{value:.3g} FLOP/s"


def is_secret(name: str) -> bool:
    """Whether a config key names a secret (api_key, hf_token, password, ...), by whole words:
    `max_tokens` is not one, `api_key_env` (a variable's name) is not either."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(
        ("_api_key", "_password", "_secret", "_token")
    )


def command_line(argv: Any) -> str:
    """The recorded argv as one shell line, `hpcinfer ...` first, secret flag values masked."""
    if not isinstance(argv, Sequence) or isinstance(argv, str) or not argv:
        return NA if not argv else str(argv)
    words = [str(word) for word in argv]
    first = os.path.basename(words[0])
    if first in ("hpcinfer", "__main__.py", "-m"):
        words[0] = "hpcinfer"
    shown: list[str] = []
    mask_next = False
    for word in words:
        if mask_next:
            shown.append("***")
            mask_next = False
            continue
        flag, eq, _ = word.partition("=")
        if flag in _SECRET_FLAGS:
            if eq:
                shown.append(f"{flag}=***")
            else:
                shown.append(word)
                mask_next = True
            continue
        shown.append(word)
    return shlex.join(shown)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted keys, in order: {'a': {'b': 1}} -> [('a.b', 1)]; secrets
    masked. Lists stay whole (shown as text)."""
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(flatten(value, f"{name}."))
        elif is_secret(str(key)) and value not in (None, ""):
            items.append((name, "***"))
        else:
            items.append((name, value))
    return items


def show_value(value: Any) -> str:
    """A config value as text, exact (it is a setting, not a measurement); lists joined."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return ", ".join(show_value(item) for item in value) or "(none)"
    if isinstance(value, Mapping):
        return "(empty)"
    return str(value)
