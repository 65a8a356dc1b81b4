"""Patient-level train / validation / test splits, stratified by grade, shared by every arm.

A split is written once to ``splits.json`` and then only read: the CNN arm trains on ``train``,
selects checkpoints and thresholds on ``val``, and both arms report on ``test``. Its hash (of
the case lists, not of formatting) goes into every checkpoint and run manifest so results from
different splits are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from GliomaCompareLib.fileio import atomic_write_text

__all__ = ["SPLIT_NAMES", "Splits", "load_or_make_splits", "make_splits"]

SPLIT_NAMES = ("train", "val", "test")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """Case ids per split, plus how they were made.

    Attributes:
        train, val, test: sorted case ids.
        grades: case id -> "HGG" / "LGG" / None, for every case in any split.
        seed: the seed used.
        fractions: (train, val, test) fractions requested.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    grades: Mapping[str, str | None]
    seed: int
    fractions: tuple[float, float, float]

    def __post_init__(self):
        seen: dict[str, str] = {}
        for name in SPLIT_NAMES:
            for case_id in getattr(self, name):
                if case_id in seen:
                    raise ValueError(f"Case {case_id} is in both {seen[case_id]} and {name}")
                seen[case_id] = name

    def ids(self, name: str) -> tuple[str, ...]:
        """Case ids of split ``name`` (``train``, ``val``, ``test`` or ``all``)."""
        if name == "all":
            return tuple(sorted((*self.train, *self.val, *self.test)))
        if name not in SPLIT_NAMES:
            raise KeyError(f"Unknown split {name!r}; use train, val, test or all")
        return getattr(self, name)

    def split_of(self, case_id: str) -> str | None:
        for name in SPLIT_NAMES:
            if case_id in getattr(self, name):
                return name
        return None

    @property
    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the case lists; identical splits hash alike."""
        canon = json.dumps({n: sorted(getattr(self, n)) for n in SPLIT_NAMES}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "hash": self.hash,
            "seed": self.seed,
            "fractions": list(self.fractions),
            **{n: list(getattr(self, n)) for n in SPLIT_NAMES},
            "grades": dict(sorted(self.grades.items())),
            "counts": {
                n: {
                    "HGG": sum(self.grades.get(c) == "HGG" for c in getattr(self, n)),
                    "LGG": sum(self.grades.get(c) == "LGG" for c in getattr(self, n)),
                    "unknown": sum(self.grades.get(c) is None for c in getattr(self, n)),
                }
                for n in SPLIT_NAMES
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write ``splits.json`` atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        """Read ``splits.json``.

        Raises:
            ValueError: naming the file when it is unreadable, lacks a split, or its stored
                hash does not match its case lists (edited by hand).
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            splits = cls(
                train=tuple(raw["train"]),
                val=tuple(raw["val"]),
                test=tuple(raw["test"]),
                grades=dict(raw.get("grades", {})),
                seed=int(raw.get("seed", 0)),
                fractions=tuple(raw.get("fractions", (0, 0, 0))),  # type: ignore[arg-type]
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable splits file ({exc})") from exc
        if raw.get("hash") and raw["hash"] != splits.hash:
            raise ValueError(
                f"{path}: stored hash {raw['hash']} does not match its case lists "
                f"({splits.hash}); was it edited? Remake it or remove the hash entry"
            )
        return splits


def make_splits(
    grades: Mapping[str, str | None] | Iterable[tuple[str, str | None]],
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> Splits:
    """Split cases by patient, stratified by grade (unknown grade is its own stratum).

    Each stratum is shuffled with ``seed`` and cut by ``fractions`` (largest remainders), so
    every split keeps the cohort's HGG/LGG ratio as closely as whole patients allow; a stratum
    with at least three cases puts at least one in each split whose fraction is non-zero.

    Args:
        grades: case id -> grade, or pairs.
        fractions: train, val, test fractions (must sum to 1; val may be 0).
        seed: random seed.

    Raises:
        ValueError: for fractions that do not sum to 1 or are negative, or no cases.
    """
    grades = dict(grades)
    if not grades:
        raise ValueError("Cannot split an empty cohort")
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(
            f"Split fractions {fractions} must be three non-negative numbers summing to 1"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {n: [] for n in SPLIT_NAMES}
    for stratum in ("HGG", "LGG", None):
        ids = sorted(c for c, g in grades.items() if g == stratum)
        if not ids:
            continue
        order = [ids[i] for i in rng.permutation(len(ids))]
        counts = _allocate(len(ids), fr)
        start = 0
        for name, count in zip(SPLIT_NAMES, counts, strict=True):
            parts[name] += order[start : start + count]
            start += count
    return Splits(
        train=tuple(sorted(parts["train"])),
        val=tuple(sorted(parts["val"])),
        test=tuple(sorted(parts["test"])),
        grades=grades,
        seed=seed,
        fractions=tuple(float(f) for f in fr),  # type: ignore[arg-type]
    )


def _allocate(n: int, fractions: np.ndarray) -> list[int]:
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= 3:  # every non-empty split gets at least one case of this stratum
        for i in np.flatnonzero((fractions > 0) & (counts == 0)):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def load_or_make_splits(
    cohort,
    path: str | Path,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    create: bool = True,
) -> Splits:
    """The split in ``path`` (``splits.json``), made and written once if it does not exist.

    An existing file is only read, never re-split; its grades must agree with the cohort's,
    and cases of the cohort that are in no split are named in a warning (they are not used).

    Args:
        cohort: the discovered cohort (``.cases`` / ``.usable`` with ``case_id`` and
            ``grade``); a new split covers its usable cases (unknown grade: its own stratum).
        path: the ``splits.json`` file.
        fractions, seed: for a new split (patient-level, stratified by grade).
        create: False to refuse a missing file.

    Raises:
        FileNotFoundError: a missing file with ``create=False``.
        ValueError: an unreadable split, or one whose grades contradict the data's.
    """
    path = Path(path)
    if path.is_file():
        splits = Splits.load(path)
        grades = {c.case_id: c.grade for c in cohort.cases}
        clash = [
            f"{c} ({splits.grades.get(c)} in the split, {grades[c]} in the data)"
            for c in splits.ids("all")
            if c in grades
            and splits.grades.get(c)
            and grades[c]
            and splits.grades.get(c) != grades[c]
        ]
        if clash:
            raise ValueError(f"{path}: grades differ from the data for {', '.join(clash[:5])}")
        outside = sorted(set(grades) - set(splits.ids("all")))
        if outside:
            log.warning(
                "%s: %d cases of the data are in no split and are not used (e.g. %s)",
                path,
                len(outside),
                ", ".join(outside[:3]),
            )
        return splits
    if not create:
        raise FileNotFoundError(f"{path}: split file not found")
    splits = make_splits({c.case_id: c.grade for c in cohort.usable}, fractions, seed)
    splits.save(path)
    log.warning("made a new patient split (seed %d) and wrote it to %s", seed, path)
    return splits
