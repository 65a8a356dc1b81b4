"""The report's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

matplotlib is imported inside the functions (and only ``matplotlib.figure`` and the Agg canvas,
never ``pyplot``), so importing this module is cheap and building a report never changes the
backend of a program that embeds it (3D Slicer, a notebook).

Figures: confusion matrices per method; Dice distributions per method (3D and per slice) with
the published Dice marked; VLM-predicted centres against true centres in normalised image
coordinates; one gallery panel per case (FLAIR, ground-truth and CNN contours, VLM point / box /
polygon). Every figure drawn from a tiny random-weight model says so in its own title.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from GliomaCompareLib.geometry import Box, Point, Polygon
from GliomaCompareLib.report.cells import label, method_order, num
from GliomaCompareLib.report.gallery import GALLERY_TASKS, CaseGallery
from GliomaCompareLib.report.headline import Difference
from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.published import Published, PublishedFigure
from GliomaCompareLib.report.rundata import TINY_LABEL, RunData, is_tiny
from GliomaCompareLib.report.summaries import (
    ANSWER_STATUSES,
    USABLE_STATUSES,
    VLM_METHODS,
    VLM_TASKS,
    CentreSummary,
    centre_summaries,
    first_run_rows,
    normalised_centres,
    run_vlm_methods,
    vlm_rank,
)
from GliomaCompareLib.runlayout import (
    METHODS,
    is_vlm_method,
    method_label,
)

__all__ = [
    "METHOD_COLOURS",
    "ReportFigure",
    "answer_png",
    "answer_status_figure",
    "centre_figure",
    "confusion_figure",
    "dice_by_group_figure",
    "dice_figure",
    "forest_figure",
    "gallery_png",
    "method_colour",
    "published_differences",
    "roc_calibration_figure",
    "wrap_name",
]

#: Colours per method (and the ground truth) used in every figure.
METHOD_COLOURS = {
    "gt": "#2ca02c",
    "cnn": "#ff7f0e",
    "vlm_base": "#17becf",
    "vlm_finetuned": "#e377c2",
}
#: The colour of a raw answer's geometry drawn on its slice.
ANSWER_COLOUR = "#ff2fd0"
#: Colours of the methods not in :data:`METHOD_COLOURS` (further VLMs of a run), in turn.
EXTRA_COLOURS = ("#1f77b4", "#9467bd", "#8c564b", "#bcbd22", "#7f7f7f", "#d62728", "#2f4f4f")
TASK_MARKERS = {"point": "o", "box": "s", "polygon": "^"}
#: Most panels side by side in a figure of one panel per method (more wrap to the next row).
PANELS_PER_ROW = 4
#: At most this many dots per box in the Dice strip plots (a fixed random sample beyond it).
MAX_DOTS = 300


@dataclass(frozen=True)
class ReportFigure:
    """A drawn figure.

    Attributes:
        key: anchor name.
        title: heading.
        caption: what it shows and what produced it.
        png: the PNG bytes, or None when there was nothing to draw (see ``status_detail``).
        tiny: whether it shows outputs of the tiny random-weight VLM.
        status_detail: why it is missing.
    """

    key: str
    title: str
    caption: str
    png: bytes | None
    tiny: bool = False
    status_detail: str = ""


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _label(method: str) -> str:
    return method_label(method)


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure: its own for the CNN and the two study VLMs, and
    for any other method one of :data:`EXTRA_COLOURS` fixed by its name (the same in every figure
    of a run, whatever else the run holds)."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return EXTRA_COLOURS[sum(method.encode("utf-8")) % len(EXTRA_COLOURS)]


def _run_methods(rows, key: str = "method") -> list[str]:
    """The methods of ``rows`` in report order (the study's methods, then any other VLM), without
    the majority-class baseline."""
    return method_order({r.get(key) for r in rows if r.get(key) and r.get(key) != "majority"})


def _grid(fig, count: int):
    """``count`` axes, at most :data:`PANELS_PER_ROW` a row (the unused ones removed)."""
    cols = min(count, PANELS_PER_ROW)
    rows = -(-count // cols)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.remove()
    return axes[:count]


def _model_text(run: RunData, methods: Sequence[str]) -> tuple[str, bool]:
    labels = run.model_labels()
    parts, tiny = [], False
    for method in methods:
        models = labels.get(method) or []
        tiny = tiny or any(is_tiny(m) for m in models)
        if models:
            parts.append(f"{_label(method)}: {'; '.join(models)}")
    return "; ".join(parts), tiny


def _suptitle(fig, title: str, tiny: bool) -> None:
    if tiny:
        title += f"\n[{TINY_LABEL}: numbers say nothing about real VLMs]"
    fig.suptitle(title, fontsize=10, color="#b00020" if tiny else "black")


# --------------------------------------------------------------------------- confusion matrices


def confusion_figure(run: RunData, options: ReportOptions) -> ReportFigure:
    """2 x 2 confusion matrices (rows: true LGG / HGG; columns: predicted), one per method, from
    ``metrics/classification.csv``; a "no valid grade" column is added when a method gave
    invalid answers (split by true grade from ``metrics/grades.csv`` when present)."""
    key, title = "fig-confusion", "Confusion matrices"
    # one rule for every method: the fixed one (CNN P(HGG) >= 0.5, VLM majority vote); the
    # validation-tuned rule's counts are in the classification table
    rows = {
        r.get("method"): r
        for r in run.rows("classification")
        if r.get("decision") in (None, "", "fixed")
    }
    methods = _run_methods(rows.values())
    if not methods:
        return ReportFigure(key, title, "", None, status_detail="no classification rows")
    invalid_split: dict[str, list[int]] = {}
    for g in run.rows("grades"):
        m = g.get("method")
        pred = (g.get("grade_pred") or "").upper()
        if m in rows and pred not in ("HGG", "LGG"):
            split = invalid_split.setdefault(m, [0, 0])
            split[1 if (g.get("grade_true") or "").upper() == "HGG" else 0] += 1
    models, tiny = _model_text(run, methods)
    cols = min(len(methods), PANELS_PER_ROW)
    fig = _figure(3.3 * cols, 3.4 * -(-len(methods) // cols))
    for ax, method in zip(_grid(fig, len(methods)), methods, strict=True):
        r = rows[method]
        counts = [[num(r.get(k)) or 0 for k in pair] for pair in (("tn", "fp"), ("fn", "tp"))]
        n_invalid = int(num(r.get("n_invalid")) or 0)
        heads = ["LGG", "HGG"]
        if n_invalid and method in invalid_split:
            counts[0].append(invalid_split[method][0])
            counts[1].append(invalid_split[method][1])
            heads.append("no valid\ngrade")
        matrix = np.asarray(counts, dtype=float)
        row_sums = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}\n({100 * share[i, j]:.0f}%)",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(heads)), heads, fontsize=9)
        ax.set_yticks([0, 1], ["LGG", "HGG"], fontsize=9)
        ax.set_xlabel("predicted", fontsize=9)
        ax.set_ylabel("true", fontsize=9)
        sub = _label(method)
        if n_invalid and method not in invalid_split:
            sub += f"\n(+{n_invalid} without a valid grade)"
        if any(is_tiny(m) for m in run.model_labels().get(method, [])):
            sub += f"\n{TINY_LABEL}"
        ax.set_title(sub, fontsize=9)
    _suptitle(fig, "Confusion matrices, fixed rule (shares of each true grade)", tiny)
    caption = (
        "Rows: true grade; columns: predicted grade; colour: share of the true grade. From "
        f"metrics/classification.csv. Produced by {models or 'models not recorded'}."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)


# --------------------------------------------------------------------------- ROC and calibration


def roc_calibration_figure(run: RunData, options: ReportOptions) -> ReportFigure:
    """ROC curves of P(HGG) per method (AUC and the number of patients scored in the legend)
    and a reliability diagram (Brier score in the legend), from ``metrics/roc.csv`` and
    ``metrics/calibration.csv``."""
    key, title = "fig-roc", "ROC curves and calibration of P(HGG)"
    roc, cal = run.rows("roc"), run.rows("calibration")
    methods = _run_methods(roc)
    if not methods:
        return ReportFigure(key, title, "", None, status_detail="no ROC rows")
    fixed = {
        r.get("method"): r
        for r in run.rows("classification")
        if r.get("decision") in (None, "", "fixed")
    }
    models, tiny = _model_text(run, methods)
    fig = _figure(9.6, 4.3 + 0.2 * (len(methods) + 1))
    left, right = fig.subplots(1, 2)
    for method in methods:
        points = sorted(
            (r for r in roc if r.get("method") == method), key=lambda r: num(r.get("point")) or 0
        )
        info = fixed.get(method, {})
        name = _label(method).replace("\n", " ")
        left.step(
            [num(r.get("fpr")) for r in points], [num(r.get("tpr")) for r in points],
            where="post", label=_auc_legend(name, info), color=method_colour(method),
        )  # fmt: skip
        bins = [r for r in cal if r.get("method") == method]
        brier = num(info.get("brier"))
        right.plot(
            [num(r.get("mean_predicted")) for r in bins],
            [num(r.get("observed")) for r in bins],
            marker="o",
            color=method_colour(method),
            label=f"{name}: Brier {brier:.3f}" if brier is not None else name,
        )
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    right.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for ax, xlabel, ylabel in (
        (left, "1 − specificity (LGG called HGG)", "sensitivity (HGG recall)"),
        (right, "mean predicted P(HGG) in the bin", "observed share of HGG"),
    ):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=10)
        ax.tick_params(labelsize=10)
        # below the plot: with several methods a legend inside would hide the curves
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    left.set_title("ROC", fontsize=10)
    right.set_title("Reliability diagram", fontsize=10)
    _suptitle(fig, title, tiny)
    caption = (
        "Left: ROC of each method's patient-level P(HGG) on the test patients (AUC with its "
        "bootstrap 95% CI, on the patients with a score). Right: test patients binned by P(HGG); a calibrated method lies "
        "on the diagonal. From metrics/roc.csv and metrics/calibration.csv. Produced by "
        f"{models or 'models not recorded'}."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)


def _auc_legend(name: str, info) -> str:
    """``"VLM (base): AUC 0.712 [0.50, 0.90], n=10"`` (the CI when the table has one)."""
    auc, n = num(info.get("auc")), num(info.get("auc_n")) or num(info.get("n"))
    if auc is None:
        return name
    low, high = num(info.get("auc_ci_low")), num(info.get("auc_ci_high"))
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{name}: AUC {auc:.3f}{ci}, n={int(n or 0)}"


# --------------------------------------------------------------------------- Dice distributions


def wrap_name(name: str, width: int = 12) -> str:
    """``name`` on lines of at most about ``width`` characters, broken after a space or an
    underscore (``"vlm_qwen25_vl_7b_instruct"`` -> ``"vlm_qwen25_\nvl_7b_\ninstruct"``), so a long
    method id under a narrow box does not run into its neighbours' labels."""
    lines, line = [], ""
    for part in re.findall(r"[^ _]+[ _]?|[ _]", name):
        if line and len(line) + len(part.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += part
    return "\n".join([*lines, line.rstrip()]) if line.strip() else "\n".join(lines)


def _group_label(method: str, task: str, region: str | None) -> str:
    name = wrap_name(_label(method).replace(" (", "\n("))
    return f"{name}\n{region if task == 'seg' and region else task}"


def _distribution(ax, groups: list[tuple[str, str, str, list[float]]], published_marks) -> None:
    rng = np.random.default_rng(0)  # jitter only; deterministic
    data = [values for *_, values in groups]
    positions = np.arange(1, len(groups) + 1)
    ax.boxplot(
        data,
        positions=positions,
        widths=0.55,
        showfliers=False,
        medianprops={"color": "black"},
    )
    for pos, (method, _, _, values) in zip(positions, groups, strict=True):
        shown = np.asarray(values, dtype=float)
        if shown.size > MAX_DOTS:  # the box shows all values; the dots a fixed random sample
            shown = rng.choice(shown, MAX_DOTS, replace=False)
        x = pos + rng.uniform(-0.18, 0.18, size=shown.size)
        ax.scatter(x, shown, s=9, alpha=0.6, color=method_colour(method), lw=0)
    for predicate, value, text in published_marks:
        hit = [p for p, g in zip(positions, groups, strict=True) if predicate(g)]
        if hit:
            ax.hlines(value, min(hit) - 0.4, max(hit) + 0.4, colors="#d62728", linestyles="--")
            ax.text(
                min(hit) - 0.4,
                value + 0.012,
                text,
                color="#d62728",
                fontsize=10,
                va="bottom",
                bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
            )
    ax.set_xticks(positions, [_group_label(m, t, r) for m, t, r, _ in groups], fontsize=10)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("Dice", fontsize=10)
    ax.tick_params(axis="y", labelsize=10)
    ax.grid(axis="y", alpha=0.3)


def _order(method: str, task: str, region: str | None) -> tuple:
    """CNN regions first, then the VLM grouped by task (base beside fine-tuned), as the tables."""
    tasks = {"seg": 0, "point": 1, "box": 2, "polygon": 3}
    regions = {"WT": 0, "TC": 1, "ET": 2}
    m = (METHODS.index(method), "", 0) if method in METHODS else (9, *vlm_rank(method)[1:])
    return (
        method != "cnn",
        tasks.get(task, 9),
        m,
        regions.get(region or "", 9),
        task,
        region or "",
    )


def dice_figure(run: RunData, published: Published, options: ReportOptions) -> ReportFigure:
    """Box and strip plots of per-case 3D Dice (``segmentation.csv``) and per-slice 2D Dice
    (``slices.csv``, first run) per method, task and region, with the published Dice marked."""
    key, title = "fig-dice", "Dice distributions per method"
    seg: dict[tuple, list[float]] = defaultdict(list)
    for r in run.rows("segmentation"):
        d = num(r.get("dice"))
        if d is not None and r.get("method") and r.get("task"):
            seg[(r["method"], r["task"], r.get("region"))].append(d)
    slices: dict[tuple, list[float]] = defaultdict(list)
    for r in first_run_rows(run.rows("slices")):
        d = num(r.get("dice_2d"))
        if d is not None and r.get("method") and r.get("task") not in (None, "grade"):
            slices[(r["method"], r["task"], None)].append(d)
    panels = [(name, g) for name, g in (("3D, per case", seg), ("2D, per slice", slices)) if g]
    if not panels:
        return ReportFigure(
            key, title, "", None, status_detail="no per-case or per-slice Dice in the run"
        )
    marks = []
    for fig_ in published.figures_for("segmentation"):
        marks.append(
            (
                # the study's CNN Dice is a whole-tumour Dice: drawn over WT only
                lambda g, m=fig_.method: g[0] == m and g[2] in (None, "WT"),
                fig_.number,
                f"published {_label(fig_.method)} WT {fig_.text}",
            )
        )
    for fig_ in published.figures_for("localisation"):
        marks.append(
            (
                lambda g, t=fig_.task: is_vlm_method(str(g[0])) and g[1] == t,
                fig_.number,
                f"published {fig_.task} {fig_.text}",
            )
        )
    methods = sorted({k[0] for _, g in panels for k in g}, key=lambda m: _order(m, "", None))
    _, tiny = _model_text(run, methods)
    # panels one above the other, so the figure fits the page at 100% zoom
    width = min(15.0, max(6.0, max(1.05 * len(g) + 1.5 for _, g in panels)))
    fig = _figure(width, 4.0 * len(panels) + 0.4)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, groups) in zip(axes, panels, strict=True):
        ordered = [(*k, groups[k]) for k in sorted(groups, key=lambda k: _order(*k))]
        _distribution(ax, ordered, marks)
        ax.set_title(
            f"Dice {name} (n per box: " + ", ".join(str(len(g[3])) for g in ordered) + ")",
            fontsize=10,
        )
    _suptitle(
        fig, f"Dice distributions (box: quartiles of all; dots: up to {MAX_DOTS} per box)", tiny
    )
    caption = (
        "Per-case 3D Dice (metrics/segmentation.csv) and per-slice 2D Dice (metrics/slices.csv, "
        f"first run); red dashed: the study's published Dice ({published.citation.short}). "
        "Models: see the tables' legends."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)


# --------------------------------------------------------------------------- Dice by group

#: How the scopes of ``dice_by_group.csv`` are said in the figure's labels.
GROUP_SCOPES = {"3d": "3D volume", "slices": "slices it saw", "cnn_same_slices": "same slices"}
_LEVEL_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def _series_label(method: str, task: str, region: str, scope: str) -> str:
    """``"3D CNN · WT · 3D volume"``, ``"VLM (base) · box · WT · slices it saw"``, or for the
    CNN on a VLM's slices ``"3D CNN · WT · VLM (base)'s box slices"``."""
    if scope == "cnn_same_slices":
        return f"{label('cnn')} · {region} · {label(method)}'s {task} slices"
    what = region if task == "seg" else f"{task} · {region}"
    return f"{label(method)} · {what} · {GROUP_SCOPES.get(scope, scope)}"


def _series_order(key: tuple[str, str, str, str]) -> tuple:
    method, task, region, scope = key
    rank = method_order([method, "cnn", "cnn_untrained", *VLM_METHODS]).index(method)
    tasks = {"seg": 0, "point": 1, "box": 2, "polygon": 3}
    scopes = {"3d": 0, "slices": 1, "cnn_same_slices": 2}
    regions = {"WT": 0, "TC": 1, "ET": 2}
    return (scope != "3d", rank, method, tasks.get(task, 9), task, scopes.get(scope, 9),
            regions.get(region, 9), region)  # fmt: skip


def _group_panel(ax, rows, series, group: str) -> None:
    """One panel of :func:`dice_by_group_figure`: a bar per (series, level), mean Dice, with
    the mean and the number of patients written at the bar's end."""
    levels = list(dict.fromkeys(r["level"] for r in rows if r.get("group") == group))
    if group == "grade":
        levels = [v for v in ("HGG", "LGG") if v in levels] + [
            v for v in levels if v not in ("HGG", "LGG")
        ]
    height = 0.8 / max(1, len(levels))
    values = {(r["key"], r["level"]): r for r in rows if r.get("group") == group}
    for j, level in enumerate(levels):
        colour = _LEVEL_COLOURS[j % len(_LEVEL_COLOURS)]
        named = False
        for i, key in enumerate(series):
            r = values.get((key, level))
            if r is None:
                continue
            y = i - 0.4 + height * (j + 0.5)
            mean = num(r.get("dice_mean")) or 0.0
            ax.barh(y, mean, height=height * 0.9, color=colour, label=None if named else level)
            named = True
            ax.text(min(mean, 1.0) + 0.01, y, f"{mean:.2f} (n {int(num(r.get('n')) or 0)})",
                    va="center", fontsize=9)  # fmt: skip
    ax.set_yticks(range(len(series)), [_series_label(*k) for k in series], fontsize=10)
    ax.set_ylim(len(series) - 0.5, -0.5)
    ax.set_xlim(0, 1.22)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.tick_params(axis="x", labelsize=10)
    ax.set_xlabel("mean Dice", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        "by grade" if group == "grade" else "by tumour size (WT volume)", fontsize=10, pad=22
    )
    ax.legend(fontsize=10, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(levels),
              frameon=False, borderaxespad=0.1)  # fmt: skip


def dice_by_group_figure(run: RunData, options: ReportOptions) -> ReportFigure:
    """Mean Dice per group of test patients (grade HGG / LGG; reference whole-tumour volume
    below / above the median), from ``metrics/dice_by_group.csv``: one line per method, task,
    region and what was scored (the CNN's 3D volume, the VLM's slices, the CNN on those same
    slices), methods named as in the tables, one panel per grouping."""
    key, title = "fig-dice-by-group", "Dice by grade and by tumour size"
    rows = []
    for r in run.rows("dice_by_group"):
        if (
            r.get("method")
            and r.get("group")
            and r.get("level")
            and num(r.get("dice_mean")) is not None
        ):
            k = (r["method"], r.get("task") or "", r.get("region") or "", r.get("scope") or "")
            rows.append({**r, "key": k})
    groups = [g for g in ("grade", "size") if any(r["group"] == g for r in rows)]
    groups += sorted({r["group"] for r in rows} - set(groups))
    if not groups:
        return ReportFigure(
            key, title, "", None, status_detail="no rows in metrics/dice_by_group.csv"
        )
    series = sorted({r["key"] for r in rows}, key=_series_order)
    _, tiny = _model_text(run, sorted({k[0] for k in series}))
    fig = _figure(6.2 * len(groups) + 2.6, 1.6 + 0.42 * len(series))
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
    for ax, group in zip(axes, groups, strict=True):
        _group_panel(ax, rows, series, group)
        if ax is not axes[0]:
            ax.tick_params(axis="y", labelleft=False)
    _suptitle(fig, "Mean Dice per group of test patients", tiny)
    caption = (
        "Bars: mean Dice of the patients in each group (n: patients), from "
        "metrics/dice_by_group.csv. 3D volume: the CNN's per-case 3D Dice per region; slices it "
        "saw: a VLM's per-slice Dice on the slices it was asked about (per patient first); same "
        "slices: the CNN's Dice on exactly those slices (like for like). Size groups split at "
        "the median reference WT volume of the test patients. Small groups (a few LGG "
        "patients) move with one patient."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)


# --------------------------------------------------------------------------- answer statuses

#: Colours of the parse statuses: usable ones green to yellow, failures red to grey.
STATUS_COLOURS = {
    "ok": "#2ca02c",
    "repaired": "#98df8a",
    "pattern": "#dbdb8d",
    "invalid": "#d62728",
    "refused": "#9467bd",
    "empty": "#ff9896",
    "error": "#7f7f7f",
}


def answer_status_figure(run: RunData, options: ReportOptions) -> ReportFigure:
    """The answer-status bars: per VLM method and task, the share of answers of each parse
    status (``metrics/answer_status.csv``), usable statuses first; the usable share printed at
    the bar's end."""
    key, title = "fig-answer-status", "Answer status per method and task"
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in run.rows("answer_status"):
        n = num(r.get("count"))
        if r.get("method") and r.get("task") and r.get("status") and n is not None:
            cell = counts[(r["method"], r["task"])]
            cell[r["status"]] = cell.get(r["status"], 0.0) + n
    if not counts:
        return ReportFigure(
            key, title, "", None, status_detail="no rows in metrics/answer_status.csv"
        )
    order = {t: i for i, t in enumerate(("grade", *VLM_TASKS))}
    methods = method_order({m for m, _ in counts})
    bars = sorted(counts, key=lambda k: (methods.index(k[0]), order.get(k[1], 9), k[1]))
    statuses = [s for s in ANSWER_STATUSES if any(s in counts[b] for b in bars)]
    statuses += sorted({s for b in bars for s in counts[b]} - set(statuses))
    _, tiny = _model_text(run, sorted({m for m, _ in bars}))
    fig = _figure(11.0, 1.6 + 0.36 * len(bars))
    ax = fig.subplots()
    labelled: set[str] = set()
    for i, bar in enumerate(bars):
        total = sum(counts[bar].values()) or 1.0
        left = 0.0
        for status in statuses:
            share = counts[bar].get(status, 0.0) / total
            if not share:
                continue
            ax.barh(i, share, left=left, height=0.7, color=STATUS_COLOURS.get(status, "#c7c7c7"),
                    edgecolor="white", label=None if status in labelled else status)  # fmt: skip
            labelled.add(status)
            if share >= 0.08:
                ax.text(
                    left + share / 2, i, f"{100 * share:.0f}%", ha="center", va="center", fontsize=9
                )
            left += share
        usable = sum(counts[bar].get(s, 0.0) for s in USABLE_STATUSES) / total
        ax.text(1.01, i, f"usable {100 * usable:.0f}% of {int(total)}", va="center", fontsize=10)
    ax.set_yticks(range(len(bars)), [f"{label(m)} · {t}" for m, t in bars], fontsize=10)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=10)
    ax.set_xlabel("share of the answers", fontsize=10)
    fig.legend(fontsize=10, ncol=len(statuses), loc="outside lower center", frameon=False)
    _suptitle(fig, title, tiny)
    caption = (
        f"Parse status of every answer (repeats included), from metrics/answer_status.csv. "
        f"Usable: {', '.join(USABLE_STATUSES)} (the answer's value is scored); every other "
        "status is scored as a failure, never dropped."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)


# --------------------------------------------------------------------------- centres


def centre_figure(run: RunData, options: ReportOptions) -> ReportFigure:
    """Predicted against true centres in normalised image coordinates, one panel per VLM
    method, image centre marked; the mean distances from the centre are printed per task."""
    from matplotlib.patches import Rectangle

    key, title = "fig-centres", "Predicted vs true centres"
    items = normalised_centres(first_run_rows(run.rows("slices")))
    by_method: dict[str, list] = defaultdict(list)
    for item in items:
        by_method[item[0].get("method") or "?"].append(item)
    methods = [m for m in (*run_vlm_methods(run), *sorted(by_method)) if m in by_method]
    methods = list(dict.fromkeys(methods))
    if not methods:
        return ReportFigure(
            key,
            title,
            "",
            None,
            status_detail="metrics/slices.csv has no rows with both a predicted and a true centre",
        )
    summaries: dict[tuple[str, str], CentreSummary] = {
        (s.method, s.task): s for s in centre_summaries(run, options)
    }
    _, tiny = _model_text(run, methods)
    cols = min(len(methods), 3)  # a 5.2 in panel each: three fit the page at 80 dpi
    fig = _figure(5.2 * cols, 5.7 * -(-len(methods) // cols))
    axes = list(fig.subplots(-(-len(methods) // cols), cols, squeeze=False).ravel())
    for ax in axes[len(methods) :]:
        ax.remove()
    for ax, method in zip(axes, methods, strict=False):
        group = by_method[method]
        tasks = [
            t
            for t in (*VLM_TASKS, *sorted({i[0].get("task") for i in group}))
            if any(i[0].get("task") == t for i in group)
        ]
        tasks = list(dict.fromkeys(tasks))
        colours = dict(
            zip(tasks, ("#1f77b4", "#d62728", "#9467bd", "#8c564b", "#7f7f7f"), strict=False)
        )
        true_u = [i[3] for i in group]
        true_v = [i[4] for i in group]
        if len(group) <= 600:
            for _, pu, pv, tu, tv in group:
                ax.plot([tu, pu], [tv, pv], color="grey", lw=0.4, alpha=0.35, zorder=1)
        ax.scatter(
            true_u,
            true_v,
            s=16,
            facecolors="none",
            edgecolors=METHOD_COLOURS["gt"],
            lw=0.8,
            label="true centre",
            zorder=2,
        )
        for task in tasks:
            sel = [i for i in group if i[0].get("task") == task]
            s = summaries.get((method, task))
            extra = (
                ""
                if s is None
                else f" (mean dist. {s.pred_from_centre:.2f} vs true {s.true_from_centre:.2f})"
            )
            ax.scatter(
                [i[1] for i in sel],
                [i[2] for i in sel],
                s=30,
                alpha=0.85,
                marker=TASK_MARKERS.get(task, "o"),
                color=colours.get(task, "grey"),
                lw=0,
                label=f"{task}{extra}",
                zorder=3,  # predicted centres above the connecting lines and true centres
            )
        ax.scatter(
            [0.5], [0.5], marker="+", s=220, color="black", lw=1.5, label="image centre", zorder=5
        )
        ax.add_patch(Rectangle((0, 0), 1, 1, fill=False, lw=0.8, color="black"))
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(1.02, -0.02)  # image rows grow downwards
        ax.set_aspect("equal")
        ax.set_xlabel("x / width (0 = left edge)", fontsize=10)
        ax.set_ylabel("y / height (0 = top edge)", fontsize=10)
        ax.tick_params(labelsize=10)
        sub = _label(method)
        if any(is_tiny(m) for m in run.model_labels().get(method, [])):
            sub += f" — {TINY_LABEL}"
        ax.set_title(sub, fontsize=10)
        ax.legend(fontsize=9, loc="lower left", framealpha=0.85)
    _suptitle(fig, "VLM-predicted centres (filled) against true centres (open circles)", tiny)
    caption = (
        "Normalised image coordinates (radiological view as the VLM saw it); thin lines join a "
        "slice's predicted and true centre. From metrics/slices.csv (first run)."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)


# --------------------------------------------------------------------------- gallery


def _draw_geometry(ax, geometry, colour: str, task: str) -> None:
    from matplotlib.patches import Polygon as PolygonPatch
    from matplotlib.patches import Rectangle

    if isinstance(geometry, Point):
        ax.plot([geometry.x], [geometry.y], marker="X", ms=9, mew=1.0, mec="black", color=colour)
    elif isinstance(geometry, Box):
        ax.add_patch(
            Rectangle(
                (geometry.x0 - 0.5, geometry.y0 - 0.5),
                geometry.width,
                geometry.height,
                fill=False,
                ec=colour,
                lw=1.4,
            )
        )
    elif isinstance(geometry, Polygon):
        ax.add_patch(
            PolygonPatch(geometry.as_array(), closed=True, fill=False, ec=colour, lw=1.4, ls="--")
        )


def gallery_png(
    gallery: CaseGallery, heading: str, options: ReportOptions, tiny: bool = False
) -> bytes:
    """One case's gallery panel: FLAIR, ground truth (green contour), CNN (orange contour), VLM
    base (cyan) and fine-tuned (magenta) point (X), box (solid) and polygon (dashed).

    Args:
        gallery: the case's slice and answers.
        heading: the panel title (case id and what it was picked for).
        options: report options (dpi).
        tiny: whether any VLM answer came from the tiny random-weight model (said in the title).

    Returns:
        PNG bytes.
    """
    from matplotlib.lines import Line2D

    fig = _figure(3.9, 4.9)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(gallery.flair, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    handles = []
    for name, mask in (("gt", gallery.gt), ("cnn", gallery.cnn)):
        if mask is not None and mask.any() and not mask.all():
            ax.contour(
                mask.astype(float), levels=[0.5], colors=[METHOD_COLOURS[name]], linewidths=1.3
            )
        if mask is not None:
            label = "ground truth (WT)" if name == "gt" else "CNN (WT)"
            handles.append(Line2D([], [], color=METHOD_COLOURS[name], lw=1.3, label=label))
    for method, tasks in gallery.answers.items():
        colour = method_colour(method)
        drawn = False
        for task in (*GALLERY_TASKS, *[t for t in tasks if t not in GALLERY_TASKS]):
            answer = tasks.get(task)
            if answer is not None and answer.geometry is not None:
                _draw_geometry(ax, answer.geometry, colour, task)
                drawn = True
        if drawn:
            handles.append(Line2D([], [], color=colour, lw=1.4, label=_label(method)))
    ax.set_xticks([])
    ax.set_yticks([])
    _orientation(ax)
    h, w = gallery.shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if handles:
        ax.legend(
            handles=handles,
            fontsize=10,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.01),
            ncol=2,
            frameon=False,
        )
    title = heading if not tiny else f"{heading}\n[VLM: {TINY_LABEL}]"
    ax.set_title(title, fontsize=10, color="#b00020" if tiny else "black")
    return _png(fig, options.dpi)


def answer_png(
    flair: np.ndarray,
    geometry,
    heading: str,
    options: ReportOptions,
    *,
    gt: np.ndarray | None = None,
    tiny: bool = False,
) -> bytes:
    """One raw answer on the slice the VLM saw: the FLAIR image, the whole tumour (green
    contour) when known, the answer's point (X), box (solid) or polygon (dashed) in magenta, and
    the R / L marks.

    Args:
        flair: uint8 ``(H, W)``, the image as the VLM saw it (radiological view).
        geometry: the parsed answer in pixel coordinates of ``flair`` (None: nothing to draw).
        heading: the panel title.
        options: report options (dpi).
        gt: bool ``(H, W)``, the whole tumour on the slice, or None.
        tiny: whether the answer came from the tiny random-weight model (said in the title).

    Returns:
        PNG bytes.
    """
    fig = _figure(3.7, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(flair, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if gt is not None and gt.any() and not gt.all():
        ax.contour(gt.astype(float), levels=[0.5], colors=[METHOD_COLOURS["gt"]], linewidths=1.2)
    if geometry is not None:
        _draw_geometry(ax, geometry, ANSWER_COLOUR, "")
    ax.set_xticks([])
    ax.set_yticks([])
    _orientation(ax)
    h, w = flair.shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    title = heading if not tiny else f"{heading}\n[{TINY_LABEL}]"
    ax.set_title(title, fontsize=10, color="#b00020" if tiny else "black")
    return _png(fig, options.dpi)


def _orientation(ax) -> None:
    """R / L marks at the image's left and right edges (radiological view: the patient's right
    on the image's left)."""
    style = {"fontsize": 11, "fontweight": "bold", "color": "yellow", "va": "center"}
    ax.text(0.02, 0.5, "R", transform=ax.transAxes, ha="left", **style)
    ax.text(0.98, 0.5, "L", transform=ax.transAxes, ha="right", **style)


# --------------------------------------------------------------------------- forest plot

#: How the forest plot marks the study's published values.
PUBLISHED_COLOUR = "#d62728"


@dataclass(frozen=True)
class PublishedDifference:
    """A difference of two published figures of the same kind: CNN minus a VLM.

    The study published no paired difference; this is its CNN's figure minus its VLM's, both on
    the study's own test set (different data from this run), with no CI.

    Attributes:
        metric: e.g. ``"accuracy"``.
        vlm: the VLM method the figure is published for (``vlm_base``...).
        cnn, other: the two published figures.
    """

    metric: str
    vlm: str
    cnn: PublishedFigure
    other: PublishedFigure

    @property
    def value(self) -> float:
        return self.cnn.number - self.other.number

    @property
    def text(self) -> str:
        """``"0.80 − 0.76 = +0.04"``."""
        digits = max(len(f.value.partition(".")[2]) for f in (self.cnn, self.other))
        return f"{self.cnn.value} − {self.other.value} = {self.value:+.{digits}f}"


def published_differences(
    published: Published | None,
) -> dict[tuple[str, str], PublishedDifference]:
    """(metric, VLM method) -> the study's CNN figure minus its VLM figure, where the study
    published both as exact values (no "up to") on the same line (e.g. the abstract's
    accuracies): the only published quantities comparable with the forest plot's differences."""
    if published is None:
        return {}
    figures = [f for f in published.figures_for("classification") if not f.qualifier]
    out = {}
    for cnn in (f for f in figures if f.method == "cnn"):
        for other in figures:
            if other.method in ("cnn", "majority", "vlm") or other.metric != cnn.metric:
                continue
            if other.row == cnn.row:
                out.setdefault(
                    (cnn.metric, other.method),
                    PublishedDifference(cnn.metric, other.method, cnn, other),
                )
    return out


def _published_mark(d: Difference, marks: dict) -> PublishedDifference | None:
    """The published difference to mark beside ``d``: the fixed rule's grading lines only (the
    study's CNN at P(HGG) 0.5, its VLM by majority vote)."""
    if d.question != "grading" or d.rule != "fixed rule":
        return None
    return marks.get((d.metric, d.vlm))


def forest_figure(
    differences: Sequence[Difference],
    options: ReportOptions,
    tiny: bool,
    published: Published | None = None,
):
    """The paired differences of the headline (CNN minus each VLM) with their 95% CIs and
    p-values, one line each: accuracy and balanced accuracy per decision rule, like-for-like
    Dice per task. Right of zero: the CNN is better. Where the study published a comparable
    quantity (its CNN's accuracy and its VLM's, in the abstract), their difference is marked
    beside the line as "published (different data)", never mixed into ours."""
    from matplotlib.lines import Line2D

    key, title = "fig-forest", "Paired differences, CNN minus VLM (95% CI)"
    if not differences:
        return ReportFigure(key, title, "", None, status_detail="no paired differences in the run")
    marks = published_differences(published)
    fig = _figure(10.0, 1.3 + 0.3 * len(differences) + (0.3 if marks else 0.0))
    ax = fig.subplots()
    ys = list(range(len(differences)))[::-1]
    marked = []
    for y, d in zip(ys, differences, strict=True):
        colour = method_colour(d.vlm)
        if d.low is not None and d.high is not None:
            ax.plot([d.low, d.high], [y, y], color=colour, linewidth=2)
        ax.plot([d.value], [y], marker="s" if d.question == "grading" else "o", color=colour)
        p = "p n/a" if d.p is None else f"p = {d.p:.2g}"
        ax.annotate(p, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=10)
        mark = _published_mark(d, marks)
        if mark is not None:
            ax.plot([mark.value], [y], marker="D", ms=8, mfc="none", mec=PUBLISHED_COLOUR, mew=1.6)
            marked.append(mark)
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(ys, [d.label for d in differences], fontsize=10)
    ax.set_ylim(-0.6, len(differences) - 0.4)
    ax.set_xlim(-1.05, 1.05)
    ax.tick_params(labelsize=10)
    ax.set_xlabel("3D CNN minus VLM (line: 95% CI); right of 0: the CNN is better", fontsize=10)
    if marked:
        fig.legend(
            handles=[Line2D([], [], ls="none", marker="D", ms=8, mfc="none", mec=PUBLISHED_COLOUR,
                            mew=1.6, label="published (different data): the study's CNN minus "
                            "VLM accuracy, no CI")],
            fontsize=10, loc="outside lower center", frameon=False,
        )  # fmt: skip
    _suptitle(fig, title, tiny)
    caption = (
        "Squares: grading (accuracy: McNemar p; balanced accuracy: bootstrap CI only) from "
        "metrics/comparisons.csv; dots: like-for-like Dice on the slices the VLM saw "
        "(Wilcoxon p) from metrics/localisation.csv."
    )
    if marked:
        cite = published.citation.short if published is not None else "the study"
        said = "; ".join(
            f"{label('cnn')} minus {label(m.vlm)} {m.metric}: {m.text}"
            for m in dict.fromkeys(marked)
        )
        caption += (
            f" Open red diamonds: published (different data) — {cite}, differences of the "
            f"accuracies quoted in its abstract ({said}), on the study's own test set: not "
            "paired, no CI, not part of this run's numbers. Marked on the fixed rule only (the "
            "study's rule). The study published no balanced accuracy and no like-for-like Dice, "
            "so those lines have no mark."
        )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)
