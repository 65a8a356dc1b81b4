"""Pure helpers on boolean masks (2D slices or 3D volumes): surface voxels and Dice.

They sit in the geometry layer, below :mod:`GliomaCompareLib.metrics`, because the geometry
(polygons around a mask, the score of a point answer) needs them too;
:mod:`GliomaCompareLib.metrics.segmentation` re-exports :func:`mask_surface` and :func:`dice`,
so ``from GliomaCompareLib.metrics import dice`` keeps working.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_bool_mask", "check_mask_pair", "dice", "mask_surface"]


def as_bool_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """``mask`` as a bool array (non-zero = foreground).

    Raises:
        ValueError: naming ``name``, when the mask is not 2D or 3D.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool:
        mask = mask != 0
    if mask.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D mask, got shape {mask.shape}")
    return mask


def check_mask_pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, ref)`` as bool masks of one shape.

    Raises:
        ValueError: for masks of different shapes or not 2D/3D.
    """
    pred = as_bool_mask(pred, "pred")
    ref = as_bool_mask(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} differs from ref shape {ref.shape}")
    return pred, ref


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: ``binary_erosion(mask) ^ mask``.

    The structuring element is face-connected (``generate_binary_structure(ndim, 1)``) and voxels
    outside the array count as background, exactly as in MONAI's ``get_mask_edges``.

    Args:
        mask: bool array, 2D ``(H, W)`` or 3D ``(X, Y, Z)``.

    Returns:
        bool array of the same shape.
    """
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, dtype=bool)
    return binary_erosion(mask) ^ mask


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two masks (non-zero = foreground), 2D or 3D.

    Args:
        pred: predicted mask.
        ref: reference mask of the same shape.

    Returns:
        ``2 |P & R| / (|P| + |R|)`` in [0, 1]; 1.0 when both masks are empty (BraTS rule).

    Raises:
        ValueError: for masks of different shapes or not 2D/3D.
    """
    pred, ref = check_mask_pair(pred, ref)
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred + n_ref == 0:
        return 1.0
    both = int(np.count_nonzero(pred & ref))
    return 2.0 * both / (n_pred + n_ref)
