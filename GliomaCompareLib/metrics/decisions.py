"""Decision rules that turn a patient's score into a grade, the same kind for both arms.

A fair comparison gives the CNN and the VLM the same kind of decision rule: a threshold chosen
on validation patients, and a fixed one (0.5), reported side by side. This module holds the
shared pieces:

* :func:`choose_threshold_youden`: the threshold on a score (P(HGG), or a VLM's HGG vote share)
  that maximises Youden's J = sensitivity + specificity - 1 on validation patients. It is the
  one threshold rule of the package (the CNN's training uses the same candidates and tie-break).
* :func:`vote_share`: a VLM patient's HGG share among its valid slice answers, with the vote
  count and whether the vote is tied (share exactly 0.5), the score a VLM threshold is chosen on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from GliomaCompareLib.metrics.classification import drop_missing_scores, encode_labels

__all__ = ["ThresholdChoice", "VoteShare", "choose_threshold_youden", "vote_share"]

#: The threshold kept when the validation patients cannot choose one (one class, no scores).
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ThresholdChoice:
    """A decision threshold chosen on validation patients (``score >= threshold`` is positive).

    Attributes:
        threshold: the chosen threshold (0.5 when the patients hold one class only).
        sensitivity, specificity: on the validation patients at that threshold (nan when a
            class is absent).
        youden_j: ``sensitivity + specificity - 1``.
        balanced_accuracy: ``(sensitivity + specificity) / 2``.
        n_used: validation patients with a score.
        n_missing: patients without one (None / NaN), left out.
        note: how the threshold was chosen, in words.
    """

    threshold: float
    sensitivity: float
    specificity: float
    youden_j: float
    balanced_accuracy: float
    n_used: int
    n_missing: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (nan becomes None); holds the keys of the CNN's former dict
        (``threshold, balanced_accuracy, sensitivity, specificity, note``)."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in self.__dict__.items()
        }


def choose_threshold_youden(
    y_true: Sequence,
    scores: Sequence,
    *,
    positive: str = "HGG",
    negative: str = "LGG",
) -> ThresholdChoice:
    """The threshold on ``scores`` maximising Youden's J on (validation) patients.

    A patient is positive when ``score >= threshold``. The candidates are the lowest score
    (everyone positive), the midpoints between consecutive distinct scores and the next float
    above the highest score (nobody positive). Ties in J (compared after rounding to 12
    decimals) are broken deterministically: the candidate **closest to 0.5** wins, and among
    those equally close, the **lowest**. Patients without a score (None / NaN) are left out
    and counted. When the scored patients hold one class only (or none), J is undefined and
    the threshold stays at 0.5, with a note saying so.

    Args:
        y_true: ``(n,)`` true labels (class names, 1 / 0 or 1.0 / 0.0; all valid).
        scores: ``(n,)`` scores, higher = more ``positive``; None / NaN for "no score".
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        A :class:`ThresholdChoice`.

    Raises:
        ValueError: for mismatched lengths, an invalid true label or an infinite score.
    """
    t, s, n_missing = drop_missing_scores(y_true, scores, positive, negative)
    y = t == 1
    if y.all() or (~y).all():
        why = "validation cases hold one grade only" if t.size else "no validation case is scored"
        return ThresholdChoice(
            threshold=DEFAULT_THRESHOLD,
            sensitivity=math.nan,
            specificity=math.nan,
            youden_j=math.nan,
            balanced_accuracy=math.nan,
            n_used=int(t.size),
            n_missing=n_missing,
            note=f"{why}, so the threshold stays at 0.5",
        )
    u = np.unique(s)
    candidates = np.concatenate([[u[0]], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]])
    pred = s[None, :] >= candidates[:, None]  # (candidates, patients)
    sens = (pred & y).sum(axis=1) / y.sum()
    spec = (~pred & ~y).sum(axis=1) / (~y).sum()
    # Python's round, exactly as the CNN's former loop did (np.round can differ in the last bit)
    j = np.array([round(float(a) + float(b), 12) for a, b in zip(sens, spec, strict=True)])
    best = np.flatnonzero(j == j.max())
    distance = np.abs(candidates[best] - DEFAULT_THRESHOLD)
    k = int(best[np.flatnonzero(distance == distance.min())[0]])
    return ThresholdChoice(
        threshold=float(candidates[k]),
        sensitivity=float(sens[k]),
        specificity=float(spec[k]),
        youden_j=float(sens[k] + spec[k] - 1.0),
        balanced_accuracy=float((sens[k] + spec[k]) / 2.0),
        n_used=int(t.size),
        n_missing=n_missing,
        note="maximises Youden's J on the validation patients",
    )


class VoteShare(NamedTuple):
    """``(share_hgg, n_votes, tie)`` of one patient's slice answers.

    Attributes:
        share_hgg: positive (HGG) answers / valid answers; nan without a valid answer.
        n_votes: valid answers (``positive`` or ``negative``; anything else is not a vote).
        tie: True when exactly half of the valid answers are HGG (share == 0.5).
    """

    share_hgg: float
    n_votes: int
    tie: bool


def vote_share(
    grades: Sequence[str | None], *, positive: str = "HGG", negative: str = "LGG"
) -> VoteShare:
    """HGG share among one patient's valid slice answers, with the vote count and tie flag.

    Args:
        grades: ``(k,)`` the patient's per-slice answers; ``positive`` / ``negative`` (any case,
            surrounding spaces ignored) are votes, None or anything else is not.
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        A :class:`VoteShare` ``(share_hgg, n_votes, tie)``.
    """
    codes = encode_labels(list(grades), positive, negative, allow_invalid=True)
    n_pos = int(np.count_nonzero(codes == 1))
    n_votes = int(np.count_nonzero(codes >= 0))
    if n_votes == 0:
        return VoteShare(math.nan, 0, False)
    return VoteShare(n_pos / n_votes, n_votes, 2 * n_pos == n_votes)
