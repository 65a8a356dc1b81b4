"""Declared report tables: a column is described once, and one builder makes every cell.

``test_report.py::test_adding_a_column_is_one_place`` shows the point of declaring them: a
column added to a table's spec (one :class:`Column`, nothing else) reaches both the Markdown
file and the HTML page of a whole report.
"""

from __future__ import annotations

import pytest

from GliomaCompareLib.report import tables
from GliomaCompareLib.report.cells import DASH, fmt, fmt_int, with_ci
from GliomaCompareLib.report.render import render_html_table, render_markdown
from GliomaCompareLib.report.table import Column, Line, TableSpec, build_table, unavailable_table

SPEC = TableSpec(
    "demo",
    "A demo table",
    "What it shows.",
    ("classification",),
    (
        Column("Method", "method", label="method"),
        Column("Source", lambda r: "This run", label="source"),
        Column("n", "n", fmt_int, numeric=True),
        Column("Accuracy", with_ci("accuracy"), numeric=True, figure=("accuracy",)),
        Column("F1", "f1", fmt, numeric=True, figure=("f1",)),
    ),
)


def test_rows_and_lines_become_cells():
    row = {"method": "cnn", "n": 10.0, "accuracy": 0.8, "accuracy_ci_low": 0.5}
    row["accuracy_ci_high"], row["f1"] = 1.0, None
    labels = {"method": "CNN", "source": "Published"}
    published = Line("published", labels=labels, figures={"accuracy": "0.80", "dice": "0.59"})
    not_run = Line("not_run", labels={"method": "VLM", "source": "not run"})
    table = build_table(SPEC, [Line(row=row), published, not_run], notes=["a note"])
    assert table.columns == ("Method", "Source", "n", "Accuracy", "F1")
    assert table.numeric == (False, False, True, True, True)
    cells = [r.cells for r in table.rows]
    assert cells[0] == ("cnn", "This run", "10", "0.800 [0.500, 1.000]", DASH)
    # a line without a row: its labels and the figures whose metric a column names; a figure
    # no column names (dice) is not printed
    assert cells[1] == ("CNN", "Published", "", "0.80", "")
    assert cells[2] == ("VLM", "not run", "", "", "")
    assert [r.kind for r in table.rows] == ["ours", "published", "not_run"]
    assert table.title == "A demo table" and table.notes == ("a note",)
    assert build_table(SPEC, [], tiny=True).title.endswith("tiny random-weight model")


def test_rendering_is_apart_from_building():
    table = build_table(SPEC, [Line(row={"method": "a|b", "n": 3, "accuracy": 0.5})])
    md = render_markdown(table)
    assert "| Method | Source | n | Accuracy | F1 |" in md
    assert "| --- | --- | ---: | ---: | ---: |" in md
    assert r"| a\|b | This run | 3 | 0.500 | — |" in md
    page = render_html_table(table)
    assert '<th class="num">Accuracy</th>' in page and '<td class="">a|b</td>' in page
    gone = unavailable_table(SPEC, "not run", "metrics/x.csv not found")
    assert "**not run** — metrics/x.csv not found" in render_markdown(gone)
    assert "<table>" not in render_html_table(gone)


def test_every_report_table_is_a_spec():
    for spec in (
        tables.CLASSIFICATION,
        tables.COMPARISONS,
        tables.SEGMENTATION,
        tables.LOCALISATION,
        tables.CENTRES,
        tables.ANSWER_STATUS,
        tables.CONSISTENCY,
    ):
        headings = [c.heading for c in spec.columns]
        assert len(headings) == len(set(headings)), spec.key
    # the published figures have a column to go to
    for spec, metrics in (
        (tables.CLASSIFICATION, ("accuracy", "specificity", "majority_baseline_accuracy")),
        (tables.SEGMENTATION, ("dice",)),
        (tables.LOCALISATION, ("dice",)),
    ):
        placed = {m for c in spec.columns for m in c.figure}
        assert set(metrics) <= placed, spec.key


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
