"""Issue 17, the run folder's state and its inputs: a reused cohort record checked against the
data folder, damaged answer-cache lines and manifest fields, ``data.root`` beside
``data.synthetic``, case folders that loop or hold two copies of one image, and Markdown tables
that print markup as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from GliomaCompareLib.cli import main
from GliomaCompareLib.report import build_report
from GliomaCompareLib.report.render import render_markdown
from GliomaCompareLib.report.table import Column, Line, TableSpec, build_table

MD_SPEC = TableSpec(
    "md",
    "A <b>title</b> & more",
    "What <i>it</i> shows.",
    ("classification",),
    (Column("Method", "method", label="method"), Column("Model", "model")),
)


def test_markdown_tables_print_markup_as_text():
    row = {"method": "<script>alert(1)</script>", "model": "a|b & <img src=x onerror=y>"}
    md = render_markdown(build_table(MD_SPEC, [Line(row=row)], notes=["p < 0.05 & n > 3"]))
    assert "<script>" not in md and "<img" not in md and "<b>" not in md and "<i>" not in md
    assert (
        "| &lt;script&gt;alert(1)&lt;/script&gt; | a\\|b &amp; &lt;img src=x onerror=y&gt; |" in md
    )
    assert "## A &lt;b&gt;title&lt;/b&gt; &amp; more" in md
    assert "- p &lt; 0.05 &amp; n &gt; 3" in md


CI_CHECK = """
import pytest

@pytest.mark.skipif(True, reason="cmake is not installed")
def test_cmake():
    pass

def test_slicer():
    pytest.skip("slicer-core is not installed (No module named 'slicer'); pip install slicer-core")

def test_compiler():
    pytest.skip("no C++ compiler for project() here")

@pytest.mark.skipif(True, reason="POSIX permissions")
def test_other_reason():
    pass
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_in_ci_a_missing_tool_fails_instead_of_skipping(pytester, monkeypatch, ci):
    """With CI set, the slicer-core, cmake and compiler tests fail when their tool is missing
    (Testing/conftest.py); other skips stay skips, and without CI all of them skip."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(test_tools=CI_CHECK)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    if ci:
        # a skipif mark skips in setup, so there the test ends as an error: the run fails too
        result.assert_outcomes(failed=2, errors=1, skipped=1)
        assert result.ret != 0
        result.stdout.fnmatch_lines(["*CI is set, so this test must run*cmake is not installed*"])
    else:
        result.assert_outcomes(skipped=4)


def test_an_exception_in_a_thread_fails_the_test(pytester):
    """pyproject's filterwarnings makes PytestUnhandledThreadExceptionWarning an error, so a
    thread's exception cannot pass as a warning."""
    root = Path(__file__).resolve().parent.parent
    pytester.makepyprojecttoml((root / "pyproject.toml").read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_thread="""
import threading

def test_thread():
    t = threading.Thread(target=lambda: 1 / 0)
    t.start()
    t.join()
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)


def test_report_names_manifest_fields_of_the_wrong_type(tmp_path):
    """A manifest whose ``git`` is not an object (or ``command`` not a list) crashed ``report``;
    now the field is named on the page and left out."""
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    manifest = {"git": "abc123", "command": 5, "seeds": {"global": 3}, "created": "today"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    page = build_report(run, figures=False).read_text(encoding="utf-8")
    assert "manifest.json: field &#x27;git&#x27; is str, not an object; not shown" in page
    assert "manifest.json: field &#x27;command&#x27; is int, not a list; not shown" in page
    assert "today" in page  # the rest of the manifest is still shown
    assert main(["report", str(run), "--no-figures"]) == 0
