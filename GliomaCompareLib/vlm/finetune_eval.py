"""Scoring the fine-tuned model's validation answers, as the VLM arm scores its answers.

Each validation answer is parsed with :func:`~GliomaCompareLib.vlm.parsing.parse_answer` and,
for the localisation tasks, scored against the whole tumour on its slice with
:func:`~GliomaCompareLib.vlm.scoring.score_slice` (:func:`score_answer`); the rows are then
summarised per task (:func:`summarize_validation`) with the evaluation core's
:func:`~GliomaCompareLib.metrics.classification.classification_report` and the VLM arm's
:func:`~GliomaCompareLib.vlm.scoring.majority_vote`. :func:`monitor_value` is the number early
stopping follows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from GliomaCompareLib.metrics.classification import classification_report
from GliomaCompareLib.vlm.parsing import PARSE_STATUSES, USABLE_STATUSES, ParsedAnswer, parse_answer
from GliomaCompareLib.vlm.scoring import majority_vote, score_slice

__all__ = ["PRIMARY_METRICS", "monitor_value", "score_answer", "summarize_validation"]

#: The task metric each task contributes to ``monitor="task"`` (higher is better).
PRIMARY_METRICS: dict[str, str] = {
    "grade": "balanced_accuracy",
    "point": "inside_rate",
    "box": "dice",
    "polygon": "dice",
}


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def score_answer(example, answer, spec, point_radius_mm: float = 10.0) -> dict:
    """One validation answer, parsed and scored.

    Args:
        example: the :class:`~GliomaCompareLib.vlm.finetune_data.FinetuneExample` asked (its
            ``mask`` is needed for localisation tasks).
        answer: the backend's :class:`~GliomaCompareLib.vlm.types.Answer`.
        spec: the task's :class:`~GliomaCompareLib.vlm.tasks.TaskSpec`.
        point_radius_mm: disc radius giving point answers a Dice (as the VLM arm).

    Returns:
        A JSON-able row: ``case_id``, ``slice_index``, ``task``, ``status``, ``raw_text``,
        ``target``, ``exact`` (usable and equal to the target), ``grade_true``, and ``label``,
        ``p_hgg`` (grade) or ``dice``, ``hd95`` (mm), ``inside``, ``distance_mm`` (to the
        tumour centre on the slice; None without a predicted centre).
    """

    if answer.error is not None:
        parsed = ParsedAnswer("error", note=answer.error)
    else:
        parsed = parse_answer(spec, answer.text, example.prompt, refused=answer.refused)
    row = {
        "case_id": example.case_id,
        "slice_index": example.slice_index,
        "task": example.task,
        "status": parsed.status,
        "raw_text": answer.text,
        "target": example.target,
        "exact": bool(parsed.usable and parsed.value == example.value),
        "grade_true": example.grade,
    }
    kind = spec.answer.kind
    if kind == "label":
        probs = answer.p_options
        row["label"] = parsed.label
        row["p_hgg"] = probs.get(spec.answer.positive) if probs else None
        return _clean(row)
    score = score_slice(
        kind, parsed.geometry, example.mask, example.pixel_spacing, radius_mm=point_radius_mm
    )
    row.update(
        dice=score.dice,
        hd95=score.hd95,
        inside=score.inside,
        distance_mm=score.distance_to_centre_mm if score.pred_centre else None,
    )
    return _clean(row)


def _rate(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize_validation(rows: Sequence[dict], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Task metrics from scored validation answers.

    Args:
        rows: one dict per answer (as :func:`finetune` scores them): ``task``, ``case_id``,
            ``status``, ``exact``, and ``label`` / ``grade_true`` / ``p_hgg`` (grade) or
            ``dice`` / ``hd95`` / ``inside`` / ``distance_mm`` (localisation).
        tasks: the tasks to summarise.

    Returns:
        task -> ``n``, ``ok_rate`` (strict answer form), ``usable_rate``, ``exact_rate``
        (answer equals the target), ``status_counts``, and grade: ``accuracy``,
        ``balanced_accuracy``, ``sensitivity``, ``specificity``, ``auc`` (slice level;
        unusable answers count as wrong), ``patient_accuracy`` and
        ``patient_balanced_accuracy`` (majority vote per patient); point: ``inside_rate``,
        ``distance_mm`` (mean over answers with a point), ``dice``; box / polygon: ``dice``,
        ``hd95`` (mm), ``inside_rate`` (shape centroid in the tumour). Failed answers score
        Dice 0 and not inside. Values are None where undefined.
    """

    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        items = [r for r in rows if r["task"] == task]
        counts = Counter(r["status"] for r in items)
        m: dict[str, Any] = {
            "n": len(items),
            "ok_rate": counts["ok"] / len(items) if items else None,
            "usable_rate": sum(counts[s] for s in USABLE_STATUSES) / len(items) if items else None,
            "exact_rate": _rate(float(r["exact"]) for r in items),
            "status_counts": {s: counts.get(s, 0) for s in PARSE_STATUSES},
        }
        if task == "grade":
            known = [r for r in items if r.get("grade_true") in ("HGG", "LGG")]
            for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"):
                m[key] = None
            m["patient_accuracy"] = m["patient_balanced_accuracy"] = None
            if known:
                probs = [r.get("p_hgg") for r in known]
                scores = probs if all(p is not None for p in probs) else None
                rep = classification_report(
                    [r["grade_true"] for r in known],
                    [r.get("label") for r in known],
                    scores,
                    n_bootstrap=0,
                )
                m.update(
                    accuracy=rep.accuracy,
                    balanced_accuracy=rep.balanced_accuracy,
                    sensitivity=rep.recall,
                    specificity=rep.specificity,
                    auc=rep.auc,
                )
                patients: dict[str, list[dict]] = {}
                for r in known:
                    patients.setdefault(r["case_id"], []).append(r)
                truth, voted = [], []
                for rs in patients.values():
                    vote = majority_vote(
                        [r.get("label") for r in rs],
                        [r.get("p_hgg") for r in rs],
                        tie_rule="probability",
                    )
                    truth.append(rs[0]["grade_true"])
                    voted.append(vote.prediction)
                prep = classification_report(truth, voted, n_bootstrap=0)
                m.update(
                    patient_accuracy=prep.accuracy,
                    patient_balanced_accuracy=prep.balanced_accuracy,
                )
        else:
            m["dice"] = _rate(r.get("dice") for r in items)
            m["inside_rate"] = _rate(float(bool(r.get("inside"))) for r in items)
            if task == "point":
                m["distance_mm"] = _rate(r.get("distance_mm") for r in items)
            else:
                m["hd95"] = _rate(r.get("hd95") for r in items)
        out[task] = _clean(m)
    return out


def monitor_value(monitor: str, val_loss, metrics, tasks) -> float | None:
    """What early stopping compares: ``val_loss`` (lower is better), or for ``task`` the mean
    of the tasks' :data:`PRIMARY_METRICS` (higher is better; the grade task falls back to
    accuracy when the validation slices hold one grade only). None when undefined."""
    if monitor == "val_loss":
        return val_loss
    values = []
    for task in tasks:
        m = metrics.get(task, {})
        value = m.get(PRIMARY_METRICS[task])
        if value is None and task == "grade":
            value = m.get("accuracy")  # balanced accuracy needs both grades among the slices
        if value is not None:
            values.append(float(value))
    return float(np.mean(values)) if values else None
