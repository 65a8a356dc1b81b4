"""The report in a real browser: Debian's ``chromium``, headless, at a 1280 px window.

The test builds the report of a small run (the fast ``make_run`` fixture of
``test_report.py``, with the paired differences, Dice by group and raw answers of
``test_report_figures.py`` added; and once more with a third VLM), adds a small script to a copy of the page that records, once the page has
loaded, the page's scroll width, the widest table against its box, every image's natural
width, every internal ``#anchor`` link without a target and every script error, and reads the
result back from ``chromium --dump-dom``. A screenshot of the first screen is kept beside the
test's files (and copied to ``$GLIOMACOMPARE_ARTEFACTS`` when that is set).

Where ``chromium`` cannot be found the test is skipped with a message; in CI (``CI`` set) it
fails instead, so a CI image without a browser cannot pass silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from GliomaCompareLib.report import build_report
from Testing.test_report import make_run
from Testing.test_report_figures import EXTRA_VLM, add_groups_and_answers, add_method

WIDTH, HEIGHT = 1280, 900
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    f"--window-size={WIDTH},{HEIGHT}",
)

#: Counts script errors from the start of the page.
_ERRORS = (
    "<script>window.__errors=[];window.addEventListener('error',function(ev){"
    "window.__errors.push(String(ev.message||ev.type))},true);</script>"
)
#: Once loaded, writes what the test checks into ``<body data-check="...">``.
_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
    .map(function (i) { return i.alt; });
  var dangling = Array.prototype.slice.call(document.querySelectorAll('a[href^="#"]'))
    .map(function (a) { return a.getAttribute('href').slice(1); })
    .filter(function (id) { return !document.getElementById(id); });
  var scrolling = Array.prototype.slice.call(document.querySelectorAll('.scroll'))
    .filter(function (d) { return d.scrollWidth > d.clientWidth + 1; })
    .map(function (d) { var s = d.closest('section');
      return (s ? s.id : '?') + ' ' + d.scrollWidth + '/' + d.clientWidth; });
  document.body.setAttribute('data-check', JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    images: imgs.length, broken: broken, links: document.querySelectorAll('a[href^="#"]').length,
    dangling: dangling, scrolling: scrolling, errors: window.__errors}));
});</script>"""


def find_browser() -> str | None:
    """The path of a Chromium-type browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser() -> str:
    path = find_browser()
    if path is None:
        message = (
            "chromium not found: install Debian's chromium (apt-get install -y chromium) to run "
            "the browser test of the report"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: the browser test must run there)")
        pytest.skip(message)
    return path


def _run(browser: str, profile: Path, *args: str) -> str:
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr[-2000:]}"
    return done.stdout


def check_page(report: Path, workdir: Path) -> dict:
    """Load ``report`` (a copy with the checking script) in headless chromium; what it found."""
    browser = _browser()
    page = report.read_text(encoding="utf-8")
    page = page.replace("<head>", "<head>" + _ERRORS, 1).replace("</body>", _CHECK + "</body>")
    probe = workdir / "probe.html"
    probe.write_text(page, encoding="utf-8")
    dom = _run(browser, workdir / "profile", "--virtual-time-budget=10000", "--dump-dom",
               probe.as_uri())  # fmt: skip
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, "the checking script did not run (no data-check attribute in the DOM)"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(report: Path, path: Path) -> Path:
    """A screenshot of the first screen of ``report`` at 1280 px, kept as a test artefact."""
    _run(_browser(), path.parent / "profile-shot", f"--screenshot={path}", report.as_uri())
    assert path.stat().st_size > 0
    artefacts = os.environ.get("GLIOMACOMPARE_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artefacts) / path.name)
    return path


def _assert_page_fits(report: Path, tmp_path: Path, name: str | None = None) -> None:
    result = check_page(report, tmp_path)
    assert result["innerWidth"] == WIDTH
    assert result["scrollWidth"] <= WIDTH, f"the page overflows horizontally: {result}"
    assert result["scrolling"] == [], f"tables wider than the page: {result['scrolling']}"
    assert result["images"] > 0 and result["broken"] == [], f"images not decoded: {result}"
    assert result["links"] > 0 and result["dangling"] == [], f"links without target: {result}"
    assert result["errors"] == [], f"script errors: {result['errors']}"
    shot = screenshot(report, tmp_path / f"{name or report.parent.name}-report-1280.png")
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_report_in_a_real_browser(tmp_path):
    run, _ = make_run(tmp_path / "run")
    add_groups_and_answers(run)  # the forest plot, Dice by group, raw answers on their images
    _assert_page_fits(build_report(run), tmp_path, "small-run")


def test_report_with_a_further_vlm_in_a_real_browser(tmp_path):
    """A run with a third VLM under a long method name still fits 1280 px: tables, figures and
    the raw answers' panels."""
    run, _ = make_run(tmp_path / "run")
    add_groups_and_answers(run, methods=("vlm_base", "vlm_finetuned", EXTRA_VLM))
    add_method(run)
    page = build_report(run)
    assert EXTRA_VLM in page.read_text(encoding="utf-8")
    _assert_page_fits(page, tmp_path, "three-vlms")


@pytest.mark.skipif(
    not os.environ.get("GLIOMACOMPARE_BROWSER_REPORT"),
    reason="set GLIOMACOMPARE_BROWSER_REPORT=RUN/report.html to check a built report (the demo's)",
)
def test_given_report_in_a_real_browser(tmp_path):
    """The same checks on a report already built, e.g. the demo's after ``make demo``."""
    _assert_page_fits(Path(os.environ["GLIOMACOMPARE_BROWSER_REPORT"]), tmp_path)


def test_the_check_sees_an_overflowing_page(tmp_path):
    """The check itself can fail: a page wider than the window, a broken image, a dangling link
    and a script error are all reported."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        "<div style='width:2000px'>wide</div><img alt='x' src='data:image/png;base64,AAAA'>"
        "<a href='#nowhere'>x</a><script>undefinedFunction()</script></body></html>",
        encoding="utf-8",
    )
    result = check_page(bad, tmp_path)
    assert result["scrollWidth"] > WIDTH
    assert result["broken"] == ["x"]
    assert result["dangling"] == ["nowhere"]
    # the script error, and the image that failed to load (an error event as well)
    assert any("undefinedFunction" in error for error in result["errors"])
