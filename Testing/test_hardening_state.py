"""Issue 17, the run folder's state and its inputs: a reused cohort record checked against the
data folder, damaged answer-cache lines and manifest fields, ``data.root`` beside
``data.synthetic``, case folders that loop or hold two copies of one image, and Markdown tables
that print markup as text."""

from __future__ import annotations

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
