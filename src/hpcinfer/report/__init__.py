"""`hpcinfer report`: a benchmark results directory as one self-contained HTML page.

The page reads the files every benchmark writes (see `hpcinfer.bench.results`): a section
per file present, each opening with a plain-language reading of its numbers, then tables and
PNG plots (matplotlib, imported only when drawing).
"""

from hpcinfer.report.html import read_documents, render_report, write_report

__all__ = ["read_documents", "render_report", "write_report"]
