"""BraTS data: conventions, discovery, validation, loading, regions, slices, synthetic cohorts."""

from GliomaCompareLib.data.case import Case, CaseLoadError, load_case
from GliomaCompareLib.data.conventions import REGIONS, Convention, load_convention
from GliomaCompareLib.data.discovery import CaseRecord, Cohort, discover_cases
from GliomaCompareLib.data.io import ImageMeta, ImageReadError, read_image, write_nifti
from GliomaCompareLib.data.regions import labels_from_regions, region_mask, region_masks
from GliomaCompareLib.data.slices import (
    SliceGeometry,
    SliceImage,
    SliceRule,
    WindowSpec,
    case_slices,
    select_slices,
)

__all__ = [
    "REGIONS",
    "Case",
    "CaseLoadError",
    "CaseRecord",
    "Cohort",
    "Convention",
    "ImageMeta",
    "ImageReadError",
    "SliceGeometry",
    "SliceImage",
    "SliceRule",
    "WindowSpec",
    "case_slices",
    "discover_cases",
    "labels_from_regions",
    "load_case",
    "load_convention",
    "read_image",
    "region_mask",
    "region_masks",
    "select_slices",
    "write_nifti",
]
