"""The report's figures: the study's published values beside the forest plot, Dice by grade and
tumour size, the answer-status bars, ROC with AUC CIs, raw answers drawn on the slice the VLM
saw, readable labels (>= 10 px at 100% zoom) and runs with more than the study's methods.

Figures are checked on the matplotlib figure itself (captured when it is saved), so a label's
size, a marker's position and a legend's text are asserted, not guessed from pixels.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from matplotlib.text import Text

from GliomaCompareLib.metrics.calibration import brier_score, reliability_bins
from GliomaCompareLib.metrics.roc import roc_curve_points
from GliomaCompareLib.report import build_report, figures, prompts
from GliomaCompareLib.report.answer_panels import answer_panels, scaled_geometry
from GliomaCompareLib.report.headline import build_headline
from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.prompts import PICTURED_PER_STATUS, AnswerExample, read_prompts
from GliomaCompareLib.report.published import load_published
from GliomaCompareLib.report.rundata import load_run
from GliomaCompareLib.runlayout import write_table
from Testing.test_report import CNN_MODEL, TINY_LABEL, make_run

#: The smallest label, in CSS pixels at 100% zoom, and the widest figure that is not scaled down.
MIN_PX = 10
MAX_WIDTH_PX = 1260
EXTRA_VLM = "vlm_qwen25_vl_7b_instruct_awq"


class Captured:
    """Records every matplotlib figure the report saves (the figure functions call ``_png``)."""

    def __init__(self, monkeypatch):
        self.figures = []
        original = figures._png

        def record(fig, dpi):
            self.figures.append((fig, dpi))
            return original(fig, dpi)

        monkeypatch.setattr(figures, "_png", record)

    def last(self):
        return self.figures[-1]


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def assert_readable(fig, dpi: int) -> None:
    """Every visible text of ``fig`` is at least :data:`MIN_PX` px high at 100% zoom, and the
    figure is not wider than the page (it would be scaled down, and its labels with it)."""
    width = fig.get_figwidth() * dpi
    assert width <= MAX_WIDTH_PX, f"figure {width:.0f} px wide: the page scales it down"
    small = [
        (t.get_text()[:40], round(t.get_fontsize() * dpi / 72, 1))
        for t in _texts(fig)
        if t.get_fontsize() * dpi / 72 < MIN_PX - 0.05
    ]
    assert not small, f"labels under {MIN_PX} px: {small}"
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)  # the layout as saved
    for ax in fig.axes:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            shown = [t for t in ticks if t.get_visible() and t.get_text().strip()]
            boxes = [t.get_window_extent(renderer) for t in shown]
            for (a, ta), (b, tb) in zip(
                zip(boxes, shown, strict=True),
                list(zip(boxes, shown, strict=True))[1:],
                strict=False,
            ):
                assert not a.overlaps(b), (
                    f"tick labels overlap: {ta.get_text()!r} {tb.get_text()!r}"
                )


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def add_groups_and_answers(run: Path, methods=("vlm_base", "vlm_finetuned")) -> None:
    """Adds to a ``make_run`` folder what it lacks: ``metrics/dice_by_group.csv`` and the VLM
    stages' ``answers.jsonl`` with answers of several statuses on and off the gallery slices."""
    rows = []
    for group, levels in (("grade", ("HGG", "LGG")), ("size", ("small (<= 3.1 ml)", "large"))):
        for i, level in enumerate(levels):
            for region, d in (("WT", 0.8), ("TC", 0.7), ("ET", 0.6)):
                rows.append({"method": "cnn", "model": CNN_MODEL, "task": "seg", "region": region,
                             "scope": "3d", "group": group, "level": level, "n": 7 - 4 * i,
                             "dice_mean": d - 0.1 * i, "dice_median": d})  # fmt: skip
            for method in methods:
                for scope, d in (("slices", 0.12), ("cnn_same_slices", 0.7)):
                    rows.append({"method": method, "model": TINY_LABEL, "task": "box",
                                 "region": "WT", "scope": scope, "group": group, "level": level,
                                 "n": 7 - 4 * i, "dice_mean": d + 0.05 * i,
                                 "dice_median": d})  # fmt: skip
    write_table(run / "metrics" / "dice_by_group.csv", "dice_by_group", rows)
    _add_paired_differences(run, methods)
    for method in methods:
        stage = "vlm-base" if method == "vlm_base" else f"vlm-{method}"
        common = {"width": 40, "height": 40, "coordinate_system": "pixel", "run": 0,
                  "model_label": TINY_LABEL}  # fmt: skip
        records = []
        for i in range(1, 5):
            case = f"BraTS20_Training_{i:03d}"
            records += [
                {**common, "case_id": case, "slice_index": 2, "task": "point", "status": "ok",
                 "raw_text": '{"x": 20, "y": 21}', "pixel": {"type": "point", "x": 20, "y": 21}},
                {**common, "case_id": case, "slice_index": 2, "task": "box", "status": "invalid",
                 "raw_text": "The tumour is in the left frontal lobe.", "note": "no numbers",
                 "pixel": None},
                {**common, "case_id": case, "slice_index": 0, "task": "box", "status": "refused",
                 "raw_text": "I cannot help with medical images.", "pixel": None},
            ]  # fmt: skip
        folder = run / "stages" / stage / "out" / "all"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "answers.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
        )


def _add_paired_differences(run: Path, methods) -> None:
    """CNN-minus-VLM rows for the headline: accuracy per decision rule (``comparisons.csv``,
    beside the rows already there) and like-for-like box Dice (``localisation.csv``)."""
    path = run / "metrics" / "comparisons.csv"
    rows = _csv_rows(path) if path.exists() else []
    loc = []
    for i, method in enumerate(methods):
        for decision, diff in (("fixed", 0.3 + 0.1 * i), ("val_threshold", 0.1)):
            rows.append({"method_a": "cnn", "method_b": method, "decision": decision, "n": 10,
                         "b": 4, "c": 1, "p_value": 0.03, "test": "exact", "accuracy_diff": diff,
                         "accuracy_diff_ci_low": diff - 0.2, "accuracy_diff_ci_high": diff + 0.2,
                         "balanced_accuracy_diff": diff / 2,
                         "balanced_accuracy_diff_ci_low": diff / 2 - 0.2,
                         "balanced_accuracy_diff_ci_high": diff / 2 + 0.2})  # fmt: skip
        loc.append({"method": method, "model": TINY_LABEL, "task": "box", "n_patients": 10,
                    "n_slices": 40, "dice_slices_mean": 0.12, "cnn_dice_same_slices": 0.7,
                    "cnn_minus_vlm_dice": 0.58, "cnn_minus_vlm_ci_low": 0.5,
                    "cnn_minus_vlm_ci_high": 0.66, "wilcoxon_p": 0.002})  # fmt: skip
    write_table(path, "comparisons", rows)
    write_table(run / "metrics" / "localisation.csv", "localisation", loc)
    _add_roc_and_calibration(run)


def _add_roc_and_calibration(run: Path) -> None:
    """``roc.csv``, ``calibration.csv`` and the Brier score, from ``grades.csv``'s P(HGG)."""
    grades = [g for g in _csv_rows(run / "metrics" / "grades.csv") if g.get("p_hgg")]
    roc, cal, brier = [], [], {}
    for method in dict.fromkeys(g["method"] for g in grades):
        mine = [g for g in grades if g["method"] == method]
        truth, p = [g["grade_true"] for g in mine], [float(g["p_hgg"]) for g in mine]
        curve = roc_curve_points(truth, p)
        for i, (f, t) in enumerate(zip(curve.fpr, curve.tpr, strict=True)):
            roc.append({"method": method, "point": i, "n": len(mine), "fpr": f, "tpr": t})
        bins = reliability_bins(truth, p, 5)
        for i, (m, o) in enumerate(zip(bins.mean_predicted, bins.observed, strict=True)):
            cal.append({"method": method, "bin": i, "mean_predicted": m, "observed": o})
        brier[method] = brier_score(truth, p)
    write_table(run / "metrics" / "roc.csv", "roc", roc)
    write_table(run / "metrics" / "calibration.csv", "calibration", cal)
    rows = _csv_rows(run / "metrics" / "classification.csv")
    for r in rows:
        r["brier"] = brier.get(r["method"], "")
    write_table(run / "metrics" / "classification.csv", "classification", rows)


def add_method(run: Path, new: str = EXTRA_VLM, like: str = "vlm_base") -> None:
    """A further VLM in every metrics table: a copy of ``like``'s rows under the name ``new``
    (as a run with several VLMs writes them, one row set per VLM)."""
    for path in sorted((run / "metrics").glob("*.csv")):
        rows = _csv_rows(path)
        if not rows or any(new in (r.get("method"), r.get("method_b")) for r in rows):
            continue  # empty, or already written for ``new``
        extra = []
        for key in ("method", "method_b"):
            extra += [{**r, key: new} for r in rows if r.get(key) == like]
        if extra:
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows + extra)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run, _ = make_run(tmp_path_factory.mktemp("figures"))
    add_groups_and_answers(run)
    return run


# --------------------------------------------------------------------------- forest plot


def test_published_differences_only_where_comparable():
    marks = figures.published_differences(load_published())
    # the abstract's accuracies: CNN 0.80, base 0.76, fine-tuned 0.72; nothing else pairs up
    assert set(marks) == {("accuracy", "vlm_base"), ("accuracy", "vlm_finetuned")}
    assert marks[("accuracy", "vlm_base")].value == pytest.approx(0.04)
    assert marks[("accuracy", "vlm_base")].text == "0.80 − 0.76 = +0.04"
    assert marks[("accuracy", "vlm_finetuned")].value == pytest.approx(0.08)
    assert figures.published_differences(None) == {}


def test_forest_marks_published_beside_fixed_rule_accuracy(full_run, monkeypatch):
    captured = Captured(monkeypatch)
    run = load_run(full_run)
    verdict = build_headline(run)
    options = ReportOptions()
    fig_ = figures.forest_figure(verdict.differences, options, True, load_published())
    fig, dpi = captured.last()
    assert_readable(fig, dpi)
    (ax,) = fig.axes
    diamonds = [line for line in ax.get_lines() if line.get_marker() == "D"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    ys = ax.get_yticks()
    marked = {labels[list(ys).index(line.get_ydata()[0])]: line.get_xdata()[0] for line in diamonds}
    assert marked == {
        "accuracy · fixed rule · VLM (base)": pytest.approx(0.04),
        "accuracy · fixed rule · VLM (fine-tuned)": pytest.approx(0.08),
    }
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("published (different data)") for t in legend)
    assert "published (different data)" in fig_.caption and "0.80 − 0.76" in fig_.caption
    # ours stay ours: the computed differences are untouched by the published ones
    assert [d.value for d in verdict.differences] == [
        d.value for d in build_headline(run).differences
    ]
    # without the published figures, no mark and no word of them
    plain = figures.forest_figure(verdict.differences, options, True)
    assert not any(line.get_marker() == "D" for line in captured.last()[0].axes[0].get_lines())
    assert "published" not in plain.caption


# --------------------------------------------------------------------------- Dice by group


def test_dice_by_group_figure_names_methods_and_regions(full_run, monkeypatch):
    captured = Captured(monkeypatch)
    fig_ = figures.dice_by_group_figure(load_run(full_run), ReportOptions())
    assert fig_.png is not None and fig_.tiny
    fig, dpi = captured.last()
    assert_readable(fig, dpi)
    grade, size = fig.axes
    assert grade.get_title() == "by grade" and size.get_title().startswith("by tumour size")
    labels = [t.get_text() for t in grade.get_yticklabels()]
    assert labels[:3] == ["3D CNN · WT · 3D volume", "3D CNN · TC · 3D volume",
                          "3D CNN · ET · 3D volume"]  # fmt: skip
    assert "VLM (base) · box · WT · slices it saw" in labels
    assert "3D CNN · WT · VLM (fine-tuned)'s box slices" in labels
    assert [t.get_text() for t in grade.get_legend().get_texts()] == ["HGG", "LGG"]
    # the bar values come from the CSV: HGG 0.8 and LGG 0.7 for the CNN's 3D WT
    bar_texts = [t.get_text() for t in grade.texts]
    assert "0.80 (n 7)" in bar_texts and "0.70 (n 3)" in bar_texts


def test_dice_by_group_figure_not_run_without_rows(tmp_path):
    run, _ = make_run(tmp_path)
    fig_ = figures.dice_by_group_figure(load_run(run), ReportOptions())
    assert fig_.png is None and "dice_by_group" in fig_.status_detail


# --------------------------------------------------------------------------- ROC, answer status


def test_roc_legend_has_auc_ci_and_brier(full_run, monkeypatch):
    captured = Captured(monkeypatch)
    figures.roc_calibration_figure(load_run(full_run), ReportOptions())
    fig, dpi = captured.last()
    assert_readable(fig, dpi)
    roc, reliability = fig.axes
    legend = [t.get_text() for t in roc.get_legend().get_texts()]
    assert any(re.match(r"3D CNN: AUC \d\.\d{3} \[\d\.\d\d, \d\.\d\d\], n=10", t) for t in legend)
    assert any("Brier" in t.get_text() for t in reliability.get_legend().get_texts())


def test_answer_status_bars(full_run, monkeypatch):
    captured = Captured(monkeypatch)
    run = load_run(full_run)
    fig_ = figures.answer_status_figure(run, ReportOptions())
    assert fig_.png is not None
    fig, dpi = captured.last()
    assert_readable(fig, dpi)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    expected = sorted({(r["method"], r["task"]) for r in run.rows("answer_status")})
    assert len(labels) == len(expected) and labels[0].startswith("VLM (base) · ")
    # each bar's segments add up to all its answers
    for i, _ in enumerate(labels):
        widths = [
            p.get_width() for p in ax.patches if abs(p.get_y() + p.get_height() / 2 - i) < 1e-6
        ]
        assert sum(widths) == pytest.approx(1.0)
    assert any(t.get_text().startswith("usable ") for t in ax.texts)


# --------------------------------------------------------------------------- raw answers, images


def test_raw_answers_pictured_per_status_on_gallery_slices(full_run):
    summary = read_prompts(full_run)
    assert list(summary.pictured) == ["ok", "invalid"]  # refused answers were off the slice
    assert all(len(v) == PICTURED_PER_STATUS for v in summary.pictured.values())
    for examples in summary.pictured.values():
        assert {x.slice_index for x in examples} == {"2"}
        # taken in turn from each stage: both VLMs are shown
        assert {x.stage.split("/")[0] for x in examples} == {"vlm-base", "vlm-vlm_finetuned"}
    problems: list[str] = []
    panels = answer_panels(full_run, summary, ReportOptions(), problems)
    assert problems == []
    assert all(p.png and p.png.startswith(b"\x89PNG") for v in panels.values() for p in v)


def test_raw_answer_panel_draws_the_answer_with_orientation(full_run, monkeypatch):
    captured = Captured(monkeypatch)
    summary = read_prompts(full_run)
    answer_panels(full_run, summary, ReportOptions(), [])
    fig, dpi = captured.figures[0]  # the first "ok" answer: a point at (20, 21)
    assert_readable(fig, dpi)
    (ax,) = fig.axes
    points = [line for line in ax.get_lines() if line.get_marker() == "X"]
    assert len(points) == 1 and (points[0].get_xdata()[0], points[0].get_ydata()[0]) == (20, 21)
    assert {t.get_text() for t in ax.texts} >= {"R", "L"}
    assert TINY_LABEL in ax.get_title()
    fig, _ = captured.figures[PICTURED_PER_STATUS]  # an invalid answer: nothing drawn
    assert not [line for line in fig.axes[0].get_lines() if line.get_marker() == "X"]


def test_answer_geometry_rescaled_to_the_stored_image():
    x = AnswerExample("s", "box", "ok", "c", "2", "", "", pixel={"type": "box", "x0": 10,
                      "y0": 20, "x1": 30, "y1": 40}, width=80, height=80)  # fmt: skip
    box = scaled_geometry(x, (40, 40))
    assert (box.x0, box.y0, box.x1, box.y1) == (5, 10, 15, 20)
    point = AnswerExample("s", "point", "ok", "c", "2", "", "", pixel={"type": "point", "x": 3,
                          "y": 4}, width=40, height=40)  # fmt: skip
    assert scaled_geometry(point, (40, 40)).x == 3


def test_report_shows_new_figures_and_answer_images(full_run):
    page = build_report(full_run).read_text(encoding="utf-8")
    for anchor in ("fig-dice-by-group", "fig-answer-status", "answer-images", "fig-forest"):
        assert f'id="{anchor}"' in page
    section = page[page.index('id="answer-images"') : page.index("Raw answers: a few per stage")]
    assert section.count("<img ") == 2 * PICTURED_PER_STATUS
    assert "<h4>ok (usable)</h4>" in section and "<h4>invalid (scored as a failure)</h4>" in section
    assert "refused (scored as a failure)" in section and "No answer of this status" in section
    assert "The tumour is in the left frontal lobe." in section
    assert "published (different data)" in page


# --------------------------------------------------------------------------- readable, N methods


def test_every_figure_is_readable(full_run, monkeypatch):
    captured = Captured(monkeypatch)
    build_report(full_run)
    assert len(captured.figures) >= 10
    for fig, dpi in captured.figures:
        assert_readable(fig, dpi)


def test_figures_cope_with_a_further_vlm(tmp_path, monkeypatch):
    run, _ = make_run(tmp_path)
    add_groups_and_answers(run, methods=("vlm_base", "vlm_finetuned", EXTRA_VLM))
    add_method(run)
    captured = Captured(monkeypatch)
    data, options = load_run(run), ReportOptions()
    for draw in (figures.confusion_figure, figures.roc_calibration_figure,
                 figures.answer_status_figure, figures.dice_by_group_figure,
                 figures.centre_figure):  # fmt: skip
        assert draw(data, options).png is not None
        fig, dpi = captured.last()
        assert_readable(fig, dpi)
        words = " ".join(t.get_text() for t in _texts(fig))
        assert EXTRA_VLM in words, f"{draw.__name__} leaves out the further VLM"
    assert figures.method_colour(EXTRA_VLM) not in figures.METHOD_COLOURS.values()
    figures.dice_figure(data, load_published(), options)  # ids wrapped under their boxes
    fig, dpi = captured.last()
    assert_readable(fig, dpi)
    assert "vlm_qwen25_\nvl_7b_\ninstruct_awq\nbox" in [
        t.get_text() for t in fig.axes[0].get_xticklabels()
    ]
    page = build_report(run).read_text(encoding="utf-8")
    assert EXTRA_VLM in page


def test_wrap_name():
    assert figures.wrap_name("vlm_qwen25_vl_7b_instruct_awq") == "vlm_qwen25_\nvl_7b_\ninstruct_awq"
    assert figures.wrap_name("3D CNN") == "3D CNN"
    assert figures.wrap_name("VLM\n(fine-tuned)") == "VLM\n(fine-tuned)"


def test_headline_and_forest_name_every_vlm(tmp_path, monkeypatch):
    run, _ = make_run(tmp_path)
    add_groups_and_answers(run, methods=("vlm_base", "vlm_finetuned", EXTRA_VLM))
    verdict = build_headline(load_run(run))
    assert {d.vlm for d in verdict.differences} == {"vlm_base", "vlm_finetuned", EXTRA_VLM}
    assert any(EXTRA_VLM in sentence for sentence in verdict.grading)
    # each method's own accuracy beside the difference (classification rows without a decision
    # column are the fixed rule's)
    fixed = [s for s in verdict.grading if s.startswith("Fixed rule")]
    assert fixed and not any("3D CNN — vs" in sentence for sentence in fixed)
    assert any(EXTRA_VLM in sentence for sentence in verdict.localisation)
    captured = Captured(monkeypatch)
    figures.forest_figure(verdict.differences, ReportOptions(), True, load_published())
    fig, dpi = captured.last()
    assert_readable(fig, dpi)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert f"box Dice · same slices · {EXTRA_VLM}" in labels
    # the study published nothing for a VLM it did not run: no mark on its lines
    diamonds = [line.get_ydata()[0] for line in fig.axes[0].get_lines() if line.get_marker() == "D"]
    ys = list(fig.axes[0].get_yticks())
    assert all(EXTRA_VLM not in labels[ys.index(y)] for y in diamonds) and len(diamonds) == 2


def test_pictured_answers_spread_over_vlms_and_tasks():
    """Three answers of a status from two VLMs and four tasks: both VLMs, and no task twice
    while another is left out (localisation tasks, which have something to draw, first)."""
    candidates = {
        (stage, task, "ok"): [
            AnswerExample(stage, task, "ok", f"c{i}", "2", "", "") for i in range(3)
        ]
        for stage in ("vlm-a", "vlm-b")
        for task in ("grade", "point", "box", "polygon")
    }
    picked = prompts._pictured(candidates)["ok"]
    assert [(x.stage, x.task) for x in picked] == [
        ("vlm-a", "point"),
        ("vlm-b", "box"),
        ("vlm-a", "box"),
    ]
