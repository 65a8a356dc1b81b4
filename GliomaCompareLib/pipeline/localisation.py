"""The metrics stage's like-for-like localisation (``metrics/localisation.csv``).

For every test patient and every VLM method and localisation task, the answers on the slices the
VLM was asked about are scored beside the CNN on exactly those slices, the oracle answer of that
kind and a trivial baseline (:mod:`GliomaCompareLib.metrics.localisation`). The baseline is the
mean true box / centre of the *training* patients on their reference tumour slices, placed on
every test slice without looking at it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from GliomaCompareLib import geometry as g
from GliomaCompareLib.data import SliceGeometry, SliceRule, read_image
from GliomaCompareLib.data.slices import select_slices
from GliomaCompareLib.metrics.localisation import (
    CaseLocalisation,
    TrivialBaseline,
    localisation_rows,
    score_case,
)
from GliomaCompareLib.pipeline.case_files import LOCALISATION_TASKS
from GliomaCompareLib.pipeline.outputs import MethodOutputs
from GliomaCompareLib.report.gallery import geometry_from_dict
from GliomaCompareLib.vlm.scoring import answer_mask

__all__ = ["LocalisationScorer", "training_baseline"]

log = logging.getLogger("gliomacompare.metrics")


def training_baseline(cohort, train_ids: Iterable[str], rule: SliceRule) -> TrivialBaseline | None:
    """The mean true box and centre over the training patients' reference tumour slices (the
    slices an oracle rule with ``rule``'s region and K picks), or None when no training patient
    has a readable label map with tumour."""
    oracle = SliceRule(region=rule.region, max_slices=rule.max_slices)
    records = {c.case_id: c for c in cohort.usable}
    masks = []
    for case_id in train_ids:
        record = records.get(case_id)
        if record is None or record.label_path is None:
            continue
        try:
            label, meta = read_image(record.label_path)
        except ValueError as exc:
            log.warning("metrics: baseline skips %s: %s", case_id, exc)
            continue
        region = np.isin(np.rint(label), cohort.convention.regions[rule.region])
        for index in select_slices(meta.affine, region, None, oracle):
            masks.append(SliceGeometry.axial(meta.affine, region.shape, index).extract(region))
    try:
        return TrivialBaseline.from_masks(masks)
    except ValueError:
        return None


def _answer_masks(answers: list[dict], kind: str, ref_shape, spacing, radius_mm: float):
    """The scored mask of each answer (None for a failed one) and, for polygons, the lenient
    mask (the filled hull of whatever vertices it gave, also for a rejected answer)."""
    masks, lenient = [], []
    for answer in answers:
        geom = geometry_from_dict(answer.get("pixel")) if answer else None
        # the same mask the VLM arm scored the answer with
        masks.append(
            None
            if geom is None
            else answer_mask(kind, geom, ref_shape, spacing, radius_mm=radius_mm)
        )
        lenient.append(_hull(answer, ref_shape) if kind == "polygon" else None)
    return masks, lenient


def _hull(answer: Mapping | None, shape) -> np.ndarray | None:
    if not answer or answer.get("value") is None:
        return None
    try:
        points = np.asarray(
            g.to_pixels(
                answer["value"],
                answer.get("coordinate_system") or "pixel",
                int(answer["width"]),
                int(answer["height"]),
            ),
            dtype=float,
        ).reshape(-1, 2)
        if len(points) < 3 or not np.isfinite(points).all():
            return None
        return g.polygon_hull_mask(points, shape)
    except (TypeError, ValueError, KeyError):
        return None


class LocalisationScorer:
    """Collects each test patient's :class:`CaseLocalisation` per (method, task), then the
    table's rows.

    Args:
        baseline: the training patients' trivial baseline (None: no baseline column).
        radius_mm: disc radius of point answers (the VLM arm's ``point_radius_mm``).
        max_vertices: the polygon prompt's K.
    """

    def __init__(self, baseline: TrivialBaseline | None, radius_mm: float, max_vertices: int):
        self.baseline = baseline
        self.radius_mm = radius_mm
        self.max_vertices = max_vertices
        self.cases: dict[tuple[str, str], list[CaseLocalisation]] = defaultdict(list)
        self.models: dict[str, str] = {}

    def sibling(self) -> LocalisationScorer:
        """An empty scorer with the same baseline and settings (for another set of answers)."""
        return LocalisationScorer(self.baseline, self.radius_mm, self.max_vertices)

    def add_case(self, case, cnn_label, outputs: MethodOutputs) -> None:
        """Score one patient's answers of one VLM method (first run) on its slices."""
        if case.label is None:
            return  # no reference: nothing to score (the answers are still in the case files)
        reference = np.isin(case.label, case.convention.regions["WT"])
        self.models[outputs.method] = outputs.model
        mine = [a for a in outputs.answers if a["case_id"] == case.case_id and a.get("run", 0) == 0]
        for task in LOCALISATION_TASKS:
            by_slice = {int(a["slice_index"]): a for a in mine if a["task"] == task}
            if not by_slice:
                continue
            indices = sorted(by_slice)
            slices = [SliceGeometry.axial(case.affine, case.shape, i) for i in indices]
            spacing = slices[0].pixel_spacing
            ref_shape = slices[0].extract(reference).shape
            answers = [by_slice[i] for i in indices]
            masks, lenient = _answer_masks(answers, task, ref_shape, spacing, self.radius_mm)
            self.cases[(outputs.method, task)].append(
                score_case(
                    case.case_id,
                    task,
                    reference,
                    slices,
                    masks,
                    cnn=cnn_label,
                    baseline=self.baseline,
                    lenient_answers=lenient if task == "polygon" else None,
                    radius_mm=self.radius_mm,
                    max_vertices=self.max_vertices,
                )
            )

    def rows(self, n_bootstrap: int, seed: int) -> list[dict]:
        """``localisation`` rows, methods and tasks in study order, each with its ``model``."""
        order = {method: i for i, method in enumerate(self.models)}  # the run's VLM order
        ordered = dict(sorted(self.cases.items(), key=lambda item: _study_order(item, order)))
        rows = localisation_rows(ordered, n_bootstrap=n_bootstrap, seed=seed)
        return [{"model": self.models.get(r["method"], ""), **r} for r in rows]


def _study_order(item, order: Mapping[str, int]) -> tuple[int, int]:
    """Methods in the order they were first scored (the run's VLMs, base before fine-tuned),
    then tasks in study order."""
    (method, task), _ = item
    return (order.get(method, len(order)), LOCALISATION_TASKS.index(task))
