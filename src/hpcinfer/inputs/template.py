"""Prompt templates: build each prompt from a record's fields with Jinja2.

Sandboxed, because a template may come from someone else's job spec; strict about undefined
names, because a misspelt field must fail loudly instead of silently becoming an empty string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from hpcinfer.errors import InputError

_UNDEFINED_NAME = re.compile(r"^'([^']+)' is undefined$")
_MAX_LISTED = 20


class TemplateRenderError(ValueError):
    """The template failed for one record; the reader turns it into that record's error row."""


class TemplateFieldError(TemplateRenderError):
    """The template uses a field this record does not have."""

    def __init__(self, field: str | None, available: Iterable[str], detail: str = "") -> None:
        self.field = field
        self.available = list(available)
        what = f"field {field!r}" if field is not None else f"something missing ({detail})"
        super().__init__(
            f"template uses {what}, which this record does not have "
            f"(available fields: {describe_names(self.available)}); "
            "fix the template or add the field to the input"
        )


class PromptTemplate:
    """A compiled prompt template; `render` turns one record's fields into a prompt string."""

    def __init__(self, source: str, *, name: str = "the prompt template") -> None:
        if not source.strip():
            raise InputError(f"{name} is empty; give template text or @path/to/template.j2")
        env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        try:
            self._template = env.from_string(source)
            self.variables = frozenset(meta.find_undeclared_variables(env.parse(source)))
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(
                f"{name} does not compile: {exc.message} (template line {exc.lineno}); "
                "fix the Jinja2 syntax"
            ) from exc
        self.source = source

    def render(self, fields: Mapping[str, Any]) -> str:
        """The prompt for one record. Raises TemplateRenderError (one bad record, not the run)."""
        try:
            return self._template.render(dict(fields))
        except jinja2.UndefinedError as exc:
            match = _UNDEFINED_NAME.match(str(exc))
            name = match.group(1) if match else None
            raise TemplateFieldError(name, fields.keys(), str(exc)) from exc
        except Exception as exc:  # user template code: any failure is this record's error
            raise TemplateRenderError(
                f"template failed: {type(exc).__name__}: {exc}; fix the template"
            ) from exc

    @classmethod
    def from_option(cls, value: str | None) -> PromptTemplate | None:
        """Template from an option value: inline text, or '@path/to/file.j2' to read a file."""
        if value is None:
            return None
        if not value.startswith("@"):
            return cls(value)
        path = Path(value[1:]).expanduser()
        if not value[1:].strip():
            raise InputError("template option '@' names no file; write @path/to/template.j2")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise InputError(
                f"template file {str(path)!r} does not exist; check the path after '@'"
            ) from exc
        except UnicodeDecodeError as exc:
            raise InputError(
                f"template file {str(path)!r} is not valid UTF-8; re-save it as UTF-8"
            ) from exc
        except OSError as exc:
            raise InputError(f"cannot read template file {str(path)!r}: {exc.strerror}") from exc
        return cls(text, name=f"template file {str(path)!r}")


def describe_names(names: Iterable[str]) -> str:
    """A short comma list of field or column names for messages (long lists are cut)."""
    listed = list(names)
    if not listed:
        return "none"
    shown = ", ".join(repr(name) for name in listed[:_MAX_LISTED])
    more = len(listed) - _MAX_LISTED
    return f"{shown}, and {more} more" if more > 0 else shown
