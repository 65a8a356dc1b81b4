"""Scoring VLM answers: one slice against its whole-tumour mask, and one patient's grade vote.

Slice level (:func:`score_slice`), against the whole tumour (WT) on that slice, with the
evaluation core (:mod:`GliomaCompareLib.metrics.segmentation`, :mod:`GliomaCompareLib.geometry`):

- ``box`` / ``polygon``: the filled shape's pixel mask -> Dice and HD95 (mm).
- ``point``: inside the tumour or not, distance (mm) to the tumour's centroid on the slice (the
  "true centre") and to the nearest tumour pixel, and the Dice / HD95 of a disc of
  ``radius_mm`` around the point (a documented choice, default 10 mm).
- A failed answer (no geometry) is scored as an empty prediction: Dice 0, HD95 = the slice
  diagonal in mm (BraTS rule), not inside, distances NaN. It is never dropped.

Patient level (:func:`majority_vote`): the grade is the option with most votes among the
patient's usable grade answers. Ties are broken by ``tie_rule``:

- ``probability`` (default): the mean P(HGG) over the patient's slices decides (>= 0.5 -> HGG);
  without probabilities, the positive class (HGG) is taken;
- ``positive`` / ``negative``: always HGG / always LGG;
- ``none``: no prediction (scored as a wrong answer, as a patient without any usable answer is).

The patient's score for the AUC is the mean P(HGG) over its slices when the backend gives
probabilities (``score_source="mean_p"``), else the share of HGG votes among usable answers
(``"vote_share"``; 0.5 without any).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from GliomaCompareLib import geometry as g
from GliomaCompareLib.metrics.segmentation import score_masks

__all__ = ["TIE_RULES", "GradeVote", "SliceScore", "answer_mask", "majority_vote", "score_slice"]

TIE_RULES: tuple[str, ...] = ("probability", "positive", "negative", "none")


@dataclass(frozen=True, eq=False)
class SliceScore:
    """How one localisation answer compares with the WT mask on its slice.

    Attributes:
        dice: Dice of the answer's mask (box, polygon, or disc around the point) against WT.
        hd95: HD95 in mm of that mask against WT (BraTS rules for empty masks).
        inside: the point lies in the tumour (point task; for box / polygon, whether the
            shape's centroid does); False for a failed answer.
        distance_to_centre_mm: from the predicted centre (point, or the shape's centroid) to the
            WT centroid on the slice; NaN without a prediction.
        distance_to_tumour_mm: from the predicted centre to the nearest tumour pixel (0 inside).
        pred_centre: predicted centre ``(x, y)`` in pixels, or None.
        true_centre: WT centroid ``(x, y)`` on the slice, or None when the slice has no tumour.
        pred_area_mm2, ref_area_mm2: areas of the predicted mask and of WT on the slice.
        mask: the predicted bool mask ``(H, W)`` (not serialised).
    """

    dice: float
    hd95: float
    inside: bool
    distance_to_centre_mm: float
    distance_to_tumour_mm: float
    pred_centre: tuple[float, float] | None
    true_centre: tuple[float, float] | None
    pred_area_mm2: float
    ref_area_mm2: float
    mask: np.ndarray = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {
            "dice": self.dice,
            "hd95": self.hd95,
            "inside": self.inside,
            "distance_to_centre_mm": self.distance_to_centre_mm,
            "distance_to_tumour_mm": self.distance_to_tumour_mm,
            "pred_centre": list(self.pred_centre) if self.pred_centre else None,
            "true_centre": list(self.true_centre) if self.true_centre else None,
            "pred_area_mm2": self.pred_area_mm2,
            "ref_area_mm2": self.ref_area_mm2,
        }


def answer_mask(
    kind: str,
    geometry,
    shape: tuple[int, int],
    pixel_spacing: tuple[float, float],
    *,
    radius_mm: float = 10.0,
) -> np.ndarray:
    """The bool ``(H, W)`` mask an answer is scored with: a point as a disc of ``radius_mm``, a
    box or polygon filled; empty for a failed answer (``geometry`` None).

    Raises:
        ValueError: for an unknown kind.
    """
    if kind not in ("point", "box", "polygon"):
        raise ValueError(f"Cannot score answers of kind {kind!r}")
    if geometry is None:
        return np.zeros(shape, dtype=bool)
    if kind == "point":
        sx, sy = float(pixel_spacing[0]), float(pixel_spacing[1])
        return g.point_to_mask(geometry, shape, radius_mm, (sx, sy))
    return g.geometry_to_mask(geometry, shape)


def score_slice(
    kind: str,
    geometry,
    ref_mask: np.ndarray,
    pixel_spacing: tuple[float, float],
    *,
    radius_mm: float = 10.0,
) -> SliceScore:
    """Score one localisation answer on its slice (see module docstring).

    Args:
        kind: ``point``, ``box`` or ``polygon``.
        geometry: the answer's ``Point`` / ``Box`` / ``Polygon`` in pixels, or None (failed).
        ref_mask: bool ``(H, W)`` WT mask on the slice.
        pixel_spacing: ``(mm per column, mm per row)``.
        radius_mm: disc radius for point answers.

    Raises:
        ValueError: for an unknown kind.
    """

    ref = np.asarray(ref_mask, dtype=bool)
    sx, sy = float(pixel_spacing[0]), float(pixel_spacing[1])
    pred = answer_mask(kind, geometry, ref.shape, (sx, sy), radius_mm=radius_mm)
    scores = score_masks(pred, ref, (sy, sx))  # array axes are (row, col)
    true_centre = g.mask_centroid(ref) if ref.any() else None
    if kind == "point":
        centre = geometry
    elif pred.any():
        centre = g.mask_centroid(pred)
    else:
        centre = None
    inside, to_centre, to_tumour = False, math.nan, math.nan
    if centre is not None and ref.any():
        inside = g.point_in_mask(centre, ref)
        to_centre = g.point_distance_mm(centre, true_centre, (sx, sy))
        if inside:
            to_tumour = 0.0
        else:
            rows, cols = np.nonzero(ref)
            to_tumour = float(
                np.sqrt(((cols - centre.x) * sx) ** 2 + ((rows - centre.y) * sy) ** 2).min()
            )
    return SliceScore(
        dice=float(scores.dice),
        hd95=float(scores.hd95),
        inside=bool(inside),
        distance_to_centre_mm=float(to_centre),
        distance_to_tumour_mm=float(to_tumour),
        pred_centre=(float(centre.x), float(centre.y)) if centre is not None else None,
        true_centre=(float(true_centre.x), float(true_centre.y)) if true_centre else None,
        pred_area_mm2=float(pred.sum()) * sx * sy,
        ref_area_mm2=float(ref.sum()) * sx * sy,
        mask=pred,
    )


@dataclass(frozen=True)
class GradeVote:
    """A patient's grade from its slices' answers.

    Attributes:
        prediction: the voted option, or None (no usable answer, or a tie under rule ``none``).
        votes: option -> number of usable answers naming it.
        n_slices: grade answers asked (usable or not).
        n_usable: usable answers.
        tie: whether the top count was shared.
        p_positive_mean: mean P(positive) over slices with probabilities, or None.
        score: the AUC score (see module docstring).
        score_source: ``mean_p`` or ``vote_share``.
        tie_rule: the rule used.
    """

    prediction: str | None
    votes: dict[str, int]
    n_slices: int
    n_usable: int
    tie: bool
    p_positive_mean: float | None
    score: float
    score_source: str
    tie_rule: str


def majority_vote(
    labels: Sequence[str | None],
    probabilities: Sequence[float | None] = (),
    *,
    options: Sequence[str] = ("HGG", "LGG"),
    positive: str = "HGG",
    tie_rule: str = "probability",
) -> GradeVote:
    """Majority vote over one patient's slice answers (see module docstring).

    Args:
        labels: each slice's label (None for an unusable answer).
        probabilities: each slice's P(positive) or None (may be empty).
        options: the label options.
        positive: the positive option (HGG).
        tie_rule: one of :data:`TIE_RULES`.

    Raises:
        ValueError: for an unknown tie rule.
    """
    if tie_rule not in TIE_RULES:
        raise ValueError(f"Unknown tie rule {tie_rule!r}; use {', '.join(TIE_RULES)}")
    usable = [label for label in labels if label in options]
    votes = {o: 0 for o in options} | dict(Counter(usable))
    probs = [float(p) for p in probabilities if p is not None and math.isfinite(p)]
    p_mean = float(np.mean(probs)) if probs else None
    prediction, tie = None, False
    if usable:
        top = max(votes.values())
        leaders = [o for o in options if votes[o] == top]
        tie = len(leaders) > 1
        if not tie:
            prediction = leaders[0]
        elif tie_rule == "probability":
            negatives = [o for o in leaders if o != positive]
            if p_mean is None or positive not in leaders or not negatives:
                prediction = positive if positive in leaders else leaders[0]
            else:
                prediction = positive if p_mean >= 0.5 else negatives[0]
        elif tie_rule == "positive":
            prediction = positive if positive in leaders else leaders[0]
        elif tie_rule == "negative":
            others = [o for o in leaders if o != positive]
            prediction = others[0] if others else leaders[0]
    if p_mean is not None:
        score, source = p_mean, "mean_p"
    else:
        score = votes.get(positive, 0) / len(usable) if usable else 0.5
        source = "vote_share"
    return GradeVote(
        prediction=prediction,
        votes=votes,
        n_slices=len(labels),
        n_usable=len(usable),
        tie=tie,
        p_positive_mean=p_mean,
        score=float(score),
        score_source=source,
        tie_rule=tie_rule,
    )
