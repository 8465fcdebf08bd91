"""The HTML report of a demo-like sweep, opened in a real headless Chromium at 1280 px: the table fits (no
horizontal scrolling), it comes before the folded caption, the forest plot is there and loaded, the run ids link
to the MLflow UI.

The store is tests/sample_store.py's `sample_demo_like` (the demo's 13 rows x 3 seeds, stage 1 shared, per-trial
predictions, ablations/demo.yaml's expectations), so no sweep runs. Skipped, with how to install it, where no
Chromium is installed (Debian/Ubuntu: `apt-get install chromium`; `.ci/run` installs it).
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from reports.report import make_report
from tests.sample_store import DEMO_LIKE, sample_demo_like

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1280, 900
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, offline and with a throwaway profile: nothing is fetched, nothing of the user's is touched.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=10000"]
# Appended to a copy of the page (the report itself has no script): after load, write what the layout measured
# into the DOM, which --dump-dom prints.
MEASURE = """<script>
window.addEventListener("load", function () {
  var table = document.querySelector("table.main"), box = table.parentElement;
  var forest = document.querySelector("#forest img");
  var out = {page_scroll: document.documentElement.scrollWidth, page_client: document.documentElement.clientWidth,
             table_scroll: box.scrollWidth, table_client: box.clientWidth, table_width: table.offsetWidth,
             table_top: table.getBoundingClientRect().top,
             details_top: document.querySelector("details").getBoundingClientRect().top,
             details_open: document.querySelector("details").open,
             forest_loaded: !!forest && forest.complete && forest.naturalWidth > 0,
             forest_width: forest ? forest.getBoundingClientRect().width : 0,
             images_inside: Array.from(document.images).every(function (i) {
               return i.getBoundingClientRect().right <= document.documentElement.clientWidth; })};
  var pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium to render the HTML report in: install it (Debian/Ubuntu: apt-get install chromium) "
                "to check the page's layout at 1280 px")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from sweep.ablation_spec import load_ablation

    out = tmp_path_factory.mktemp("browser")
    expectations = load_ablation(ROOT / "ablations" / "demo.yaml").expectations
    uri = sample_demo_like(out / "store", "demo", expectations=expectations)
    return make_report("demo", uri, out / "report", formats=("html",), mlflow_ui="http://mlflow.example:5000")


def _run(browser: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_the_demo_report_fits_1280_px_with_the_table_first_and_a_forest_plot(report, tmp_path):
    browser = _browser()
    html = report.paths["html"].read_text(encoding="utf-8")
    assert "<script" not in html                      # the report itself stays script-free
    page = tmp_path / "measure.html"
    page.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = _run(browser, ["--dump-dom", page.as_uri()], tmp_path).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    m = json.loads(found.group(1).replace("&quot;", '"'))
    # The table does not overflow its box or the page at 1280 px: nothing hides behind a scrollbar.
    assert m["table_scroll"] <= m["table_client"] and m["table_width"] <= m["table_client"], m
    assert m["page_scroll"] <= m["page_client"] <= WIDTH, m
    # The table first; the caption's details folded underneath it.
    assert m["table_top"] < m["details_top"] and m["details_open"] is False, m
    # The forest plot is there, decoded, and at least half the page wide; no image sticks out of the page.
    assert m["forest_loaded"] and m["forest_width"] >= 0.5 * WIDTH * 0.9 and m["images_inside"], m
    # Every row of the demo is in the table, in the spec's order, with its expectation.
    rows = re.findall(r"<tr><td>([^<]+?)(?: <sup>[^<]*</sup>)?</td><td>3</td>", html)
    assert rows[:len(DEMO_LIKE)] == list(DEMO_LIKE), rows
    assert html.count("below: ") + html.count("equivalent ±5.00: ") == len(DEMO_LIKE) - 1


def test_the_screenshot_is_1280_px_wide_and_run_ids_link_to_the_mlflow_ui(report, tmp_path):
    browser = _browser()
    shot = tmp_path / "page.png"
    _run(browser, [f"--screenshot={shot}", report.paths["html"].as_uri()], tmp_path)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])   # the IHDR chunk: the page as the window shows it
    assert (width, height) == (WIDTH, HEIGHT)
    html = report.paths["html"].read_text(encoding="utf-8")
    experiment = report.sweep.experiment_id
    links = re.findall(r'<a class="run" href="([^"]+)">([0-9a-f]{32})</a>', html)
    assert len(links) == len(report.sweep.trials) == 3 * len(DEMO_LIKE)
    assert all(href == f"http://mlflow.example:5000/#/experiments/{experiment}/runs/{run}" for href, run in links)
