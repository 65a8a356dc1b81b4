"""The ``Case``: one patient's four modalities, label map and geometry in one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from GliomaCompareLib.data.conventions import REGIONS, Convention, load_convention
from GliomaCompareLib.data.io import read_image
from GliomaCompareLib.data.records import CaseRecord
from GliomaCompareLib.data.regions import region_masks

__all__ = ["Case", "CaseLoadError", "load_case"]


class CaseLoadError(ValueError):
    """A case could not be loaded; the message names the case, the file and the reason."""


@dataclass(frozen=True, eq=False)
class Case:
    """One case, loaded.

    Attributes:
        case_id: e.g. ``BraTS20_Training_001``.
        grade: ``"HGG"``, ``"LGG"`` or None.
        image: float32 array ``(C, X, Y, Z)``, channels in ``channels`` order
            (``flair, t1, t1ce, t2`` for BraTS 2020).
        label: uint8 label map ``(X, Y, Z)`` in the convention's values, or None.
        affine: 4x4 voxel -> RAS mm matrix (of the FLAIR image).
        spacing: voxel size in mm along X, Y, Z.
        channels: channel names.
        convention: the label convention.
        paths: channel / ``"label"`` -> source file.
    """

    case_id: str
    grade: str | None
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    channels: tuple[str, ...]
    convention: Convention
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]

    def modality(self, name: str) -> np.ndarray:
        """One modality volume ``(X, Y, Z)`` by channel name (``"flair"`` ...)."""
        try:
            return self.image[self.channels.index(name)]
        except ValueError:
            raise KeyError(f"{self.case_id}: no channel {name!r} (has {self.channels})") from None

    @property
    def flair(self) -> np.ndarray:
        return self.modality("flair")

    def regions(self, regions=REGIONS) -> dict[str, np.ndarray]:
        """WT / TC / ET masks from the label map.

        Raises:
            ValueError: when the case has no label map.
        """
        if self.label is None:
            raise ValueError(f"{self.case_id}: no label map, so no regions")
        return region_masks(self.label, self.convention, regions)

    @property
    def brain_mask(self) -> np.ndarray:
        """Voxels where any modality is non-zero (BraTS images are skull-stripped)."""
        return np.any(self.image != 0, axis=0)


def load_case(
    record: CaseRecord,
    convention: str | Convention = "brats2020",
    *,
    with_label: bool = True,
) -> Case:
    """Load a validated case record into a :class:`Case`.

    Raises:
        CaseLoadError: when the record has problems, or a file turns out unreadable; the
            message names the case and each reason.
    """
    conv = load_convention(convention)
    if record.problems:
        raise CaseLoadError(f"{record.case_id}: not usable: " + "; ".join(record.problems))
    volumes = []
    affine = None
    paths: dict[str, Path] = {}
    try:
        for channel in conv.channels:
            path = record.modality_paths[channel]
            if path is None:
                raise CaseLoadError(f"{record.case_id}: no {channel} image")
            array, meta = read_image(path, dtype=np.float32)
            if array.ndim != 3:
                raise CaseLoadError(f"{record.case_id}: {path} is not 3D (shape {array.shape})")
            if affine is None:
                affine = meta.affine
            elif volumes and array.shape != volumes[0].shape:
                raise CaseLoadError(
                    f"{record.case_id}: {path} shape {array.shape} differs from {volumes[0].shape}"
                )
            volumes.append(array)
            paths[channel] = Path(path)
        label = None
        if with_label and record.label_path is not None:
            raw, _ = read_image(record.label_path)
            if raw.shape != volumes[0].shape:
                raise CaseLoadError(
                    f"{record.case_id}: {record.label_path} shape {raw.shape} differs from "
                    f"{volumes[0].shape}"
                )
            label = np.rint(raw).astype(np.uint8)
            paths["label"] = Path(record.label_path)
    except CaseLoadError:
        raise
    except ValueError as exc:  # ImageReadError names the file already
        raise CaseLoadError(f"{record.case_id}: {exc}") from exc
    image = np.stack(volumes, axis=0)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Case(
        case_id=record.case_id,
        grade=record.grade,
        image=image,
        label=label,
        affine=np.asarray(affine, dtype=float),
        spacing=spacing,  # type: ignore[arg-type]
        channels=conv.channels,
        convention=conv,
        paths=paths,
    )
