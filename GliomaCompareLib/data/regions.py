"""Evaluation regions (WT / TC / ET) from label maps, as the convention defines them."""

from __future__ import annotations

import numpy as np

from GliomaCompareLib.data.conventions import REGIONS, Convention, load_convention

__all__ = ["labels_from_regions", "region_mask", "region_masks"]


def region_mask(label: np.ndarray, region: str, convention: str | Convention = "brats2020"):
    """Boolean mask of one region (``"WT"``, ``"TC"`` or ``"ET"``) of a label map.

    Raises:
        KeyError: for a region the convention does not define.
    """
    conv = load_convention(convention)
    if region not in conv.regions:
        raise KeyError(f"Region {region!r} is not defined by convention {conv.name}")
    return np.isin(label, conv.regions[region])


def region_masks(
    label: np.ndarray, convention: str | Convention = "brats2020", regions=REGIONS
) -> dict[str, np.ndarray]:
    """``{region: bool mask}`` for each region, same shape as ``label``."""
    conv = load_convention(convention)
    return {r: region_mask(label, r, conv) for r in regions}


def labels_from_regions(
    wt: np.ndarray, tc: np.ndarray, et: np.ndarray, convention: str | Convention = "brats2020"
) -> np.ndarray:
    """Turn nested region masks back into a label map (uint8).

    The conventional nesting ET within TC within WT is enforced the way BraTS models do:
    ET voxels get the enhancing label, the rest of TC the core label, the rest of WT the edema
    label. The label values are read from the convention (regions' differences).
    """
    conv = load_convention(convention)
    et_label = _single(conv.regions["ET"], conv, "ET")
    core_label = _single(set(conv.regions["TC"]) - set(conv.regions["ET"]), conv, "TC - ET")
    edema_label = _single(set(conv.regions["WT"]) - set(conv.regions["TC"]), conv, "WT - TC")
    out = np.zeros(np.shape(wt), dtype=np.uint8)
    out[np.asarray(wt, bool)] = edema_label
    out[np.asarray(tc, bool)] = core_label
    out[np.asarray(et, bool)] = et_label
    return out


def _single(values, conv: Convention, what: str) -> int:
    values = sorted(values)
    if len(values) != 1:
        raise ValueError(
            f"Convention {conv.name}: region difference {what} has labels {values}; "
            "expected exactly one to rebuild a label map"
        )
    return int(values[0])
