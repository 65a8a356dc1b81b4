"""The headline panel: one sentence per question from the run's own paired statistics, and the
forest plot of the paired differences (CNN minus each VLM)."""

from __future__ import annotations

import base64
import re

from GliomaCompareLib.report import build_report
from GliomaCompareLib.report.headline import build_headline
from GliomaCompareLib.report.rundata import load_run
from GliomaCompareLib.runlayout import write_table
from Testing.test_report import make_run


def _comparison(b: str, decision: str, diff: float, lo: float, hi: float, p: float) -> dict:
    return {
        "method_a": "cnn",
        "method_b": b,
        "decision": decision,
        "n": 20,
        "b": 6,
        "c": 1,
        "p_value": p,
        "test": "exact",
        "accuracy_diff": diff,
        "accuracy_diff_ci_low": lo,
        "accuracy_diff_ci_high": hi,
        "balanced_accuracy_diff": diff / 2,
        "balanced_accuracy_diff_ci_low": lo / 2,
        "balanced_accuracy_diff_ci_high": hi / 2,
        "n_bootstrap": 1000,
    }


def _paired_run(tmp_path):
    run, _ = make_run(tmp_path)
    metrics = run / "metrics"
    write_table(
        metrics / "comparisons.csv",
        "comparisons",
        [
            _comparison("vlm_base", "fixed", 0.25, 0.05, 0.45, 0.0123),
            _comparison("vlm_base", "val_threshold", 0.1, -0.1, 0.3, 0.4),
            {"method_a": "vlm_base", "method_b": "vlm_finetuned", "decision": "fixed", "n": 20,
             "b": 0, "c": 0, "p_value": 1.0, "accuracy_diff": 0.0},
        ],
    )  # fmt: skip
    write_table(
        metrics / "localisation.csv",
        "localisation",
        [
            {"method": "vlm_base", "task": "box", "n_patients": 20, "n_slices": 60,
             "dice_slices_mean": 0.2, "cnn_dice_same_slices": 0.7, "cnn_minus_vlm_dice": 0.5,
             "cnn_minus_vlm_ci_low": 0.4, "cnn_minus_vlm_ci_high": 0.6, "wilcoxon_p": 0.001},
            {"method": "vlm_finetuned", "task": "polygon", "n_patients": 20, "n_slices": 60,
             "dice_slices_mean": 0.69, "cnn_dice_same_slices": 0.7, "cnn_minus_vlm_dice": -0.01,
             "cnn_minus_vlm_ci_low": -0.1, "cnn_minus_vlm_ci_high": 0.08, "wilcoxon_p": 0.7},
        ],
    )  # fmt: skip
    return run


def test_headline_sentences_from_the_paired_statistics(tmp_path):
    headline = build_headline(load_run(_paired_run(tmp_path)), alpha=0.05)
    fixed, threshold = headline.grading
    assert fixed.startswith("Fixed rule: 3D CNN is better than VLM (base) by 0.250 accuracy")
    assert "95% CI +0.050 to +0.450" in fixed and "McNemar p = 0.012" in fixed
    assert threshold.startswith("Validation threshold: no significant difference")
    assert "McNemar p = 0.4" in threshold
    box, polygon = headline.localisation
    assert "3D CNN is better than VLM (base) by 0.500 Dice" in box
    assert "Wilcoxon p = 0.001" in box
    assert "no significant difference between 3D CNN and VLM (fine-tuned) in Dice" in polygon
    # VLM vs VLM is not a CNN-minus-VLM difference; accuracy and balanced accuracy per rule
    labels = [d.label for d in headline.differences]
    assert labels == [
        "accuracy · fixed rule · VLM (base)",
        "balanced accuracy · fixed rule · VLM (base)",
        "accuracy · validation threshold · VLM (base)",
        "balanced accuracy · validation threshold · VLM (base)",
        "box Dice · same slices · VLM (base)",
        "polygon Dice · same slices · VLM (fine-tuned)",
    ]
    assert headline.differences[1].p is None  # no paired test of balanced accuracy


def test_headline_alpha_decides_the_wording(tmp_path):
    headline = build_headline(load_run(_paired_run(tmp_path)), alpha=0.01)
    assert headline.grading[0].startswith("Fixed rule: no significant difference")


def test_headline_panel_is_first_with_its_forest_plot(tmp_path):
    page = build_report(_paired_run(tmp_path)).read_text(encoding="utf-8")
    start = page.index('id="headline"')
    assert start < page.index("<nav>") < page.index('id="summary"')
    panel = page[start : page.index("</section>\n</section>", start)]
    assert "Fixed rule: 3D CNN is better than VLM (base)" in panel
    assert "Box, 60 slices the VLM saw (20 patients)" in panel
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)"', panel)
    assert base64.b64decode(png).startswith(b"\x89PNG")


def test_headline_without_paired_tables(tmp_path):
    run, _ = make_run(tmp_path)
    (run / "metrics" / "comparisons.csv").unlink()
    headline = build_headline(load_run(run))
    assert headline.grading == () and headline.localisation == () and headline.differences == ()
    page = build_report(run).read_text(encoding="utf-8")
    assert "No paired comparison in this run." in page
    assert 'id="fig-forest"' in page and "no paired differences" in page
