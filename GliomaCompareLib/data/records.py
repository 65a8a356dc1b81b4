"""What discovery finds and validation checks: one case folder (:class:`CaseRecord`) and a cohort
(:class:`Cohort`), before any voxel is loaded.

Both :mod:`~GliomaCompareLib.data.discovery` (which makes them) and
:mod:`~GliomaCompareLib.data.validation` (which adds findings to them) import these types from
here, so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from GliomaCompareLib.data.conventions import Convention

__all__ = ["CaseRecord", "Cohort"]


@dataclass(frozen=True)
class CaseRecord:
    """What is known about one case folder before its voxels are loaded.

    Attributes:
        case_id: the folder name, e.g. ``BraTS20_Training_001``.
        folder: the case folder.
        grade: ``"HGG"``, ``"LGG"`` or None when unknown.
        modality_paths: canonical channel name -> file (None when missing).
        label_path: the label map file, or None when the case has none.
        problems: reasons the case cannot be used, each naming the file.
        warnings: things worth knowing that do not stop the case (no grade, no label map).
        shape, spacing: geometry read by validation (None before validation).
    """

    case_id: str
    folder: Path
    grade: str | None
    modality_paths: dict[str, Path | None]
    label_path: Path | None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None

    @property
    def usable(self) -> bool:
        return not self.problems

    def with_findings(self, problems=(), warnings=(), **changes) -> CaseRecord:
        """A copy with more problems / warnings (and other fields) added."""
        return replace(
            self,
            problems=(*self.problems, *problems),
            warnings=(*self.warnings, *warnings),
            **changes,
        )

    def to_dict(self) -> dict:
        """The ``inspect --json`` object of this case."""
        return {
            "case_id": self.case_id,
            "grade": self.grade,
            "usable": self.usable,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "shape": list(self.shape) if self.shape else None,
            "spacing": [round(s, 6) for s in self.spacing] if self.spacing else None,
            "folder": str(self.folder),
            "modalities": {k: (str(v) if v else None) for k, v in self.modality_paths.items()},
            "label": str(self.label_path) if self.label_path else None,
        }


@dataclass(frozen=True)
class Cohort:
    """The cases found under a root, plus findings about the cohort as a whole."""

    root: Path
    data_dir: Path | None
    convention: Convention
    cases: tuple[CaseRecord, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def usable(self) -> tuple[CaseRecord, ...]:
        return tuple(c for c in self.cases if c.usable)

    def get(self, case_id: str) -> CaseRecord:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(f"Case {case_id!r} is not in {self.data_dir or self.root}")
