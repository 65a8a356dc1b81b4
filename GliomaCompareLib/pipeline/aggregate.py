"""The ``metrics`` stage: every table of the run, and the Slicer-loadable ``cases/`` folder.

Reads what the arms wrote (CNN label maps and grade records, the VLM's ``answers.jsonl`` and
per-patient tables of every shard), scores the CNN against the references with the evaluation
core, and writes the tables of :mod:`GliomaCompareLib.runlayout` plus, per test patient,
``cases/<case_id>/``: the ground truth and the CNN segmentation as ``.seg.nrrd`` (BraTS labels
kept), the VLM answers as markups placed in RAS on their slices (base and fine-tuned),
``metrics.json`` and the report's ``gallery.npz``.

Scoring rules: a test patient without a prediction of a method is scored as BraTS scores a
missing prediction (empty: Dice 0, HD95 = the volume diagonal) and as a wrong grade; it is never
dropped. Patients of unknown grade are left out of the classification tables only.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib.pipeline.stages import atomic_write_json
from GliomaCompareLib.runlayout import METHODS, SPLITS_FILE, write_table

__all__ = ["MethodOutputs", "aggregate_run", "collect_vlm"]

log = logging.getLogger("gliomacompare.metrics")

_VLM_STAGES = {"vlm_base": "vlm-base", "vlm_finetuned": "vlm-finetuned"}
_LOCALISATION = ("point", "box", "polygon")


@dataclass
class MethodOutputs:
    """One VLM method's outputs gathered over every shard."""

    method: str
    model: str = ""
    model_label: str = ""
    answers: list[dict] = field(default_factory=list)
    patients: list[dict] = field(default_factory=list)
    case_errors: dict[str, str] = field(default_factory=dict)


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _float(value) -> float | None:
    if value in (None, ""):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _model_name(identity: Mapping[str, Any], label: str) -> str:
    model = identity.get("model_id") or identity.get("model") or identity.get("backend") or ""
    adapter = identity.get("adapter_hash") or identity.get("adapter")
    text = str(model)
    if adapter:
        text += f" + LoRA adapter {str(adapter)[:12]}"
    if label and label not in text:
        text += f" ({label})"
    return text


def collect_vlm(run_dir: Path, method: str, stage_dir: Path | None = None) -> MethodOutputs | None:
    """Gather a VLM stage's answers and patient rows over its shards (None when it did not run)."""
    stage_dir = stage_dir or run_dir / "stages" / _VLM_STAGES[method]
    outs = sorted(p for p in (stage_dir / "out").glob("*") if (p / "vlm.json").is_file())
    if not outs:
        return None
    result = MethodOutputs(method)
    for out in outs:
        info = json.loads((out / "vlm.json").read_text())
        result.model_label = info.get("model_label", "")
        result.model = _model_name(info.get("identity") or {}, result.model_label)
        result.case_errors.update(info.get("case_errors") or {})
        answers = out / "answers.jsonl"
        if answers.is_file():
            with answers.open() as handle:
                result.answers += [json.loads(line) for line in handle if line.strip()]
        patients = out / "metrics" / "vlm_patients.csv"
        if patients.is_file():
            result.patients += _read_csv(patients)
    return result


def _cnn_records(
    run_dir: Path, folder: str = "pred"
) -> tuple[dict[str, dict], dict[str, Path], str]:
    """CNN per-case records (by case id), their output folders, and the model description.

    ``folder``: ``pred`` (the trained networks) or ``pred_untrained`` (the segmentation
    network before training, the baseline)."""
    records: dict[str, dict] = {}
    folders: dict[str, Path] = {}
    for path in sorted((run_dir / "stages" / "cnn-predict" / folder).glob("*/records/*.json")):
        record = json.loads(path.read_text())
        records[record["case_id"]] = record
        folders[record["case_id"]] = path.parent.parent
    model = ""
    if records:
        first = next(iter(records.values()))
        model = "; ".join(
            f"{task} {first[key]}"
            for task, key in (("seg", "seg_model_id"), ("cls", "cls_model_id"))
            if first.get(key)
        )
        if folder == "pred_untrained":
            model += " (untrained: random initialisation)"
    return records, folders, model


def _cnn_label(records: dict, folders: dict, case_id: str):
    """A case's CNN label map (uint8), or None when missing or unreadable (logged)."""
    from GliomaCompareLib.data.io import read_image

    record = records.get(case_id)
    if not (record and record.get("label_file")):
        return None
    try:
        label, _ = read_image(folders[case_id] / record["label_file"])
    except ValueError as exc:
        log.warning("metrics: CNN label map of %s unreadable: %s", case_id, exc)
        return None
    return np.rint(label).astype(np.uint8)


def _cnn_seg_rows(case_id: str, method: str, model: str, label, case) -> list[dict]:
    """Per-region rows of a CNN label map (a missing one scored as empty, as BraTS does)."""
    from GliomaCompareLib.metrics.segmentation import score_label_maps

    status = "ok" if label is not None else "missing_prediction"
    pred = label if label is not None else np.zeros(case.shape, np.uint8)
    return [
        {
            "case_id": case_id,
            "method": method,
            "model": model,
            "task": "seg",
            "region": s.region,
            "dice": s.dice,
            "hd95": s.hd95,
            "hd_max": s.hd_max,
            "pred_voxels": s.pred_voxels,
            "ref_voxels": s.ref_voxels,
            "empty_rule": s.empty,
            "status": status,
        }
        for s in score_label_maps(pred, case.label, case.spacing, case.convention)
    ]


def _classification_row(method: str, model: str, truth, preds, scores, n_bootstrap, seed) -> dict:
    from GliomaCompareLib.metrics.classification import classification_report

    have_scores = all(s is not None for s in scores) and len(set(truth)) == 2
    report = classification_report(
        truth, preds, scores if have_scores else None, n_bootstrap=n_bootstrap, seed=seed
    )
    data = report.to_dict()
    row = {
        "method": method,
        "model": model,
        "sensitivity": data.get("recall"),
        "ci_level": data.get("ci_level"),
        "n_bootstrap": data.get("n_bootstrap"),
    }
    for key in ("n", "tp", "fp", "tn", "fn", "n_invalid", "accuracy", "precision", "specificity",
                "f1", "balanced_accuracy", "auc", "majority_baseline_accuracy"):  # fmt: skip
        row[key] = data.get(key)
    ci = data.get("ci") or {}
    for name, key in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy"),
                      ("sensitivity", "recall"), ("specificity", "specificity"), ("auc", "auc")):  # fmt: skip
        low, high = ci.get(key, ci.get(name, (None, None)))
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
    return row


def _summary_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
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


def _geometry(pixel: Mapping[str, Any] | None):
    from GliomaCompareLib.report.gallery import geometry_from_dict

    return geometry_from_dict(pixel) if pixel else None


def _markups_for(answers: list[dict], case, task: str, method: str):
    """Slicer markups of one method's answers to one localisation task (first run)."""
    from GliomaCompareLib.data.slices import SliceGeometry
    from GliomaCompareLib.geometry import Box, Point, Polygon
    from GliomaCompareLib.slicer_files import (
        PointsMarkup,
        closed_curve_from_pixels,
        points_from_pixels,
        roi_from_pixel_box,
    )

    label = "VLM" if method == "vlm_base" else "VLM fine-tuned"
    points, point_labels, point_desc, others = [], [], [], []
    for answer in answers:
        if answer["task"] != task or answer.get("run", 0) != 0:
            continue
        geom = _geometry(answer.get("pixel"))
        if geom is None:
            continue
        slice_geom = SliceGeometry.axial(case.affine, case.shape, int(answer["slice_index"]))
        desc = f"{answer.get('model_label', '')}; status {answer['status']}".strip("; ")
        if isinstance(geom, Point):
            points.append(points_from_pixels(slice_geom, [(geom.x, geom.y)])[0])
            point_labels.append(f"slice {answer['slice_index']}")
            point_desc.append(desc)
        elif isinstance(geom, Box):
            others.append(
                roi_from_pixel_box(
                    slice_geom, geom.x0, geom.y0, geom.x1, geom.y1,
                    name=f"{label} box slice {answer['slice_index']}", description=desc,
                )
            )  # fmt: skip
        elif isinstance(geom, Polygon) and len(geom.points) >= 3:
            others.append(
                closed_curve_from_pixels(
                    slice_geom, list(geom.points),
                    name=f"{label} polygon slice {answer['slice_index']}", description=desc,
                )
            )  # fmt: skip
    if points:
        return [
            PointsMarkup(
                f"{label} point", np.asarray(points), tuple(point_labels), tuple(point_desc)
            )
        ]
    return others


def _write_case_files(run_dir, case, cnn_label, vlm: dict[str, MethodOutputs], metrics, config):
    from GliomaCompareLib.slicer_files import (
        CNN_SEG_FILE,
        GT_SEG_FILE,
        case_dir,
        vlm_markup_file,
        write_markups,
        write_seg_nrrd,
    )

    folder = case_dir(run_dir, case.case_id)
    folder.mkdir(parents=True, exist_ok=True)
    if case.label is not None:
        write_seg_nrrd(folder / GT_SEG_FILE, case.label, case.affine, case.convention, "labels",
                       extra_tags={"GliomaCompare.Source": "ground truth"})  # fmt: skip
    if cnn_label is not None:
        write_seg_nrrd(folder / CNN_SEG_FILE, cnn_label, case.affine, case.convention, "labels",
                       extra_tags={"GliomaCompare.Source": "3D CNN"})  # fmt: skip
    for method, outputs in vlm.items():
        answers = [a for a in outputs.answers if a["case_id"] == case.case_id]
        variant = "base" if method == "vlm_base" else "finetuned"
        for task in _LOCALISATION:
            path = folder / vlm_markup_file(task, variant)
            markups = _markups_for(answers, case, task, method)
            if markups:
                write_markups(path, markups)
            else:
                path.unlink(missing_ok=True)
    atomic_write_json(folder / "metrics.json", metrics)


def _write_gallery(run_dir, case, cnn_label, vlm: dict[str, MethodOutputs], predictions, config):
    from GliomaCompareLib.data.slices import SliceGeometry, render_slice, window_volume
    from GliomaCompareLib.pipeline.run import vlm_config_from_dict
    from GliomaCompareLib.report.gallery import (
        CaseGallery,
        GalleryAnswer,
        representative_slice,
        write_gallery,
    )
    from GliomaCompareLib.slicer_files import case_dir

    if case.label is None:
        return
    areas: dict[int, float] = {}
    for outputs in vlm.values():
        for a in outputs.answers:
            if a["case_id"] == case.case_id:
                areas[int(a["slice_index"])] = 0.0
    wt = np.isin(case.label, case.convention.regions["WT"])
    if not areas:  # no VLM answers: the largest tumour slice
        areas = {int(k): 0.0 for k in np.flatnonzero(wt.any(axis=(0, 1)))}
    if not areas:
        return
    for index in areas:
        areas[index] = float(SliceGeometry.axial(case.affine, case.shape, index).extract(wt).sum())
    index = representative_slice(areas)
    geom = SliceGeometry.axial(case.affine, case.shape, index)
    window = vlm_config_from_dict(config.get("vlm") or {}).window
    flair = case.flair
    lo, hi = window_volume(flair, window)
    plane = geom.extract(flair)
    if window.scope == "slice":
        lo, hi = window_volume(plane, window)
    answers: dict[str, dict[str, GalleryAnswer]] = {}
    models = {}
    for method, outputs in vlm.items():
        models[method] = outputs.model
        for a in outputs.answers:
            if (a["case_id"], int(a["slice_index"]), a.get("run", 0)) != (case.case_id, index, 0):
                continue
            if a["task"] in _LOCALISATION:
                answers.setdefault(method, {})[a["task"]] = GalleryAnswer(
                    a["status"], _geometry(a.get("pixel"))
                )
    gallery = CaseGallery(
        case_id=case.case_id,
        grade=case.grade,
        slice_index=index,
        flair=render_slice(plane, lo, hi)[..., 0],
        gt=geom.extract(wt),
        cnn=geom.extract(np.isin(cnn_label, case.convention.regions["WT"]))
        if cnn_label is not None
        else None,
        pixel_spacing=geom.pixel_spacing,
        answers=answers,
        predictions=predictions,
        models=models,
    )
    write_gallery(case_dir(run_dir, case.case_id) / "gallery.npz", gallery)


def _vlm_patient_grade(outputs: MethodOutputs) -> dict[str, dict]:
    out = {}
    for row in outputs.patients:
        if row.get("task") == "grade" and str(row.get("run")) == "0":
            out[row["case_id"]] = row
    return out


def _vlm_seg_rows(outputs: MethodOutputs, test_ids, diagonal: dict[str, float]) -> list[dict]:
    rows = []
    by_case = {
        (r["case_id"], r["task"]): r
        for r in outputs.patients
        if r.get("task") in _LOCALISATION and str(r.get("run")) == "0"
    }
    tasks = sorted({r["task"] for r in outputs.patients if r.get("task") in _LOCALISATION})
    for case_id in test_ids:
        for task in tasks:
            row = by_case.get((case_id, task))
            base = {"case_id": case_id, "method": outputs.method, "model": outputs.model,
                    "task": task, "region": "WT"}  # fmt: skip
            if row is None or _float(row.get("dice_3d")) is None:
                rows.append({**base, "dice": 0.0, "hd95": diagonal.get(case_id),
                             "hd_max": diagonal.get(case_id), "status": "missing_prediction"})  # fmt: skip
                continue
            rows.append(
                {
                    **base,
                    "dice": _float(row.get("dice_3d")),
                    "hd95": _float(row.get("hd95_3d")),
                    "hd_max": _float(row.get("hd_max_3d")),
                    "pred_voxels": _float(row.get("pred_voxels")),
                    "ref_voxels": _float(row.get("ref_voxels")),
                    "empty_rule": row.get("empty_rule") or None,
                    "status": "ok",
                }
            )
    return rows


def _slice_rows(outputs: MethodOutputs) -> list[dict]:
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


def _consistency_rows(run_dir: Path) -> list[dict]:
    rows = []
    base = run_dir / "stages" / "consistency"
    for method in METHODS:
        outputs = collect_vlm(run_dir, method, base / method)
        if outputs is None:
            continue
        for out in sorted((base / method / "out").glob("*/metrics/vlm_consistency.csv")):
            for r in _read_csv(out):
                rows.append(
                    {
                        "method": method, "model": outputs.model, "task": r["task"],
                        "level": r.get("level"), "n_items": _float(r.get("n_items")),
                        "runs": _float(r.get("runs")), "temperature": _float(r.get("temperature")),
                        "all_identical_rate": _float(r.get("all_identical_rate")),
                        "fleiss_kappa": _float(r.get("fleiss_kappa")),
                        "mean_entropy": _float(r.get("mean_entropy")),
                        "iou_spread_mean": _float(r.get("iou_spread_mean")),
                        "point_dispersion_mm_mean": _float(r.get("point_dispersion_mm_mean")),
                    }
                )  # fmt: skip
    return rows


def aggregate_run(run_dir: str | Path, config: Mapping[str, Any]) -> dict:
    """Write ``metrics/*.csv`` and ``cases/<id>/`` from the arms' outputs; return a summary."""
    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.splits import Splits
    from GliomaCompareLib.metrics.classification import mcnemar
    from GliomaCompareLib.metrics.segmentation import image_diagonal_mm
    from GliomaCompareLib.pipeline.run import load_cohort
    from GliomaCompareLib.report.gallery import GradePrediction

    run_dir = Path(run_dir)
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    cohort = load_cohort(run_dir)
    splits = Splits.load(run_dir / SPLITS_FILE)
    usable = {c.case_id: c for c in cohort.usable}
    test_ids = [c for c in splits.ids("test") if c in usable]
    truth = {c: usable[c].grade for c in test_ids}
    metrics_cfg = dict(config.get("metrics") or {})
    n_bootstrap = int(metrics_cfg.get("n_bootstrap", 2000))
    seed = int(config.get("seed", 0))

    cnn_records, cnn_dirs, cnn_model = _cnn_records(run_dir)
    cnn_ran = (run_dir / "stages" / "cnn-predict" / "done.json").exists() or bool(cnn_records)
    base_records, base_dirs, base_model = _cnn_records(run_dir, "pred_untrained")
    vlm = {m: o for m in _VLM_STAGES if (o := collect_vlm(run_dir, m)) is not None}

    seg_rows: list[dict] = []
    grade_rows: list[dict] = []
    predictions: dict[str, dict[str, tuple]] = defaultdict(dict)  # method -> case -> (pred, p)
    diagonal: dict[str, float] = {}
    case_failures: dict[str, str] = {}
    for case_id in test_ids:
        try:
            case = load_case(usable[case_id], cohort.convention)
        except ValueError as exc:
            case_failures[case_id] = str(exc)
            log.warning("metrics: %s", exc)
            continue
        diagonal[case_id] = image_diagonal_mm(case.shape, case.spacing)
        case_metrics: dict[str, Any] = {"case_id": case_id, "grade": case.grade}
        gallery_preds = {}
        cnn_label = None
        if cnn_ran:
            sources = [("cnn", cnn_records, cnn_dirs, cnn_model)]
            if base_records:
                sources.append(("cnn_untrained", base_records, base_dirs, base_model))
            for method, records, folders, model in sources:
                label = _cnn_label(records, folders, case_id)
                rows = _cnn_seg_rows(case_id, method, model, label, case)
                seg_rows += rows
                case_metrics[method] = {
                    "regions": {r["region"]: {"dice": r["dice"], "hd95": r["hd95"]} for r in rows},
                    "model": model,
                }
                if method == "cnn":
                    cnn_label = label
            record = cnn_records.get(case_id)
            p = record.get("p_hgg") if record else None
            g = record.get("predicted_grade") if record else None
            predictions["cnn"][case_id] = (g, p)
            case_metrics["cnn"].update(grade=g, p_hgg=p)
            gallery_preds["cnn"] = GradePrediction(g, p, cnn_model)
            grade_rows.append({"case_id": case_id, "method": "cnn", "model": cnn_model,
                               "grade_true": case.grade, "grade_pred": g, "p_hgg": p})  # fmt: skip
        for method, outputs in vlm.items():
            row = _vlm_patient_grade(outputs).get(case_id)
            g = (row or {}).get("grade_pred") or None
            p = _float((row or {}).get("grade_score"))
            if any(a["task"] == "grade" for a in outputs.answers):
                predictions[method][case_id] = (g, p)
                grade_rows.append(
                    {
                        "case_id": case_id,
                        "method": method,
                        "model": outputs.model,
                        "grade_true": case.grade,
                        "grade_pred": g,
                        "p_hgg": p,
                        "n_slices": _float((row or {}).get("n_slices")),
                        "votes_hgg": _float((row or {}).get("votes_hgg")),
                        "votes_lgg": _float((row or {}).get("votes_lgg")),
                        "votes_invalid": _float((row or {}).get("votes_invalid")),
                    }
                )
                gallery_preds[method] = GradePrediction(g, p, outputs.model)
            case_metrics[method] = {
                "model": outputs.model,
                "grade": g,
                "p_hgg": p,
                "tasks": {
                    r["task"]: {
                        "dice_3d": _float(r.get("dice_3d")),
                        "hd95_3d": _float(r.get("hd95_3d")),
                        "mean_slice_dice": _float(r.get("mean_slice_dice")),
                        "inside_fraction": _float(r.get("inside_fraction")),
                    }
                    for r in outputs.patients
                    if r["case_id"] == case_id and str(r.get("run")) == "0"
                },
            }
        _write_case_files(run_dir, case, cnn_label, vlm, case_metrics, config)
        _write_gallery(run_dir, case, cnn_label, vlm, gallery_preds, config)

    for outputs in vlm.values():
        seg_rows += _vlm_seg_rows(outputs, [c for c in test_ids if c in diagonal], diagonal)

    # classification on the test patients of known grade
    class_rows, models = [], {"cnn": cnn_model, **{m: o.model for m, o in vlm.items()}}
    graded = [c for c in test_ids if truth.get(c) in ("HGG", "LGG")]
    for method, preds in predictions.items():
        y_true = [truth[c] for c in graded]
        y_pred = [preds.get(c, (None, None))[0] for c in graded]
        scores = [preds.get(c, (None, None))[1] for c in graded]
        if graded:
            class_rows.append(
                _classification_row(
                    method, models[method], y_true, y_pred, scores, n_bootstrap, seed
                )
            )
    comparisons = []
    names = [m for m in ("cnn", "vlm_base", "vlm_finetuned") if m in predictions]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if not graded:
                continue
            result = mcnemar(
                [truth[c] for c in graded],
                [predictions[a].get(c, (None,))[0] for c in graded],
                [predictions[b].get(c, (None,))[0] for c in graded],
            )
            data = result.to_dict()
            comparisons.append(
                {
                    "method_a": a,
                    "method_b": b,
                    "n": len(graded),
                    "b": data.get("b"),
                    "c": data.get("c"),
                    "statistic": data.get("statistic"),
                    "p_value": data.get("p_value"),
                    "test": data.get("method"),
                }
            )

    slice_rows = [r for o in vlm.values() for r in _slice_rows(o)]
    status_rows = [r for o in vlm.values() for r in _status_rows(o)]
    write_table(metrics_dir / "classification.csv", "classification", class_rows)
    write_table(metrics_dir / "grades.csv", "grades", grade_rows)
    write_table(metrics_dir / "comparisons.csv", "comparisons", comparisons)
    write_table(metrics_dir / "segmentation.csv", "segmentation", seg_rows)
    write_table(
        metrics_dir / "segmentation_summary.csv", "segmentation_summary", _summary_rows(seg_rows)
    )
    write_table(metrics_dir / "slices.csv", "slices", slice_rows)
    write_table(metrics_dir / "answer_status.csv", "answer_status", status_rows)
    write_table(metrics_dir / "consistency.csv", "consistency", _consistency_rows(run_dir))
    return {
        "test_patients": len(test_ids),
        "graded": len(graded),
        "methods": sorted(predictions),
        "case_failures": case_failures,
        "classification": {
            r["method"]: {k: r.get(k) for k in ("accuracy", "specificity", "balanced_accuracy")}
            for r in class_rows
        },
    }
