"""Synthetic BraTS 2020 cohorts: MNI152 anatomy with simulated gliomas, written in BraTS layout.

What a synthetic case is made of
--------------------------------
* **Geometry.** BraTS 2020 images live in the SRI24 atlas space: 240 x 240 x 155 voxels of 1 mm,
  stored with the affine ``[[-1,0,0,0],[0,-1,0,239],[0,0,1,0],[0,0,0,1]]`` (voxel ``i`` runs
  from patient right to left, ``j`` from anterior to posterior, ``k`` from inferior to superior).
  The generator writes that affine for the default shape. A smaller ``shape`` keeps the same
  240 x 240 x 155 mm field of view, so voxels grow (48 x 48 x 32 gives 5 x 5 x 4.84 mm) and the
  affine is scaled so that the field of view's edges stay where they are (see
  :func:`brats_affine`).
* **Anatomy.** The MNI152 2009c symmetric grey- and white-matter probability maps and the
  skull-stripped T1 template that nilearn ships offline (197 x 233 x 189, 1 mm) are placed in
  the field of view by a whole-millimetre translation (brain centred left-right and
  anterior-posterior, top of the brain 2 mm below the top slice) and averaged into the target
  voxels (exact partial-volume box filter; at 1 mm this is a copy). The brain mask is nilearn's
  rule (template > 0.2 of its maximum); CSF is the brain minus grey minus white matter (sulci
  and ventricles). Every case shares that anatomy, as every BraTS case is registered to SRI24;
  cases differ in the tumour, intensity scaling, bias field and noise. The resampled maps are
  cached in memory per shape and on disk under ``$GLIOMACOMPARE_CACHE_DIR/synthetic`` (default
  ``~/.cache/gliomacompare/synthetic``; set the variable to an empty string to turn the disk
  cache off). The cache never lives in the repository.
* **Tumour.** A noise-perturbed, randomly rotated ellipsoid (the core) centred in hemispheric
  white matter (either side, varied depth), surrounded by oedema whose extent is perturbed by a
  second noise field and which spreads further in white matter than in grey matter and stays
  out of CSF. Labels follow the convention file: oedema (2), necrotic / non-enhancing core (1),
  enhancing tumour (4). Most HGG (``hgg_rim_probability``) have an enhancing rim around
  necrosis; the other HGG have a non-enhancing core. Most LGG are non-enhancing; a minority
  (``lgg_faint_enhancement_probability``) carry a small, faintly enhancing patch. Core sizes and
  oedema extents of the two grades overlap. All tumour geometry is drawn in millimetres, so a
  case has the same tumour at every ``shape`` (up to sampling; enhancing structures are made at
  least about one voxel thick on coarse grids). Tumour voxels are always inside the brain mask.
* **Contrast.** Each voxel mixes the nominal tissue intensities of :data:`TISSUE_INTENSITIES` by
  its tissue fractions (partial volume), the tumour compartments replacing normal tissue with
  soft borders. T1: WM > GM > CSF, tumour hypointense; T1ce: as T1 plus a bright enhancing rim;
  T2: CSF and oedema bright; FLAIR: CSF dark, oedema bright, necrosis darker than oedema. Per
  case and modality: tissue intensities jittered, a smooth multiplicative bias field, Rician
  noise and a global intensity scale. Stored as int16, 0 exactly outside the brain (>= 1
  inside), as skull-stripped BraTS images are.

Determinism
-----------
The grades of a cohort are a seeded shuffle of ``round(cases * hgg_fraction)`` HGG labels, so
the HGG count is exact. Everything else about case ``i`` depends only on ``(seed, i, grade,
shape)`` (independent random streams seeded with ``(seed, i, stream)``), not on which other
cases are made, in which order or process: ``jobs=1`` and ``jobs=2`` write identical files, and
case ``i`` of a 5-case and of a 50-case cohort are identical when their grades agree.

Files
-----
``OUT/MICCAI_BraTS2020_TrainingData/`` holds one folder per case with the four modalities and
the label map, ``name_mapping.csv`` (the real file's columns; older ids are ``NA``) and
``synthetic.json`` (generator version, configuration, geometry, contrast table and, per case,
the ground-truth parameters and measured tumour volumes). Every file is written to a temporary
name and renamed. ``synthetic.json`` is rewritten after every case, so an interrupted run is
resumed by running the same command again: finished cases are kept, the rest are made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from GliomaCompareLib import __version__
from GliomaCompareLib.data.case import Case
from GliomaCompareLib.data.conventions import Convention, load_convention
from GliomaCompareLib.data.io import write_nifti
from GliomaCompareLib.fileio import atomic_write, atomic_write_text, write_csv

__all__ = [
    "DATA_DIR_NAME",
    "FIELD_OF_VIEW_MM",
    "GENERATOR_VERSION",
    "TISSUE_INTENSITIES",
    "SynthConfig",
    "SyntheticCase",
    "brats_affine",
    "case_id_for",
    "cohort_grades",
    "generate_case",
    "tissue_maps",
    "write_case",
    "write_cohort",
]

log = logging.getLogger(__name__)

#: Version of the generator; cohorts made by another version are not resumed.
GENERATOR_VERSION = "1.0"

#: Folder created inside ``OUT``, as in the BraTS 2020 download.
DATA_DIR_NAME = "MICCAI_BraTS2020_TrainingData"

#: Field of view of BraTS / SRI24 images in mm (x, y, z), kept for every ``shape``.
FIELD_OF_VIEW_MM = (240.0, 240.0, 155.0)

#: Columns of BraTS 2020's ``name_mapping.csv``.
NAME_MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)

#: Nominal intensity (arbitrary scanner units) of each tissue in each modality, before the
#: per-case jitter, bias field, noise and global scale. ``core`` is non-enhancing tumour,
#: ``necrosis`` the centre of a rim-enhancing tumour, ``enhancing`` the enhancing tumour.
TISSUE_INTENSITIES: dict[str, dict[str, float]] = {
    "t1": {
        "csf": 180.0, "gm": 420.0, "wm": 600.0,
        "edema": 390.0, "core": 330.0, "necrosis": 220.0, "enhancing": 400.0,
    },
    "t1ce": {
        "csf": 190.0, "gm": 440.0, "wm": 620.0,
        "edema": 400.0, "core": 345.0, "necrosis": 230.0, "enhancing": 1150.0,
    },
    "t2": {
        "csf": 1600.0, "gm": 560.0, "wm": 380.0,
        "edema": 1150.0, "core": 1050.0, "necrosis": 1450.0, "enhancing": 850.0,
    },
    "flair": {
        "csf": 110.0, "gm": 400.0, "wm": 320.0,
        "edema": 720.0, "core": 620.0, "necrosis": 330.0, "enhancing": 560.0,
    },
}  # fmt: skip

_MODALITIES = ("flair", "t1", "t1ce", "t2")  # canonical BraTS 2020 channel order
_TOP_MARGIN_MM = 2.0  # brain top below the field of view's top
_REFERENCE_SHAPE = (60, 60, 39)  # 4 mm grid on which tumour centres are chosen
_MIN_DEPTH_MM = 12.0  # tumour centres at least this far inside the brain
_LATTICE_MM = 3.0  # spacing of the noise lattice that perturbs tumour shapes
_MAX_EDEMA_RADIUS_MM = 55.0  # cap of the oedema's longest semi-axis before perturbation
_CACHE_FORMAT = "atlas-2"  # layout of the disk cache files
_NOISE_CLIP = 2.0  # shape noise fields are clipped to +-this many standard deviations
# Random streams of a case: (seed, index, stream).
_STREAM_TUMOUR, _STREAM_INTENSITY, _STREAM_LATTICE, _STREAM_NOISE, _STREAM_GRADES = 1, 2, 3, 4, 99


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """What cohort to make.

    Attributes:
        cases: number of cases (>= 1).
        seed: random seed (>= 0).
        hgg_fraction: share of HGG cases in [0, 1]; the cohort has exactly
            ``round(cases * hgg_fraction)`` HGG cases (halves round up).
        shape: volume shape (X, Y, Z), each >= 16; the field of view stays
            240 x 240 x 155 mm, so the spacing is ``FIELD_OF_VIEW_MM / shape``.
        ext: ``".nii.gz"`` or ``".nii"``.
        hgg_rim_probability: chance that an HGG has an enhancing rim (else non-enhancing core).
        lgg_faint_enhancement_probability: chance that an LGG has a faint enhancing patch.
    """

    cases: int = 10
    seed: int = 0
    hgg_fraction: float = 0.8
    shape: tuple[int, int, int] = (240, 240, 155)
    ext: str = ".nii.gz"
    hgg_rim_probability: float = 0.9
    lgg_faint_enhancement_probability: float = 0.18

    def __post_init__(self) -> None:
        try:
            shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError):
            raise ValueError(f"SynthConfig.shape {self.shape!r}: expected three integers") from None
        object.__setattr__(self, "shape", shape)
        problems = []
        if isinstance(self.cases, bool) or int(self.cases) != self.cases or self.cases < 1:
            problems.append(f"cases must be an integer >= 1 (got {self.cases!r})")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            problems.append(f"seed must be an integer >= 0 (got {self.seed!r})")
        for name in ("hgg_fraction", "hgg_rim_probability", "lgg_faint_enhancement_probability"):
            value = getattr(self, name)
            if not (0.0 <= float(value) <= 1.0):
                problems.append(f"{name} must be in [0, 1] (got {value!r})")
        if len(shape) != 3 or min(shape) < 16:
            problems.append(f"shape must be three sizes >= 16 (got {self.shape!r})")
        if self.ext not in (".nii.gz", ".nii"):
            problems.append(f"ext must be '.nii.gz' or '.nii' (got {self.ext!r})")
        if problems:
            raise ValueError("Invalid synthetic cohort configuration: " + "; ".join(problems))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along X, Y, Z."""
        return tuple(f / s for f, s in zip(FIELD_OF_VIEW_MM, self.shape, strict=True))  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 voxel -> RAS (mm) matrix written to every file (see :func:`brats_affine`)."""
        return brats_affine(self.shape)

    @property
    def hgg_count(self) -> int:
        """Number of HGG cases in the cohort."""
        return math.floor(self.cases * float(self.hgg_fraction) + 0.5)

    def to_dict(self) -> dict:
        """JSON-able form (stored in ``synthetic.json``)."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass(frozen=True, eq=False)
class SyntheticCase:
    """One generated case, in memory.

    Attributes:
        case_id: ``BraTS20_Training_NNN`` (NNN = index + 1).
        index: 0-based position in the cohort.
        grade: ``"HGG"`` or ``"LGG"``.
        volumes: ``{"flair", "t1", "t1ce", "t2"} -> int16 (X, Y, Z)``, 0 outside the brain.
        label: uint8 (X, Y, Z) label map in the BraTS 2020 convention (0, 1, 2, 4).
        affine: 4x4 voxel -> RAS (mm).
        truth: JSON-able ground truth (tumour parameters, intensity parameters, measured
            volumes); see ``synthetic.json``.
    """

    case_id: str
    index: int
    grade: str
    volumes: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    truth: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.label.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along X, Y, Z."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def as_case(self, convention: str | Convention = "brats2020"):
        """This case as a :class:`~GliomaCompareLib.data.case.Case` (float32 channels in the
        convention's order), for in-memory pipelines and tests."""
        conv = load_convention(convention)
        image = np.stack([self.volumes[c].astype(np.float32) for c in conv.channels])
        return Case(
            case_id=self.case_id,
            grade=self.grade,
            image=image,
            label=self.label.copy(),
            affine=self.affine.copy(),
            spacing=self.spacing,
            channels=conv.channels,
            convention=conv,
        )


def brats_affine(shape: tuple[int, int, int] = (240, 240, 155)) -> np.ndarray:
    """Voxel -> RAS (mm) affine of a BraTS / SRI24 grid of ``shape`` voxels.

    At 240 x 240 x 155 this is BraTS's ``[[-1,0,0,0],[0,-1,0,239],[0,0,1,0],[0,0,0,1]]``. Other
    shapes cover the same field of view (x in [-239.5, 0.5], y in [-0.5, 239.5], z in
    [-0.5, 154.5] mm, voxel edges) with voxels of ``FIELD_OF_VIEW_MM / shape`` mm.

    Args:
        shape: (X, Y, Z) voxels.

    Returns:
        float64 (4, 4).
    """
    sx, sy, sz = (f / s for f, s in zip(FIELD_OF_VIEW_MM, shape, strict=True))
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = (0.5 - 0.5 * sx, 239.5 - 0.5 * sy, -0.5 + 0.5 * sz)
    return affine


def case_id_for(index: int) -> str:
    """``BraTS20_Training_NNN`` for a 0-based cohort index."""
    return f"BraTS20_Training_{index + 1:03d}"


def cohort_grades(config: SynthConfig) -> tuple[str, ...]:
    """Grades of the cohort's cases in index order: exactly ``config.hgg_count`` HGG, shuffled
    with the seed."""
    grades = np.array(["HGG"] * config.hgg_count + ["LGG"] * (config.cases - config.hgg_count))
    rng = np.random.default_rng([config.seed, _STREAM_GRADES])
    return tuple(str(g) for g in grades[rng.permutation(config.cases)])


# --------------------------------------------------------------------------------------------
# Anatomy: MNI152 tissue maps in the target grid
# --------------------------------------------------------------------------------------------


def _nilearn_data_dir() -> Path:
    # Found without importing nilearn (its import takes seconds).
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "nilearn is not installed; it provides the MNI152 tissue maps used as synthetic "
            "anatomy (pip install nilearn)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _source_files() -> dict[str, Path]:
    folder = _nilearn_data_dir()
    files = {
        n: folder / f"mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz" for n in ("t1", "gm", "wm")
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNI152 tissue maps missing from the nilearn installation: {', '.join(missing)}"
        )
    return files


@lru_cache(maxsize=1)
def _source_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(maps float32 (3, X, Y, Z) = gm, wm, brain mask; source affine; translation t)``.

    ``t`` (mm) maps our RAS frame to MNI mm: ``mni = ras + t``.
    """
    import nibabel as nib

    files = _source_files()
    arrays = {}
    affine = None
    for name, path in files.items():
        img = nib.load(str(path))
        arrays[name] = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=float)
    # nilearn's load_mni152_brain_mask rule: template / max > 0.2
    mask = (arrays["t1"] / arrays["t1"].max() > 0.2).astype(np.float32)
    maps = np.stack([arrays["gm"] / 255.0, arrays["wm"] / 255.0, mask]).astype(np.float32)
    # brain bounding box in MNI mm (voxel edges)
    idx = np.argwhere(mask > 0)
    lo = affine[:3, :3] @ (idx.min(0) - 0.5) + affine[:3, 3]
    hi = affine[:3, :3] @ (idx.max(0) + 0.5) + affine[:3, 3]
    fov_lo = np.array([0.5 - FIELD_OF_VIEW_MM[0], -0.5, -0.5])
    fov_hi = fov_lo + np.array(FIELD_OF_VIEW_MM)
    t = np.empty(3)
    t[:2] = np.floor((lo[:2] + hi[:2]) / 2 - (fov_lo[:2] + fov_hi[:2]) / 2 + 0.5)
    t[2] = np.floor(hi[2] - (fov_hi[2] - _TOP_MARGIN_MM) + 0.5)
    return maps, affine, t, np.array([lo, hi])


def _box_matrix(centres: np.ndarray, width: float, n: int) -> np.ndarray:
    """(len(centres), n) weights: overlap of the target interval ``centre +- width/2`` with
    source voxel ``m`` (``m +- 0.5``), divided by ``width`` (exact partial-volume average)."""
    c = np.asarray(centres, dtype=np.float64)[:, None]
    m = np.arange(n, dtype=np.float64)[None, :]
    overlap = np.minimum(c + width / 2, m + 0.5) - np.maximum(c - width / 2, m - 0.5)
    return (np.clip(overlap, 0.0, None) / width).astype(np.float32)


def _tent_matrix(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) linear-interpolation weights of lattice nodes 0..n-1."""
    c = np.asarray(coords, dtype=np.float64)[:, None]
    m = np.arange(n, dtype=np.float64)[None, :]
    return np.clip(1.0 - np.abs(c - m), 0.0, None).astype(np.float32)


def _separable(volume: np.ndarray, mats: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Apply one matrix per spatial axis to ``volume (..., A, B, C)`` -> ``(..., A', B', C')``."""
    out = np.tensordot(volume, mats[0], axes=([-3], [1]))  # (..., B, C, A')
    out = np.tensordot(out, mats[1], axes=([-3], [1]))  # (..., C, A', B')
    out = np.tensordot(out, mats[2], axes=([-3], [1]))  # (..., A', B', C')
    return np.ascontiguousarray(out)


def _build_maps(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Tissue maps in the target grid: ``brain`` bool and normalised ``gm, wm, csf`` float32."""
    maps, src_affine, t, _ = _source_maps()
    affine = brats_affine(shape)
    mats = []
    for axis in range(3):
        # target voxel centres in source voxel coordinates (axis-aligned, 1 mm source)
        ras = affine[axis, axis] * np.arange(shape[axis]) + affine[axis, 3]
        src = (ras + t[axis] - src_affine[axis, 3]) / src_affine[axis, axis]
        mats.append(_box_matrix(src, abs(affine[axis, axis]), maps.shape[axis + 1]))
    gm, wm, frac = _separable(maps, tuple(mats))
    brain = frac >= 0.5
    gm = np.clip(gm, 0.0, None)
    wm = np.clip(wm, 0.0, None)
    csf = np.clip(frac - gm - wm, 0.0, None)
    total = gm + wm + csf
    total[total <= 0] = 1.0
    out = {"brain": brain}
    for name, m in (("gm", gm), ("wm", wm), ("csf", csf)):
        out[name] = np.where(brain, m / total, 0.0).astype(np.float32)
    return out


def tissue_maps(shape: tuple[int, int, int] = (240, 240, 155)) -> dict[str, np.ndarray]:
    """The anatomy every synthetic case of ``shape`` shares.

    Args:
        shape: (X, Y, Z) voxels of the grid (field of view 240 x 240 x 155 mm).

    Returns:
        ``brain``: bool (X, Y, Z) brain mask (the voxels that are non-zero in every image);
        ``gm``, ``wm``, ``csf``: float32 (X, Y, Z) tissue fractions, summing to 1 inside the
        brain and 0 outside.
    """
    atlas = _atlas(tuple(int(s) for s in shape))
    out = {"brain": atlas.index >= 0}
    for name in ("gm", "wm", "csf"):
        volume = np.zeros(atlas.shape, dtype=np.float32)
        volume.reshape(-1)[atlas.flat] = getattr(atlas, name)
        out[name] = volume
    return out


def _cache_dir() -> Path | None:
    env = os.environ.get("GLIOMACOMPARE_CACHE_DIR")
    if env is not None:
        return Path(env) / "synthetic" if env.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gliomacompare" / "synthetic"


def _source_key() -> str:
    parts = [GENERATOR_VERSION, _CACHE_FORMAT]
    for path in _source_files().values():
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _disk_cached(name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()`` with its arrays cached in an ``.npz`` under the user cache dir."""
    folder = _cache_dir()
    path = folder / f"{name}-{_source_key()}.npz" if folder else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except Exception as exc:  # a damaged cache file is rebuilt
            log.warning("ignoring unreadable cache file %s (%s)", path, exc)
    arrays = compute()
    if path is not None:
        try:
            with atomic_write(path, "wb", fsync=False) as handle:
                np.savez(handle, **arrays)
        except OSError as exc:
            log.info("cannot write cache file %s (%s); continuing without", path, exc)
    return arrays


@dataclass(frozen=True, eq=False)
class _Atlas:
    """Tissue maps of one grid, as flat arrays over the brain's voxels."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: np.ndarray
    flat: np.ndarray  # (Nb,) int64 C-order indices of brain voxels
    index: np.ndarray  # (X, Y, Z) int32: position in the flat arrays, -1 outside the brain
    ijk: tuple[np.ndarray, np.ndarray, np.ndarray]  # (Nb,) int32 voxel indices
    gm: np.ndarray  # (Nb,) float32 fractions, gm + wm + csf = 1
    wm: np.ndarray
    csf: np.ndarray


def _compact_maps(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The maps of :func:`_build_maps` as stored in the disk cache: the brain mask bit-packed
    and the tissue fractions of brain voxels quantised to uint16 (steps of 1/65535)."""
    maps = _build_maps(shape)
    brain = maps["brain"].reshape(-1)
    out = {"brain": np.packbits(brain)}
    for name in ("gm", "wm", "csf"):
        out[name] = np.rint(maps[name].reshape(-1)[brain] * 65535.0).astype(np.uint16)
    return out


@lru_cache(maxsize=4)
def _atlas(shape: tuple[int, int, int]) -> _Atlas:
    x, y, z = shape
    maps = _disk_cached(f"atlas-{x}x{y}x{z}", lambda: _compact_maps(shape))
    brain = np.unpackbits(maps["brain"], count=x * y * z).astype(bool)
    flat = np.flatnonzero(brain)
    index = np.full(shape, -1, dtype=np.int32)
    index.reshape(-1)[flat] = np.arange(flat.size, dtype=np.int32)
    ijk = tuple(a.astype(np.int32) for a in np.unravel_index(flat, shape))
    affine = brats_affine(shape)
    fractions = {k: (maps[k].astype(np.float32) / 65535.0) for k in ("gm", "wm", "csf")}
    if any(v.size != flat.size for v in fractions.values()):
        raise ValueError(f"synthetic atlas cache for shape {shape} is inconsistent")
    return _Atlas(
        shape=shape,
        affine=affine,
        spacing=np.linalg.norm(affine[:3, :3], axis=0),
        flat=flat,
        index=index,
        ijk=ijk,  # type: ignore[arg-type]
        **fractions,
    )


def _compute_candidates() -> dict[str, np.ndarray]:
    from scipy import ndimage

    maps = _build_maps(_REFERENCE_SHAPE)
    affine = brats_affine(_REFERENCE_SHAPE)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    depth = ndimage.distance_transform_edt(maps["brain"], sampling=spacing)
    t = _source_maps()[2]
    idx = np.argwhere(maps["brain"])
    ras = idx @ affine[:3, :3].T + affine[:3, 3]
    mni = ras + t
    keep = (
        (maps["wm"][tuple(idx.T)] >= 0.55)
        & (depth[tuple(idx.T)] >= _MIN_DEPTH_MM)
        & (mni[:, 2] >= -10.0)  # supratentorial
        & (np.abs(mni[:, 0]) >= 8.0)  # hemispheric, off the midline
    )
    return {"ras": ras[keep], "depth": depth[tuple(idx[keep].T)], "spacing": spacing}


@lru_cache(maxsize=1)
def _candidates() -> dict[str, np.ndarray]:
    """Where tumour centres may be: RAS (N, 3) of hemispheric white-matter voxels of a 4 mm
    reference grid, and their depth inside the brain (mm)."""
    return _disk_cached("placement", _compute_candidates)


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _draw_tumour(grade: str, config: SynthConfig, rng: np.random.Generator) -> dict:
    """Tumour parameters in mm (independent of the output grid)."""
    if grade == "HGG":
        kind = "rim" if rng.random() < config.hgg_rim_probability else "none"
        radius = rng.uniform(10.0, 26.0)
        core_amp = rng.uniform(0.08, 0.2)
        edema = rng.uniform(1.4, 2.3)
        texture = rng.uniform(0.06, 0.16)
    else:
        kind = "faint" if rng.random() < config.lgg_faint_enhancement_probability else "none"
        radius = rng.uniform(11.0, 27.0)
        core_amp = rng.uniform(0.05, 0.15)
        edema = rng.uniform(1.15, 1.7)
        texture = rng.uniform(0.03, 0.1)
    ratios = np.exp(rng.normal(0.0, 0.2, 3))
    ratios /= np.prod(ratios) ** (1 / 3)
    axes = radius * ratios
    edema = min(edema, max(1.05, _MAX_EDEMA_RADIUS_MM / axes.max()))
    params = {
        "enhancement": kind,
        "core_mean_radius_mm": radius,
        "core_semi_axes_mm": axes,
        "rotation": _rotation(rng),
        "core_irregularity": core_amp,
        "core_correlation_mm": rng.uniform(6.0, 10.0),
        "edema_extent": edema,
        "edema_irregularity": rng.uniform(0.1, 0.2),
        "edema_correlation_mm": rng.uniform(8.0, 14.0),
        "edema_strength": rng.uniform(0.75, 1.0),
        "texture_amplitude": texture,
        "rim_thickness_mm": rng.uniform(2.0, 5.0) if kind == "rim" else None,
        "rim_strength": rng.uniform(0.8, 1.2) if kind == "rim" else None,
        "faint_radius_mm": rng.uniform(3.0, 6.0) if kind == "faint" else None,
        "faint_strength": rng.uniform(0.2, 0.4) if kind == "faint" else None,
        "faint_offset": rng.normal(size=3) if kind == "faint" else None,
        "faint_offset_fraction": rng.uniform(0.0, 0.5) if kind == "faint" else None,
    }
    cand = _candidates()
    need = max(_MIN_DEPTH_MM, 0.6 * axes.max())
    ok = np.flatnonzero(cand["depth"] >= need)
    if ok.size == 0:
        ok = np.flatnonzero(cand["depth"] >= cand["depth"].max() - 1e-6)
    pick = ok[rng.integers(ok.size)]
    jitter = rng.uniform(-0.5, 0.5, 3) * cand["spacing"]
    params["centre_ras_mm"] = cand["ras"][pick] + jitter
    return params


def _draw_intensity(rng: np.random.Generator) -> dict:
    out = {}
    for m in _MODALITIES:
        nominal = TISSUE_INTENSITIES[m]
        tissue = {}
        for name, value in nominal.items():
            spread = 0.05 if name in ("csf", "gm", "wm") else 0.08
            tissue[name] = float(value * math.exp(rng.normal(0.0, spread)))
        out[m] = {
            "tissue": tissue,
            "scale": float(math.exp(rng.uniform(math.log(0.7), math.log(1.5)))),
            "noise_fraction": float(rng.uniform(0.015, 0.05)),
            # bias field: per axis exp(c1 * u + c2 * (u^2 - 1/3)), u in [-1, 1] over the FOV
            "bias": rng.normal(0.0, 1.0, (3, 2)) * np.array([0.1, 0.06]),
        }
    return out


def _soft(level: np.ndarray, threshold, width: float) -> np.ndarray:
    """Fraction of a voxel inside ``level < threshold`` with a linear ramp ``width`` wide."""
    return np.clip((threshold - level) / width + 0.5, 0.0, 1.0)


def _tumour(params: dict, atlas: _Atlas, rng_lattice: np.random.Generator):
    """Labels and compartment weights in a box around the tumour.

    Returns:
        (box slices, labels uint8 in the box (0 / "ncr" / "ed" / "et" as 1/2/3 codes),
         positions (Nt,) into the atlas' flat arrays, weights dict of (Nt,) float32).
    """
    centre = np.asarray(params["centre_ras_mm"], dtype=np.float64)
    axes = np.asarray(params["core_semi_axes_mm"], dtype=np.float64)
    rot = np.asarray(params["rotation"], dtype=np.float64)
    extent = (
        axes.max() * params["edema_extent"] * math.exp(_NOISE_CLIP * params["edema_irregularity"])
    )
    extent = max(extent, axes.max() * math.exp(_NOISE_CLIP * params["core_irregularity"])) + 2.0

    # noise lattice (shape-independent): 4 fields = core, edema, rim, texture
    n = math.ceil(2 * (extent + _LATTICE_MM) / _LATTICE_MM) + 1
    origin = centre - (extent + _LATTICE_MM)
    fields = _noise_fields(params, n, rng_lattice)

    # the voxel box that can hold tumour, and the noise sampled on its voxels
    box, coords = _tumour_box(atlas, centre, extent)
    mats = tuple(_tent_matrix((coords[a] - origin[a]) / _LATTICE_MM, n) for a in range(3))
    n_core, n_edema, n_rim, n_tex = _separable(fields.astype(np.float32), mats)
    d = [(coords[a] - centre[a]).astype(np.float32) for a in range(3)]
    q = _ellipsoid_radius(d, rot, axes, n_core.shape)

    pos = atlas.index[box]
    inside = pos >= 0
    wm = np.zeros(q.shape, np.float32)
    csf = np.zeros(q.shape, np.float32)
    wm[inside] = atlas.wm[pos[inside]]
    csf[inside] = atlas.csf[pos[inside]]

    step = float(atlas.spacing.max())
    core_level = q * np.exp(-params["core_irregularity"] * n_core)
    edema_level = q * np.exp(-params["edema_irregularity"] * n_edema) / params["edema_extent"]
    # oedema spreads along white matter and stays out of CSF
    edema_room = (0.7 + 0.3 * wm) * np.clip((0.75 - csf) / 0.3, 0.0, 1.0)
    radius = params["core_mean_radius_mm"]
    core_width = max(step, 1.5) / radius
    edema_width = max(step, 3.0) / (radius * params["edema_extent"])

    core = (core_level < 1.0) & inside
    edema = ((edema_level < edema_room) & inside) | core
    s_core = _soft(core_level, 1.0, core_width)
    s_edema = np.maximum(_soft(edema_level, edema_room, edema_width), s_core)
    enh, s_inner, patch_level = _enhancement(
        params, core, core_level, core_width, s_core, n_rim, d, step
    )

    # guarantees on any grid: a non-empty core, and the planned enhancement present
    if not core.any():
        nearest = np.unravel_index(np.argmin(np.where(inside, q, np.inf)), q.shape)
        core[nearest] = edema[nearest] = True
        s_core[nearest] = s_edema[nearest] = 1.0
    kind = params["enhancement"]
    if kind != "none" and not enh.any():
        target = core_level if kind == "rim" else -patch_level  # rim: outermost core voxel
        site = np.unravel_index(np.argmax(np.where(core, target, -np.inf)), q.shape)
        enh[site] = True
        s_inner[site] = 0.0 if kind == "rim" else s_core[site]
    if kind == "rim":
        s_inner[enh] = np.minimum(s_inner[enh], 0.4)

    codes = np.zeros(core.shape, dtype=np.uint8)  # 1 ncr/net, 2 oedema, 3 enhancing
    codes[edema] = 2
    codes[core] = 1
    codes[enh] = 3

    sel = inside & (s_edema > 0)
    weights = _tumour_weights(params, edema_level, s_edema, s_core, s_inner, n_tex, sel)
    return box, codes, pos[sel], weights


def _noise_fields(params: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Four smooth unit-variance noise fields ``(4, n, n, n)`` on the lattice (core, edema, rim,
    texture), clipped to +-:data:`_NOISE_CLIP`."""
    from scipy import ndimage

    fields = rng.standard_normal((4, n, n, n))
    sigmas = (
        params["core_correlation_mm"],
        params["edema_correlation_mm"],
        8.0,
        3.0,
    )
    for f, sigma in enumerate(sigmas):
        fields[f] = ndimage.gaussian_filter(fields[f], sigma / _LATTICE_MM / 2.0, mode="wrap")
        fields[f] /= fields[f].std() or 1.0
    np.clip(fields, -_NOISE_CLIP, _NOISE_CLIP, out=fields)
    return fields


def _tumour_box(atlas: _Atlas, centre: np.ndarray, extent: float):
    """(voxel box slices, RAS mm coordinates of the box's voxels along each axis)."""
    affine = atlas.affine
    inv = np.linalg.inv(affine)  # diagonal: the box's corners map to voxel corners
    ends = np.array([centre - extent, centre + extent]) @ inv[:3, :3].T + inv[:3, 3]
    lo = np.clip(np.floor(ends.min(0)).astype(int), 0, np.array(atlas.shape) - 1)
    hi = np.clip(np.ceil(ends.max(0)).astype(int) + 1, 1, np.array(atlas.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    coords = [affine[a, a] * np.arange(lo[a], hi[a]) + affine[a, 3] for a in range(3)]  # RAS mm
    return box, coords


def _ellipsoid_radius(d, rot: np.ndarray, axes: np.ndarray, shape) -> np.ndarray:
    """Ellipsoidal radius (1 on the core ellipsoid's surface) at each box voxel, float32."""
    q2 = np.zeros(shape, dtype=np.float32)
    for k in range(3):
        u = (
            rot[0, k] * d[0][:, None, None]
            + rot[1, k] * d[1][None, :, None]
            + rot[2, k] * d[2][None, None, :]
        ) / axes[k]
        q2 += u * u
    return np.sqrt(q2)


def _enhancement(params: dict, core, core_level, core_width: float, s_core, n_rim, d, step: float):
    """(enhancing voxels, soft weight of the core's inner part (necrosis or faint patch), the
    faint patch's level or None) for the tumour's enhancement kind (rim, faint or none)."""
    s_inner = np.zeros_like(s_core)  # necrosis (rim) or faint patch, within the core
    enh = np.zeros(core.shape, dtype=bool)
    patch_level = None
    kind = params["enhancement"]
    radius = params["core_mean_radius_mm"]
    if kind == "rim":
        thick = max(params["rim_thickness_mm"], 1.5 * step)
        inner = 1.0 - thick / radius * np.exp(0.35 * n_rim)
        necrosis = core & (core_level < inner)
        enh = core & ~necrosis
        s_inner = np.minimum(_soft(core_level, inner, core_width), s_core)
    elif kind == "faint":
        off = np.asarray(params["faint_offset"], dtype=np.float64)
        off = off / (np.linalg.norm(off) or 1.0) * params["faint_offset_fraction"] * radius
        r_patch = max(params["faint_radius_mm"], 0.9 * step)
        pd2 = (
            (d[0] - off[0])[:, None, None] ** 2
            + (d[1] - off[1])[None, :, None] ** 2
            + (d[2] - off[2])[None, None, :] ** 2
        )
        patch_level = np.sqrt(pd2) / r_patch
        enh = core & (patch_level < 1.0)
        s_inner = np.minimum(_soft(patch_level, 1.0, max(step, 1.5) / r_patch), s_core)
    return enh, s_inner, patch_level


def _tumour_weights(params: dict, edema_level, s_edema, s_core, s_inner, n_tex, sel) -> dict:
    """Compartment weights ``(Nt,)`` float32 of the selected voxels."""
    # oedema is stronger near the core
    ext = params["edema_extent"]
    near = np.clip(1.0 - (edema_level * ext - 1.0) / (ext - 1.0 + 1e-6), 0.0, 1.0)
    weights = {
        "edema": (s_edema - s_core)[sel],
        "core": s_core[sel],
        "inner": s_inner[sel],
        "edema_gain": (params["edema_strength"] * (0.65 + 0.35 * near))[sel],
        "texture": 1.0 + params["texture_amplitude"] * n_tex[sel],
        "edema_texture": 1.0 + 0.5 * params["texture_amplitude"] * n_tex[sel],
    }
    return {k: v.astype(np.float32) for k, v in weights.items()}


def _bias(atlas: _Atlas, coeffs: np.ndarray) -> np.ndarray:
    out = np.ones(atlas.flat.size, dtype=np.float32)
    for a in range(3):
        u = (np.arange(atlas.shape[a]) + 0.5) / atlas.shape[a] * 2.0 - 1.0
        factor = np.exp(coeffs[a, 0] * u + coeffs[a, 1] * (u * u - 1.0 / 3.0)).astype(np.float32)
        out *= factor[atlas.ijk[a]]
    return out


def _label_values(conv: Convention) -> dict[str, int]:
    """Label values of necrotic/non-enhancing core, oedema and enhancing tumour, from the
    convention's region definitions (ET; TC - ET; WT - TC).

    Raises:
        ValueError: when a region difference is not exactly one label value.
    """
    parts = {
        "ncr": set(conv.regions["TC"]) - set(conv.regions["ET"]),
        "ed": set(conv.regions["WT"]) - set(conv.regions["TC"]),
        "et": set(conv.regions["ET"]),
    }
    for name, values in parts.items():
        if len(values) != 1:
            raise ValueError(
                f"convention {conv.name}: cannot tell the {name} label for synthetic cases "
                f"(region difference holds {sorted(values)})"
            )
    return {name: int(next(iter(values))) for name, values in parts.items()}


def _r(values, digits: int = 3):
    """Round floats (and arrays / nested lists) for JSON."""
    if isinstance(values, dict):
        return {k: _r(v, digits) for k, v in values.items()}
    if isinstance(values, (list, tuple, np.ndarray)):
        return [_r(v, digits) for v in np.asarray(values, dtype=float).tolist()]
    if values is None or isinstance(values, (str, bool)):
        return values
    return round(float(values), digits)


def generate_case(index: int, config: SynthConfig, grade: str | None = None) -> SyntheticCase:
    """Make case ``index`` (0-based) of the cohort described by ``config``, in memory.

    Args:
        index: 0-based position; the case id is ``BraTS20_Training_{index + 1:03d}``.
        config: the cohort configuration (shape, seed, grade mix ...).
        grade: ``"HGG"`` / ``"LGG"`` to override the cohort's grade list (then ``index`` may be
            beyond ``config.cases``).

    Returns:
        The case: int16 volumes (X, Y, Z), uint8 label map, affine and ground truth.

    Raises:
        ValueError: for an index outside the cohort (without ``grade``) or an unknown grade.
    """
    if grade is None:
        if not 0 <= index < config.cases:
            raise ValueError(f"case index {index} is outside the cohort of {config.cases} cases")
        grade = cohort_grades(config)[index]
    if grade not in ("HGG", "LGG"):
        raise ValueError(f"grade must be 'HGG' or 'LGG' (got {grade!r})")
    if index < 0:
        raise ValueError(f"case index must be >= 0 (got {index})")
    conv = load_convention("brats2020")
    values = _label_values(conv)
    atlas = _atlas(config.shape)
    seed = config.seed

    params = _draw_tumour(grade, config, np.random.default_rng([seed, index, _STREAM_TUMOUR]))
    intensity = _draw_intensity(np.random.default_rng([seed, index, _STREAM_INTENSITY]))
    box, codes, pos, w = _tumour(
        params, atlas, np.random.default_rng([seed, index, _STREAM_LATTICE])
    )

    label = np.zeros(config.shape, dtype=np.uint8)
    lut = np.array([0, values["ncr"], values["ed"], values["et"]], dtype=np.uint8)
    label[box] = lut[codes]

    rng_noise = np.random.default_rng([seed, index, _STREAM_NOISE])
    kind = params["enhancement"]
    volumes = {}
    for m in _MODALITIES:
        p = intensity[m]
        tis = p["tissue"]
        signal = atlas.gm * tis["gm"] + atlas.wm * tis["wm"] + atlas.csf * tis["csf"]
        normal = signal[pos]
        edema_signal = normal + (tis["edema"] - normal) * w["edema_gain"]
        edema_signal *= w["edema_texture"]
        if kind == "rim":
            enh = tis["core"] + (tis["enhancing"] - tis["core"]) * params["rim_strength"]
            core_mix = w["inner"] * tis["necrosis"] + (w["core"] - w["inner"]) * enh
        elif kind == "faint":
            faint = tis["core"] + (tis["enhancing"] - tis["core"]) * params["faint_strength"]
            core_mix = w["inner"] * faint + (w["core"] - w["inner"]) * tis["core"]
        else:
            core_mix = w["core"] * tis["core"]
        outside = 1.0 - w["edema"] - w["core"]
        signal[pos] = outside * normal + w["edema"] * edema_signal + core_mix * w["texture"]
        signal *= _bias(atlas, p["bias"])
        sigma = p["noise_fraction"] * tis["wm"]
        re = signal + sigma * rng_noise.standard_normal(signal.size, dtype=np.float32)
        im = sigma * rng_noise.standard_normal(signal.size, dtype=np.float32)
        value = np.sqrt(re * re + im * im) * p["scale"]
        vol = np.zeros(config.shape, dtype=np.int16)
        vol.reshape(-1)[atlas.flat] = np.clip(np.rint(value), 1, 32767).astype(np.int16)
        volumes[m] = vol

    truth = _truth(index, grade, params, intensity, label, atlas, conv, values)
    return SyntheticCase(
        case_id=case_id_for(index),
        index=index,
        grade=grade,
        volumes=volumes,
        label=label,
        affine=atlas.affine.copy(),
        truth=truth,
    )


def _truth(index, grade, params, intensity, label, atlas, conv, values) -> dict:
    affine = atlas.affine
    centre = np.asarray(params["centre_ras_mm"])
    t = _source_maps()[2]
    voxel = np.linalg.solve(affine, np.append(centre, 1.0))[:3]
    voxel_ml = float(np.prod(atlas.spacing)) / 1000.0
    counts = {name: int(np.count_nonzero(label == v)) for name, v in values.items()}
    regions = {r: int(np.count_nonzero(np.isin(label, v))) for r, v in conv.regions.items()}
    wt = np.argwhere(label > 0)
    centroid = wt.mean(0) if wt.size else np.full(3, np.nan)
    measured = {
        "voxels": {str(values[k]): counts[k] for k in ("ncr", "ed", "et")},
        "volume_ml": {
            conv.label_name(values[k]): round(counts[k] * voxel_ml, 3) for k in ("ncr", "ed", "et")
        }
        | {r: round(n * voxel_ml, 3) for r, n in regions.items()},
        "enhancing_present": counts["et"] > 0,
        "wt_centroid_voxel": _r(centroid),
        "wt_centroid_ras_mm": _r(affine[:3, :3] @ centroid + affine[:3, 3]),
        "wt_bbox_voxel": [wt.min(0).tolist(), wt.max(0).tolist()] if wt.size else None,
        "axial_slices_with_tumour": int(np.count_nonzero(label.any(axis=(0, 1)))),
    }
    tumour = {
        "centre_ras_mm": _r(centre),
        "centre_voxel": _r(voxel),
        "centre_mni_mm": _r(centre + t),
        "hemisphere": "right" if centre[0] + t[0] > 0 else "left",
        "core_mean_radius_mm": _r(params["core_mean_radius_mm"]),
        "core_semi_axes_mm": _r(params["core_semi_axes_mm"]),
        "rotation": [_r(row, 5) for row in params["rotation"]],
        "core_irregularity": _r(params["core_irregularity"]),
        "edema_extent": _r(params["edema_extent"]),
        "edema_irregularity": _r(params["edema_irregularity"]),
        "texture_amplitude": _r(params["texture_amplitude"]),
        "rim_thickness_mm": _r(params["rim_thickness_mm"]),
        "rim_strength": _r(params["rim_strength"]),
        "faint_radius_mm": _r(params["faint_radius_mm"]),
        "faint_strength": _r(params["faint_strength"]),
    }
    return {
        "case_id": case_id_for(index),
        "index": index,
        "grade": grade,
        "enhancement": params["enhancement"],
        "tumour": tumour,
        "intensity": {
            m: {
                "scale": _r(p["scale"], 4),
                "noise_sigma": _r(p["noise_fraction"] * p["tissue"]["wm"] * p["scale"]),
                "bias_coefficients": [_r(row, 4) for row in p["bias"]],
                "tissue": _r(p["tissue"], 1),
            }
            for m, p in intensity.items()
        },
        "measured": measured,
    }


# --------------------------------------------------------------------------------------------
# Writing a cohort
# --------------------------------------------------------------------------------------------


def _case_files(data_dir: Path, case_id: str, ext: str, conv: Convention) -> dict[str, Path]:
    folder = data_dir / case_id
    files = {
        ch: folder / f"{conv.file_stem(case_id, conv.modality_keys[ch])}{ext}"
        for ch in conv.channels
    }
    files["label"] = folder / f"{conv.file_stem(case_id, conv.label_key)}{ext}"
    return files


def write_case(case: SyntheticCase, data_dir: str | Path, ext: str = ".nii.gz") -> dict[str, Path]:
    """Write one case's five files into ``data_dir/<case_id>/`` (each atomically).

    Returns:
        channel / ``"label"`` -> path written.
    """
    conv = load_convention("brats2020")
    files = _case_files(Path(data_dir), case.case_id, ext, conv)
    for ch in conv.channels:
        write_nifti(files[ch], case.volumes[ch], case.affine)
    write_nifti(files["label"], case.label, case.affine)
    return files


def _make_one(index: int, config: SynthConfig, data_dir: Path) -> tuple[int, dict, float, float]:
    start = time.perf_counter()
    case = generate_case(index, config)
    made = time.perf_counter()
    write_case(case, data_dir, config.ext)
    return index, case.truth, made - start, time.perf_counter() - made


def _manifest(config: SynthConfig, truths: dict[int, dict], complete: bool) -> dict:
    conv = load_convention("brats2020")
    _, _, t, bbox = _source_maps()
    values = _label_values(conv)
    affine = brats_affine(config.shape)
    return {
        "generator": "GliomaCompareLib.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "gliomacompare_version": __version__,
        "complete": complete,
        "config": config.to_dict(),
        "convention": conv.name,
        "label_values": {conv.label_name(v): v for v in values.values()},
        "geometry": {
            "shape": list(config.shape),
            "spacing_mm": _r(config.spacing, 6),
            "affine": affine.tolist(),
            "field_of_view_mm": list(FIELD_OF_VIEW_MM),
            "note": "SRI24 / BraTS orientation: i right->left, j anterior->posterior, "
            "k inferior->superior",
        },
        "anatomy": {
            "source": "MNI152 2009c nonlinear symmetric template and GM/WM maps shipped with "
            "nilearn (mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz)",
            "brain_mask": "template > 0.2 x max (nilearn's load_mni152_brain_mask rule)",
            "csf": "brain minus grey matter minus white matter",
            "mni_mm_equals_ras_mm_plus": t.tolist(),
            "brain_bbox_mni_mm": bbox.tolist(),
        },
        "contrast": TISSUE_INTENSITIES,
        "grades": {"HGG": config.hgg_count, "LGG": config.cases - config.hgg_count},
        "cases": [truths[i] for i in sorted(truths)],
    }


def _write_name_mapping(data_dir: Path, grades: tuple[str, ...]) -> None:
    rows = [
        dict(
            zip(NAME_MAPPING_COLUMNS, (grade, "NA", "NA", "NA", "NA", case_id_for(i)), strict=True)
        )
        for i, grade in enumerate(grades)
    ]
    write_csv(data_dir / "name_mapping.csv", NAME_MAPPING_COLUMNS, rows)


def _resumable(data_dir: Path, config: SynthConfig) -> dict[int, dict]:
    """Truth of finished cases from an earlier run with the same configuration."""
    manifest_path = data_dir / "synthetic.json"
    if not manifest_path.is_file():
        if any(data_dir.glob("BraTS20_*")):
            raise ValueError(
                f"{data_dir} already holds case folders but no synthetic.json, so it is not a "
                "synthetic cohort made by this tool; refusing to write into it (choose another "
                "output folder)"
            )
        return {}
    try:
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{manifest_path}: unreadable ({exc}); delete the folder or choose another"
        ) from exc
    if old.get("generator_version") != GENERATOR_VERSION or old.get("config") != config.to_dict():
        raise ValueError(
            f"{data_dir} holds a synthetic cohort made with another configuration or generator "
            f"version ({old.get('config')}, version {old.get('generator_version')}); choose "
            "another output folder or delete this one"
        )
    conv = load_convention("brats2020")
    done = {}
    for truth in old.get("cases", []):
        files = _case_files(data_dir, truth["case_id"], config.ext, conv)
        if all(p.is_file() for p in files.values()):
            done[int(truth["index"])] = truth
    return done


def write_cohort(
    out: str | Path, config: SynthConfig, *, jobs: int = 1, progress: bool = False
) -> Path:
    """Write a synthetic cohort in BraTS 2020 layout under ``out``.

    Args:
        out: output folder; ``out/MICCAI_BraTS2020_TrainingData`` is created in it.
        config: what to make.
        jobs: processes (cases are independent, so the files do not depend on ``jobs``).
        progress: print one line per finished case to stderr.

    Returns:
        The data folder ``out/MICCAI_BraTS2020_TrainingData``.

    Raises:
        ValueError: when the data folder holds a different cohort or non-synthetic cases.
    """
    data_dir = Path(out) / DATA_DIR_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    truths = _resumable(data_dir, config)
    grades = cohort_grades(config)
    todo = [i for i in range(config.cases) if i not in truths]
    manifest_path = data_dir / "synthetic.json"

    def finished(index: int, truth: dict, t_gen: float, t_write: float) -> None:
        truths[index] = truth
        atomic_write_text(manifest_path, json.dumps(_manifest(config, truths, False)))
        if progress:
            print(
                f"synth: {len(truths)}/{config.cases} {case_id_for(index)} {grades[index]} "
                f"(made in {t_gen:.2f} s, written in {t_write:.2f} s)",
                file=sys.stderr,
                flush=True,
            )

    if progress and len(truths):
        print(f"synth: resuming, {len(truths)} cases already in {data_dir}", file=sys.stderr)
    from scipy import ndimage  # noqa: F401  (imported here, not timed in the first case)

    _atlas(config.shape)  # build once here; forked workers inherit it
    _candidates()
    jobs = max(1, min(int(jobs), len(todo)))
    if jobs == 1:
        for index in todo:
            finished(*_make_one(index, config, data_dir))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_make_one, i, config, data_dir) for i in todo]
            try:
                for future in as_completed(futures):
                    finished(*future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    _write_name_mapping(data_dir, grades)
    atomic_write_text(manifest_path, json.dumps(_manifest(config, truths, True), indent=1))
    return data_dir
