"""Evaluation core: segmentation, classification and consistency metrics, statistics (intervals,
paired tests, ROC, calibration, decision thresholds, centre collapse), and folder scoring.

Every number in the final comparison comes from here. Nothing heavy is imported at package import
(scipy is imported inside the functions that need it).
"""

from GliomaCompareLib.metrics.calibration import ReliabilityBins, brier_score, reliability_bins
from GliomaCompareLib.metrics.classification import (
    ClassificationReport,
    McNemarResult,
    accuracy,
    auc_score,
    balanced_accuracy,
    classification_report,
    drop_missing_scores,
    encode_truth,
    mcnemar,
)
from GliomaCompareLib.metrics.collapse import CollapseResult, centre_collapse
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
from GliomaCompareLib.metrics.decisions import (
    ThresholdChoice,
    VoteShare,
    choose_threshold_youden,
    vote_share,
)
from GliomaCompareLib.metrics.intervals import clopper_pearson_interval, wilson_interval
from GliomaCompareLib.metrics.paired import (
    PairedDifference,
    WilcoxonResult,
    mcnemar_vs_majority,
    paired_bootstrap_difference,
    wilcoxon_paired,
)
from GliomaCompareLib.metrics.roc import AucWithCount, RocCurve, auc_with_count, roc_curve_points
from GliomaCompareLib.metrics.sample_size import small_test_set_warning
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
    "AucWithCount",
    "ClassificationReport",
    "CollapseResult",
    "McNemarResult",
    "PairedDifference",
    "RegionScore",
    "ReliabilityBins",
    "RocCurve",
    "SpreadResult",
    "ThresholdChoice",
    "VoteShare",
    "WilcoxonResult",
    "accuracy",
    "agreement",
    "auc_score",
    "auc_with_count",
    "balanced_accuracy",
    "box_iou",
    "box_iou_spread",
    "brier_score",
    "centre_collapse",
    "choose_threshold_youden",
    "classification_report",
    "clopper_pearson_interval",
    "dice",
    "drop_missing_scores",
    "encode_truth",
    "fleiss_kappa",
    "hausdorff",
    "image_diagonal_mm",
    "label_entropy",
    "mcnemar",
    "mcnemar_vs_majority",
    "paired_bootstrap_difference",
    "point_dispersion_mm",
    "polygon_iou_spread",
    "reliability_bins",
    "roc_curve_points",
    "score_label_maps",
    "score_masks",
    "small_test_set_warning",
    "surface_distances",
    "vote_share",
    "wilcoxon_paired",
    "wilson_interval",
]
