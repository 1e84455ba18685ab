"""Reading the JSON documents hpcinfer writes (run.json, bench results) back as typed models,
with errors that name the file and the field that is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hpcinfer.errors import InputError

M = TypeVar("M", bound=BaseModel)


def field_path(location: tuple[int | str, ...]) -> str:
    """('runs', 0, 'metrics', 'completed') -> 'runs[0].metrics.completed'."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the document)"


def invalid(path: Path, exc: ValidationError, what: str) -> InputError:
    """One line per wrong field: where it is, what is wrong, what was found."""
    lines = []
    for error in exc.errors()[:5]:
        found = error.get("input")
        shown = "" if error["type"] == "missing" else f" (found {_short(found)})"
        lines.append(f"  {field_path(tuple(error['loc']))}: {error['msg']}{shown}")
    more = len(exc.errors()) - len(lines)
    if more > 0:
        lines.append(f"  ... and {more} more")
    return InputError(
        f"{path}: not a valid {what}; field(s) wrong:\n"
        + "\n".join(lines)
        + "\nrewrite it with the hpcinfer command that made it, or fix the field(s) named"
    )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_document(path: Path, data: Any, model: type[M], what: str | None = None) -> M:
    """`data` (read from `path`) as `model`; InputError naming the file and fields if not."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(path, exc, what or model.__name__) from None


def read_document(path: Path, model: type[M], what: str | None = None) -> M:
    """Read and validate a JSON document; InputError names the file (and field) at fault."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable {what or model.__name__} ({exc})") from None
    return validate_document(path, data, model, what)
