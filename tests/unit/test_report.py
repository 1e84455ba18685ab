"""`hpcinfer report`: the HTML page shows the benchmark's figures, embeds real PNG plots,
escapes what it shows, stands alone, and fails with exit 2 naming what is wrong."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hpcinfer.bench.results import write_result
from hpcinfer.report import render_report
from tests.harness import Ran, call_main
from tests.report_docs import fom_document, offline_document, serve_document, write_documents

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="(\d+)" height="(\d+)"')


class _Tables(HTMLParser):
    """Every table of the page as {'title': the h3 before it, 'rows': [[cell text]]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self._title = ""
        self._in: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append({"title": self._title, "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        if tag in ("h3", "th", "td"):
            self._in, self._text = tag, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3" and self._in == "h3":
            self._title = self._text.strip()
        elif tag in ("th", "td") and self._in == tag:
            self.tables[-1]["rows"][-1].append(self._text.strip())
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data


def tables(page: str) -> dict[str, list[dict[str, str]]]:
    """Titled tables as lists of {column: cell}."""
    parser = _Tables()
    parser.feed(page)
    found = {}
    for table in parser.tables:
        if table["title"] and table["rows"]:
            header, *rows = table["rows"]
            found[table["title"]] = [dict(zip(header, row, strict=True)) for row in rows]
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", "").split()[0].rstrip("%"))


def close(cell: str, value: float) -> bool:
    """The cell shows `value` rounded for people (3 significant digits or better)."""
    return abs(number(cell) - value) <= max(abs(value) * 0.006, 0.0006)


def pngs(page: str) -> list[tuple[bytes, int, int]]:
    return [(base64.b64decode(b64), int(w), int(h)) for b64, w, h in IMG.findall(page)]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with all three result files (rendering takes seconds: made once)."""
    return write_documents(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def page(full: Path) -> str:
    return render_report(full)


# -- what the page shows ---------------------------------------------------------------------


def test_serve_tables_show_every_point_figures(full: Path, page: str) -> None:
    document = json.loads((full / "serve.json").read_text())
    found = tables(page)
    throughput, latency = found["Throughput per load point"], found["Latency per load point"]
    assert [row["load"] for row in latency] == ["1 req/s", "4 req/s", "8 req/s", "16 req/s"]
    for run, trow, lrow in zip(document["runs"], throughput, latency, strict=True):
        metrics = run["metrics"]
        assert number(trow["completed"]) == metrics["completed"]
        assert number(trow["failed"]) == metrics["failed"]
        assert close(trow["req/s"], metrics["request_throughput"])
        assert close(trow["output tok/s"], metrics["output_throughput"])
        assert close(trow["goodput (req/s)"], metrics["request_goodput"])
        assert close(trow["send lag p99 (ms)"], metrics["p99_send_lag_ms"])
        for name in ("ttft", "tpot", "itl", "e2el"):
            for stat in ("mean", "median", "p99"):
                assert close(lrow[f"{name.upper()} {stat}"], metrics[f"{stat}_{name}_ms"])
    assert found["Errors"] == [
        {"load": "16 req/s", "error": "HTTP 503: Service Unavailable", "requests": "2"}
    ]
    server = {
        row["metric (Prometheus /metrics)"]: row for row in found["Server metrics at 16 req/s"]
    }
    assert list(server)[:3] == ["requests waiting (the queue)", "requests running", "KV-cache use"]
    assert (
        server["requests waiting (the queue)"]["before"],
        server["requests waiting (the queue)"]["after"],
    ) == ("0", "6")
    assert server["KV-cache use"]["after"] == "25.0%"  # a share, averaged over the endpoints
    delta = document["runs"][-1]["server_metrics"]["delta"]["total"]
    grown = server["generated tokens (counter)"]["during the point"]
    assert number(grown) == delta["generation_tokens_total"]
    assert "servers' own mean TTFT (ms)" in server
    assert "Server metrics at 1 req/s" not in found  # that point recorded none


def test_reading_says_where_the_servers_stopped_keeping_up(full: Path, page: str) -> None:
    reading = re.search(r'<section id="serve">.*?<p class="reading">(.*?)</p>', page, re.S)
    assert reading is not None
    text = reading.group(1)
    document = json.loads((full / "serve.json").read_text())
    worst = document["runs"][-1]["metrics"]
    assert "Up to 8 req/s the servers kept up" in text
    assert f"at 16 req/s requests waited: median TTFT rose to {worst['median_ttft_ms']:.0f} ms" in (
        text
    )
    assert "2 requests failed (at 16 req/s)" in text
    assert "Under the SLO (TTFT ≤ 500 ms, TPOT ≤ 50 ms)" in text
    assert "fell behind its schedule" in text


def test_offline_and_fom_figures(full: Path, page: str) -> None:
    found = tables(page)
    offline = {row["figure"]: row["value"] for row in found["Offline figures"]}
    result = json.loads((full / "offline.json").read_text())["result"]
    assert close(offline["throughput (input + output tokens/s)"], result["throughput"])
    assert close(offline["latency p99 (s)"], result["latency_s"]["p99"])
    assert offline["FLOP FOM (ALCF FOM estimate)"] == "3.2 TFLOP/s"
    assert offline["MFU (model FLOPs utilisation)"].startswith("n/a")
    assert "the first iteration, a warm-up effect" in page

    fom = json.loads((full / "fom.json").read_text())
    rows = found["FOM cases"]
    assert [row["case"] for row in rows] == ["FOM1", "FOM2", "FOM3", "FOM (sum)"]
    for case, row in zip(fom["cases"], rows[:3], strict=True):
        assert close(row["throughput (tok/s)"], case["throughput"])
        assert row["MFU"] == "n/a"
    assert close(rows[-1]["throughput (tok/s)"], fom["fom"]["throughput"])
    shares = [number(row["share of FOM"]) for row in rows[:3]]
    assert sum(shares) == pytest.approx(100, abs=0.2)


def test_engine_start_up_phases(page: str) -> None:
    found = tables(page)
    (offline,) = found["Engine start-up (s)"]
    assert offline["imports"] == "2.92" and offline["KV cache"] == "2.52"
    assert offline["total"] == "12.1"
    assert "its longest phase was imports (2.92 s)" in page
    fom = found["FOM engines' start-up (s)"]
    assert [row["engine"] for row in fom] == ["max-model-len 512", "max-model-len 2048"]
    assert fom[1]["model load"] == "n/a" and fom[1]["total"] == "9.50"  # never guessed


def test_fom_with_a_peak_shows_mfu(tmp_path: Path) -> None:
    write_result(tmp_path, fom_document(peak_tflops=0.001))
    rows = tables(render_report(tmp_path))["FOM cases"]
    assert all(row["MFU"].endswith("%") for row in rows[:3])


def test_plots_are_embedded_valid_pngs(page: str) -> None:
    from PIL import Image

    images = pngs(page)
    assert len(images) == 4  # serve curve + percentile bars, offline latency, FOM breakdown
    for data, width, height in images:
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.size == (width, height)
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 50  # drawn, not a blank canvas


def test_page_stands_alone(page: str) -> None:
    assert "<script" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page
    assert not re.search(r'(src|href)="(?!data:image/png;base64,)', page)


# -- escaping, secrets, odd and partial inputs -----------------------------------------------


def test_odd_strings_are_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>'
    serve = serve_document(model=evil)
    serve["runs"][-1]["errors"] = {"<img src=x onerror=alert(1)>": 2}
    serve["runs"][0]["label"] = "<b>bold</b>"
    serve["runs"][0]["load"] = {}  # the label is all there is to call it
    write_result(tmp_path, serve)
    write_result(tmp_path, fom_document(model=evil))
    page = render_report(tmp_path)
    assert "<script" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert len(pngs(page)) == 3


def test_secrets_never_reach_the_page(page: str) -> None:
    assert "SECRET" not in page
    assert "--api-key &#39;***&#39;" in page  # the command line, quoted for a shell
    assert re.search(r"<th>api_key</th><td>\*\*\*</td>", page)  # the configuration


def test_only_fom(tmp_path: Path) -> None:
    write_documents(tmp_path, "fom")
    page = render_report(tmp_path)
    assert '<section id="fom">' in page
    assert '<section id="serve">' not in page and '<section id="offline">' not in page
    assert len(pngs(page)) == 1


def test_missing_optional_figures_show_na(tmp_path: Path) -> None:
    serve = serve_document(rates=(4,))
    metrics = serve["runs"][0]["metrics"]
    del metrics["p99_itl_ms"]
    metrics["tpot_count"] = 0  # every answer had one token: the 0.0 is not a measurement
    metrics["request_goodput"] = None
    write_result(tmp_path, serve)
    offline = offline_document()
    offline["result"]["flops_per_s"] = None
    del offline["result"]["iterations_s"]
    write_result(tmp_path, offline)
    page = render_report(tmp_path)
    row = tables(page)["Latency per load point"][0]
    assert row["ITL p99"] == "n/a" and row["TPOT mean"] == "n/a" and row["TTFT p99"] != "n/a"
    assert tables(page)["Throughput per load point"][0]["goodput (req/s)"] == "n/a"
    assert "One load point (40 requests at 4 req/s" in page
    offline_rows = {r["figure"]: r["value"] for r in tables(page)["Offline figures"]}
    assert offline_rows["FLOP FOM (ALCF FOM estimate)"] == "n/a"
    assert offline_rows["iterations measured"] == "n/a"


def test_concurrency_and_all_at_once_points_are_named(tmp_path: Path) -> None:
    serve = serve_document(rates=(1, 4))
    serve["runs"][0]["load"] = {"mode": "concurrency", "rate": None, "max_concurrency": 4}
    serve["runs"][1]["load"] = {"mode": "all-at-once", "rate": None, "max_concurrency": None}
    serve["runs"][0]["server_metrics"] = {  # a flat before/after, as results.py allows
        "before": {"vllm:num_requests_waiting": 2.0, "vllm:custom_gauge": 1.5},
        "after": {"vllm:num_requests_waiting": 0.0, "vllm:custom_gauge": 4.0},
        "delta": {},
    }
    write_result(tmp_path, serve)
    found = tables(render_report(tmp_path))
    rows = found["Latency per load point"]
    assert [row["load"] for row in rows] == ["concurrency 4", "all at once"]
    server = found["Server metrics at concurrency 4"]
    assert [list(row.values()) for row in server] == [
        ["requests waiting (the queue)", "2", "0", ""],
        ["custom_gauge", "1.50", "4", "2.50"],
    ]


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def hpcinfer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Ran]:
    """The `hpcinfer` entry point run in this process, as a shell would run it."""

    def run(*args: str) -> Ran:
        ran = call_main(args, monkeypatch, capsys, width=None)
        return replace(ran, err=" ".join(ran.err.split()))

    return run


def test_cli_writes_the_default_and_given_paths(
    tmp_path: Path, hpcinfer: Callable[..., Ran]
) -> None:
    results = write_documents(tmp_path / "results", "fom")
    ran = hpcinfer("report", str(results))
    assert ran.code == 0, ran.err
    assert ran.out.strip() == str(results / "report.html")
    assert (results / "report.html").read_text().startswith("<!DOCTYPE html>")
    target = tmp_path / "elsewhere" / "report.html"
    ran = hpcinfer("report", str(results), "-o", str(target.parent))
    assert ran.code == 0 and ran.out.strip() == str(target)
    assert target.stat().st_mode & 0o044  # others may read a report made to be shared
    named = tmp_path / "elsewhere" / "sweep.html"  # the old spelling: --out names the page
    ran = hpcinfer("report", str(results), "--out", str(named))
    assert ran.code == 0 and ran.out.strip() == str(named) and named.is_file()


def test_cli_missing_directory(tmp_path: Path, hpcinfer: Callable[..., Ran]) -> None:
    ran = hpcinfer("report", str(tmp_path / "nope"))
    assert ran.code == 2
    assert f"{tmp_path / 'nope'} does not exist" in ran.err


def test_cli_no_results_lists_what_it_looked_for(
    tmp_path: Path, hpcinfer: Callable[..., Ran]
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    ran = hpcinfer("report", str(tmp_path))
    assert ran.code == 2
    assert "no benchmark results in" in ran.err
    assert "offline.json, serve.json, fom.json" in ran.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "not a readable result file"),
        (json.dumps({"kind": "offline"}), "not a serve result"),
        (json.dumps({"kind": "serve", "runs": {"a": 1}}), "runs: Input should be a valid list"),
        (json.dumps({"kind": "serve", "runs": [{"metrics": None}]}), "runs[0].metrics: Input"),
        (json.dumps({"kind": "serve", "runs": [{}]}), "runs[0].metrics: Field required"),
        (
            json.dumps({"kind": "serve", "runs": [{"metrics": {}, "load": {"rate": "fast"}}]}),
            "runs[0].load.rate: Input should be a valid number",
        ),
    ],
)
def test_cli_malformed_file_is_named(
    tmp_path: Path, hpcinfer: Callable[..., Ran], text: str, expected: str
) -> None:
    write_documents(tmp_path, "fom")
    (tmp_path / "serve.json").write_text(text)
    ran = hpcinfer("report", str(tmp_path))
    assert ran.code == 2
    assert str(tmp_path / "serve.json") in ran.err
    assert expected in ran.err
    assert not (tmp_path / "report.html").exists()


def test_cli_help_has_an_example(hpcinfer: Callable[..., Ran]) -> None:
    ran = hpcinfer("report", "--help")
    assert ran.code == 0
    assert "hpcinfer report bench-out -o pages" in " ".join(ran.out.split())
