"""Reading and writing images: ``(array, ImageMeta)`` pairs, like nnU-Net's reader/writers.

Arrays are indexed ``[i, j, k]`` in voxel order and ``meta.affine`` maps ``(i, j, k, 1)`` to
RAS millimetres, whatever the file format (NIfTI via nibabel, NRRD / ``.seg.nrrd`` via SimpleITK,
whose LPS geometry is converted to RAS here).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from GliomaCompareLib.data.nrrd import read_seg_nrrd
from GliomaCompareLib.fileio import atomic_path

__all__ = [
    "MAX_IMAGE_BYTES",
    "ImageMeta",
    "ImageReadError",
    "find_label_map",
    "image_suffix",
    "read_header",
    "read_image",
    "strip_image_suffix",
    "write_nifti",
]

_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest voxel data a compressed image may claim (bytes); an uncompressed ``.nii`` must also
#: hold all the data its header claims. Checked before anything is allocated.
MAX_IMAGE_BYTES = 2 * 1024**3


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


@dataclass(frozen=True, eq=False)
class ImageMeta:
    """Geometry of an image.

    Attributes:
        shape: array shape (3 entries for a volume).
        affine: 4x4 voxel -> RAS (mm) matrix.
        path: the file it was read from ("" when made in memory).
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    path: str = ""

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))


def image_suffix(path: str | Path) -> str:
    """Return the image suffix of ``path`` (``.nii.gz``, ``.seg.nrrd`` ...) or ``""``."""
    name = Path(path).name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def strip_image_suffix(path: str | Path) -> str:
    """File name of ``path`` without its image suffix."""
    name = Path(path).name
    return name[: len(name) - len(image_suffix(name))] if image_suffix(name) else name


def _is_nifti(path: Path) -> bool:
    return image_suffix(path) in (".nii", ".nii.gz")


def _sitk_affine(image) -> np.ndarray:
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def _check_nifti_size(path: Path, img, max_bytes: int | None = None) -> None:
    """Refuse a NIfTI whose header claims more data than the file (or the ceiling) holds."""
    header = img.header
    shape = tuple(int(s) for s in header.get_data_shape())
    claimed = int(np.prod(shape, dtype=object)) * header.get_data_dtype().itemsize
    limit = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    offset = int(getattr(img.dataobj, "offset", 0))  # where the voxel data starts
    real = None
    if image_suffix(path) == ".nii":
        real = path.stat().st_size - offset
    elif claimed <= limit and _gzip_size_hint(path) < offset + claimed:
        # the gzip trailer says the data is short (or the file has several members): count
        real = _gzip_bytes(path, offset + claimed) - offset
    if real is not None and claimed > real:
        raise ImageReadError(
            f"{path}: the header claims shape {shape} ({claimed} bytes of voxel data) but "
            f"the file holds only {max(real, 0)} bytes after the header; truncated or "
            "corrupt file"
        )
    if claimed > limit:
        raise ImageReadError(
            f"{path}: the header claims shape {shape} ({claimed} bytes of voxel data), more "
            f"than the {limit} bytes allowed (GliomaCompareLib.data.io.MAX_IMAGE_BYTES)"
        )


def _gzip_size_hint(path: Path) -> int:
    """The gzip trailer's ISIZE (uncompressed size mod 2**32 of the last member), or -1."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() < 4:
            return -1
        handle.seek(-4, 2)
        size = int.from_bytes(handle.read(4), "little")
    return size if size else -1


def _gzip_bytes(path: Path, needed: int) -> int:
    """Decompressed bytes of a gzip file, counted in a stream up to ``needed`` (bounded memory)."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < needed:
                chunk = stream.read(min(1 << 20, needed - total))
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError):
        pass  # a truncated stream holds what was read so far
    return total


def read_header(path: str | Path) -> ImageMeta:
    """Read only the geometry of an image file.

    Raises:
        ImageReadError: naming the file, when it is missing or not a readable image, or a NIfTI
            header claims more voxel data than the file holds (or than :data:`MAX_IMAGE_BYTES`).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(str(path))
            _check_nifti_size(path, img)
            return ImageMeta(
                tuple(int(s) for s in img.shape), np.asarray(img.affine, float), str(path)
            )
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        if reader.GetNumberOfComponents() > 1:
            size = (*size, reader.GetNumberOfComponents())
        img = sitk.Image([1] * reader.GetDimension(), sitk.sitkUInt8)
        img.SetSpacing(reader.GetSpacing())
        img.SetOrigin(reader.GetOrigin())
        img.SetDirection(reader.GetDirection())
        affine = _sitk_affine(img) if reader.GetDimension() == 3 else np.eye(4)
        return ImageMeta(size, affine, str(path))
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel / SimpleITK raise many types
        raise ImageReadError(f"{path}: not a readable image header ({exc})") from exc


def read_image(path: str | Path, dtype=None) -> tuple[np.ndarray, ImageMeta]:
    """Read a NIfTI / NRRD image as ``(array[i, j, k], meta)``.

    A ``.seg.nrrd`` written by GliomaCompare (its segments carry the BraTS label or region
    they stand for) is read through :func:`GliomaCompareLib.data.nrrd.read_seg_nrrd`, so a
    regions file (overlapping WT / TC / ET layers) gives back the exact label map. Another
    multi-layer Slicer ``.seg.nrrd`` (4D, one layer per overlapping segment group) is collapsed
    to one label map when its layers do not overlap.

    Args:
        path: the file.
        dtype: optional numpy dtype to cast to.

    Raises:
        ImageReadError: naming the file, for a missing, truncated or unreadable file; a NIfTI
            header that claims more data than the file holds is refused before allocating.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.name.lower().endswith(".seg.nrrd"):
        tagged = _read_tagged_segmentation(path)
        if tagged is not None:
            array, affine = tagged
            if dtype is not None:
                array = array.astype(dtype, copy=False)
            return array, ImageMeta(tuple(int(s) for s in array.shape), affine, str(path))
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(str(path))
            _check_nifti_size(path, img)
            array = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=float)
        else:
            import SimpleITK as sitk

            img = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(img)  # z, y, x[, c]
            if img.GetNumberOfComponentsPerPixel() > 1:
                array = np.moveaxis(array, -1, 0)  # c, z, y, x
                array = _collapse_layers(array, path)
            array = np.ascontiguousarray(array.transpose(2, 1, 0))
            affine = _sitk_affine(img)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read image data ({exc})") from exc
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, ImageMeta(tuple(int(s) for s in array.shape), affine, str(path))


def _read_tagged_segmentation(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(label map, affine) of a ``.seg.nrrd`` whose every segment carries a GliomaCompare
    label or region tag; None for other files (read as plain images)."""
    try:
        seg = read_seg_nrrd(path)
    except (ValueError, OSError) as exc:
        raise ImageReadError(f"{path}: cannot read segmentation ({exc})") from exc
    if not seg.segments or not all(s.brats_label is not None or s.region for s in seg.segments):
        return None
    return seg.label_map, np.asarray(seg.affine, dtype=float)


def _collapse_layers(layers: np.ndarray, path: Path) -> np.ndarray:
    nonzero = (layers != 0).sum(axis=0)
    if (nonzero > 1).any():
        raise ImageReadError(
            f"{path}: segmentation layers overlap, so it is not one label map; "
            "export it from Slicer as a labelmap (one layer) first"
        )
    return layers.max(axis=0)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array[i, j, k]`` with ``affine`` as NIfTI (``.nii`` or ``.nii.gz``), atomically."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:  # nibabel picks the format from the suffix
        nib.save(img, str(tmp))
    return path


def find_label_map(folder: str | Path, case_id: str) -> Path | None:
    """A case's predicted label map in a prediction folder (``predict-cnn``'s output, whose
    shards are subfolders): ``<case_id>.nii.gz`` (or another image suffix) in ``folder`` or one
    or two levels below; None when there is none.

    Raises:
        ValueError: naming both files when two predictions of the case are found.
    """
    root = Path(folder)
    found = sorted(
        p
        for pattern in (f"{case_id}{s}" for s in _SUFFIXES)
        for depth in ("", "*/", "*/*/")
        for p in root.glob(depth + pattern)
        if p.is_file()
    )
    if len(found) > 1:
        raise ValueError(f"{case_id}: two predicted label maps: {found[0]} and {found[1]}")
    return found[0] if found else None
