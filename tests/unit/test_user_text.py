"""What users read names things they know and links nothing outside the repository.

Our private labels for the documents hpcinfer was built from mean nothing to a user: the
README, docs, `--help`, report notes, presets and messages say what a thing is instead
("Aurora-Inferencing's simple_test.py", "the ALCF inference FOM").
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRIVATE_LABEL = re.compile(r"seed[\s_-]*0\d\d", re.IGNORECASE)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)[^)]*\)")
URL = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:`'\")]+)", re.IGNORECASE)
LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "[::1]"}


def user_files() -> list[Path]:
    """Every text file a user reads or runs: README, docs, the package, bench, examples."""
    files = [REPO / "README.md"]
    for folder in ("docs", "src", "bench", "examples"):
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.is_file()]
    # build output (an old egg-info copy of the README, caches) is not what users read
    return [
        p for p in files if "__pycache__" not in p.parts and not p.parts[-2].endswith(".egg-info")
    ]


def markdown_docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # a binary file (a plot, a tokenizer blob) has no prose
        return None


def test_no_private_document_labels_in_user_text() -> None:
    found = []
    for path in user_files():
        text = read_text(path)
        for n, line in enumerate((text or "").splitlines(), 1):
            if PRIVATE_LABEL.search(line):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "say what the thing is, not our private label:\n" + "\n".join(found)


def test_readme_and_docs_link_only_inside_the_repository() -> None:
    found = []
    for path in markdown_docs():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(REPO)
        if "../shared" in text:
            found.append(f"{where}: mentions ../shared (not part of the project)")
        for host in URL.findall(text):
            if host.lower() not in LOCAL_HOSTS:
                found.append(f"{where}: URL to {host}")
        for target in MARKDOWN_LINK.findall(text):
            if target.startswith("#") or "://" in target:
                continue  # in-page anchors; URLs are checked above
            local = (path.parent / target.split("#")[0]).resolve()
            if not local.is_relative_to(REPO) or not local.exists():
                found.append(f"{where}: link to {target} (not a file in the repository)")
    assert not found, "README and docs link nothing outside the repository:\n" + "\n".join(found)
