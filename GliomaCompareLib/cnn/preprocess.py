"""Preprocessing shared by training and inference, so both see exactly the same input.

1. channels picked by name in the network's order (the ``Case`` stores ``flair, t1, t1ce, t2``);
2. crop to the brain's bounding box (voxels where any channel is non-zero) plus a margin —
   MONAI's ``generate_spatial_bounding_box``, the function behind ``CropForeground``;
3. z-score per channel over the non-zero voxels (MONAI ``NormalizeIntensity(nonzero=True,
   channel_wise=True)``, as the ``brats_mri_segmentation`` bundle does); background stays 0.

Segmentation targets are one binary channel per region (WT / TC / ET, as the convention defines
them) in the network's output order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from GliomaCompareLib.data.regions import region_masks

__all__ = [
    "BrainCrop",
    "brain_crop",
    "normalize_channels",
    "prepare_image",
    "prepare_whole",
    "region_targets",
    "resize_image",
    "select_channels",
    "uncrop",
]


@dataclass(frozen=True)
class BrainCrop:
    """Where a cropped volume sits in the full volume.

    Attributes:
        start: first voxel (inclusive) per axis.
        end: last voxel + 1 per axis.
        full_shape: spatial shape of the full volume.
    """

    start: tuple[int, int, int]
    end: tuple[int, int, int]
    full_shape: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, e) for s, e in zip(self.start, self.end, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(e - s for s, e in zip(self.start, self.end, strict=True))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {
            "start": list(self.start),
            "end": list(self.end),
            "full_shape": list(self.full_shape),
        }


def select_channels(case, channels: Sequence[str]) -> np.ndarray:
    """The case's image with ``channels`` in this order, float32 ``(C, X, Y, Z)``.

    Raises:
        KeyError: naming the case and the channel it lacks.
    """
    return np.stack([case.modality(name) for name in channels]).astype(np.float32, copy=False)


def _nonzero(x):
    return x != 0


def brain_crop(image: np.ndarray, margin: int = 0, case_id: str = "") -> BrainCrop:
    """Bounding box of the voxels where any channel of ``image`` ``(C, X, Y, Z)`` is non-zero.

    Raises:
        ValueError: naming the case when every voxel is zero.
    """
    from monai.transforms.utils import generate_spatial_bounding_box

    start, end = generate_spatial_bounding_box(
        image, select_fn=_nonzero, margin=int(margin), allow_smaller=True
    )
    shape = tuple(int(s) for s in image.shape[1:])
    if any(e <= s for s, e in zip(start, end, strict=True)):
        raise ValueError(f"{case_id or 'image'}: every voxel is zero, so there is no brain to crop")
    return BrainCrop(tuple(int(s) for s in start), tuple(int(e) for e in end), shape)  # type: ignore[arg-type]


def normalize_channels(image: np.ndarray) -> np.ndarray:
    """Z-score each channel of ``(C, X, Y, Z)`` over its non-zero voxels; zeros stay 0.

    Returns:
        float32 numpy array, same shape.
    """
    import torch
    from monai.transforms import NormalizeIntensity

    out = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.as_tensor(image))
    return np.asarray(out.as_tensor() if hasattr(out, "as_tensor") else out, dtype=np.float32)


def region_targets(label: np.ndarray, regions: Sequence[str], convention) -> np.ndarray:
    """Binary targets ``(R, X, Y, Z)`` uint8, one per region in ``regions`` order."""
    masks = region_masks(label, convention, tuple(regions))
    return np.stack([masks[r] for r in regions]).astype(np.uint8)


def _channel_index(case, channels: Sequence[str]) -> list[int]:
    """Positions of ``channels`` in the case's image; KeyError naming the case otherwise."""
    index = [case.channels.index(name) if name in case.channels else None for name in channels]
    missing = [name for name, i in zip(channels, index, strict=True) if i is None]
    if missing:
        raise KeyError(f"{case.case_id}: no channel {missing[0]!r} (has {case.channels})")
    return index


def prepare_image(case, channels: Sequence[str], margin: int) -> tuple[np.ndarray, BrainCrop]:
    """Channels in network order, cropped to the brain (+ ``margin``), normalised.

    The brain is where any of the case's modalities is non-zero (``Case.brain_mask``); the
    channels are picked from the cropped block, so the full volume is never copied.

    Returns:
        (float32 ``(C, x, y, z)`` cropped image, the crop).

    Raises:
        KeyError / ValueError: naming the case (missing channel, empty image).
    """
    crop = brain_crop(case.image, margin, case.case_id)
    index = _channel_index(case, channels)
    block = case.image[(slice(None), *crop.slices)]
    image = np.stack([block[i] for i in index]).astype(np.float32, copy=False)
    return normalize_channels(image), crop


def prepare_whole(case, channels: Sequence[str]) -> tuple[np.ndarray, BrainCrop]:
    """Channels in network order, the whole volume (no crop), normalised as
    :func:`prepare_image` does; the returned crop covers the volume.

    Raises:
        KeyError: naming the case and the missing channel.
    """
    shape = tuple(int(s) for s in case.image.shape[1:])
    full = BrainCrop((0, 0, 0), shape, shape)
    index = _channel_index(case, channels)
    image = np.stack([case.image[i] for i in index]).astype(np.float32, copy=False)
    return normalize_channels(image), full


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize ``(C, x, y, z)`` to ``(C, *size)`` with trilinear interpolation (float32)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None]
    out = F.interpolate(
        tensor, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False
    )
    return out[0].numpy()


def uncrop(cropped: np.ndarray, crop: BrainCrop, fill=0) -> np.ndarray:
    """Place ``cropped`` (``(..., x, y, z)``) back into a full-size array filled with ``fill``."""
    lead = cropped.shape[:-3]
    out = np.full((*lead, *crop.full_shape), fill, dtype=cropped.dtype)
    out[(..., *crop.slices)] = cropped
    return out
