"""Which slices the VLM is asked about, chosen in the module: the reference tumour slices (the
study's oracle selection), the slice on screen, the CNN's tumour slices or brain slices.

No Qt. The VLM command picks slices by rule (``--slice-rule``); the CNN's rule reads a label map
per case from ``--cnn-pred``, which the module writes from the CNN segmentation in the scene
(``cnn``). The slice on screen (``screen``) is handed over as it is (``--slices CASE:K``), so
every answer records that the user chose it (the slice rule ``given``), not a rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from GliomaCompareSlicerLib import paths

paths.ensure_library_importable()

from GliomaCompareLib.data.io import write_nifti  # noqa: E402
from GliomaCompareLib.data.slices import SliceGeometry  # noqa: E402

__all__ = [
    "SLICE_CHOICES",
    "SliceChoice",
    "slice_index_on_screen",
    "write_selection",
]

#: The module's choices -> what the panel says.
SLICE_CHOICES = {
    "reference": "tumour slices of the reference labels (oracle; brain slices without labels)",
    "screen": "the slice on screen (Red view)",
    "cnn": "the slices where the CNN sees the most tumour",
    "brain": "brain slices (label-free)",
}

#: How far (cosine) the view's normal may be from the volume's axial axis.
_PARALLEL = 0.999


@dataclass(frozen=True)
class SliceChoice:
    """What to add to the VLM command for a slice choice.

    Attributes:
        slice_rule: ``--slice-rule`` ("" = the command's default, or the user's ``slices``).
        label_map: the label map ``--cnn-pred`` reads for the case (``cnn``), or None.
        max_slices: ``--slices-per-case`` forced by the choice (0 = the user's setting).
        describe: one line for the log and the results ("the slice on screen (k=40)", ...).
        slices: the case's axial slice indices the user chose (``screen``): ``--slices
            CASE:K[,K...]``, asked as they are (no slice rule, no slice count).
    """

    slice_rule: str = ""
    label_map: np.ndarray | None = None
    max_slices: int = 0
    describe: str = ""
    slices: tuple[int, ...] = ()

    def __post_init__(self):
        if self.slices and (self.slice_rule or self.label_map is not None or self.max_slices):
            raise ValueError("the user's slices are asked as they are: no slice rule with them")


def _numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ijk_to_ras(volume_node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _numpy(m)


def slice_index_on_screen(slice_node, volume_node) -> int:
    """The axial slice index (in the library's ``[i, j, k]`` order) of ``volume_node`` that the
    slice view ``slice_node`` shows: the view's plane origin (``SliceToRAS``) taken to the volume's
    voxel coordinates (``RASToIJK``), rounded along the volume's axial axis.

    Raises:
        ValueError: when the view is not parallel to the volume's axial slices (a reformatted or
            sagittal / coronal view), or shows a plane outside the volume.
    """
    slice_to_ras = _numpy(slice_node.GetSliceToRAS())
    ijk_to_ras = _ijk_to_ras(volume_node)
    dims = volume_node.GetImageData().GetDimensions()
    axis = SliceGeometry.axial(ijk_to_ras, dims, 0).slice_axis
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    direction = ijk_to_ras[:3, axis] / np.linalg.norm(ijk_to_ras[:3, axis])
    if abs(float(normal @ direction)) < _PARALLEL:
        raise ValueError(
            f"the {slice_node.GetName()} view is not parallel to {volume_node.GetName()}'s axial "
            "slices; set it to Axial (the VLM is asked about axial slices)"
        )
    ijk = np.linalg.solve(ijk_to_ras, slice_to_ras[:, 3])
    index = int(np.rint(ijk[axis]))
    if not 0 <= index < dims[axis]:
        raise ValueError(
            f"the {slice_node.GetName()} view shows slice {index}, outside "
            f"{volume_node.GetName()} (0..{dims[axis] - 1})"
        )
    return index


def write_selection(folder: str | Path, case_id: str, label_map, affine) -> Path:
    """Write ``label_map`` as ``folder/<case_id>.nii.gz`` (what ``--cnn-pred`` looks for)."""
    path = Path(folder) / f"{case_id}.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, np.asarray(label_map, np.uint8), np.asarray(affine, float))
    return path
