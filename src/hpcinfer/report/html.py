"""Render a benchmark results directory as one self-contained HTML page.

Self-contained means one file a person can mail or attach to a ticket: CSS inline, plots as
base64 PNG data URIs, no JavaScript, nothing fetched from the network. Every value reaches
the page through Jinja2 with autoescaping on, so a model name or error text holding markup
shows as text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from hpcinfer.bench.documents import validate_result
from hpcinfer.bench.results import RESULT_KINDS, load_results
from hpcinfer.errors import InputError
from hpcinfer.outputs.atomic import write_text_atomic
from hpcinfer.profile.summary import SUMMARY_FILE
from hpcinfer.report.fom_section import fom_section
from hpcinfer.report.header import model_name, run_info
from hpcinfer.report.offline_section import offline_section
from hpcinfer.report.page import Section
from hpcinfer.report.profile_section import profile_section
from hpcinfer.report.serve_section import serve_section

SectionBuilder = Callable[[Path, Mapping[str, Any]], Section]
SECTIONS: dict[str, SectionBuilder] = {
    "serve": serve_section,
    "offline": offline_section,
    "fom": fom_section,
}
"""Page order: the serving sweep first (the figure most people look for), then offline, FOM."""

DEFAULT_NAME = "report.html"


def read_documents(directory: Path, required: bool = True) -> list[tuple[Path, dict[str, Any]]]:
    """The result documents of `directory` with their paths; InputError (exit 2) naming the
    directory or file when one cannot be read, or when there is none and `required`."""
    if not directory.exists():
        raise InputError(
            f"{directory} does not exist: give the --out directory of a benchmark run "
            "(`hpcinfer bench serve|offline|fom --out DIR`)"
        )
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory: give a benchmark's --out directory")
    try:
        documents = load_results(directory)
    except ValueError as exc:
        raise InputError(f"{exc}; rerun the benchmark to write it again") from None
    if not documents and required:
        looked = ", ".join(kind + ".json" for kind in RESULT_KINDS)
        raise InputError(
            f"no benchmark results in {directory}: looked for {looked} and "
            f"{SUMMARY_FILE}; run e.g. `hpcinfer bench serve --out {directory}` or "
            f"`hpcinfer profile summary RUN_DIR... -o {directory}` first"
        )
    found = [(directory / f"{document['kind']}.json", document) for document in documents]
    for path, document in found:
        validate_result(path, document)  # InputError naming the file and the field
    return found


def _section(path: Path, document: Mapping[str, Any]) -> Section:
    try:
        return SECTIONS[str(document["kind"])](path, document)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(
            f"{path}: cannot be read as a {document['kind']} result ({type(exc).__name__}: "
            f"{exc}); rerun the benchmark to write it again"
        ) from exc


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hpcinfer.report", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=True,  # every value is text to show, never markup
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(directory: Path) -> str:
    """The HTML page for the results in `directory`."""
    from hpcinfer import __version__

    profile = profile_section(directory) if directory.is_dir() else None
    documents = read_documents(directory, required=profile is None)
    by_kind = {str(document["kind"]): (path, document) for path, document in documents}
    sections = [_section(*by_kind[kind]) for kind in SECTIONS if kind in by_kind]
    sections += [profile] if profile is not None else []
    models = list(
        dict.fromkeys(m for _, d in documents if (m := model_name(d.get("config"))) is not None)
    )
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            directory=str(directory),
            kinds=[section.kind for section in sections],
            models=models,
            runs=[run_info(path, document) for path, document in documents],
            sections=sections,
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            version=__version__,
        )
    )


def write_report(directory: Path, out: Path | None = None) -> Path:
    """Render `directory`'s results into `out` (default DIR/report.html), atomically."""
    target = out if out is not None else directory / DEFAULT_NAME
    page = render_report(directory)
    if target.is_dir():
        raise InputError(f"--out {target} is a directory: give a file, e.g. {target}/report.html")
    write_text_atomic(target, page)
    return target
