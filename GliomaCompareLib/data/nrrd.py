"""Reading NRRD and Slicer segmentation (``.seg.nrrd``) files, without Slicer or SimpleITK.

The data layer reads every image format here and in :mod:`~GliomaCompareLib.data.io`; the
writers of Slicer files (``.seg.nrrd``, ``.mrk.json``) stay in :mod:`GliomaCompareLib.slicer_files`,
which imports these readers and the segment types.

A segment written by GliomaCompare carries tags: :data:`TAG_LABEL` (its label value, labels
mode) or :data:`TAG_REGION` (regions mode), and :data:`TAG_CONVENTION`; :func:`read_seg_nrrd`
uses them to map segments back to label values.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from GliomaCompareLib.data.conventions import Convention, load_convention
from GliomaCompareLib.data.regions import labels_from_regions

#: Largest voxel data a NRRD header may claim (bytes); gzip data is decompressed up to the size
#: the header's ``sizes`` and ``type`` give, never more.
MAX_NRRD_BYTES = 2 * 1024**3
#: Largest label value a label map holds (``uint16``).
MAX_LABEL_VALUE = 65535

__all__ = [
    "MAX_LABEL_VALUE",
    "MAX_NRRD_BYTES",
    "TAG_CONVENTION",
    "TAG_LABEL",
    "TAG_REGION",
    "SegFile",
    "SegmentInfo",
    "read_nrrd",
    "read_seg_nrrd",
]

#: Segment tag holding the label value a segment stands for (labels mode).
TAG_LABEL = "GliomaCompare.Label"
#: Segment tag holding the region a segment stands for (regions mode).
TAG_REGION = "GliomaCompare.Region"
#: Segment tag holding the name of the label convention.
TAG_CONVENTION = "GliomaCompare.Convention"

_NRRD_DTYPES = {
    "uchar": np.uint8,
    "unsigned char": np.uint8,
    "uint8": np.uint8,
    "uint8_t": np.uint8,
    "signed char": np.int8,
    "int8": np.int8,
    "int8_t": np.int8,
    "ushort": np.uint16,
    "unsigned short": np.uint16,
    "unsigned short int": np.uint16,
    "uint16": np.uint16,
    "uint16_t": np.uint16,
    "short": np.int16,
    "short int": np.int16,
    "signed short": np.int16,
    "int16": np.int16,
    "int16_t": np.int16,
    "uint": np.uint32,
    "unsigned int": np.uint32,
    "uint32": np.uint32,
    "uint32_t": np.uint32,
    "int": np.int32,
    "signed int": np.int32,
    "int32": np.int32,
    "int32_t": np.int32,
    "float": np.float32,
    "double": np.float64,
}


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a segmentation file.

    Attributes:
        id: segment id (unique in the file), e.g. ``"label_1"`` or ``"WT"``.
        name: display name, e.g. ``"NCR/NET"`` or ``"WT"``.
        color: RGB in [0, 1].
        label_value: voxel value of the segment in its layer.
        layer: index of the layer (component) holding it.
        tags: ``{key: value}`` segment tags (Slicer keeps and shows them).
    """

    id: str
    name: str
    color: tuple[float, float, float]
    label_value: int
    layer: int = 0
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def brats_label(self) -> int | None:
        """The label value this segment stands for (labels mode), else None."""
        value = self.tags.get(TAG_LABEL)
        return int(value) if value not in (None, "") else None

    @property
    def region(self) -> str | None:
        """The region this segment stands for (regions mode), else None."""
        return self.tags.get(TAG_REGION) or None


@dataclass(frozen=True, eq=False)
class SegFile:
    """A segmentation file, read.

    Attributes:
        path: the file.
        label_map: uint8/uint16 array ``(X, Y, Z)`` in the convention's label values (rebuilt
            from the regions for a regions file; for a file without our tags, each segment's
            label value as stored).
        layers: the stored layers ``(L, X, Y, Z)``.
        affine: 4x4 voxel -> RAS matrix of the stored grid.
        segments: the segments, in file order.
        extent_offset: ``Segmentation_ReferenceImageExtentOffset`` (voxels): where the stored grid
            starts inside the reference image (Slicer crops files it writes; 0 for ours).
        fields: every header key-value field (``key:=value``).
    """

    path: Path
    label_map: np.ndarray
    layers: np.ndarray
    affine: np.ndarray
    segments: tuple[SegmentInfo, ...]
    extent_offset: tuple[int, int, int]
    fields: dict[str, str]

    @property
    def mode(self) -> str:
        """``"regions"``, ``"labels"`` or ``"unknown"`` (a file without our tags)."""
        if self.segments and all(s.region for s in self.segments):
            return "regions"
        if self.segments and all(s.brats_label is not None for s in self.segments):
            return "labels"
        return "unknown"

    def segment_mask(self, segment: str) -> np.ndarray:
        """Boolean mask ``(X, Y, Z)`` of a segment given by id or name.

        Raises:
            KeyError: when no segment has that id or name.
        """
        for s in self.segments:
            if segment in (s.id, s.name):
                return self.layers[s.layer] == s.label_value
        names = ", ".join(s.name for s in self.segments)
        raise KeyError(f"{self.path}: no segment {segment!r} (segments: {names})")

    def on_grid(self, affine: np.ndarray, shape: Sequence[int], atol: float = 1e-3) -> np.ndarray:
        """The label map placed on another voxel grid of the same orientation and spacing
        (e.g. the full image, for a file Slicer cropped); voxels outside the stored grid are 0.

        Raises:
            ValueError: when the grids differ in orientation/spacing or by a fractional voxel.
        """
        affine = np.asarray(affine, float)
        if not np.allclose(affine[:3, :3], self.affine[:3, :3], atol=atol):
            raise ValueError(f"{self.path}: voxel axes differ from the target grid")
        offset = np.linalg.solve(affine[:3, :3], self.affine[:3, 3] - affine[:3, 3])
        rounded = np.round(offset)
        if np.abs(offset - rounded).max() > 1e-3:
            raise ValueError(f"{self.path}: grid is shifted by a fraction of a voxel ({offset})")
        out = np.zeros(tuple(int(s) for s in shape), dtype=self.label_map.dtype)
        start = rounded.astype(int)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        for a in range(3):
            lo = max(0, start[a])
            hi = min(out.shape[a], start[a] + self.label_map.shape[a])
            if hi <= lo:
                return out
            dst[a] = slice(lo, hi)
            src[a] = slice(lo - start[a], hi - start[a])
        out[tuple(dst)] = self.label_map[tuple(src)]
        return out


def _split_header(path: Path, blob: bytes) -> tuple[dict[str, str], dict[str, str], int]:
    """(basic fields with lower-case keys, ``key:=value`` fields, offset of the header end)."""
    end = blob.find(b"\n\n")
    if not blob.startswith(b"NRRD") or end < 0:
        raise ValueError(f"{path}: not a NRRD file (no NRRD magic / header end)")
    header: dict[str, str] = {}
    fields: dict[str, str] = {}
    for line in blob[:end].decode("utf-8", errors="replace").splitlines()[1:]:
        if not line or line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            fields[key] = value
        elif ": " in line:
            key, value = line.split(": ", 1)
            header[key.strip().lower()] = value.strip()
    return header, fields, end


def _decode_data(path: Path, header: dict[str, str], payload: bytes) -> np.ndarray:
    """The voxels of an attached-header NRRD, indexed in file axis order (fastest first)."""
    try:
        sizes = [int(s) for s in header["sizes"].split()]
        dtype = np.dtype(_NRRD_DTYPES[header["type"].lower()])
        encoding = header.get("encoding", "raw").lower()
    except KeyError as exc:
        raise ValueError(f"{path}: NRRD header lacks or has an unknown {exc}") from None
    if "data file" in header or "datafile" in header:
        raise ValueError(f"{path}: detached NRRD data files are not supported; save as .seg.nrrd")
    count = int(np.prod(sizes, dtype=object))
    if count * dtype.itemsize > MAX_NRRD_BYTES:
        raise ValueError(
            f"{path}: header sizes {sizes} claim {count * dtype.itemsize} bytes of voxel data, "
            f"more than the {MAX_NRRD_BYTES} bytes allowed"
        )
    if encoding in ("gzip", "gz"):
        payload = _gunzip_bounded(path, payload, count * dtype.itemsize)
    elif encoding != "raw":
        raise ValueError(f"{path}: NRRD encoding {encoding!r} is not supported (raw, gzip)")
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if header.get("endian", "little") == "big" else "<")
    if len(payload) < count * dtype.itemsize:
        raise ValueError(
            f"{path}: data is truncated ({len(payload)} bytes for {count} voxels of {dtype})"
        )
    data = np.frombuffer(payload, dtype=dtype, count=count).reshape(sizes, order="F")
    return np.ascontiguousarray(data.astype(dtype.newbyteorder("="), copy=False))


def _gunzip_bounded(path: Path, payload: bytes, limit: int) -> bytes:
    """Decompress gzip ``payload`` to at most ``limit`` bytes; more (a gzip bomb) is refused."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"{path}: gzip data is truncated or corrupt ({exc})") from exc
    if len(data) > limit:
        raise ValueError(
            f"{path}: gzip data decompresses to more than the {limit} bytes its header's sizes "
            "and type give; refused"
        )
    if not inflater.eof:
        raise ValueError(f"{path}: gzip data is truncated or corrupt (ends early)")
    return data


def _affine(path: Path, header: dict[str, str]) -> np.ndarray:
    """The 4x4 voxel -> RAS matrix from ``space``, ``space directions`` and ``space origin``."""
    space = header.get("space", "left-posterior-superior").lower()
    if space in ("left-posterior-superior", "lps"):
        to_ras = np.diag([-1.0, -1.0, 1.0])
    elif space in ("right-anterior-superior", "ras"):
        to_ras = np.eye(3)
    else:
        raise ValueError(f"{path}: NRRD space {space!r} is not supported (LPS or RAS)")
    vectors = re.findall(r"\(([^)]*)\)|none", header.get("space directions", ""))
    dirs = [np.array([float(x) for x in v.split(",")]) for v in vectors if v]
    if len(dirs) != 3:
        raise ValueError(f"{path}: expected 3 space directions, got {len(dirs)}")
    origin_text = re.findall(r"\(([^)]*)\)", header.get("space origin", "(0,0,0)"))
    origin = np.array([float(x) for x in origin_text[0].split(",")]) if origin_text else np.zeros(3)
    affine = np.eye(4)
    affine[:3, :3] = to_ras @ np.stack(dirs, axis=1)
    affine[:3, 3] = to_ras @ origin
    return affine


def read_nrrd(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, str], dict[str, str]]:
    """Read an attached-header NRRD (raw or gzip) with a 3D space.

    Returns:
        ``(data, affine, header, fields)``: ``data`` indexed ``[i, j, k]`` (``[c, i, j, k]`` with
        a leading list/vector axis), 4x4 voxel -> RAS ``affine``, the basic header fields, and
        the ``key:=value`` fields.

    Raises:
        ValueError: naming the file, for anything that is not such a NRRD.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    header, fields, end = _split_header(path, blob)
    data = _decode_data(path, header, blob[end + 2 :])
    return data, _affine(path, header), header, fields


def _parse_tags(text: str) -> dict[str, str]:
    tags = {}
    for item in text.split("|"):
        if ":" in item:
            key, value = item.split(":", 1)
            tags[key] = value
    return tags


def _segments(path: Path, fields: Mapping[str, str], n_layers: int) -> list[SegmentInfo]:
    """The ``Segment{i}_*`` fields as :class:`SegmentInfo` objects, in file order."""
    segments = []
    index = 0
    while f"Segment{index}_ID" in fields:
        get = lambda key, default="", i=index: fields.get(f"Segment{i}_{key}", default)  # noqa: E731
        color = tuple(float(c) for c in get("Color", "0.5 0.5 0.5").split()[:3])
        layer = int(get("Layer", str(index if n_layers > 1 else 0)) or 0)
        segments.append(
            SegmentInfo(
                id=get("ID"),
                name=get("Name", get("ID")),
                color=color,  # type: ignore[arg-type]
                label_value=int(float(get("LabelValue", "1") or 1)),
                layer=layer,
                tags=_parse_tags(get("Tags")),
            )
        )
        index += 1
    for s in segments:
        if s.layer >= n_layers:
            raise ValueError(f"{path}: segment {s.name!r} is in layer {s.layer} of {n_layers}")
    return segments


def _label_map(
    path: Path,
    layers: np.ndarray,
    segments: Sequence[SegmentInfo],
    convention: str | Convention | None,
) -> np.ndarray:
    """The label map of the segments (see :func:`read_seg_nrrd` for the rules)."""
    conv_name = convention
    if conv_name is None:
        named = {s.tags.get(TAG_CONVENTION) for s in segments} - {None, ""}
        conv_name = named.pop() if len(named) == 1 else "brats2020"
    masks = {s.id: layers[s.layer] == s.label_value for s in segments}
    if segments and all(s.region for s in segments):
        conv = load_convention(conv_name)
        by_region = {s.region: masks[s.id] for s in segments}
        missing = [r for r in ("WT", "TC", "ET") if r not in by_region]
        if missing:
            raise ValueError(f"{path}: regions file lacks regions {missing} to rebuild labels")
        return labels_from_regions(by_region["WT"], by_region["TC"], by_region["ET"], conv)
    if segments:
        values = [s.brats_label if s.brats_label is not None else s.label_value for s in segments]
        _check_label_values(path, values)
        top = max(max((s.brats_label or s.label_value) for s in segments), 1)
        label_map = np.zeros(layers.shape[1:], dtype=np.uint8 if top <= 255 else np.uint16)
        for s in segments:
            label_map[masks[s.id]] = s.brats_label if s.brats_label is not None else s.label_value
        return label_map
    if layers.size:
        _check_label_values(path, [int(layers.min()), int(layers.max())])
    return layers[0].astype(np.uint16 if layers.max() > 255 else np.uint8)


def _check_label_values(path: Path, values: Sequence[int]) -> None:
    bad = sorted({int(v) for v in values if v < 0 or v > MAX_LABEL_VALUE})
    if bad:
        raise ValueError(
            f"{path}: label values {bad} are outside 0..{MAX_LABEL_VALUE}, the range of a label "
            "map; renumber the segments"
        )


def read_seg_nrrd(path: str | Path, convention: str | Convention | None = None) -> SegFile:
    """Read a segmentation file written by :func:`GliomaCompareLib.slicer_files.write_seg_nrrd`
    or by 3D Slicer.

    Args:
        path: a ``.seg.nrrd`` file (one or several layers).
        convention: the label convention used to rebuild the label map of a regions file
            (default: the one named in the segments' tags, else ``brats2020``).

    Returns:
        A :class:`SegFile`; its ``label_map`` uses the convention's values for our files, and
        each segment's stored label value for other files (where segments overlap, the later
        segment wins).

    Raises:
        ValueError: naming the file, when it is not a readable segmentation.
    """
    path = Path(path)
    data, affine, _header, fields = read_nrrd(path)
    if data.ndim == 3:
        layers = data[None]
    elif data.ndim == 4:
        layers = data
    else:
        raise ValueError(f"{path}: segmentation must be 3D or 4D, got {data.ndim}D")
    segments = _segments(path, fields, layers.shape[0])
    offset_text = fields.get("Segmentation_ReferenceImageExtentOffset", "0 0 0").split()
    offset = tuple(int(float(x)) for x in [*offset_text, "0", "0", "0"][:3])
    return SegFile(
        path=path,
        label_map=_label_map(path, layers, segments, convention),
        layers=layers,
        affine=affine,
        segments=tuple(segments),
        extent_offset=offset,  # type: ignore[arg-type]
        fields=fields,
    )
