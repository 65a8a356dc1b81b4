"""Volumes on different voxel grids brought onto one: a patient loaded from DICOM often has its
T2 (or T1) acquired with another spacing, extent or orientation than the FLAIR.

Pure numpy / scipy (both ship with Slicer), on library arrays ``[i, j, k]`` with their 4x4
IJKToRAS matrices: Slicer's BRAINS resampling is not available under slicer-core, and the
transform between two grids is exact here (both are affine), so no registration is involved: the
volumes must already be aligned in RAS, as DICOM series of one session are.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resample_to_grid", "same_grid"]


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = 1e-3) -> bool:
    """Whether two volumes share their voxel grid (shape and IJKToRAS within ``atol`` mm)."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=atol)


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    shape,
    target_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """``array`` (voxel -> RAS ``affine``) sampled on the grid ``shape`` / ``target_affine``.

    Each target voxel is taken to RAS and back into the source's voxels (one exact affine map);
    trilinear interpolation (``order=1``; 0 for label maps); zero outside the source.

    Args:
        array: 3D source array ``(X, Y, Z)``.
        affine: its 4x4 voxel -> RAS matrix.
        shape: the target grid's shape.
        target_affine: the target grid's 4x4 voxel -> RAS matrix.
        order: spline order (0 nearest, 1 linear).

    Returns:
        float32 array of ``shape`` (the source's dtype for ``order=0``).

    Raises:
        ValueError: for a non-3D array or when the source does not overlap the target grid.
    """
    from scipy import ndimage

    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"resampling needs a 3D array, got shape {array.shape}")
    source_from_target = np.linalg.solve(
        np.asarray(affine, float), np.asarray(target_affine, float)
    )
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
    reached = source_from_target[:3, :3] @ corners + source_from_target[:3, 3:4]
    low, high = reached.min(axis=1), reached.max(axis=1)
    if np.any(high < -0.5) or np.any(low > np.array(array.shape) - 0.5):
        raise ValueError("the volume does not overlap the target grid (not aligned in RAS?)")
    source = array if order == 0 else array.astype(np.float32)
    return ndimage.affine_transform(
        source,
        source_from_target[:3, :3],
        offset=source_from_target[:3, 3],
        output_shape=tuple(int(s) for s in shape),
        order=order,
        mode="constant",
        cval=0.0,
    )
