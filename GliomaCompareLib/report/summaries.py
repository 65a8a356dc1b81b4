"""What the report computes from the run's CSV rows itself: means, medians, counts, centres.

Every table that prints one of these says in its notes that the report computed it, and from
which file. Nothing here recomputes a model output.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from GliomaCompareLib.data.statuses import USABLE_STATUSES
from GliomaCompareLib.metrics import centre_collapse
from GliomaCompareLib.report.cells import label, models_of, num
from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.rundata import RunData
from GliomaCompareLib.runlayout import (
    is_finetuned_method,
    is_vlm_method,
    vlm_method,
    vlm_methods_in,
    vlm_name_of,
)
from GliomaCompareLib.vlm.parsing import PARSE_STATUSES

__all__ = [
    "ANSWER_STATUSES",
    "CNN_METHODS",
    "CNN_REGIONS",
    "USABLE_STATUSES",
    "VLM_METHODS",
    "VLM_TASKS",
    "CentreSummary",
    "centre_sentence",
    "centre_summaries",
    "first_run_rows",
    "normalised_centres",
    "run_vlm_methods",
    "summarise_localisation",
    "summarise_segmentation",
    "vlm_rank",
]

#: Answer-format statuses in display order (the parser's own list); any other status found in a
#: run is shown after them.
ANSWER_STATUSES = PARSE_STATUSES
#: The VLM methods of a run with one ``vlm:`` section; a ``vlms:`` run has its own list
#: (:func:`run_vlm_methods`).
VLM_METHODS = ("vlm_base", "vlm_finetuned")
#: the CNN and its untrained baseline (same network, random initialisation), shown together
CNN_METHODS = ("cnn", "cnn_untrained")
VLM_TASKS = ("point", "box", "polygon")
CNN_REGIONS = ("WT", "TC", "ET")


def _values(items: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    return [v for v in (num(r.get(key)) for r in items) if v is not None]


def summarise_segmentation(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per (method, task, region) from per-case rows (means, medians, SDs)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row.get("method"), row.get("task"), row.get("region"))].append(row)
    out = []
    for (method, task, region), items in groups.items():
        entry: dict[str, Any] = {
            "method": method,
            "task": task,
            "region": region,
            "model": models_of(items, method),
        }
        for metric in ("dice", "hd95"):
            values = _values(items, metric)
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else None
            entry[f"{metric}_median"] = statistics.median(values) if values else None
            entry[f"{metric}_std"] = statistics.pstdev(values) if len(values) > 1 else None
            if metric == "dice":
                entry["n"] = len(values)
        out.append(entry)
    return out


def first_run_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows of the first run only (repeats of identical queries belong to consistency)."""
    runs = [num(r.get("run")) for r in rows]
    known = [r for r in runs if r is not None]
    if not known:
        return list(rows)
    first = min(known)
    return [r for r, k in zip(rows, runs, strict=False) if k is None or k == first]


def summarise_localisation(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per (method, task) of slice rows (``metrics/slices.csv``), grade answers
    left out: slices, usable answers, Dice mean and median, HD95 median, points inside the
    tumour (``(inside, scored)``) and the median point distance."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row.get("method"), row.get("task"))].append(row)
    summary = []
    for (method, task), items in groups.items():
        if task == "grade":
            continue
        dice, hd = _values(items, "dice_2d"), _values(items, "hd95_2d")
        inside, dist = _values(items, "point_inside"), _values(items, "point_dist_mm")
        summary.append(
            {
                "method": method,
                "task": task,
                "region": None,
                "model": models_of(items, method),
                "n": len(items),
                "usable": sum(1 for r in items if r.get("status") in USABLE_STATUSES),
                "dice_mean": statistics.fmean(dice) if dice else None,
                "dice_median": statistics.median(dice) if dice else None,
                "hd95_median": statistics.median(hd) if hd else None,
                "inside": (sum(inside), len(inside)) if inside else None,
                "dist_median": statistics.median(dist) if dist else None,
            }
        )
    return summary


@dataclass(frozen=True)
class CentreSummary:
    """Where one method's predicted centres lie, against the true centres.

    Coordinates are normalised to the image: ``u = (x + 0.5) / width``, ``v = (y + 0.5) /
    height`` (0 at the left / top edge, 1 at the right / bottom edge; the image centre is
    (0.5, 0.5)); distances are in those units (fractions of the image side).

    Attributes:
        method, task, model: what produced the predictions.
        n: slices with both a predicted and a true centre.
        pred_from_centre: mean distance of predicted centres from the image centre.
        true_from_centre: the same for the true (ground-truth) centres.
        ratio: ``pred_from_centre / true_from_centre`` (None when the latter is 0).
        pred_to_true: mean distance between predicted and true centre.
        r_x, r_y: Pearson correlation of predicted with true u (and v); None when undefined.
        clustered: whether ``ratio`` is below the report's ``centre_cluster_ratio`` (the
            study's "clustered near the image centre").
        collapse: whether the predicted centres collapsed: their spread against the true
            centres' spread, and how many distinct places they fall on
            (:func:`GliomaCompareLib.metrics.centre_collapse`; ``collapsed``, ``not collapsed``
            or ``undetermined``), and why.
    """

    method: str
    task: str
    model: str
    n: int
    pred_from_centre: float
    true_from_centre: float
    ratio: float | None
    pred_to_true: float
    r_x: float | None
    r_y: float | None
    clustered: bool
    collapse: str = "undetermined"
    collapse_reason: str = ""


def normalised_centres(
    rows: Iterable[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], float, float, float, float]]:
    """``(row, pred_u, pred_v, true_u, true_v)`` for slice rows with both centres and a size.

    ``pred_cx`` / ``pred_cy`` / ``true_cx`` / ``true_cy`` are pixel coordinates ``(x, y) =
    (col, row)`` of a ``width`` x ``height`` slice image (pixel centres at integers).
    """
    out = []
    for row in rows:
        values = [num(row.get(k)) for k in ("pred_cx", "pred_cy", "true_cx", "true_cy")]
        w, h = num(row.get("width")), num(row.get("height"))
        if any(v is None for v in values) or not w or not h:
            continue
        px, py, tx, ty = values
        out.append((row, (px + 0.5) / w, (py + 0.5) / h, (tx + 0.5) / w, (ty + 0.5) / h))
    return out


def _pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 3:
        return None
    try:
        return statistics.correlation(a, b)
    except (statistics.StatisticsError, ValueError, ZeroDivisionError):
        return None


def centre_summaries(run: RunData, options: ReportOptions) -> list[CentreSummary]:
    """One :class:`CentreSummary` per (VLM method, task) from ``metrics/slices.csv``."""
    groups: dict[tuple, list] = defaultdict(list)
    for item in normalised_centres(first_run_rows(run.rows("slices"))):
        row = item[0]
        groups[(row.get("method"), row.get("task"))].append(item)
    out = []
    for (method, task), items in groups.items():
        pu = [i[1] for i in items]
        pv = [i[2] for i in items]
        tu = [i[3] for i in items]
        tv = [i[4] for i in items]
        pred_c = statistics.fmean(
            math.hypot(u - 0.5, v - 0.5) for u, v in zip(pu, pv, strict=False)
        )
        true_c = statistics.fmean(
            math.hypot(u - 0.5, v - 0.5) for u, v in zip(tu, tv, strict=False)
        )
        ratio = pred_c / true_c if true_c > 0 else None
        collapse = centre_collapse(np.column_stack([pu, pv]), np.column_stack([tu, tv]))
        out.append(
            CentreSummary(
                method=method or "?",
                task=task or "?",
                model=models_of([i[0] for i in items], method),
                n=len(items),
                pred_from_centre=pred_c,
                true_from_centre=true_c,
                ratio=ratio,
                pred_to_true=statistics.fmean(
                    math.hypot(a - c, b - d) for a, b, c, d in zip(pu, pv, tu, tv, strict=False)
                ),
                r_x=_pearson(pu, tu),
                r_y=_pearson(pv, tv),
                clustered=ratio is not None and ratio < options.centre_cluster_ratio,
                collapse=collapse.verdict,
                collapse_reason=collapse.reason,
            )
        )
    tasks = {t: i for i, t in enumerate(VLM_TASKS)}
    return sorted(out, key=lambda s: (vlm_rank(s.method), tasks.get(s.task, 9), s.task))


def centre_sentence(s: CentreSummary, options: ReportOptions) -> str:
    head = (
        f"{label(s.method)}, {s.task}: predicted centres lie on average {s.pred_from_centre:.3f} "
        f"(image widths) from the image centre, the true centres {s.true_from_centre:.3f}"
    )
    if s.ratio is None:
        return head + "."
    if s.clustered:
        return (
            head + f" — {s.ratio:.2f} times as far: the predictions cluster near the image "
            f"centre (threshold {options.centre_cluster_ratio:g})."
        )
    text = head + f" — {s.ratio:.2f} times as far: no clustering near the centre by this measure"
    if s.collapse == "collapsed":
        return text + f"; but the predictions have collapsed ({s.collapse_reason})."
    return text + "."


# ------------------------------------------------------------------------------ the run's VLMs
def vlm_rank(method: str) -> tuple:
    """Sort key of VLM methods: ``vlm_base``, ``vlm_finetuned``, then named VLMs by name, each
    base before its fine-tuned model; anything else last."""
    if method in VLM_METHODS:
        return (0, VLM_METHODS.index(method), "")
    if is_vlm_method(method):
        return (1, vlm_name_of(method), int(is_finetuned_method(method)))
    return (2, str(method), 0)


def _listed_vlm_methods(config: Mapping[str, Any]) -> list[str]:
    """The method ids of a manifest config's ``vlms:`` list, in its order (a fine-tuned one
    when the item, or else the top-level ``finetune:``, turns fine-tuning on)."""
    items = config.get("vlms")
    if not isinstance(items, list):
        return []
    shared = config.get("finetune") if isinstance(config.get("finetune"), Mapping) else {}
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not item.get("name"):
            continue
        tune = item.get("finetune", shared.get("enabled", False))
        if isinstance(tune, Mapping):
            tune = tune.get("enabled", shared.get("enabled", False))
        name = str(item["name"])
        out += [vlm_method(name)] + ([vlm_method(name, finetuned=True)] if tune else [])
    return out


def run_vlm_methods(run: RunData) -> tuple[str, ...]:
    """The VLM methods a run compares, in the order its config lists them: a ``vlms:`` run's
    (from the manifest's config, and any found in its tables), else ``vlm_base`` and
    ``vlm_finetuned`` (and any other VLM method its tables hold). Tables and figures list one row
    per method of this list, "not run" where it has none."""
    seen = vlm_methods_in(run.model_labels())
    listed = _listed_vlm_methods(run.config)
    if listed or any(vlm_name_of(m) for m in seen):
        return tuple(vlm_methods_in([*listed, *sorted(seen, key=vlm_rank)]))
    return tuple(vlm_methods_in([*VLM_METHODS, *seen]))
