"""Which test patients pretrained weights may already have seen.

BraTS 2020's ``name_mapping.csv`` gives, for each 2020 case, its id in earlier challenges
(``BraTS_2017_subject_ID``, ``BraTS_2018_subject_ID``, ``BraTS_2019_subject_ID``; ``NA`` when the
case is new). MONAI's ``brats_mri_segmentation`` bundle was trained on BraTS 2018, so a 2020 test
patient with a 2018 id was in its training data and its score is not a held-out score.

``trained_on`` names the data the weights were trained on:

- ``brats2017`` / ``brats2018`` / ``brats2019``: cases with an id in that year's column overlap;
- ``brats2020``: every case of the 2020 training data overlaps;
- ``none``: trained here, on this run's own training split (no overlap by construction);
- ``unknown``: nothing can be said; every test patient is flagged as possibly seen.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TRAINED_ON", "WeightsOverlap", "prior_challenge_ids", "weights_overlap"]

#: Accepted values of ``cnn.weights_trained_on``.
TRAINED_ON = ("none", "unknown", "brats2017", "brats2018", "brats2019", "brats2020")

_MISSING = {"", "na", "n/a", "nan", "none"}


def prior_challenge_ids(mapping: str | Path, id_column: str) -> dict[str, dict[str, str]]:
    """Each case's ids in earlier BraTS challenges, from ``name_mapping.csv``.

    Args:
        mapping: the ``name_mapping.csv`` file.
        id_column: the column holding this data set's case ids (``BraTS_2020_subject_ID``).

    Returns:
        case id -> {``"brats2018"``: id, ...} for each ``BraTS_<year>_subject_ID`` column with a
        value (``NA`` and empty cells are left out).

    Raises:
        ValueError: naming the file when it has no ``id_column``.
    """
    path = Path(mapping)
    out: dict[str, dict[str, str]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if id_column not in columns:
            raise ValueError(f"{path}: no column {id_column!r} (columns: {', '.join(columns)})")
        years = {
            c: f"brats{c.split('_')[1]}"
            for c in columns
            if c != id_column and c.startswith("BraTS_") and c.endswith("_subject_ID")
        }
        for row in reader:
            case_id = (row.get(id_column) or "").strip()
            if not case_id:
                continue
            out[case_id] = {
                year: (row.get(column) or "").strip()
                for column, year in years.items()
                if (row.get(column) or "").strip().lower() not in _MISSING
            }
    return out


@dataclass(frozen=True)
class WeightsOverlap:
    """The test patients that weights trained on ``trained_on`` may have seen.

    Attributes:
        trained_on: a value of :data:`TRAINED_ON`.
        case_ids: the overlapping (or, for ``unknown``, possibly overlapping) patients, sorted.
        n_checked: how many patients were checked.
        note: one sentence for the report and the summary; empty when there is no overlap.
    """

    trained_on: str
    case_ids: tuple[str, ...]
    n_checked: int
    note: str

    @property
    def any(self) -> bool:
        return bool(self.case_ids)


def weights_overlap(
    case_ids: Iterable[str],
    trained_on: str,
    prior_ids: dict[str, dict[str, str]] | None,
) -> WeightsOverlap:
    """Which of ``case_ids`` weights trained on ``trained_on`` were trained with.

    Args:
        case_ids: the patients scored (usually the test split).
        trained_on: a value of :data:`TRAINED_ON`.
        prior_ids: :func:`prior_challenge_ids` of the cohort, or None when the cohort has no
            ``name_mapping.csv`` (then a named earlier challenge cannot be checked and every
            patient is flagged).

    Raises:
        ValueError: for a ``trained_on`` outside :data:`TRAINED_ON`.
    """
    ids = sorted(case_ids)
    if trained_on not in TRAINED_ON:
        raise ValueError(f"weights_trained_on {trained_on!r}: use one of {', '.join(TRAINED_ON)}")
    if trained_on == "none" or not ids:
        return WeightsOverlap(trained_on, (), len(ids), "")
    if trained_on == "brats2020":
        seen = ids
        why = "the weights were trained on the BraTS 2020 training data itself"
    elif trained_on == "unknown" or prior_ids is None:
        seen = ids
        why = (
            "the data the weights were trained on is unknown"
            if trained_on == "unknown"
            else f"no name_mapping.csv to tell which patients were in {trained_on}"
        )
    else:
        seen = [c for c in ids if trained_on in prior_ids.get(c, {})]
        why = f"these patients were in {trained_on}, the weights' training data (name_mapping.csv)"
    if not seen:
        return WeightsOverlap(trained_on, (), len(ids), "")
    note = (
        f"{len(seen)} of {len(ids)} test patients may have been seen by the pretrained weights: "
        f"{why}; their scores are not held-out scores."
    )
    return WeightsOverlap(trained_on, tuple(seen), len(ids), note)
