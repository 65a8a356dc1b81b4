"""The Slicer-loadable ``cases/<case_id>/`` folder of a test patient: the ground truth and the
CNN segmentation as ``.seg.nrrd`` (BraTS labels kept), the VLM answers as markups placed in RAS
on their slices (base and fine-tuned, of each VLM: file names by
:func:`~GliomaCompareLib.runlayout.vlm_markup_variant`), ``metrics.json`` and the report's
``gallery.npz``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from GliomaCompareLib.data import SliceGeometry, WindowSpec
from GliomaCompareLib.data.slices import render_slice, window_volume
from GliomaCompareLib.fileio import atomic_write_json
from GliomaCompareLib.geometry import Box, Point, Polygon
from GliomaCompareLib.pipeline.outputs import MethodOutputs
from GliomaCompareLib.report import (
    CaseGallery,
    GalleryAnswer,
    GradePrediction,
    representative_slice,
    write_gallery,
)
from GliomaCompareLib.report.gallery import geometry_from_dict
from GliomaCompareLib.runlayout import (
    CASE_METRICS_FILE,
    CNN_SEG_FILE,
    GT_SEG_FILE,
    is_finetuned_method,
    vlm_markup_variant,
    vlm_name_of,
)
from GliomaCompareLib.slicer_files import (
    PointsMarkup,
    case_dir,
    closed_curve_from_pixels,
    points_from_pixels,
    roi_from_pixel_box,
    vlm_markup_file,
    write_markups,
    write_seg_nrrd,
)

__all__ = ["LOCALISATION_TASKS", "write_case_files", "write_gallery_file"]

#: The VLM tasks whose answers are places on the slice.
LOCALISATION_TASKS = ("point", "box", "polygon")


def _geometry(pixel: Mapping[str, Any] | None):
    return geometry_from_dict(pixel) if pixel else None


def _method_label(method: str) -> str:
    """The markup name's prefix: ``VLM``, ``VLM fine-tuned``, ``VLM <name>`` ..."""
    name = vlm_name_of(method)
    label = f"VLM {name}" if name else "VLM"
    return f"{label} fine-tuned" if is_finetuned_method(method) else label


def _shape_markup(answer: dict, geom, slice_geom: SliceGeometry, label: str, desc: str):
    """The markup of a box or polygon answer (None for anything else)."""
    where = f"slice {answer['slice_index']}"
    if isinstance(geom, Box):
        return roi_from_pixel_box(
            slice_geom, geom.x0, geom.y0, geom.x1, geom.y1,
            name=f"{label} box {where}", description=desc,
        )  # fmt: skip
    if isinstance(geom, Polygon) and len(geom.points) >= 3:
        return closed_curve_from_pixels(
            slice_geom, list(geom.points), name=f"{label} polygon {where}", description=desc
        )
    return None


def _markups_for(answers: list[dict], case, task: str, method: str) -> list:
    """Slicer markups of one method's answers to one localisation task (first run)."""
    label = _method_label(method)
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
        elif (markup := _shape_markup(answer, geom, slice_geom, label, desc)) is not None:
            others.append(markup)
    if points:
        return [
            PointsMarkup(
                f"{label} point", np.asarray(points), tuple(point_labels), tuple(point_desc)
            )
        ]
    return others


def write_case_files(run_dir, case, cnn_label, vlm: dict[str, MethodOutputs], metrics) -> None:
    """Write ``cases/<case_id>/``: segmentations, VLM markups and ``metrics.json``."""
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
        variant = vlm_markup_variant(method)
        for task in LOCALISATION_TASKS:
            path = folder / vlm_markup_file(task, variant)
            markups = _markups_for(answers, case, task, method)
            if markups:
                write_markups(path, markups)
            else:
                path.unlink(missing_ok=True)
    atomic_write_json(folder / CASE_METRICS_FILE, metrics)


def _gallery_slice(case, vlm: dict[str, MethodOutputs], wt: np.ndarray) -> int | None:
    """The slice the gallery shows: among the slices the VLM was asked about (else every
    tumour slice), the representative one by tumour area; None without any."""
    indices = {
        int(a["slice_index"])
        for outputs in vlm.values()
        for a in outputs.answers
        if a["case_id"] == case.case_id
    }
    if not indices:  # no VLM answers: the largest tumour slice
        indices = {int(k) for k in np.flatnonzero(wt.any(axis=(0, 1)))}
    if not indices:
        return None
    areas = {
        index: float(SliceGeometry.axial(case.affine, case.shape, index).extract(wt).sum())
        for index in indices
    }
    return representative_slice(areas)


def _gallery_answers(case, vlm: dict[str, MethodOutputs], index: int):
    """Method -> task -> the first run's localisation answer on slice ``index``."""
    answers: dict[str, dict[str, GalleryAnswer]] = {}
    for method, outputs in vlm.items():
        for a in outputs.answers:
            if (a["case_id"], int(a["slice_index"]), a.get("run", 0)) != (case.case_id, index, 0):
                continue
            if a["task"] in LOCALISATION_TASKS:
                answers.setdefault(method, {})[a["task"]] = GalleryAnswer(
                    a["status"], _geometry(a.get("pixel"))
                )
    return answers


def write_gallery_file(
    run_dir,
    case,
    cnn_label,
    vlm: dict[str, MethodOutputs],
    predictions: dict[str, GradePrediction],
    window: WindowSpec,
) -> None:
    """Write ``cases/<case_id>/gallery.npz``: the report's picture of the case (FLAIR in the VLM's
    window, ground truth, CNN and VLM answers on one representative slice). Needs labels."""
    if case.label is None:
        return
    wt = np.isin(case.label, case.convention.regions["WT"])
    index = _gallery_slice(case, vlm, wt)
    if index is None:
        return
    geom = SliceGeometry.axial(case.affine, case.shape, index)
    lo, hi = window_volume(case.flair, window)
    plane = geom.extract(case.flair)
    if window.scope == "slice":
        lo, hi = window_volume(plane, window)
    cnn = None
    if cnn_label is not None:
        cnn = geom.extract(np.isin(cnn_label, case.convention.regions["WT"]))
    gallery = CaseGallery(
        case_id=case.case_id,
        grade=case.grade,
        slice_index=index,
        flair=render_slice(plane, lo, hi)[..., 0],
        gt=geom.extract(wt),
        cnn=cnn,
        pixel_spacing=geom.pixel_spacing,
        answers=_gallery_answers(case, vlm, index),
        predictions=predictions,
        models={method: outputs.model for method, outputs in vlm.items()},
    )
    write_gallery(case_dir(run_dir, case.case_id) / "gallery.npz", gallery)
