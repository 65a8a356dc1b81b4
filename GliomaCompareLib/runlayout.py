"""The run folder's layout and the columns of its metric tables, in one place.

``gliomacompare run CONFIG --out RUN`` writes::

    RUN/
      manifest.json            versions, config, seeds, git revision, model ids, adapters, device
      run.log                  the log of every invocation
      splits.json              the patient-level split every arm used
      stages/<stage>/          each stage's own outputs and its completion marker (done.json)
      metrics/                 the tables below (CSV) and Markdown versions of the summaries
      cases/<case_id>/         Slicer-loadable results (see GliomaCompareLib.slicer_files)
        ground_truth.seg.nrrd, cnn.seg.nrrd, vlm_point.mrk.json, vlm_box.mrk.json,
        vlm_polygon.mrk.json (and *_finetuned.mrk.json), metrics.json, gallery.npz
      report.html              one self-contained file (figures embedded)

Methods are named ``cnn``, ``vlm_base`` and ``vlm_finetuned``; ``majority`` is the
majority-class baseline on the same patients. A run that compares several VLMs (``vlms:`` in its
config, each entry with a short ``name``) names each VLM's methods ``vlm_base-<name>`` and
``vlm_finetuned-<name>`` (:func:`vlm_method`); their stages are ``vlm-base-<name>``,
``vlm-finetune-<name>`` and ``vlm-finetuned-<name>`` (each with its own answer cache), their
case markups ``vlm_<task>_base-<name>.mrk.json`` / ``vlm_<task>_finetuned-<name>.mrk.json``. A run with
one ``vlm:`` section keeps the unnamed ids above. :func:`is_vlm_method`, :func:`vlm_methods_in`
and :func:`method_label` read any of them, so the report lists whatever VLMs a run holds. Every table row carries ``model``, which names what
produced it (and says "tiny random-weight model" when it was the tiny VLM).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from GliomaCompareLib.fileio import atomic_write
from GliomaCompareLib.metrics.localisation import LOCALISATION_COLUMNS

__all__ = [
    "CASES_DIR",
    "CASE_GALLERY_FILE",
    "CASE_METRICS_FILE",
    "CNN_SEG_FILE",
    "GT_SEG_FILE",
    "LOG_FILE",
    "MANIFEST_FILE",
    "METHODS",
    "METHOD_LABELS",
    "METRICS_DIR",
    "REPORT_FILE",
    "SPLITS_FILE",
    "TABLES",
    "TEXT_COLUMNS",
    "VLM_BOX_FILE",
    "VLM_NAME_PATTERN",
    "VLM_POINT_FILE",
    "VLM_POLYGON_FILE",
    "is_finetuned_method",
    "is_vlm_method",
    "method_label",
    "read_table",
    "vlm_markup_variant",
    "vlm_method",
    "vlm_methods_in",
    "vlm_name_of",
    "write_table",
]

# --- the run folder's names (the run, the report and the Slicer module all use these) --------
REPORT_FILE = "report.html"
LOG_FILE = "run.log"
SPLITS_FILE = "splits.json"
#: Run manifest.
MANIFEST_FILE = "manifest.json"
#: Folder of CSV tables inside a run folder.
METRICS_DIR = "metrics"
#: Folder of per-case results inside a run folder (one sub-folder per case).
CASES_DIR = "cases"
#: CNN segmentation of one case (segments by region).
CNN_SEG_FILE = "cnn.seg.nrrd"
#: Ground truth of one case (segments by label).
GT_SEG_FILE = "ground_truth.seg.nrrd"
#: VLM answers of one case: fiducials (one control point per slice), ROI(s), closed curve(s).
VLM_POINT_FILE = "vlm_point.mrk.json"
VLM_BOX_FILE = "vlm_box.mrk.json"
VLM_POLYGON_FILE = "vlm_polygon.mrk.json"
#: Per-case scores and predictions.
CASE_METRICS_FILE = "metrics.json"
CASE_GALLERY_FILE = "gallery.npz"

METHODS = ("cnn", "vlm_base", "vlm_finetuned")
METHOD_LABELS = {
    "cnn": "3D CNN",
    # the segmentation network before training (a baseline, not an arm of the comparison)
    "cnn_untrained": "3D CNN (untrained)",
    "vlm_base": "VLM (base)",
    "vlm_finetuned": "VLM (fine-tuned)",
    "majority": "Majority class (always the most frequent grade)",
}

#: A VLM's ``name`` in a ``vlms:`` run config (it becomes part of method ids, stage and file
#: names, so only lower-case letters, digits, ``_`` and ``-``).
VLM_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,39}"
_VLM_PREFIXES = {"vlm_base": False, "vlm_finetuned": True}


def vlm_method(name: str = "", finetuned: bool = False) -> str:
    """The method id of a VLM: ``vlm_base`` / ``vlm_finetuned`` for the unnamed VLM of a
    ``vlm:`` run config, ``vlm_base-<name>`` / ``vlm_finetuned-<name>`` for a ``vlms:`` entry."""
    prefix = "vlm_finetuned" if finetuned else "vlm_base"
    return f"{prefix}-{name}" if name else prefix


def _split_vlm(method: str) -> tuple[str, str] | None:
    prefix, _, name = str(method).partition("-")
    if prefix not in _VLM_PREFIXES or (_ and not name):
        return None
    return prefix, name


def is_vlm_method(method: str) -> bool:
    """True for a VLM's method id (``vlm_base``, ``vlm_finetuned-qwen``, ...)."""
    return _split_vlm(method) is not None


def is_finetuned_method(method: str) -> bool:
    """True for a fine-tuned VLM's method id."""
    parts = _split_vlm(method)
    return bool(parts and _VLM_PREFIXES[parts[0]])


def vlm_name_of(method: str) -> str:
    """The VLM name in a method id (``""`` for ``vlm_base`` / ``vlm_finetuned``)."""
    parts = _split_vlm(method)
    if parts is None:
        raise ValueError(f"{method!r} is not a VLM method id")
    return parts[1]


def vlm_markup_variant(method: str) -> str:
    """The ``variant`` of :func:`GliomaCompareLib.slicer_files.vlm_markup_file` for a VLM method:
    ``base``, ``finetuned``, ``base-<name>`` or ``finetuned-<name>``, so the files are
    ``vlm_point.mrk.json``, ``vlm_point_finetuned.mrk.json``, ``vlm_point_base-<name>.mrk.json``
    and ``vlm_point_finetuned-<name>.mrk.json`` (a ``vlm_point`` prefix still finds them all)."""
    name = vlm_name_of(method)
    kind = "finetuned" if is_finetuned_method(method) else "base"
    return kind if not name else f"{kind}-{name}"


def vlm_methods_in(methods: Iterable[str]) -> list[str]:
    """The VLM method ids among ``methods``, once each, in the order first seen (a table's rows,
    a run config's VLM list): the report's list of the run's VLMs."""
    out: list[str] = []
    for method in methods:
        if is_vlm_method(method) and method not in out:
            out.append(method)
    return out


def method_label(method: str) -> str:
    """A method's label for tables and figures: :data:`METHOD_LABELS`, else for a named VLM
    ``VLM <name> (base)`` / ``VLM <name> (fine-tuned)``, else the id itself."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    if is_vlm_method(method):
        kind = "fine-tuned" if is_finetuned_method(method) else "base"
        return f"VLM {vlm_name_of(method)} ({kind})"
    return str(method)


_CI = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")

#: table name -> columns (file ``metrics/<name>.csv``).
TABLES: dict[str, tuple[str, ...]] = {
    # one row per (method, decision rule) on the test patients (HGG positive); decision:
    # "fixed" (CNN P(HGG) >= 0.5, VLM majority vote with n_ties tied votes) or "val_threshold"
    # (a Youden threshold chosen on the validation patients, threshold_n_val of them);
    # threshold_on: the score a threshold applies to (p_hgg, or the VLM's vote_share / mean_p);
    # accuracy / sensitivity / specificity intervals are Wilson intervals, balanced accuracy
    # and AUC percentile-bootstrap ones; AUC on the auc_n patients with a score; mcnemar_vs_
    # majority_*: McNemar's test against always answering the majority grade (b: patients the
    # method gets right and the baseline wrong, c: the reverse)
    "classification": (
        "method",
        "decision",
        "model",
        "threshold",
        "threshold_on",
        "threshold_n_val",
        "n_ties",
        "n",
        "tp",
        "fp",
        "tn",
        "fn",
        "n_invalid",
        "accuracy",
        "precision",
        "sensitivity",
        "specificity",
        "f1",
        "balanced_accuracy",
        "auc",
        "auc_n",
        "brier",
        "majority_baseline_accuracy",
        *(f"{m}_ci_{end}" for m in _CI for end in ("low", "high")),
        "ci_level",
        "n_bootstrap",
        "mcnemar_vs_majority_b",
        "mcnemar_vs_majority_c",
        "mcnemar_vs_majority_p",
        "mcnemar_vs_majority_test",
    ),
    # one row per (case, method): the patient-level grade
    "grades": (
        "case_id",
        "method",
        "model",
        "grade_true",
        "grade_pred",
        "p_hgg",
        "n_slices",
        "votes_hgg",
        "votes_lgg",
        "votes_invalid",
        "seen_by_weights",
    ),
    # paired comparisons of methods on the same patients, under the same decision rule:
    # McNemar, and patient-bootstrap intervals of the differences A - B
    "comparisons": (
        "method_a",
        "method_b",
        "decision",
        "n",
        "b",
        "c",
        "statistic",
        "p_value",
        "test",
        "accuracy_diff",
        "accuracy_diff_ci_low",
        "accuracy_diff_ci_high",
        "balanced_accuracy_diff",
        "balanced_accuracy_diff_ci_low",
        "balanced_accuracy_diff_ci_high",
        "n_bootstrap",
    ),
    # grading accuracy by reference whole-tumour volume (at most / above the median), one row
    # per (method, decision, size_group), Wilson intervals
    "grading_by_size": (
        "method",
        "decision",
        "model",
        "size_group",
        "median_wt_ml",
        "n",
        "n_lgg",
        "wt_ml_min",
        "wt_ml_max",
        "correct",
        "accuracy",
        "accuracy_ci_low",
        "accuracy_ci_high",
    ),
    # ROC curve points of each method's P(HGG) (the VLM's patient score), decision-independent,
    # on the n patients with a score; threshold: score >= threshold is called HGG (inf first)
    "roc": ("method", "model", "point", "n", "fpr", "tpr", "threshold"),
    # reliability-diagram bins of each method's P(HGG): bin_low < p <= bin_high
    "calibration": (
        "method",
        "model",
        "bin",
        "bin_low",
        "bin_high",
        "mean_predicted",
        "observed",
        "count",
    ),
    # one row per (case, method, task, region): 3D scores against the reference
    # task: "seg" for the CNN; "box" / "polygon" / "point" for a VLM (slice masks stacked in 3D,
    # scored against WT)
    "segmentation": (
        "case_id",
        "method",
        "model",
        "task",
        "region",
        "dice",
        "hd95",
        "hd_max",
        "pred_voxels",
        "ref_voxels",
        "empty_rule",
        "status",
        "seen_by_weights",
    ),
    # summary of the above: one row per (method, task, region)
    "segmentation_summary": (
        "method",
        "model",
        "task",
        "region",
        "n",
        "dice_mean",
        "dice_median",
        "dice_std",
        "hd95_mean",
        "hd95_median",
        "hd95_std",
    ),
    # like for like: one row per (VLM method, localisation task): per-slice Dice on the slices
    # the VLM was asked about (per patient first, then over patients, with a patient-bootstrap
    # CI), beside the CNN, the oracle answer of that kind and a trivial baseline on exactly those
    # slices, and the stacked 3D Dice beside its coverage ceiling (metrics.localisation)
    "localisation": ("method", "model", *LOCALISATION_COLUMNS[1:]),
    # mean Dice per patient group (grade HGG / LGG; tumour size at the median WT volume): the
    # CNN's 3D Dice per region (scope 3d), the VLM's per-slice Dice on the slices it saw (scope
    # slices) and the CNN's on those same slices (scope cnn_same_slices)
    "dice_by_group": (
        "method",
        "model",
        "task",
        "region",
        "scope",
        "group",
        "level",
        "n",
        "dice_mean",
        "dice_median",
    ),
    # the base VLM under the run's slice rule and each rule of `sensitivity.slice_rules`: one
    # grade row (voted accuracy) and one like-for-like row per localisation task, per rule
    "slice_sensitivity": (
        "slice_rule",
        "oracle",
        "model",
        "task",
        "n_patients",
        "accuracy",
        *(c for c in LOCALISATION_COLUMNS if c not in ("method", "task", "n_patients")),
    ),
    # one row per VLM answer on a slice (base and fine-tuned; consistency repeats included);
    # pred_cx/pred_cy (the answer's point, box centre or polygon centroid) and true_cx/true_cy
    # (centroid of the whole tumour on the slice) are pixel coordinates (x, y) = (col, row) of
    # the width x height slice image the VLM saw (GliomaCompareLib.geometry), empty when absent;
    # the report normalises them as u = (x + 0.5) / width, v = (y + 0.5) / height
    "slices": (
        "case_id",
        "slice_index",
        "method",
        "model",
        "task",
        "run",
        "status",
        "dice_2d",
        "hd95_2d",
        "point_inside",
        "point_dist_mm",
        "pred_cx",
        "pred_cy",
        "true_cx",
        "true_cy",
        "width",
        "height",
    ),
    # answer-format statuses: one row per (method, task, status)
    "answer_status": ("method", "model", "task", "status", "count", "fraction"),
    # repeated identical queries: one row per (method, task)
    "consistency": (
        "method",
        "model",
        "task",
        "level",
        "n_items",
        "runs",
        "temperature",
        "all_identical_rate",
        "fleiss_kappa",
        "mean_entropy",
        "iou_spread_mean",
        "point_dispersion_mm_mean",
    ),
}


def write_table(path: str | Path, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as the CSV table ``name`` (columns from :data:`TABLES`), atomically.

    Raises:
        KeyError: for an unknown table, or a row with a column the table does not have.
    """
    columns = TABLES[name]
    rows = list(rows)
    for row in rows:
        extra = set(row) - set(columns)
        if extra:
            raise KeyError(f"table {name}: unknown columns {sorted(extra)}")
    with atomic_write(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    return Path(path)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    if isinstance(value, bool):
        return int(value)
    return value


#: columns that hold text; every other column is numeric.
TEXT_COLUMNS = frozenset(
    {
        "case_id",
        "slice_rule",
        "scope",
        "group",
        "level",
        "method",
        "model",
        "task",
        "region",
        "status",
        "empty_rule",
        "grade_true",
        "grade_pred",
        "test",
        "method_a",
        "method_b",
        "decision",
        "size_group",
        "threshold_on",
        "mcnemar_vs_majority_test",
    }
)


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics CSV: empty cells become None, numeric columns floats.

    Raises:
        ValueError: naming the file, row and column of a numeric cell that is not a number.
    """
    path = Path(path)
    out = []
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if value == "" or value is None:
                    parsed[key] = None
                elif key in TEXT_COLUMNS:
                    parsed[key] = value
                else:
                    try:
                        parsed[key] = float(value)
                    except ValueError:
                        raise ValueError(
                            f"{path}:{line}: column {key} holds {value!r}, not a number"
                        ) from None
            out.append(parsed)
    return out
