"""The ``metrics`` stage's work: every table of the run, and the Slicer-loadable ``cases/``.

Reads what the arms wrote (:mod:`.outputs`: CNN label maps and grade records, the VLM's
``answers.jsonl`` and per-patient tables of every shard), scores the CNN against the references
with the evaluation core, writes ``cases/<case_id>/`` per test patient (:mod:`.case_files`) and
the tables of :mod:`GliomaCompareLib.runlayout`, each from its own row builder.

Scoring rules: a test patient without a prediction of a method is scored as BraTS scores a
missing prediction (empty: Dice 0, HD95 = the volume diagonal) and as a wrong grade; it is never
dropped. Patients of unknown grade are left out of the classification tables only.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.data import load_case, region_mask
from GliomaCompareLib.data.provenance import prior_challenge_ids, weights_overlap
from GliomaCompareLib.data.slices import ORACLE_MODES
from GliomaCompareLib.metrics import image_diagonal_mm, score_label_maps
from GliomaCompareLib.pipeline.case_files import (
    LOCALISATION_TASKS,
    write_case_files,
    write_gallery_file,
)
from GliomaCompareLib.pipeline.cohort import load_cohort, load_splits, usable_test_ids
from GliomaCompareLib.pipeline.config import RunConfig
from GliomaCompareLib.pipeline.grading import (
    MethodGrades,
    by_size_rows,
    calibration_rows,
    classification_rows,
    cnn_grades,
    comparison_rows,
    roc_rows,
    small_test_set_banner,
    vlm_grades,
)
from GliomaCompareLib.pipeline.localisation import LocalisationScorer, training_baseline
from GliomaCompareLib.pipeline.outputs import (
    ArmOutputs,
    CnnOutputs,
    MethodOutputs,
    as_float,
    collect_vlm,
    read_csv,
    vlm_stage_of,
)
from GliomaCompareLib.report import GradePrediction
from GliomaCompareLib.runlayout import METRICS_DIR, write_table
from GliomaCompareLib.vlm.tasks import load_tasks

__all__ = ["CaseScores", "aggregate_run"]

log = logging.getLogger("gliomacompare.metrics")


@dataclass
class CaseScores:
    """What scoring the test patients one by one gives.

    Attributes:
        seg_rows: ``segmentation`` rows of the CNN (and its baseline), patient by patient.
        localisation: the like-for-like localisation scores of the VLM methods.
        sensitivity: slice rule -> the same scores of the base VLM under that rule.
        grade_rows: ``grades`` rows, patient by patient.
        predictions: method -> case id -> (predicted grade, P(HGG)).
        diagonal: case id -> the volume diagonal in mm (the HD95 of a missing prediction).
        wt_ml: case id -> the reference whole-tumour volume in ml (for the size breakdown).
        failures: case id -> why it could not be loaded.
        seen: ``seg`` / ``cls`` -> the test patients the given pretrained weights of that
            network were trained on (``cnn.weights_trained_on``; empty without weights).
        warnings: sentences for the summary (e.g. that pretrained weights saw test patients).
    """

    seg_rows: list[dict] = field(default_factory=list)
    localisation: LocalisationScorer | None = None
    grade_rows: list[dict] = field(default_factory=list)
    predictions: dict[str, dict[str, tuple]] = field(default_factory=lambda: defaultdict(dict))
    diagonal: dict[str, float] = field(default_factory=dict)
    wt_ml: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    seen: dict[str, frozenset] = field(default_factory=dict)
    sensitivity: dict[str, LocalisationScorer] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def aggregate_run(run_dir: str | Path, config: RunConfig) -> dict:
    """Write ``metrics/*.csv`` and ``cases/<id>/`` from the arms' outputs; return a summary."""
    # the test patients and what the arms wrote
    run_dir = Path(run_dir)
    metrics_dir = run_dir / METRICS_DIR
    metrics_dir.mkdir(parents=True, exist_ok=True)
    cohort = load_cohort(run_dir)
    test_ids = usable_test_ids(run_dir, cohort)
    grades = {c.case_id: c.grade for c in cohort.usable}
    truth = {c: grades[c] for c in test_ids}
    vlm_methods = _all_vlm_methods(config)
    arms = ArmOutputs.read(run_dir, vlm_methods)

    # patient by patient: CNN scores, grades, like-for-like localisation, the Slicer files and
    # the gallery
    scores = _score_cases(run_dir, cohort, test_ids, arms, config)

    # the VLM's localisation as 3D masks, scored beside the CNN
    seg_rows = list(scores.seg_rows)
    # patients without reference labels have nothing to be scored against (not a Dice of 0)
    labelled = {c.case_id for c in cohort.usable if c.label_path is not None}
    scored_ids = [c for c in test_ids if c in scores.diagonal and c in labelled]
    for outputs in arms.vlm.values():
        seg_rows += _vlm_seg_rows(outputs, scored_ids, scores.diagonal)

    # classification on the test patients of known grade, under both decision rules, and
    # paired comparisons
    graded = [c for c in test_ids if truth.get(c) in ("HGG", "LGG")]
    methods = _method_grades(run_dir, scores, arms, grades, config)
    boot = (config.metrics.n_bootstrap, config.seed)
    class_rows = classification_rows(methods, truth, graded, *boot)
    small_test_set = small_test_set_banner(truth, graded) if graded else None
    if small_test_set:
        log.warning("metrics: %s", small_test_set)

    # the tables
    tables = {
        "classification": class_rows,
        "grades": scores.grade_rows,
        "comparisons": comparison_rows(methods, truth, graded, *boot),
        "grading_by_size": by_size_rows(methods, truth, graded, scores.wt_ml),
        "roc": roc_rows(methods, truth, graded),
        "calibration": calibration_rows(methods, truth, graded),
        "segmentation": seg_rows,
        "segmentation_summary": _summary_rows(seg_rows),
        "localisation": scores.localisation.rows(config.metrics.n_bootstrap, config.seed),
        "dice_by_group": _dice_by_group_rows(seg_rows, scores, truth),
        "slices": [r for o in arms.vlm.values() for r in _slice_rows(o)],
        "answer_status": [r for o in arms.vlm.values() for r in _status_rows(o)],
        "consistency": _consistency_rows(run_dir, vlm_methods),
        "slice_sensitivity": _sensitivity_rows(scores, arms, truth, config),
    }
    for key, rows in tables.items():
        write_table(metrics_dir / f"{key}.csv", key, rows)
    return {
        "test_patients": len(test_ids),
        "graded": len(graded),
        "methods": sorted(scores.predictions),
        "case_failures": scores.failures,
        "warnings": scores.warnings,
        "classification": {
            f"{r['method']}/{r['decision']}": {
                k: r.get(k)
                for k in ("accuracy", "specificity", "balanced_accuracy", "mcnemar_vs_majority_p")
            }
            for r in class_rows
        },
        "small_test_set": small_test_set,
    }


# ------------------------------------------------------------------------------ per patient
def _score_cases(run_dir: Path, cohort, test_ids, arms: ArmOutputs, config: RunConfig):
    """Score every test patient, writing its ``cases/<case_id>/`` folder on the way."""
    usable = {c.case_id: c for c in cohort.usable}
    window = config.vlm.inference.window  # the gallery shows FLAIR as the VLM saw it
    scores = CaseScores(localisation=_localisation_scorer(cohort, run_dir, arms, config))
    scores.sensitivity = {rule: scores.localisation.sibling() for rule in sorted(arms.sensitivity)}
    _weights_overlap(cohort, test_ids, config, scores)
    for case_id in test_ids:
        try:
            case = load_case(usable[case_id], cohort.convention)
        except ValueError as exc:
            scores.failures[case_id] = str(exc)
            log.warning("metrics: %s", exc)
            continue
        scores.diagonal[case_id] = image_diagonal_mm(case.shape, case.spacing)
        if case.label is not None:
            wt = np.count_nonzero(region_mask(case.label, "WT", case.convention))
            scores.wt_ml[case_id] = float(wt * np.prod(case.spacing) / 1000.0)
        case_metrics: dict[str, Any] = {"case_id": case_id, "grade": case.grade}
        gallery: dict[str, GradePrediction] = {}
        cnn_label = None
        if arms.cnn_ran:
            cnn_label = _score_cnn(case, arms, scores, case_metrics, gallery)
        for outputs in arms.vlm.values():
            _score_vlm(case, outputs, scores, case_metrics, gallery)
            scores.localisation.add_case(case, cnn_label, outputs)
        for rule, outputs in arms.sensitivity.items():
            scores.sensitivity[rule].add_case(case, cnn_label, outputs)
        write_case_files(run_dir, case, cnn_label, arms.vlm, case_metrics)
        write_gallery_file(run_dir, case, cnn_label, arms.vlm, gallery, window)
    return scores


def _localisation_scorer(cohort, run_dir: Path, arms: ArmOutputs, config: RunConfig):
    """The like-for-like scorer, its baseline built from the training patients."""
    inference = config.vlm.inference
    baseline = None
    if any(a["task"] in LOCALISATION_TASKS for o in arms.vlm.values() for a in o.answers):
        baseline = training_baseline(cohort, load_splits(run_dir).ids("train"), inference.rule)
    k = inference.max_vertices or load_tasks(inference.prompts_dir)["polygon"].answer.max_vertices
    return LocalisationScorer(baseline, inference.point_radius_mm, k)


def _weights_overlap(cohort, test_ids, config: RunConfig, scores: CaseScores) -> None:
    """Which test patients the given pretrained weights were trained on (name_mapping.csv's
    earlier-challenge ids), per network, and the summary's warning."""
    given = [task for task in ("seg", "cls") if config.cnn.weights.get(task)]
    if not given or not config.cnn.enabled:
        return
    mapping = Path(cohort.data_dir or "") / cohort.convention.name_mapping_file
    prior = prior_challenge_ids(mapping, cohort.convention.id_column) if mapping.is_file() else None
    overlap = weights_overlap(test_ids, config.cnn.weights_trained_on, prior)
    for task in given:
        scores.seen[task] = frozenset(overlap.case_ids)
    if overlap.any:
        scores.warnings.append(f"{'/'.join(given)} weights: {overlap.note}")
        log.warning("metrics: %s", scores.warnings[-1])


def _score_cnn(case, arms: ArmOutputs, scores: CaseScores, case_metrics, gallery):
    """The CNN's (and its baseline's) rows and grade for one patient; returns its label map."""
    cnn_label = None
    for source in arms.cnn_sources():
        label = source.label(case.case_id)
        seen = source.method == "cnn" and case.case_id in scores.seen.get("seg", ())
        rows = _cnn_seg_rows(case, source, label, seen)
        scores.seg_rows += rows
        case_metrics[source.method] = {
            "regions": {r["region"]: {"dice": r["dice"], "hd95": r["hd95"]} for r in rows},
            "model": source.model,
        }
        if source.method == "cnn":
            cnn_label = label
    record = arms.cnn.records.get(case.case_id)
    p = record.get("p_hgg") if record else None
    g = record.get("predicted_grade") if record else None
    scores.predictions["cnn"][case.case_id] = (g, p)
    case_metrics["cnn"].update(grade=g, p_hgg=p)
    gallery["cnn"] = GradePrediction(g, p, arms.cnn.model)
    scores.grade_rows.append({"case_id": case.case_id, "method": "cnn", "model": arms.cnn.model,
                              "grade_true": case.grade, "grade_pred": g, "p_hgg": p,
                              "seen_by_weights": case.case_id in scores.seen.get("cls", ())
                              or None})  # fmt: skip
    return cnn_label


def _cnn_seg_rows(case, source: CnnOutputs, label, seen: bool = False) -> list[dict]:
    """Per-region rows of a CNN label map (a missing one scored as empty, as BraTS does);
    ``seen``: the pretrained weights were trained on this patient."""
    if case.label is None:  # no reference to score against: no row, not a Dice of 0
        return []
    status = "ok" if label is not None else "missing_prediction"
    pred = label if label is not None else np.zeros(case.shape, np.uint8)
    return [
        {
            "case_id": case.case_id,
            "method": source.method,
            "model": source.model,
            "task": "seg",
            "region": s.region,
            "dice": s.dice,
            "hd95": s.hd95,
            "hd_max": s.hd_max,
            "pred_voxels": s.pred_voxels,
            "ref_voxels": s.ref_voxels,
            "empty_rule": s.empty,
            "status": status,
            "seen_by_weights": True if seen else None,
        }
        for s in score_label_maps(pred, case.label, case.spacing, case.convention)
    ]


def _score_vlm(case, outputs: MethodOutputs, scores: CaseScores, case_metrics, gallery) -> None:
    """One VLM method's grade and per-task scores for one patient."""
    row = _vlm_patient_grade(outputs).get(case.case_id) or {}
    g = row.get("grade_pred") or None
    p = as_float(row.get("grade_score"))
    if any(a["task"] == "grade" for a in outputs.answers):
        scores.predictions[outputs.method][case.case_id] = (g, p)
        scores.grade_rows.append(
            {
                "case_id": case.case_id,
                "method": outputs.method,
                "model": outputs.model,
                "grade_true": case.grade,
                "grade_pred": g,
                "p_hgg": p,
                "n_slices": as_float(row.get("n_slices")),
                "votes_hgg": as_float(row.get("votes_hgg")),
                "votes_lgg": as_float(row.get("votes_lgg")),
                "votes_invalid": as_float(row.get("votes_invalid")),
            }
        )
        gallery[outputs.method] = GradePrediction(g, p, outputs.model)
    case_metrics[outputs.method] = {
        "model": outputs.model,
        "grade": g,
        "p_hgg": p,
        "tasks": {
            r["task"]: {
                "dice_3d": as_float(r.get("dice_3d")),
                "hd95_3d": as_float(r.get("hd95_3d")),
                "mean_slice_dice": as_float(r.get("mean_slice_dice")),
                "inside_fraction": as_float(r.get("inside_fraction")),
            }
            for r in outputs.patients
            if r["case_id"] == case.case_id and str(r.get("run")) == "0"
        },
    }


def _vlm_patient_grade(outputs: MethodOutputs) -> dict[str, dict]:
    out = {}
    for row in outputs.patients:
        if row.get("task") == "grade" and str(row.get("run")) == "0":
            out[row["case_id"]] = row
    return out


# ------------------------------------------------------------------------------ row builders
def _vlm_seg_rows(outputs: MethodOutputs, test_ids, diagonal: dict[str, float]) -> list[dict]:
    """``segmentation`` rows of a VLM's localisation answers stacked into 3D masks (WT)."""
    rows = []
    by_case = {
        (r["case_id"], r["task"]): r
        for r in outputs.patients
        if r.get("task") in LOCALISATION_TASKS and str(r.get("run")) == "0"
    }
    tasks = sorted({r["task"] for r in outputs.patients if r.get("task") in LOCALISATION_TASKS})
    for case_id in test_ids:
        for task in tasks:
            row = by_case.get((case_id, task))
            base = {"case_id": case_id, "method": outputs.method, "model": outputs.model,
                    "task": task, "region": "WT"}  # fmt: skip
            if row is None or as_float(row.get("dice_3d")) is None:
                rows.append({**base, "dice": 0.0, "hd95": diagonal.get(case_id),
                             "hd_max": diagonal.get(case_id), "status": "missing_prediction"})  # fmt: skip
                continue
            rows.append(
                {
                    **base,
                    "dice": as_float(row.get("dice_3d")),
                    "hd95": as_float(row.get("hd95_3d")),
                    "hd_max": as_float(row.get("hd_max_3d")),
                    "pred_voxels": as_float(row.get("pred_voxels")),
                    "ref_voxels": as_float(row.get("ref_voxels")),
                    "empty_rule": row.get("empty_rule") or None,
                    "status": "ok",
                }
            )
    return rows


def _method_grades(run_dir: Path, scores: CaseScores, arms: ArmOutputs, grades, config):
    """Every method's test grades under both decision rules (see :mod:`.grading`)."""
    out: list[MethodGrades] = []
    for method, preds in scores.predictions.items():
        if method == "cnn":
            thresholds = [
                float(r["threshold"])
                for r in arms.cnn.records.values()
                if as_float(r.get("threshold")) is not None
            ]
            out += cnn_grades(method, arms.cnn.model, preds, thresholds)
            continue
        outputs = arms.vlm[method]
        test_rows = {c: r for c, r in _vlm_patient_grade(outputs).items() if c in preds}
        val_rows = _vlm_val_grade_rows(run_dir, method)
        out += vlm_grades(method, outputs.model, test_rows, val_rows, grades,
                          config.metrics.vlm_grade_score)  # fmt: skip
    return out


def _vlm_val_grade_rows(run_dir: Path, method: str) -> dict[str, dict]:
    """A VLM method's grade rows on the validation patients (its stage's ``out_val/``)."""
    rows: dict[str, dict] = {}
    folder = run_dir / "stages" / vlm_stage_of(method) / "out_val"
    for path in sorted(folder.glob("*/metrics/vlm_patients.csv")):
        for row in read_csv(path):
            if row.get("task") == "grade" and str(row.get("run")) == "0":
                rows[row["case_id"]] = row
    return rows


def _summary_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """``segmentation_summary``: mean, median and spread per (method, model, task, region)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["model"], row["task"], row["region"])].append(row)
    out = []
    for (method, model, task, region), items in groups.items():
        dice = np.array([r["dice"] for r in items], float)
        hd = np.array([r["hd95"] for r in items], float)
        out.append(
            {
                "method": method, "model": model, "task": task, "region": region, "n": len(items),
                "dice_mean": float(dice.mean()), "dice_median": float(np.median(dice)),
                "dice_std": float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
                "hd95_mean": float(hd.mean()), "hd95_median": float(np.median(hd)),
                "hd95_std": float(hd.std(ddof=1)) if len(hd) > 1 else 0.0,
            }
        )  # fmt: skip
    return out


def _slice_rows(outputs: MethodOutputs) -> list[dict]:
    """``slices``: one row per VLM answer, with its 2D scores."""
    rows = []
    for a in outputs.answers:
        pred = a.get("score_pred_centre") or (None, None)
        true = a.get("score_true_centre") or (None, None)
        rows.append(
            {
                "case_id": a["case_id"], "slice_index": a["slice_index"], "method": outputs.method,
                "model": outputs.model, "task": a["task"], "run": a.get("run", 0),
                "status": a["status"], "dice_2d": a.get("score_dice"),
                "hd95_2d": a.get("score_hd95"), "point_inside": a.get("score_inside"),
                "point_dist_mm": a.get("score_distance_to_centre_mm"),
                "pred_cx": pred[0], "pred_cy": pred[1], "true_cx": true[0], "true_cy": true[1],
                "width": a.get("width"), "height": a.get("height"),
            }
        )  # fmt: skip
    return rows


def _status_rows(outputs: MethodOutputs) -> list[dict]:
    """``answer_status``: how many answers of each task had each parse status."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for a in outputs.answers:
        counts[a["task"]][a["status"]] += 1
    rows = []
    for task, counter in sorted(counts.items()):
        total = sum(counter.values())
        for status, count in sorted(counter.items()):
            rows.append({"method": outputs.method, "model": outputs.model, "task": task,
                         "status": status, "count": count, "fraction": count / total})  # fmt: skip
    return rows


def _groups(truth: Mapping[str, str | None], volume_ml: Mapping[str, float]) -> dict:
    """(group, level) -> test patients: by grade, and by reference WT volume at the median."""
    out = {("grade", g): {c for c, t in truth.items() if t == g} for g in ("HGG", "LGG")}
    sized = [c for c in truth if volume_ml.get(c) is not None]
    if sized:
        median = float(np.median([volume_ml[c] for c in sized]))
        out[("size", f"small (<= {median:.1f} ml)")] = {c for c in sized if volume_ml[c] <= median}
        out[("size", f"large (> {median:.1f} ml)")] = {c for c in sized if volume_ml[c] > median}
    return out


def _dice_by_group_rows(seg_rows, scores: CaseScores, truth) -> list[dict]:
    """``dice_by_group``: mean Dice per patient group (grade; tumour size at the median): the
    CNN's 3D Dice per region, and the VLM's per-slice Dice on the slices it saw beside the
    CNN's on the same slices (like for like)."""
    per_patient: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in seg_rows:
        if r["method"] in ("cnn", "cnn_untrained") and r.get("dice") is not None:
            key = (r["method"], r["model"], "seg", r["region"], "3d")
            per_patient[key][r["case_id"]] = float(r["dice"])
    for (method, task), cases in scores.localisation.cases.items():
        model = scores.localisation.models.get(method, "")
        for c in cases:
            means = c.means()
            if means["dice"] is not None:
                per_patient[(method, model, task, "WT", "slices")][c.case_id] = means["dice"]
            if means["cnn_dice"] is not None:
                key = (method, model, task, "WT", "cnn_same_slices")
                per_patient[key][c.case_id] = means["cnn_dice"]
    rows = []
    for (group, level), ids in _groups(truth, scores.wt_ml).items():
        for (method, model, task, region, scope), values in per_patient.items():
            chosen = [values[c] for c in sorted(ids) if c in values]
            if not chosen:
                continue
            rows.append({"method": method, "model": model, "task": task, "region": region,
                         "scope": scope, "group": group, "level": level, "n": len(chosen),
                         "dice_mean": float(np.mean(chosen)),
                         "dice_median": float(np.median(chosen))})  # fmt: skip
    return rows


def _sensitivity_rows(scores: CaseScores, arms: ArmOutputs, truth, config: RunConfig) -> list:
    """``slice_sensitivity``: the base VLM under the run's slice rule and under each other rule:
    grading accuracy (majority vote) and like-for-like localisation, on the same patients."""
    if not arms.sensitivity:
        return []
    main_rule = config.vlm.inference.rule
    asked = config.vlm_entries()[0].base_method  # the VLM the sensitivity stage asks
    groups = {main_rule.mode: (arms.vlm.get(asked), scores.localisation)}
    for rule, outputs in arms.sensitivity.items():
        groups[rule] = (outputs, scores.sensitivity[rule])
    rows = []
    for rule, (outputs, scorer) in groups.items():
        if outputs is None:
            continue
        base = {"slice_rule": rule, "oracle": rule in ORACLE_MODES, "model": outputs.model}
        rows.append({**base, "task": "grade", **_vote_accuracy(outputs, truth)})
        for loc in scorer.rows(config.metrics.n_bootstrap, config.seed):
            if loc["method"] == asked:
                rows.append(
                    {**base, **{k: v for k, v in loc.items() if k not in ("model", "method")}}
                )
    return rows


def _vote_accuracy(outputs: MethodOutputs, truth: Mapping[str, str | None]) -> dict:
    """Accuracy of the voted grade over the patients of known grade (an invalid vote is wrong)."""
    votes = _vlm_patient_grade(outputs)
    graded = [c for c in votes if truth.get(c) in ("HGG", "LGG")]
    if not graded:
        return {"n_patients": 0}
    right = sum(votes[c].get("grade_pred") == truth[c] for c in graded)
    return {"n_patients": len(graded), "accuracy": right / len(graded)}


def _all_vlm_methods(config: RunConfig) -> list[str]:
    """Every VLM method the run may hold, in table order: each VLM's base and fine-tuned one
    (a method whose stage did not run has no outputs and no rows)."""
    return [m for e in config.vlm_entries() for m in (e.base_method, e.finetuned_method)]


def _consistency_rows(run_dir: Path, vlm_methods) -> list[dict]:
    """``consistency``: the repeated-query statistics of each method, over its shards."""
    rows = []
    base = run_dir / "stages" / "consistency"
    for method in vlm_methods:
        outputs = collect_vlm(run_dir, method, base / method)
        if outputs is None:
            continue
        found = sorted((base / method / "out").glob("*/metrics/vlm_consistency.csv"))
        found += sorted((base / method / "evaluated" / "out").glob("*/metrics/vlm_consistency.csv"))
        for out in found:
            for r in read_csv(out):
                rows.append(
                    {
                        "method": method, "model": outputs.model, "task": r["task"],
                        "level": r.get("level"), "n_items": as_float(r.get("n_items")),
                        "runs": as_float(r.get("runs")), "temperature": as_float(r.get("temperature")),
                        "all_identical_rate": as_float(r.get("all_identical_rate")),
                        "fleiss_kappa": as_float(r.get("fleiss_kappa")),
                        "mean_entropy": as_float(r.get("mean_entropy")),
                        "iou_spread_mean": as_float(r.get("iou_spread_mean")),
                        "point_dispersion_mm_mean": as_float(r.get("point_dispersion_mm_mean")),
                    }
                )  # fmt: skip
    return rows
