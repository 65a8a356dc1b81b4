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


def _grading_run(tmp_path, cnn_pred: dict, p_cnn: dict):
    """A run folder holding only grading tables, made by the metrics stage's row builders."""
    from GliomaCompareLib.pipeline.grading import (
        MethodGrades,
        classification_rows,
        comparison_rows,
    )
    from GliomaCompareLib.report.rundata import load_run
    from GliomaCompareLib.runlayout import write_table

    truth = {f"c{i}": "HGG" if i < 8 else "LGG" for i in range(11)}  # 8 HGG, 3 LGG
    ids = sorted(truth)
    methods = [
        MethodGrades("cnn", "net", "fixed", cnn_pred, p_cnn, 0.5),
        MethodGrades("cnn", "net", "val_threshold", dict(truth), p_cnn, 0.42, 5),
        MethodGrades("vlm_base", "vlm", "fixed", dict.fromkeys(ids, "HGG"), {}, 0.5, None, 2,
                     "vote_share"),
        MethodGrades("vlm_base", "vlm", "val_threshold", dict.fromkeys(ids, "HGG"), {}, 0.6, 4,
                     None, "vote_share"),
    ]  # fmt: skip
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    write_table(metrics / "classification.csv", "classification",
                classification_rows(methods, truth, ids, 100, 0))  # fmt: skip
    write_table(metrics / "comparisons.csv", "comparisons",
                comparison_rows(methods, truth, ids, 100, 0))  # fmt: skip
    grades = [{"case_id": c, "method": "cnn", "grade_true": g} for c, g in truth.items()]
    write_table(metrics / "grades.csv", "grades", grades)
    return load_run(tmp_path)


def test_classification_shows_decision_rules_wilson_and_the_test_against_majority(tmp_path):
    from GliomaCompareLib.report.options import ReportOptions
    from GliomaCompareLib.report.published import load_published

    truth_like = {f"c{i}": "HGG" if i < 8 else "LGG" for i in range(11)}
    p = {c: 0.9 if g == "HGG" else 0.1 for c, g in truth_like.items()}
    run = _grading_run(tmp_path, dict(truth_like), p)
    table = tables.classification_table(run, load_published(), ReportOptions())
    md = render_markdown(table)
    assert "fixed: P(HGG) ≥ 0.500" in md
    assert "validation threshold: P(HGG) ≥ 0.420 (chosen on 5 val)" in md
    assert "fixed: majority vote (2 tied)" in md
    assert "validation threshold: HGG vote share ≥ 0.600 (chosen on 4 val)" in md
    # 3/3 LGG right: a Wilson interval, not [1.000, 1.000]
    assert "1.000 [0.439, 1.000]" in md and "1.000 [1.000, 1.000]" not in md.split("AUC")[0]
    # McNemar against always-HGG: the CNN gets the 3 LGG right (b 3, c 0), p = 0.25
    assert "p = 0.25 (b 3, c 0)" in md
    assert "No method is significantly better than always answering the majority grade" in md
    assert "Warning: Small test set (3 LGG, 8 HGG)" in md
    lines = tables.headline(run, load_published(), ReportOptions())
    text = " ".join(lines)
    assert "fixed rule (CNN P(HGG) ≥ 0.5, VLM majority vote): 3D CNN 1.000" in text
    assert "threshold chosen on the validation patients: 3D CNN 1.000" in text
    assert "No method is significantly better than that" in text
    assert "beats" not in text
    comparisons = render_markdown(tables.comparisons_table(run, load_published(), ReportOptions()))
    assert "| validation threshold |" in comparisons and "0.273 [" in comparisons
