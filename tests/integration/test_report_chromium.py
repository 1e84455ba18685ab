"""The HTML report opens in a real browser (headless Chromium, Debian's `chromium`) and its
screenshot shows the plots.

The page is grey on white and every plot uses fixed saturated colours (see
hpcinfer.report.plots), so each plot can be found by counting its colour's pixels. The same
page with the image data removed is the control: the counts must come from the rendered
PNGs, not from anything else on the page, so a broken image fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcinfer.report.plots import CASE_COLOURS, ITERATION_COLOUR, METRIC_COLOURS, PERCENTILE_COLOURS
from tests.apt import apt_install
from tests.conftest import hpcinfer_cmd, require
from tests.report_docs import write_documents

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 1200, 5200  # tall enough for the whole page with all three sections
TOLERANCE = 3  # per channel: PNG colours arrive exact; anti-aliased edges do not count
PLOT_COLOURS = {  # a colour only that plot uses, and the pixels it covers at the least
    "latency curve (TTFT lines)": (METRIC_COLOURS["ttft"], 800),  # about 2,000 drawn
    "latency curve (E2EL lines)": (METRIC_COLOURS["e2el"], 800),
    "percentile bars (p90)": (PERCENTILE_COLOURS[1], 20_000),  # about 100,000 drawn
    "offline iterations": (ITERATION_COLOUR, 20_000),
    "FOM breakdown (FOM1)": (CASE_COLOURS[0], 20_000),
    "FOM breakdown (FOM2)": (CASE_COLOURS[1], 5_000),
}


@pytest.fixture(scope="module")
def chromium() -> str:
    problem = apt_install(["chromium", "fonts-dejavu-core"], ["chromium"], recommends=False)
    require("Chromium (Debian's chromium package)", problem is None, problem or "")
    path = shutil.which("chromium")
    assert path is not None
    return path


def screenshot(browser: str, page: Path, png: Path) -> None:
    """Headless Chromium (new headless mode, Chromium >= 112) draws `page` into `png`."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--no-first-run",
        f"--user-data-dir={png.parent / (png.stem + '-profile')}",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and png.exists(), (
        f"chromium exit {done.returncode}, no screenshot:\n{done.stderr[-3000:]}"
    )


def colour_pixels(png: Path, colours: dict[str, str]) -> dict[str, int]:
    """How many pixels of each named colour the screenshot holds."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (WIDTH, HEIGHT)
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    counts = {}
    for name, colour in colours.items():
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        counts[name] = int((np.abs(pixels - rgb) <= TOLERANCE).all(axis=2).sum())
    return counts


def report_screenshots(
    browser: str, results: Path, tmp_path: Path, plots: int
) -> tuple[str, Path, Path]:
    """`hpcinfer report RESULTS` (its page must hold `plots` images), and screenshots of the
    page and of the control: the same page with the image data removed."""
    report = tmp_path / "report.html"
    done = subprocess.run(
        hpcinfer_cmd("report", str(results), "--out", str(report)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    page = report.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == plots

    control = tmp_path / "no-images.html"
    control.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page), "utf-8")
    shown, blank = tmp_path / "report.png", tmp_path / "no-images.png"
    screenshot(browser, report, shown)
    screenshot(browser, control, blank)
    return page, shown, blank


def test_screenshot_shows_every_plot(chromium: str, tmp_path: Path) -> None:
    results = write_documents(tmp_path / "results")
    _, shown, blank = report_screenshots(chromium, results, tmp_path, plots=4)
    colours = {name: colour for name, (colour, _) in PLOT_COLOURS.items()}
    with_plots, without = colour_pixels(shown, colours), colour_pixels(blank, colours)
    for name, (_, least) in PLOT_COLOURS.items():
        assert with_plots[name] >= least, f"{name} not drawn (see {shown}): {with_plots}"
        assert without[name] <= 20, f"{name}'s colour is on the page itself: {without}"


def test_screenshot_shows_the_profile_scaling_plot(chromium: str, tmp_path: Path) -> None:
    """A profiling study's report (`hpcinfer profile summary` then `hpcinfer report`) shows
    the scaling plot: its first model's line colour is drawn, and only by the image."""
    from hpcinfer.profile.scaling_plot import MODEL_COLOURS
    from hpcinfer.profile.summary import write_summary
    from tests.profile_runs import analysis, profile_result, write_run

    runs = [
        write_run(
            tmp_path / "experiments",
            profile_result(f"tp{tp}", tokens_per_s=900 * tp, tp=tp),
            analysis(tp, comm_pct=10.0 * (tp - 1), straggler=tp - 1 if tp > 1 else None),
        )
        for tp in (1, 2, 4)
    ]
    study = tmp_path / "study"
    write_summary(runs, study)
    page, shown, blank = report_screenshots(chromium, study, tmp_path, plots=1)
    assert '<section id="profile">' in page and "rank 3 holds the others back" in page
    colours = {"scaling plot lines": MODEL_COLOURS[0]}
    drawn, without = colour_pixels(shown, colours), colour_pixels(blank, colours)
    assert drawn["scaling plot lines"] >= 3_000, f"not drawn (see {shown}): {drawn}"
    assert without["scaling plot lines"] <= 20, f"the colour is on the page itself: {without}"
