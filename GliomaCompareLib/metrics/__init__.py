"""Evaluation core: segmentation, classification and consistency metrics, and folder scoring.

Every number in the final comparison comes from here. Nothing heavy is imported at package import
(scipy is imported inside the functions that need it).
"""

from GliomaCompareLib.metrics.classification import (
    ClassificationReport,
    McNemarResult,
    auc_score,
    classification_report,
    mcnemar,
)
from GliomaCompareLib.metrics.consistency import (
    AgreementResult,
    SpreadResult,
    agreement,
    box_iou,
    box_iou_spread,
    fleiss_kappa,
    label_entropy,
    point_dispersion_mm,
    polygon_iou_spread,
)
from GliomaCompareLib.metrics.segmentation import (
    RegionScore,
    dice,
    hausdorff,
    image_diagonal_mm,
    score_label_maps,
    score_masks,
    surface_distances,
)

__all__ = [
    "AgreementResult",
    "ClassificationReport",
    "McNemarResult",
    "RegionScore",
    "SpreadResult",
    "agreement",
    "auc_score",
    "box_iou",
    "box_iou_spread",
    "classification_report",
    "dice",
    "fleiss_kappa",
    "hausdorff",
    "image_diagonal_mm",
    "label_entropy",
    "mcnemar",
    "point_dispersion_mm",
    "polygon_iou_spread",
    "score_label_maps",
    "score_masks",
    "surface_distances",
]
