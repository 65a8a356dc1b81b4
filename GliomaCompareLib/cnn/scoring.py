"""Scoring CNN predictions against the references, with the project's metric functions.

Segmentation: :func:`GliomaCompareLib.metrics.segmentation.score_label_maps` (Dice, HD95 per
region, BraTS empty-region rules) per case. Grading:
:func:`GliomaCompareLib.metrics.classification.classification_report` (accuracy, balanced
accuracy, sensitivity, specificity, AUC, majority-class baseline, patient-bootstrap CIs).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from GliomaCompareLib.cnn.checkpoint import atomic_write_text
from GliomaCompareLib.data.conventions import REGIONS, load_convention
from GliomaCompareLib.data.io import read_image
from GliomaCompareLib.metrics.classification import classification_report
from GliomaCompareLib.metrics.segmentation import score_label_maps

__all__ = ["PredictionScores", "score_predictions"]

SEG_COLUMNS = ("case_id", "region", "dice", "hd95", "empty_rule", "model_id")


@dataclass(frozen=True)
class PredictionScores:
    """Scores of one :func:`~GliomaCompareLib.cnn.inference.predict_cases` run.

    Attributes:
        seg_rows: (case_id, region, dice, hd95 mm, empty rule, model id) per scored case/region.
        seg_mean: region -> mean Dice over scored cases (plus ``"mean"`` over regions).
        grade_report: ``ClassificationReport.to_dict()`` plus ``model_id`` / ``threshold``, or
            None when no predicted case has a reference grade.
        seg_csv, grade_json: files written (None when nothing to write).
        unscored: (case_id, reason) for predictions that could not be scored.
    """

    seg_rows: tuple[tuple, ...]
    seg_mean: dict[str, float]
    grade_report: dict | None
    seg_csv: Path | None
    grade_json: Path | None
    unscored: tuple[tuple[str, str], ...]

    def summary(self) -> str:
        lines = []
        if self.seg_mean:
            n = len({r[0] for r in self.seg_rows})
            parts = ", ".join(f"{k} {v:.3f}" for k, v in self.seg_mean.items())
            lines.append(f"segmentation, {n} cases: mean Dice {parts}")
        if self.grade_report:
            g = self.grade_report
            lines.append(
                f"grading, {g['n']} cases: balanced accuracy {_fmt(g['balanced_accuracy'])}, "
                f"specificity {_fmt(g['specificity'])}, sensitivity {_fmt(g['recall'])}, "
                f"accuracy {_fmt(g['accuracy'])} (majority class {g['majority_class']}: accuracy "
                f"{_fmt(g['majority_baseline_accuracy'])}, balanced accuracy 0.500, specificity "
                f"{'0.000' if g['majority_class'] == 'HGG' else '1.000'}), AUC {_fmt(g['auc'])}"
            )
        return "\n".join(lines)


def _fmt(value) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )


def score_predictions(
    run,
    records: Iterable,
    *,
    convention="brats2020",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> PredictionScores:
    """Score a prediction run against the cases' reference label maps and grades.

    Writes ``seg_scores.csv`` and ``grade_report.json`` into ``run.out_dir``.

    Args:
        run: a :class:`~GliomaCompareLib.cnn.inference.PredictionRun`.
        records: the cases' ``CaseRecord`` s (for reference label files and grades).
        convention: label convention.
        n_bootstrap, seed: bootstrap of the classification confidence intervals.
    """
    conv = load_convention(convention)
    by_id = {r.case_id: r for r in records}
    rows: list[tuple] = []
    unscored: list[tuple[str, str]] = []
    y_true, y_pred, scores, cls_ids, thresholds = [], [], [], set(), set()
    for pred in run.predictions:
        record = by_id.get(pred.case_id)
        if pred.label_file:
            if record is None or record.label_path is None:
                unscored.append((pred.case_id, "no reference label map"))
            else:
                try:
                    ref, meta = read_image(record.label_path)
                    out, _ = read_image(run.out_dir / pred.label_file)
                    for s in score_label_maps(
                        np.rint(out).astype(np.int16),
                        np.rint(ref).astype(np.int16),
                        meta.spacing,
                        conv,
                    ):
                        rows.append(
                            (pred.case_id, s.region, s.dice, s.hd95, s.empty, pred.seg_model_id)
                        )
                except ValueError as exc:
                    unscored.append((pred.case_id, str(exc)))
        if pred.p_hgg is not None and pred.reference_grade in ("HGG", "LGG"):
            y_true.append(pred.reference_grade)
            y_pred.append(pred.predicted_grade)
            scores.append(pred.p_hgg)
            cls_ids.add(pred.cls_model_id)
            thresholds.add(pred.threshold)
    seg_mean: dict[str, float] = {}
    seg_csv = None
    if rows:
        for region in REGIONS:
            values = [r[2] for r in rows if r[1] == region]
            if values:
                seg_mean[region] = float(np.mean(values))
        seg_mean["mean"] = float(np.mean(list(seg_mean.values())))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(SEG_COLUMNS)
        for r in rows:
            writer.writerow([r[0], r[1], f"{r[2]:.6f}", f"{r[3]:.4f}", r[4], r[5]])
        seg_csv = atomic_write_text(run.out_dir / "seg_scores.csv", buffer.getvalue())
    report = None
    grade_json = None
    if y_true:
        rep = classification_report(y_true, y_pred, scores, n_bootstrap=n_bootstrap, seed=seed)
        report = {
            **rep.to_dict(),
            "model_id": ", ".join(sorted(cls_ids)),
            "threshold": sorted(thresholds)[0] if len(thresholds) == 1 else sorted(thresholds),
            "cases": [
                p.case_id
                for p in run.predictions
                if p.p_hgg is not None and p.reference_grade in ("HGG", "LGG")
            ],
        }
        grade_json = atomic_write_text(
            run.out_dir / "grade_report.json", json.dumps(report, indent=2) + "\n"
        )
    return PredictionScores(tuple(rows), seg_mean, report, seg_csv, grade_json, tuple(unscored))
