"""The VLM arm's slice pipeline: cases -> slices -> queries -> answers -> scores -> tables.

:func:`run_vlm` is the Python API (the ``gliomacompare vlm`` command and the comparison run call
it). For each case of the cohort (every usable case, or the ``config.split`` part of a splits
file) it renders the slices chosen by the data layer's :class:`~GliomaCompareLib.data.SliceRule`
(or, with ``config.slices``, exactly the slices a user chose of exactly those cases: the rule
``given``) (FLAIR, radiological view), asks the backend every task on every slice ``runs`` times,
parses each answer with :func:`~GliomaCompareLib.vlm.parsing.parse_answer`, maps the geometry
back to voxel and RAS coordinates, scores it against the whole tumour (WT) on that slice, and per
patient votes the grade and stacks the slice masks into a 3D mask scored against WT in 3D with
the evaluation core, so the VLM's Dice is comparable with the CNN's.

Queries are batched across slices and cases (``batch_size``); answers come from and go to a
content-addressed :class:`~GliomaCompareLib.vlm.cache.AnswerCache` as they arrive, so an
interrupted run resumes where it stopped and a repeated run asks nothing again. A case that
cannot be loaded is reported and skipped; a query that fails for good becomes a status
``error`` line and the run goes on.

Outputs in ``out_dir``:

- ``answers.jsonl``: one line per query (see :meth:`SliceRecord.to_json`).
- ``metrics/vlm_slices.csv``, ``vlm_patients.csv``, ``vlm_classification.csv``,
  ``vlm_localisation.csv``, ``vlm_status.csv`` and (``runs >= 2``) ``vlm_consistency.csv``;
  every row carries ``model_label`` (``tiny random-weight model`` for the tiny backend).
- ``masks/<case_id>/vlm_<task>_run<r>.nii.gz``: stacked 3D masks (uint8, the case's affine).
- ``vlm.json``: backend identity, configuration, prompt template hashes, split hash, counts.
- ``cache/``: the answer cache (unless ``config.cache_dir`` points elsewhere).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import numbers
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib import geometry as g
from GliomaCompareLib.argtypes import positive_int, to_cli_args
from GliomaCompareLib.data.case import load_case
from GliomaCompareLib.data.discovery import Cohort, discover_cases
from GliomaCompareLib.data.io import find_label_map, read_header, read_image, write_nifti
from GliomaCompareLib.data.slices import (
    GIVEN_MODE,
    SLICE_MODES,
    SliceRule,
    WindowSpec,
    case_slices,
    check_slice_indices,
    parse_slice_list,
)
from GliomaCompareLib.data.splits import Splits
from GliomaCompareLib.fileio import atomic_write_text, jsonable
from GliomaCompareLib.geometry import COORDINATE_SYSTEMS
from GliomaCompareLib.metrics import consistency as c
from GliomaCompareLib.metrics.classification import classification_report
from GliomaCompareLib.metrics.segmentation import score_masks
from GliomaCompareLib.versions import library_versions
from GliomaCompareLib.vlm.cache import AnswerCache, answer_key
from GliomaCompareLib.vlm.hf_backend import TransformersBackend
from GliomaCompareLib.vlm.parsing import PARSE_STATUSES, USABLE_STATUSES, ParsedAnswer, parse_answer
from GliomaCompareLib.vlm.scoring import TIE_RULES, majority_vote, score_slice
from GliomaCompareLib.vlm.tasks import (
    PROMPT_VARIANTS,
    TASK_NAMES,
    Prompt,
    TaskSpec,
    load_tasks,
    task_list,
)
from GliomaCompareLib.vlm.types import Answer, DecodingConfig, Query, VLMBackend, image_sha256

__all__ = [
    "CONSISTENCY_COLUMNS",
    "PatientRecord",
    "ProgressEvent",
    "SliceRecord",
    "VLMConfig",
    "VLMResult",
    "run_vlm",
]

log = logging.getLogger(__name__)

#: Columns of ``metrics/vlm_consistency.csv`` (one row per task and level; ``runs >= 2``).
#: ``all_identical_rate``: share of items (slices, or patients for the voted grade) answered
#: identically in every run (label, or exact geometry; no usable answer counts as one answer);
#: ``mean_modal_fraction``: mean share of runs giving an item's most common answer;
#: ``status_agreement``: share of slices with the same answer status in every run;
#: ``fleiss_kappa``, ``mean_entropy`` (bits): grade labels over runs; ``iou_spread_*``: mean /
#: median over slices of the mean pairwise IoU of repeated boxes / polygons;
#: ``point_dispersion_mm_*``: mean / median over slices of the RMS distance (mm) of repeated
#: points from their mean; ``n_items_spread``: slices with >= 2 usable repeats.
CONSISTENCY_COLUMNS: tuple[str, ...] = (
    "model_label", "task", "level", "n_items", "runs", "temperature", "all_identical_rate",
    "mean_modal_fraction", "status_agreement", "fleiss_kappa", "mean_entropy",
    "iou_spread_mean", "iou_spread_median", "point_dispersion_mm_mean",
    "point_dispersion_mm_median", "n_items_spread",
)  # fmt: skip


def _slice_list_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """``--slices`` item ``CASE:K[,K...]`` (:func:`~GliomaCompareLib.data.slices.parse_slice_list`),
    a bad one a usage error that says why."""
    try:
        return parse_slice_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _normalise_slices(slices) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``{case: [k, ...]}`` or ``[(case, [k, ...]), ...]`` -> ``((case, (k, ...)), ...)``, cases
    in the order given, each case's indices ascending and once.

    Raises:
        ValueError: a case listed twice, a case without indices, or an index that is not a whole
            number >= 0 (naming the case).
    """
    items = slices.items() if isinstance(slices, Mapping) else slices or ()
    out: dict[str, tuple[int, ...]] = {}
    for case_id, indices in items:
        case_id = str(case_id)
        if case_id in out:
            raise ValueError(f"--slices: {case_id} is listed twice (give all its slices at once)")
        indices = tuple(indices)
        if not indices:
            raise ValueError(f"--slices: no slice index for {case_id}")
        bad = [
            k
            for k in indices
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0
        ]
        if bad:
            raise ValueError(
                f"--slices: slice index {bad[0]!r} of {case_id} is not a whole number >= 0"
            )
        out[case_id] = tuple(sorted({int(k) for k in indices}))
    return tuple(out.items())


@dataclass(frozen=True)
class VLMConfig:
    """Everything that shapes a VLM run besides the backend (all of it goes in ``vlm.json``).

    Attributes:
        tasks: tasks to ask, a subset of ``grade, point, box, polygon``.
        runs: times every query is asked (``--runs``; repeats are real queries).
        decoding: decoding parameters.
        batch_size: queries per backend call (``--batch-size``).
        slice_rule: which slices are asked about (data layer).
        window: FLAIR windowing.
        slices_per_case: overrides ``slice_rule.max_slices`` when set (``--slices-per-case``).
        slices: the slices the user chose, ``((case_id, (k, ...)), ...)`` (``--slices``; a
            mapping is accepted): when set, exactly these axial slices of exactly these cases are
            asked, under the rule ``given`` (label-free), instead of ``slice_rule``'s.
        split: which part of the splits file is run (default ``test``).
        coordinate_system: ``pixel``, ``normalized`` or ``per_mille``.
        max_vertices: polygon K (None: the prompts' default).
        tie_rule: grade vote tie rule (see :mod:`GliomaCompareLib.vlm.scoring`).
        point_radius_mm: disc radius used to give point answers a Dice.
        grade_probabilities: record P(HGG) for grade answers.
        prompts_dir: prompts folder (default ``Resources/prompts``).
        prompt_variant: ``study`` (the image description says the slice contains a glioma) or
            ``neutral`` (it does not).
        cnn_predictions: folder of the CNN's label maps (``predict-cnn`` output), used by the
            ``cnn`` slice rule and for unlabelled cases.
        cache_dir: answer cache folder (default ``OUT/cache``).
        save_masks: write the stacked 3D masks as NIfTI.
        n_bootstrap: bootstrap resamples for confidence intervals.
    """

    tasks: tuple[str, ...] = field(
        default=TASK_NAMES,
        metadata={
            "help": "comma-separated: grade,point,box,polygon (default all; with --adapter, "
            "its task)",
            "type": task_list,
            "show_default": False,
        },
    )
    runs: int = field(
        default=1, metadata={"help": "repeat every query N times", "type": positive_int}
    )
    decoding: DecodingConfig = field(
        default_factory=DecodingConfig,
        metadata={
            "help": "decoding parameters",
            "fields": {"temperature": {}, "top_p": {}, "max_new_tokens": {}, "seed": {}},
            "build": DecodingConfig.from_temperature,
        },
    )
    batch_size: int = field(
        default=8,
        metadata={
            "help": "queries per model call; for openai, requests in flight",
            "type": positive_int,
        },
    )
    slice_rule: SliceRule = field(
        default_factory=SliceRule,
        metadata={
            "help": "which slices are asked about",
            "fields": {
                "mode": {
                    "help": "slice rule: tumour_area / largest (oracle selection: read the "
                    "reference labels), brain or cnn (label-free: brain slices, or the CNN's own "
                    "tumour slices from --cnn-pred); an unlabelled case is always asked on "
                    "label-free slices",
                    "flags": ("--slice-rule",),
                    "choices": SLICE_MODES,
                    "type": str,
                },
                "min_area_mm2": {"help": "slice rule: least whole-tumour area on a slice"},
            },
        },
    )
    window: WindowSpec = field(
        default_factory=WindowSpec, metadata={"help": "FLAIR windowing", "cli": False}
    )
    slices_per_case: int | None = field(
        default=None,
        metadata={
            "help": "at most K slices per case, evenly spaced over the tumour (default: all "
            "selected)",
            "type": positive_int,
        },
    )
    slices: tuple[tuple[str, tuple[int, ...]], ...] = field(
        default=(),
        metadata={
            "help": "CASE:K[,K...] [CASE:K[,K...] ...]: ask about exactly these axial slices "
            "(voxel index k, from 0) of exactly these cases, e.g. the slice a clinician looks "
            "at; recorded as the slice rule 'given' (slices chosen by the user, label-free); "
            "replaces --slice-rule and --slices-per-case; other cases are not asked",
            "type": _slice_list_arg,
            "nargs": "+",
        },
    )
    split: str = field(
        default="test", metadata={"help": "which part of --splits", "flags": ("--subset",)}
    )
    coordinate_system: str = field(
        default="pixel",
        metadata={
            "help": "coordinate system asked for in prompts",
            "flags": ("--coords",),
            "choices": tuple(COORDINATE_SYSTEMS),
        },
    )
    max_vertices: int | None = field(
        default=None, metadata={"help": "polygon K (default 8)", "type": positive_int}
    )
    tie_rule: str = field(
        default="probability",
        metadata={
            "help": "grade vote ties: mean P(HGG) decides, HGG, LGG, or no prediction",
            "choices": TIE_RULES,
        },
    )
    point_radius_mm: float = field(default=10.0, metadata={"help": "disc radius for point Dice"})
    grade_probabilities: bool = field(
        default=True,
        metadata={
            "help": "do not record P(HGG) (saves one forward pass per grade answer)",
            "flags": ("--no-grade-probabilities",),
        },
    )
    prompts_dir: str | None = field(
        default=None,
        metadata={"help": "prompts folder (default Resources/prompts)", "flags": ("--prompts",)},
    )
    prompt_variant: str = field(
        default="study",
        metadata={
            "help": "image description in the prompts: 'study' says the slice contains a glioma "
            "(the study's protocol, true of oracle slices), 'neutral' does not (for label-free "
            "slices, which may show no tumour)",
            "choices": PROMPT_VARIANTS,
        },
    )
    cnn_predictions: str | None = field(
        default=None,
        metadata={
            "help": "folder of the CNN's predicted label maps (predict-cnn --out), for "
            "--slice-rule cnn and for unlabelled cases",
            "flags": ("--cnn-pred",),
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "answer cache folder (default OUT/cache)", "flags": ("--cache",)},
    )
    save_masks: bool = field(
        default=True,
        metadata={"help": "do not write OUT/masks/*.nii.gz", "flags": ("--no-masks",)},
    )
    n_bootstrap: int = field(
        default=1000,
        metadata={"help": "bootstrap resamples for CIs", "flags": ("--bootstrap",)},
    )

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in TASK_NAMES]
        if bad or not self.tasks:
            raise ValueError(f"Tasks {list(self.tasks)}: use some of {', '.join(TASK_NAMES)}")
        object.__setattr__(self, "slices", _normalise_slices(self.slices))
        self._check_given_slices()
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.slices_per_case is not None and self.slices_per_case < 1:
            raise ValueError(f"slices_per_case must be >= 1, got {self.slices_per_case}")
        if self.coordinate_system not in COORDINATE_SYSTEMS:
            raise ValueError(
                f"Coordinate system {self.coordinate_system!r}: use {', '.join(COORDINATE_SYSTEMS)}"
            )
        if self.tie_rule not in TIE_RULES:
            raise ValueError(f"Tie rule {self.tie_rule!r}: use {', '.join(TIE_RULES)}")
        if self.prompt_variant not in PROMPT_VARIANTS:
            raise ValueError(
                f"Prompt variant {self.prompt_variant!r}: use {', '.join(PROMPT_VARIANTS)}"
            )
        if not (self.point_radius_mm > 0 and math.isfinite(self.point_radius_mm)):
            raise ValueError(f"point_radius_mm must be > 0, got {self.point_radius_mm}")

    def _check_given_slices(self) -> None:
        """The user's slices replace the automatic rule: no other rule, no slice count."""
        mode = self.slice_rule.mode
        if not self.slices:
            if mode == GIVEN_MODE:
                raise ValueError(
                    "slice rule 'given' asks about slices chosen by the user: name them with "
                    "--slices CASE:K[,K...]"
                )
            return
        if mode not in (GIVEN_MODE, SliceRule().mode):
            raise ValueError(
                f"--slices (slices chosen by the user) replaces the slice rule: leave out "
                f"--slice-rule {mode}"
            )
        if self.slices_per_case is not None or self.slice_rule.max_slices is not None:
            raise ValueError(
                "--slices (slices chosen by the user) are asked as they are: leave out "
                "--slices-per-case"
            )

    @property
    def rule(self) -> SliceRule:
        """The slice rule: ``given`` with the user's ``slices``, else ``slice_rule`` with
        ``slices_per_case`` applied."""
        if self.slices:
            return replace(self.slice_rule, mode=GIVEN_MODE)
        if self.slices_per_case is None:
            return self.slice_rule
        return replace(self.slice_rule, max_slices=self.slices_per_case)

    @property
    def given_slices(self) -> dict[str, tuple[int, ...]]:
        """The user's slices by case id (empty without ``slices``)."""
        return dict(self.slices)

    def to_cli_args(self) -> list[str]:
        """The command-line options that rebuild these settings (those that differ from the
        defaults; see :func:`~GliomaCompareLib.argtypes.to_cli_args`)."""
        if not self.slices:
            return to_cli_args(self)
        # --slices stands for the rule 'given' too; its items are separate arguments
        by_rule = replace(
            self, slices=(), slice_rule=replace(self.slice_rule, mode=SliceRule().mode)
        )
        items = [f"{case_id}:{','.join(map(str, ks))}" for case_id, ks in self.slices]
        return [*to_cli_args(by_rule), "--slices", *items]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tasks"] = list(self.tasks)
        data["decoding"] = self.decoding.to_dict()
        data["slice_rule"] = self.rule.to_dict()
        data["window"] = self.window.to_dict()
        if self.slices:
            data["slices"] = {case_id: list(ks) for case_id, ks in self.slices}
            data["slice_rule_description"] = self.rule.describe()
        else:
            del data["slices"]  # vlm.json of a run by rule stays as it was
        return data


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of a run, reported after every batch and every finished case."""

    cases_done: int
    cases_total: int
    queries_done: int
    queries_cached: int
    queries_failed: int
    case_id: str = ""


@dataclass(frozen=True, eq=False)
class SliceRecord:
    """One query, its answer and its scores.

    Attributes:
        case_id, slice_index, task, run: what was asked.
        status, stage, note: the parser's verdict (``error`` when no answer came).
        raw_text: the answer text (None without one).
        value: the parsed value in the prompt's coordinate system.
        geometry: ``Point`` / ``Box`` / ``Polygon`` in pixels, or None.
        voxel, ras: the geometry's points in voxel indices / RAS mm, ``(N, 3)`` lists (a point:
            1; a box: its 4 corners, clockwise on screen from top-left; a polygon: its vertices).
        label: the parsed grade (grade task), p_hgg: P(HGG) when recorded.
        option_logprobs, option_method: as the backend reported them.
        grade_true: the case's grade.
        score: :class:`~GliomaCompareLib.vlm.scoring.SliceScore` (localisation tasks).
        error: why no answer came. cached: answer taken from the cache.
        latency_s: answer time. key: cache key. prompt: the prompt asked.
        pixel_spacing: ``(mm per column, mm per row)`` of the slice.
        slice_rule: the mode of the rule that chose the slice (the one used: an unlabelled case
            asked with an oracle rule says ``brain`` or ``cnn``; the user's slices ``given``).
    """

    case_id: str
    slice_index: int
    task: str
    run: int
    status: str
    stage: str | None
    note: str
    raw_text: str | None
    value: Any
    geometry: Any
    voxel: list | None
    ras: list | None
    label: str | None
    p_hgg: float | None
    option_logprobs: dict | None
    option_method: str | None
    grade_true: str | None
    score: Any
    error: str | None
    cached: bool
    latency_s: float
    key: str
    prompt: Prompt
    pixel_spacing: tuple[float, float]
    finish_reason: str | None = None
    slice_rule: str = ""

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES

    def to_json(self, model_label: str, backend: str, model_id: str) -> dict:
        """The ``answers.jsonl`` object of this query."""
        value = self.value
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out = {
            "case_id": self.case_id,
            "slice_index": self.slice_index,
            "task": self.task,
            "run": self.run,
            "status": self.status,
            "stage": self.stage,
            "note": self.note,
            "raw_text": self.raw_text,
            "value": value,
            "label": self.label,
            "p_hgg": self.p_hgg,
            "option_logprobs": self.option_logprobs,
            "option_method": self.option_method,
            "pixel": self.geometry.to_dict() if self.geometry is not None else None,
            "voxel": self.voxel,
            "ras": self.ras,
            "grade_true": self.grade_true,
            "error": self.error,
            "finish_reason": self.finish_reason,
            "cached": self.cached,
            "latency_s": round(self.latency_s, 6),
            "width": self.prompt.width,
            "height": self.prompt.height,
            "pixel_spacing_mm": list(self.pixel_spacing),
            "slice_rule": self.slice_rule,
            "coordinate_system": self.prompt.coordinate_system,
            "template_hash": self.prompt.template_hash,
            "prompt_hash": self.prompt.prompt_hash,
            "key": self.key,
            "backend": backend,
            "model_id": model_id,
            "model_label": model_label,
        }
        if self.score is not None:
            out.update({f"score_{k}": v for k, v in self.score.to_dict().items()})
        return jsonable(out)


@dataclass(frozen=True)
class PatientRecord:
    """One patient, one task, one run.

    Attributes:
        case_id, task, run, grade_true: what.
        n_slices, n_usable: answers asked / usable.
        grade_pred, votes_hgg, votes_lgg, votes_invalid, tie, p_hgg_mean, grade_score,
            score_source: grade task (``votes_invalid``: grade answers without a usable label).
        dice_3d, hd95_3d, hd_max_3d: stacked slice masks against the full 3D WT (comparable
            with the CNN); pred_voxels, ref_voxels: their sizes; empty_rule: the BraTS empty
            rule that decided the 3D scores (``none``, ``pred_empty`` ...).
        dice_selected, hd95_selected: the same against WT on the asked slices only.
        mean_slice_dice, inside_fraction, mean_distance_mm: means over the slices (failures
            included as Dice 0 / not inside; distances over answers with a centre).
        mask_path: the stacked mask file, or None.
    """

    case_id: str
    task: str
    run: int
    grade_true: str | None
    n_slices: int
    n_usable: int
    grade_pred: str | None = None
    votes_hgg: int | None = None
    votes_lgg: int | None = None
    votes_invalid: int | None = None
    tie: bool | None = None
    p_hgg_mean: float | None = None
    grade_score: float | None = None
    score_source: str | None = None
    dice_3d: float | None = None
    hd95_3d: float | None = None
    hd_max_3d: float | None = None
    pred_voxels: int | None = None
    ref_voxels: int | None = None
    empty_rule: str | None = None
    dice_selected: float | None = None
    hd95_selected: float | None = None
    mean_slice_dice: float | None = None
    inside_fraction: float | None = None
    mean_distance_mm: float | None = None
    mask_path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class VLMResult:
    """What :func:`run_vlm` returns.

    Attributes:
        out_dir: the output folder.
        model_label: the model's label (``tiny random-weight model`` for the tiny model).
        identity: the backend's identity (cache-key part; no secrets).
        config: the configuration.
        records: every query's :class:`SliceRecord`, by case, slice, task, run.
        patients: :class:`PatientRecord` per case, task and run.
        status_counts: task -> status -> count (all runs).
        failed: queries with status ``error``.
        case_errors: case id -> why it was skipped.
        classification: run -> patient-level ``ClassificationReport`` (grade task; cases
            with a known grade).
        consistency: rows of ``vlm_consistency.csv`` (empty for one run).
        paths: output name -> path.
        seconds: wall time.
    """

    out_dir: Path
    model_label: str
    identity: dict
    config: VLMConfig
    records: tuple[SliceRecord, ...]
    patients: tuple[PatientRecord, ...]
    status_counts: dict[str, dict[str, int]]
    failed: int
    case_errors: dict[str, str]
    classification: dict[int, Any]
    consistency: tuple[dict, ...]
    paths: dict[str, Path]
    seconds: float

    def select(self, task: str | None = None, run: int | None = None) -> list[SliceRecord]:
        """Records of one task and/or run."""
        return [
            r
            for r in self.records
            if (task is None or r.task == task) and (run is None or r.run == run)
        ]


# --------------------------------------------------------------------------- helpers


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns or (list(rows[0]) if rows else []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())
    return path


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, bool | np.bool_):
        return int(value)
    return value


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(values)) if values else None


@dataclass(eq=False)
class _Item:
    work: _CaseWork
    slice: Any
    task: str
    run: int
    prompt: Prompt
    query: Query
    key: str
    answer: Answer | None = None
    cached: bool = False


@dataclass(eq=False)
class _CaseWork:
    record: Any
    slices: list
    wt: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    items: list[_Item] = field(default_factory=list)
    note: str = ""

    @property
    def done(self) -> bool:
        return all(item.answer is not None for item in self.items)


# --------------------------------------------------------------------------- the run


class _Inference:
    """State of one :func:`run_vlm` call: the cases, prompts, answers and records."""

    def __init__(self, cohort, backend, config, out_dir, splits, case_ids, progress):
        self.cohort = cohort
        self.backend = backend
        self.config = config
        self.out = Path(out_dir)
        self.splits = splits
        self.case_ids = case_ids
        self.progress = progress
        self.specs: dict[str, TaskSpec] = load_tasks(config.prompts_dir, config.prompt_variant)
        self.identity = dict(backend.identity())
        self.model_label = backend.model_label
        self.prompts: dict[tuple[str, int, int], Prompt] = {}
        self.records: list[SliceRecord] = []
        self.patients: list[PatientRecord] = []
        self.case_errors: dict[str, str] = {}
        self.case_notes: dict[str, str] = {}
        self.counts = Counter()
        self.template_warnings: list[str] = []

    # ---------------------------------------------------------------- selection
    def select_cases(self) -> list:
        usable = {r.case_id: r for r in self.cohort.cases}
        if self.config.slices:
            return self.given_cases(usable)
        if self.case_ids is not None:
            wanted = list(self.case_ids)
        elif self.splits is not None:
            wanted = list(self.splits.ids(self.config.split))
        else:
            wanted = [r.case_id for r in self.cohort.cases]
        chosen = []
        for case_id in wanted:
            record = usable.get(case_id)
            if record is None:
                self.case_errors[case_id] = f"{case_id}: listed, but not found in the data folder"
            elif not record.usable:
                self.case_errors[case_id] = f"{case_id}: not usable: " + "; ".join(record.problems)
            else:
                chosen.append(record)
        return chosen

    def given_cases(self, records: dict) -> list:
        """The cases of the user's slices (``config.slices``), each slice checked against its
        FLAIR volume's header before anything is asked; the other cases are not asked.

        Raises:
            ValueError: with splits or case ids too, for a listed case that is not in the data
                folder, or a slice index outside a listed case (naming case and index).
        """
        if self.splits is not None or self.case_ids is not None:
            raise ValueError(
                "--slices names the cases to ask itself: leave out --splits (and case ids)"
            )
        given = self.config.given_slices
        missing = [case_id for case_id in given if case_id not in records]
        if missing:
            found = ", ".join(sorted(records)[:10]) or "none"
            raise ValueError(
                f"--slices: {', '.join(missing)} not in the data folder "
                f"{self.cohort.data_dir or self.cohort.root} (cases there: {found})"
            )
        chosen = []
        for case_id, indices in given.items():
            record = records[case_id]
            if not record.usable:
                self.case_errors[case_id] = f"{case_id}: not usable: " + "; ".join(record.problems)
                continue
            flair = record.modality_paths.get("flair")
            if flair is not None:  # a case without FLAIR is named when it is loaded
                header = read_header(flair)
                check_slice_indices(case_id, indices, header.affine, header.shape)
            chosen.append(record)
        others = [case_id for case_id in records if case_id not in given]
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            log.warning(
                "--slices lists %d of the %d cases in the data folder; the other %d are not "
                "asked (%s)",
                len(given),
                len(records),
                len(others),
                shown,
            )
        return chosen

    def check_adapter(self) -> None:
        adapter = getattr(self.backend, "adapter", None)
        if adapter is None:
            return
        if adapter.tasks:
            other = [t for t in self.config.tasks if t not in adapter.tasks]
            if other:
                raise ValueError(
                    f"Adapter {adapter.path} was trained for task(s) {', '.join(adapter.tasks)}; "
                    f"it cannot answer {', '.join(other)} (use --tasks {','.join(adapter.tasks)})"
                )
        # an adapter learnt one answer convention; asking it in another is a silent error
        trained_system = adapter.meta.get("coordinate_system")
        if trained_system and trained_system != self.config.coordinate_system:
            raise ValueError(
                f"Adapter {adapter.path} was trained to answer in {trained_system} coordinates; "
                f"this run asks for {self.config.coordinate_system} (use --coords {trained_system})"
            )
        trained_k = adapter.meta.get("max_vertices")
        if (
            "polygon" in self.config.tasks
            and trained_k
            and self.config.max_vertices
            and int(trained_k) != int(self.config.max_vertices)
        ):
            raise ValueError(
                f"Adapter {adapter.path} was trained for polygons of at most {trained_k} "
                f"vertices; this run asks for {self.config.max_vertices} "
                f"(use --max-vertices {trained_k})"
            )
        for task, trained in adapter.template_hashes.items():
            if task in self.specs and self.specs[task].template_hash != trained:
                message = (
                    f"adapter {adapter.path} was trained with prompt template {trained} for "
                    f"{task}; the current template is {self.specs[task].template_hash}"
                )
                log.warning(message)
                self.template_warnings.append(message)

    # ---------------------------------------------------------------- preparation
    def prompt(self, task: str, width: int, height: int) -> Prompt:
        key = (task, width, height)
        if key not in self.prompts:
            self.prompts[key] = self.specs[task].render(
                width, height, self.config.coordinate_system, self.config.max_vertices
            )
        return self.prompts[key]

    def prepare(self, record) -> _CaseWork | None:
        rule = self.config.rule
        try:
            case = load_case(record, self.cohort.convention)
            prediction = self.prediction(case, rule)
            slices = case_slices(
                case,
                rule,
                self.config.window,
                prediction=prediction,
                indices=self.config.given_slices.get(case.case_id) if self.config.slices else None,
            )
            note = slices[0].meta.get("fallback", "") if slices else ""
            if not slices and case.label is not None and rule.oracle:
                # no slice reaches the rule's area: ask about the largest tumour slice instead
                slices = case_slices(
                    case,
                    SliceRule(mode="largest", max_slices=1, region=rule.region),
                    self.config.window,
                )
                note = f"no slice met the rule {rule.to_dict()}; the largest tumour slice was used"
            wt = case.regions()["WT"] if case.label is not None else None
        except Exception as exc:
            self.case_errors[record.case_id] = f"{record.case_id}: {exc}"
            log.warning("skipping %s: %s", record.case_id, exc)
            return None
        if not slices:
            self.case_errors[record.case_id] = f"{record.case_id}: no slice to ask about"
            return None
        if note:
            self.case_notes[record.case_id] = note
        work = _CaseWork(record, slices, wt, case.affine, case.spacing, note=note)
        for image in slices:
            sha = image_sha256(image.rgb)
            height, width = image.rgb.shape[:2]
            for task in self.config.tasks:
                prompt = self.prompt(task, width, height)
                score_options = task == "grade" and self.config.grade_probabilities
                for run in range(self.config.runs):
                    key = answer_key(
                        image_sha=sha,
                        prompt=prompt,
                        identity=self.identity,
                        decoding=self.config.decoding,
                        run=run,
                        score_options=score_options,
                    )
                    query = Query(
                        image=image.rgb,
                        prompt=prompt,
                        run=run,
                        seed=int(key[:12], 16),
                        score_options=score_options,
                        key=key,
                    )
                    work.items.append(_Item(work, image, task, run, prompt, query, key))
        return work

    def prediction(self, case, rule: SliceRule) -> np.ndarray | None:
        """The CNN's label map of ``case`` when the slice rule needs it (``cnn``, or an oracle
        rule on a case without labels); None otherwise or when none is configured."""
        folder = self.config.cnn_predictions
        if folder is None or not (rule.mode == "cnn" or (rule.oracle and case.label is None)):
            return None
        path = find_label_map(folder, case.case_id)
        if path is None:
            if rule.mode == "cnn":
                raise ValueError(f"no CNN prediction of {case.case_id} in {folder}")
            return None
        label, _ = read_image(path)
        return np.rint(label).astype(np.uint8)

    # ---------------------------------------------------------------- asking
    def ask(self, batch: list[_Item], cache: AnswerCache) -> None:
        try:
            answers = self.backend.answer([i.query for i in batch], self.config.decoding)
            if len(answers) != len(batch):
                raise RuntimeError(f"backend returned {len(answers)} answers for {len(batch)}")
        except Exception as exc:
            log.warning("batch of %d queries failed: %s", len(batch), exc)
            answers = [Answer(None, error=f"{type(exc).__name__}: {exc}") for _ in batch]
        for item, answer in zip(batch, answers, strict=True):
            item.answer = answer
            cache.put(item.key, answer)
            self.counts["asked"] += 1
            if answer.error is not None:
                self.counts["failed"] += 1

    # ---------------------------------------------------------------- scoring
    def score_item(self, item: _Item) -> SliceRecord:
        spec = self.specs[item.task]
        answer = item.answer
        if answer.error is not None:
            parsed = ParsedAnswer("error", note=answer.error)
        else:
            parsed = parse_answer(spec, answer.text, item.prompt, refused=answer.refused)
        geometry = item.slice.geometry
        spacing = geometry.pixel_spacing
        voxel = ras = None
        if parsed.geometry is not None:
            pts = self._points(parsed.geometry)
            vox = geometry.pixel_to_voxel(pts[:, 0], pts[:, 1])
            voxel = np.round(vox, 4).tolist()
            ras = np.round(geometry.voxel_to_ras(vox), 4).tolist()
        score = None
        if spec.answer.kind != "label" and item.work.wt is not None:
            ref = geometry.extract(item.work.wt)
            score = score_slice(
                spec.answer.kind,
                parsed.geometry,
                ref,
                spacing,
                radius_mm=self.config.point_radius_mm,
            )
        p_hgg = None
        probs = answer.p_options
        positive = spec.answer.positive
        if probs is not None and positive is not None:
            p_hgg = float(probs.get(positive, 0.0))
        return SliceRecord(
            case_id=item.work.record.case_id,
            slice_index=item.slice.index,
            task=item.task,
            run=item.run,
            status=parsed.status,
            stage=parsed.stage,
            note=parsed.note,
            raw_text=answer.text,
            value=parsed.value,
            geometry=parsed.geometry,
            voxel=voxel,
            ras=ras,
            label=parsed.label if spec.answer.kind == "label" else None,
            p_hgg=p_hgg,
            option_logprobs=answer.option_logprobs,
            option_method=answer.option_method,
            grade_true=item.work.record.grade,
            score=score,
            error=answer.error,
            cached=item.cached,
            latency_s=float(answer.latency_s or 0.0),
            key=item.key,
            prompt=item.prompt,
            pixel_spacing=spacing,
            finish_reason=answer.finish_reason,
            slice_rule=item.slice.meta["rule"]["mode"],
        )

    @staticmethod
    def _points(geom) -> np.ndarray:

        if isinstance(geom, g.Point):
            return np.array([[geom.x, geom.y]], dtype=float)
        if isinstance(geom, g.Box):
            return geom.corners()
        return geom.as_array()

    def finish_case(self, work: _CaseWork, answers_out) -> None:
        """Score a case whose queries are all answered: its ``answers.jsonl`` lines, one
        :class:`PatientRecord` per task and run, and its slice records."""
        records = [self.score_item(item) for item in work.items]
        order = {t: i for i, t in enumerate(TASK_NAMES)}
        records.sort(key=lambda r: (r.slice_index, order[r.task], r.run))
        backend, model_id = self.identity.get("backend", ""), self.identity.get("model_id", "")
        for record in records:
            answers_out.write(json.dumps(record.to_json(self.model_label, backend, model_id)))
            answers_out.write("\n")
        answers_out.flush()
        for task in self.config.tasks:
            for run in range(self.config.runs):
                chosen = [r for r in records if r.task == task and r.run == run]
                self.patients.append(self.patient_record(work, task, run, chosen))
        # keep the records light: the slice masks live on in the stacked volumes only
        self.records.extend(
            replace(r, score=replace(r.score, mask=None)) if r.score is not None else r
            for r in records
        )

    def patient_record(self, work: _CaseWork, task: str, run: int, chosen) -> PatientRecord:
        """One patient's result for ``task`` in ``run`` from its slice records ``chosen``."""
        base = {
            "case_id": work.record.case_id,
            "task": task,
            "run": run,
            "grade_true": work.record.grade,
            "n_slices": len(chosen),
            "n_usable": sum(r.usable for r in chosen),
        }
        if self.specs[task].answer.kind == "label":
            return self.voted_grade(base, task, chosen)
        if work.wt is None:
            return PatientRecord(**base)
        return self.stacked_masks(base, work, task, run, chosen)

    def voted_grade(self, base: dict, task: str, chosen) -> PatientRecord:
        """The patient's grade by majority vote over its slices."""
        spec = self.specs[task].answer
        vote = majority_vote(
            [r.label for r in chosen],
            [r.p_hgg for r in chosen],
            options=spec.options,
            positive=spec.positive,
            tie_rule=self.config.tie_rule,
        )
        negative = next(o for o in spec.options if o != spec.positive)
        return PatientRecord(
            **base,
            grade_pred=vote.prediction,
            votes_hgg=vote.votes.get(spec.positive, 0),
            votes_lgg=vote.votes.get(negative, 0),
            votes_invalid=vote.n_slices - vote.n_usable,
            tie=vote.tie,
            p_hgg_mean=vote.p_positive_mean,
            grade_score=vote.score,
            score_source=vote.score_source,
        )

    def stacked_masks(self, base: dict, work: _CaseWork, task: str, run: int, chosen):
        """The slice masks stacked into a 3D mask, scored against WT in 3D (and on the asked
        slices only); written as NIfTI when ``save_masks``."""
        by_slice = {image.index: image for image in work.slices}
        volume = np.zeros(work.wt.shape, dtype=bool)
        selected = np.zeros(work.wt.shape, dtype=bool)
        for r in chosen:
            geometry = by_slice[r.slice_index].geometry
            geometry.insert(r.score.mask, out=volume)
            geometry.insert(geometry.extract(work.wt), out=selected)
        full = score_masks(volume, work.wt, work.spacing)
        part = score_masks(volume, selected, work.spacing)
        mask_path = None
        if self.config.save_masks:
            path = self.out / "masks" / work.record.case_id / f"vlm_{task}_run{run}.nii.gz"
            write_nifti(path, volume.astype(np.uint8), work.affine)
            mask_path = str(path.relative_to(self.out))
        distances = [r.score.distance_to_centre_mm for r in chosen]
        return PatientRecord(
            **base,
            dice_3d=full.dice,
            hd95_3d=full.hd95,
            hd_max_3d=full.hd_max,
            pred_voxels=full.pred_voxels,
            ref_voxels=full.ref_voxels,
            empty_rule=full.empty,
            dice_selected=part.dice,
            hd95_selected=part.hd95,
            mean_slice_dice=_mean([r.score.dice for r in chosen]),
            inside_fraction=_mean([float(r.score.inside) for r in chosen]),
            mean_distance_mm=_mean(distances),
            mask_path=mask_path,
        )

    # ---------------------------------------------------------------- tables
    def status_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for task in self.config.tasks:
            counts = Counter(r.status for r in self.records if r.task == task)
            out[task] = {s: counts.get(s, 0) for s in PARSE_STATUSES}
        return out

    def classification(self) -> tuple[dict[int, Any], list[dict]]:

        if "grade" not in self.config.tasks:
            return {}, []
        spec = self.specs["grade"].answer
        negative = next(o for o in spec.options if o != spec.positive)
        reports: dict[int, Any] = {}
        rows = []
        for run in range(self.config.runs):
            patients = [
                p
                for p in self.patients
                if p.task == "grade" and p.run == run and p.grade_true in spec.options
            ]
            slices = [
                r
                for r in self.records
                if r.task == "grade" and r.run == run and r.grade_true in spec.options
            ]
            for level, items in (("patient", patients), ("slice", slices)):
                if not items:
                    continue
                if level == "patient":
                    y_true = [p.grade_true for p in items]
                    y_pred = [p.grade_pred for p in items]
                    scores = [p.grade_score for p in items]
                    groups = None
                else:
                    y_true = [r.grade_true for r in items]
                    y_pred = [r.label for r in items]
                    scores = [r.p_hgg for r in items]
                    scores = scores if all(s is not None for s in scores) else None
                    groups = [r.case_id for r in items]
                report = classification_report(
                    y_true,
                    y_pred,
                    scores,
                    positive=spec.positive,
                    negative=negative,
                    groups=groups,
                    n_bootstrap=self.config.n_bootstrap,
                    seed=self.config.decoding.seed,
                )
                if level == "patient":
                    reports[run] = report
                row = {"model_label": self.model_label, "level": level, "run": run}
                data = report.to_dict()
                ci = data.pop("ci")
                row.update(data)
                for name, (low, high) in ci.items():
                    row[f"{name}_ci_low"] = low
                    row[f"{name}_ci_high"] = high
                row["score_source"] = (
                    ",".join(sorted({p.score_source for p in items}))
                    if level == "patient"
                    else ("p_hgg" if scores is not None else "")
                )
                rows.append(row)
        return reports, rows

    def localisation_rows(self) -> list[dict]:
        rows = []
        for task in self.config.tasks:
            if task == "grade":
                continue
            for run in range(self.config.runs):
                slices = [r for r in self.records if r.task == task and r.run == run and r.score]
                patients = [
                    p
                    for p in self.patients
                    if p.task == task and p.run == run and p.dice_3d is not None
                ]
                if slices:
                    dice = np.array([r.score.dice for r in slices])
                    hd = np.array([r.score.hd95 for r in slices])
                    rows.append(
                        {
                            "model_label": self.model_label,
                            "task": task,
                            "run": run,
                            "level": "slice",
                            "n": len(slices),
                            "n_failed": sum(not r.usable for r in slices),
                            "dice_mean": float(dice.mean()),
                            "dice_median": float(np.median(dice)),
                            "dice_sd": float(dice.std()),
                            "hd95_mean": float(hd.mean()),
                            "hd95_median": float(np.median(hd)),
                            "inside_rate": float(np.mean([r.score.inside for r in slices])),
                            "distance_to_centre_mm_mean": _mean(
                                [r.score.distance_to_centre_mm for r in slices]
                            ),
                        }
                    )
                for level, key, hd_key in (
                    ("patient_3d", "dice_3d", "hd95_3d"),
                    ("patient_selected_slices", "dice_selected", "hd95_selected"),
                ):
                    if not patients:
                        continue
                    dice = np.array([getattr(p, key) for p in patients])
                    hd = np.array([getattr(p, hd_key) for p in patients])
                    rows.append(
                        {
                            "model_label": self.model_label,
                            "task": task,
                            "run": run,
                            "level": level,
                            "n": len(patients),
                            "n_failed": sum(p.n_usable == 0 for p in patients),
                            "dice_mean": float(dice.mean()),
                            "dice_median": float(np.median(dice)),
                            "dice_sd": float(dice.std()),
                            "hd95_mean": float(hd.mean()),
                            "hd95_median": float(np.median(hd)),
                            "inside_rate": _mean([p.inside_fraction for p in patients]),
                            "distance_to_centre_mm_mean": _mean(
                                [p.mean_distance_mm for p in patients]
                            ),
                        }
                    )
        return rows

    def consistency_rows(self) -> list[dict]:
        """Agreement of repeated answers (``runs >= 2``), one row per task and level, with the
        evaluation core's consistency metrics (see :data:`CONSISTENCY_COLUMNS`)."""
        runs = self.config.runs
        if runs < 2:
            return []
        rows = []
        base = {
            "model_label": self.model_label,
            "runs": runs,
            "temperature": self.config.decoding.temperature,
        }
        for task in self.config.tasks:
            repeats = _Repeats.collect(self.records, task, runs)
            if not repeats.items:
                continue
            rows.append({**base, **repeats.slice_agreement(task)})
            if task == "grade":
                patients = self._voted_grades(runs)
                if patients:
                    rows.append({**base, **_label_agreement(task, "patient", patients)})
        return rows

    def _voted_grades(self, runs: int) -> list[list]:
        """Per patient (sorted), the voted grade of each run."""
        voted: dict[str, list] = defaultdict(lambda: [None] * runs)
        for p in self.patients:
            if p.task == "grade":
                voted[p.case_id][p.run] = p.grade_pred
        return [voted[k] for k in sorted(voted)]


def _label_agreement(task: str, level: str, table: list[list]) -> dict:
    agree = c.agreement(table)
    return {
        "task": task,
        "level": level,
        "n_items": len(table),
        "all_identical_rate": agree.rate,
        "mean_modal_fraction": agree.mean_modal_fraction,
        "fleiss_kappa": c.fleiss_kappa(table),
        "mean_entropy": float(np.mean(c.label_entropy(table))),
    }


@dataclass
class _Repeats:
    """One task's repeated answers per slice (``items``: sorted ``(case_id, slice_index)``)."""

    runs: int
    items: list = field(default_factory=list)
    answers: dict = field(default_factory=dict)  # item -> per run: label / geometry JSON / None
    geoms: dict = field(default_factory=dict)  # item -> per run: usable geometry or None
    statuses: dict = field(default_factory=dict)  # item -> per run: answer status
    spacing: dict = field(default_factory=dict)  # item -> (mm per column, mm per row)
    shapes: dict = field(default_factory=dict)  # item -> (height, width)

    @classmethod
    def collect(cls, records: Sequence[SliceRecord], task: str, runs: int) -> _Repeats:
        out = cls(runs)
        for r in records:
            if r.task != task:
                continue
            item = (r.case_id, r.slice_index)
            for table in (out.answers, out.geoms, out.statuses):
                table.setdefault(item, [None] * runs)
            out.statuses[item][r.run] = r.status
            out.spacing[item] = r.pixel_spacing
            out.shapes[item] = (r.prompt.height, r.prompt.width)
            out.geoms[item][r.run] = r.geometry if r.usable else None
            if task == "grade":
                out.answers[item][r.run] = r.label
            elif r.geometry is not None and r.usable:
                out.answers[item][r.run] = json.dumps(r.geometry.to_dict(), sort_keys=True)
            # else: no usable answer (one category, None)
        out.items = sorted(out.answers)
        return out

    def slice_agreement(self, task: str) -> dict:
        """The slice-level consistency row of ``task`` (without the shared columns)."""
        table = [self.answers[i] for i in self.items]
        agree = c.agreement(table)
        row = {
            "task": task,
            "level": "slice",
            "n_items": len(self.items),
            "all_identical_rate": agree.rate,
            "mean_modal_fraction": agree.mean_modal_fraction,
            "status_agreement": c.agreement([self.statuses[i] for i in self.items]).rate,
        }
        if task == "grade":
            row["fleiss_kappa"] = c.fleiss_kappa(table)
            row["mean_entropy"] = float(np.mean(c.label_entropy(table)))
        else:
            row.update(self.spread(task))
        return row

    def spread(self, task: str) -> dict:
        """Point dispersion (mm) or box / polygon IoU spread of the repeated geometries."""
        rows_of = [self.geoms[i] for i in self.items]
        if task == "point":
            pts = np.full((len(self.items), self.runs, 2), np.nan)
            for a, repeats in enumerate(rows_of):
                for b, point in enumerate(repeats):
                    if point is not None:
                        pts[a, b] = (point.x, point.y)
            spacing = np.array([self.spacing[i] for i in self.items])
            spread = c.point_dispersion_mm(pts, spacing)
            return {
                "point_dispersion_mm_mean": spread.mean,
                "point_dispersion_mm_median": spread.median,
                "n_items_spread": spread.n_items,
            }
        shape = self.shapes[self.items[0]]
        if task == "box":
            spread = c.box_iou_spread(rows_of, shape)
        elif all(self.shapes[i] == shape for i in self.items):
            spread = c.polygon_iou_spread(rows_of, shape)
        else:
            return {}
        return {
            "iou_spread_mean": spread.mean,
            "iou_spread_median": spread.median,
            "n_items_spread": spread.n_items,
        }


def run_vlm(
    data,
    backend: VLMBackend | None = None,
    config: VLMConfig | None = None,
    out_dir: str | Path = "vlm_out",
    *,
    splits=None,
    case_ids: Sequence[str] | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> VLMResult:
    """Run the VLM arm over a cohort (see module docstring).

    Args:
        data: a :class:`~GliomaCompareLib.data.Cohort`, or a data folder (discovered with
            header-only validation; each case is fully read when it is loaded).
        backend: the VLM (default: the ``tiny`` backend, seed 0).
        config: the run configuration (default :class:`VLMConfig`).
        out_dir: output folder (created; files there are replaced atomically).
        splits: a :class:`~GliomaCompareLib.data.splits.Splits` (or a path to
            ``splits.json``): only its ``config.split`` cases are run. Without it (and without
            ``case_ids``) every usable case is run.
        case_ids: run exactly these cases (overrides ``splits``).
        progress: called with a :class:`ProgressEvent` after every batch and case.

    Returns:
        :class:`VLMResult`.

    Raises:
        ValueError: an adapter that does not fit the tasks, or a bad configuration; with
            ``config.slices``, a listed case not in the cohort or a slice index outside its
            volume (naming both), or ``splits`` / ``case_ids`` as well (nothing is asked).
        FileNotFoundError: a data folder or splits file that does not exist.
    """
    start = time.perf_counter()
    config = config or VLMConfig()
    if backend is None:
        backend = TransformersBackend.tiny()
    # cases: the cohort, the split's part of it, the adapter's fit
    cohort = data if isinstance(data, Cohort) else discover_cases(data, validate=True, full=False)
    splits, split_info = _load_splits(splits, config.split)
    out = Path(out_dir)
    run = _Inference(cohort, backend, config, out, splits, case_ids, progress)
    run.check_adapter()
    chosen = run.select_cases()
    out.mkdir(parents=True, exist_ok=True)
    for message in run.case_errors.values():
        log.warning(message)
    # every question, batched across slices and cases, answers cached as they come
    answers_path = _answer_all(run, chosen, out, progress)
    # tables
    tables = _write_tables(run, out / "metrics")
    # manifest
    seconds = time.perf_counter() - start
    manifest = _manifest(run, cohort, chosen, split_info, tables, seconds)
    atomic_write_text(out / "vlm.json", json.dumps(manifest, indent=2) + "\n")
    return VLMResult(
        out_dir=out,
        model_label=run.model_label,
        identity=run.identity,
        config=config,
        records=tuple(run.records),
        patients=tuple(run.patients),
        status_counts=tables.status,
        failed=manifest["failed"],
        case_errors=dict(run.case_errors),
        classification=tables.reports,
        consistency=tuple(tables.consistency),
        paths={"answers": answers_path, **tables.paths, "manifest": out / "vlm.json"},
        seconds=seconds,
    )


def _load_splits(splits, name: str):
    """``(Splits or None, the manifest's split entry or None)``; a path is read.

    Raises:
        FileNotFoundError: a splits file that does not exist.
    """
    if splits is None:
        return None, None
    path = None
    if not isinstance(splits, Splits):
        path = str(splits)
        if not Path(splits).is_file():
            raise FileNotFoundError(f"{splits}: splits file not found")
        splits = Splits.load(splits)
    return splits, {"file": path, "name": name, "hash": splits.hash}


class _Queue:
    """Queries waiting for the backend, batched across slices and cases; a case's answers are
    written (in case order) as soon as all of its queries are answered."""

    def __init__(self, run: _Inference, cache: AnswerCache, total: int, progress, answers_out):
        self.run, self.cache, self.total = run, cache, total
        self.progress, self.answers_out = progress, answers_out
        self.open_cases: list[_CaseWork] = []
        self.pending: list[_Item] = []
        self.done_cases = 0

    def add(self, work: _CaseWork) -> None:
        """Take cached answers, queue the rest; ask every full batch."""
        for item in work.items:
            hit = self.cache.get(item.key)
            if hit is not None:
                item.answer, item.cached = hit, True
                self.run.counts["cached"] += 1
            else:
                self.pending.append(item)
        self.open_cases.append(work)
        while len(self.pending) >= self.run.config.batch_size:
            self.ask_batch()
        self.flush()

    def drain(self) -> None:
        while self.pending:
            self.ask_batch()
        self.flush()

    def ask_batch(self) -> None:
        size = self.run.config.batch_size
        batch, self.pending = self.pending[:size], self.pending[size:]
        self.run.ask(batch, self.cache)
        self.report()

    def flush(self) -> None:
        while self.open_cases and self.open_cases[0].done:
            work = self.open_cases.pop(0)
            self.run.finish_case(work, self.answers_out)
            self.done_cases += 1
            self.report(work.record.case_id)

    def report(self, case_id: str = "") -> None:
        if self.progress is None:
            return
        counts = self.run.counts
        self.progress(
            ProgressEvent(
                cases_done=self.done_cases,
                cases_total=self.total,
                queries_done=counts["asked"] + counts["cached"],
                queries_cached=counts["cached"],
                queries_failed=counts["failed"],
                case_id=case_id,
            )
        )


def _answer_all(run: _Inference, chosen: list, out: Path, progress) -> Path:
    """Ask every query of the ``chosen`` cases; returns ``answers.jsonl`` (replaced only when
    every case is done)."""
    cache = AnswerCache(run.config.cache_dir if run.config.cache_dir else out / "cache")
    partial = out / ".answers.jsonl.partial"
    try:
        with partial.open("w", encoding="utf-8") as answers_out:
            queue = _Queue(run, cache, len(chosen), progress, answers_out)
            for record in chosen:
                work = run.prepare(record)
                if work is not None:
                    queue.add(work)
            queue.drain()
    finally:
        cache.close()
    answers_path = out / "answers.jsonl"
    partial.replace(answers_path)
    return answers_path


#: Columns of ``metrics/vlm_slices.csv``.
SLICE_COLUMNS: tuple[str, ...] = (
    "model_label", "case_id", "grade_true", "slice_index", "task", "run", "status", "stage",
    "label", "p_hgg", "dice", "hd95", "inside", "distance_to_centre_mm",
    "distance_to_tumour_mm", "pred_x", "pred_y", "true_x", "true_y", "width", "height",
    "pred_area_mm2", "ref_area_mm2", "cached", "latency_s", "note",
)  # fmt: skip


def _slice_row(model_label: str, r: SliceRecord) -> dict:
    row = {
        "model_label": model_label,
        "case_id": r.case_id,
        "grade_true": r.grade_true,
        "slice_index": r.slice_index,
        "task": r.task,
        "run": r.run,
        "status": r.status,
        "stage": r.stage,
        "label": r.label,
        "p_hgg": r.p_hgg,
        "width": r.prompt.width,
        "height": r.prompt.height,
        "cached": r.cached,
        "latency_s": r.latency_s,
        "note": r.note,
    }
    if r.score is not None:
        s = r.score
        row.update(
            dice=s.dice,
            hd95=s.hd95,
            inside=s.inside,
            distance_to_centre_mm=s.distance_to_centre_mm,
            distance_to_tumour_mm=s.distance_to_tumour_mm,
            pred_x=s.pred_centre[0] if s.pred_centre else None,
            pred_y=s.pred_centre[1] if s.pred_centre else None,
            true_x=s.true_centre[0] if s.true_centre else None,
            true_y=s.true_centre[1] if s.true_centre else None,
            pred_area_mm2=s.pred_area_mm2,
            ref_area_mm2=s.ref_area_mm2,
        )
    return row


def _status_rows(model_label: str, status: dict[str, dict[str, int]]) -> list[dict]:
    rows = []
    for task, counts in status.items():
        total = sum(counts.values())
        for name, count in counts.items():
            rows.append(
                {
                    "model_label": model_label,
                    "task": task,
                    "status": name,
                    "count": count,
                    "fraction": count / total if total else None,
                }
            )
    return rows


@dataclass(frozen=True)
class _Tables:
    """What :func:`_write_tables` wrote and computed."""

    paths: dict[str, Path]
    status: dict[str, dict[str, int]]
    reports: dict[int, Any]
    consistency: list[dict]


def _write_tables(run: _Inference, metrics: Path) -> _Tables:
    """``metrics/vlm_*.csv`` (see module docstring); tables without rows are not written."""
    label = run.model_label
    paths: dict[str, Path] = {}
    slice_rows = [_slice_row(label, r) for r in run.records]
    paths["slices"] = _write_csv(metrics / "vlm_slices.csv", slice_rows, SLICE_COLUMNS)
    patient_rows = [{"model_label": label, **p.to_dict()} for p in run.patients]
    patient_columns = ["model_label", *PatientRecord.__dataclass_fields__]
    paths["patients"] = _write_csv(metrics / "vlm_patients.csv", patient_rows, patient_columns)
    status = run.status_counts()
    paths["status"] = _write_csv(metrics / "vlm_status.csv", _status_rows(label, status))
    reports, class_rows = run.classification()
    if class_rows:
        columns = list(dict.fromkeys(k for row in class_rows for k in row))
        paths["classification"] = _write_csv(
            metrics / "vlm_classification.csv", class_rows, columns
        )
    loc_rows = run.localisation_rows()
    if loc_rows:
        paths["localisation"] = _write_csv(metrics / "vlm_localisation.csv", loc_rows)
    consistency = run.consistency_rows()
    if consistency:
        paths["consistency"] = _write_csv(
            metrics / "vlm_consistency.csv", consistency, CONSISTENCY_COLUMNS
        )
    return _Tables(paths, status, reports, consistency)


def _manifest(run: _Inference, cohort, chosen, split_info, tables: _Tables, seconds: float) -> dict:
    """The content of ``vlm.json``."""
    config = run.config
    describe = getattr(run.backend, "describe", run.backend.identity)()
    return {
        "model_label": run.model_label,
        "backend": jsonable(describe),
        "identity": jsonable(run.identity),
        "config": jsonable(config.to_dict()),
        "prompt_template_hashes": {t: run.specs[t].template_hash for t in config.tasks},
        "prompts_dir": str(run.specs[config.tasks[0]].template_file.parent),
        "grade_probability_method": (
            "sequence: teacher-forced log-probability of each option's tokens after the prompt "
            "and the answer prefix, softmax over the options"
            if run.identity.get("backend") in ("tiny", "transformers")
            else "first_token_top_logprobs: server top log-probabilities at the label's first token"
        ),
        "split": split_info,
        "data_dir": str(cohort.data_dir or cohort.root),
        "cases": [r.case_id for r in chosen if r.case_id not in run.case_errors],
        "case_errors": run.case_errors,
        "case_notes": run.case_notes,
        "template_warnings": run.template_warnings,
        "queries": len(run.records),
        "asked": run.counts["asked"],
        "cached": run.counts["cached"],
        "failed": sum(r.status == "error" for r in run.records),
        "status_counts": tables.status,
        "seconds": round(seconds, 3),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
