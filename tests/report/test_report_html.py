"""report.html in a real headless browser (Chromium) at 1280 x 800: nothing wider than the window, every figure
loaded. Skipped, saying so, where no Chromium is installed (CI installs it: .ci/run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import find_chromium, measure_page

from resgrad.report.page import make_report

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="needs a headless Chromium to measure report.html (Debian: apt-get install -y chromium; .ci/run does)",
)


@pytest.mark.slow
def test_report_html_fits_a_1280_window_and_every_figure_loads(small_sweep: Path, tmp_path: Path) -> None:
    report = make_report(small_sweep, tmp_path / "report")
    page = measure_page(report.html, width=1280, height=800)
    assert page["uncontained"] == [], page  # no element sticks out of the window unless it scrolls in a box
    assert not page["pageOverflowsX"], page  # the page itself never scrolls sideways
    # the test means something: a table here (12 evaluations of mean ± std) is wider than the window
    assert any(o["tag"] in ("table", "tr", "thead", "tbody") for o in page["contained"]), page
    assert len(page["images"]) == len(report.figures) and page["allImagesOk"], page["images"]
    assert all(0 < image["width"] <= page["clientWidth"] for image in page["images"])
