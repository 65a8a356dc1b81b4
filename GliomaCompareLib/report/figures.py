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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from GliomaCompareLib.geometry import Box, Point, Polygon
from GliomaCompareLib.report.cells import num
from GliomaCompareLib.report.gallery import GALLERY_TASKS, CaseGallery
from GliomaCompareLib.report.headline import Difference
from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.published import Published
from GliomaCompareLib.report.rundata import TINY_LABEL, RunData, is_tiny
from GliomaCompareLib.report.summaries import (
    VLM_METHODS,
    VLM_TASKS,
    CentreSummary,
    centre_summaries,
    first_run_rows,
    normalised_centres,
)
from GliomaCompareLib.runlayout import METHOD_LABELS, METHODS

__all__ = [
    "METHOD_COLOURS",
    "ReportFigure",
    "centre_figure",
    "confusion_figure",
    "dice_figure",
    "forest_figure",
    "gallery_png",
    "roc_calibration_figure",
]

#: Colours per method (and the ground truth) used in every figure.
METHOD_COLOURS = {
    "gt": "#2ca02c",
    "cnn": "#ff7f0e",
    "vlm_base": "#17becf",
    "vlm_finetuned": "#e377c2",
}
TASK_MARKERS = {"point": "o", "box": "s", "polygon": "^"}
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
    return METHOD_LABELS.get(method, method)


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
    methods = [m for m in METHODS if m in rows]
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
    fig = _figure(3.2 * len(methods), 3.3)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods, strict=True):
        r = rows[method]
        counts = [[num(r.get(k)) or 0 for k in pair] for pair in (("tn", "fp"), ("fn", "tp"))]
        n_invalid = int(num(r.get("n_invalid")) or 0)
        cols = ["LGG", "HGG"]
        if n_invalid and method in invalid_split:
            counts[0].append(invalid_split[method][0])
            counts[1].append(invalid_split[method][1])
            cols.append("no valid\ngrade")
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
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks([0, 1], ["LGG", "HGG"], fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
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
    methods = [m for m in METHODS if any(r.get("method") == m for r in roc)]
    if not methods:
        return ReportFigure(key, title, "", None, status_detail="no ROC rows")
    fixed = {
        r.get("method"): r
        for r in run.rows("classification")
        if r.get("decision") in (None, "", "fixed")
    }
    models, tiny = _model_text(run, methods)
    fig = _figure(8.4, 3.9)
    left, right = fig.subplots(1, 2)
    for method in methods:
        points = sorted(
            (r for r in roc if r.get("method") == method), key=lambda r: num(r.get("point")) or 0
        )
        info = fixed.get(method, {})
        auc, n = num(info.get("auc")), num(info.get("auc_n")) or num(info.get("n"))
        name = _label(method).replace("\n", " ")
        legend = f"{name}: AUC {auc:.3f} (n={int(n or 0)})" if auc is not None else name
        left.step(
            [num(r.get("fpr")) for r in points], [num(r.get("tpr")) for r in points],
            where="post", label=legend, color=METHOD_COLOURS.get(method),
        )  # fmt: skip
        bins = [r for r in cal if r.get("method") == method]
        brier = num(info.get("brier"))
        right.plot(
            [num(r.get("mean_predicted")) for r in bins],
            [num(r.get("observed")) for r in bins],
            marker="o",
            color=METHOD_COLOURS.get(method),
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
        ax.legend(fontsize=8, loc="lower right")
    left.set_title("ROC", fontsize=10)
    right.set_title("Reliability diagram", fontsize=10)
    _suptitle(fig, title, tiny)
    caption = (
        "Left: ROC of each method's patient-level P(HGG) on the test patients (AUC on the "
        "patients with a score). Right: test patients binned by P(HGG); a calibrated method lies "
        "on the diagonal. From metrics/roc.csv and metrics/calibration.csv. Produced by "
        f"{models or 'models not recorded'}."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)


# --------------------------------------------------------------------------- Dice distributions


def _group_label(method: str, task: str, region: str | None) -> str:
    name = _label(method).replace(" (", "\n(")
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
        ax.scatter(x, shown, s=9, alpha=0.6, color=METHOD_COLOURS.get(method, "grey"), lw=0)
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
    m = METHODS.index(method) if method in METHODS else 9
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
                lambda g, t=fig_.task: g[0] in VLM_METHODS and g[1] == t,
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
    methods = [m for m in (*VLM_METHODS, *sorted(by_method)) if m in by_method]
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
    fig = _figure(5.2 * len(methods), 5.7)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods, strict=True):
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
        colour = METHOD_COLOURS.get(method, "yellow")
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


def _orientation(ax) -> None:
    """R / L marks at the image's left and right edges (radiological view: the patient's right
    on the image's left)."""
    style = {"fontsize": 11, "fontweight": "bold", "color": "yellow", "va": "center"}
    ax.text(0.02, 0.5, "R", transform=ax.transAxes, ha="left", **style)
    ax.text(0.98, 0.5, "L", transform=ax.transAxes, ha="right", **style)


# --------------------------------------------------------------------------- forest plot


def forest_figure(differences: Sequence[Difference], options: ReportOptions, tiny: bool):
    """The paired differences of the headline (CNN minus each VLM) with their 95% CIs and
    p-values, one line each: accuracy and balanced accuracy per decision rule, like-for-like
    Dice per task. Right of zero: the CNN is better."""
    key, title = "fig-forest", "Paired differences, CNN minus VLM (95% CI)"
    if not differences:
        return ReportFigure(key, title, "", None, status_detail="no paired differences in the run")
    fig = _figure(10.0, 1.0 + 0.3 * len(differences))
    ax = fig.subplots()
    ys = list(range(len(differences)))[::-1]
    for y, d in zip(ys, differences, strict=True):
        colour = METHOD_COLOURS.get(d.vlm, "black")
        if d.low is not None and d.high is not None:
            ax.plot([d.low, d.high], [y, y], color=colour, linewidth=2)
        ax.plot([d.value], [y], marker="s" if d.question == "grading" else "o", color=colour)
        p = "p n/a" if d.p is None else f"p = {d.p:.2g}"
        ax.annotate(p, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=10)
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(ys, [d.label for d in differences], fontsize=10)
    ax.set_ylim(-0.6, len(differences) - 0.4)
    ax.set_xlim(-1.05, 1.05)
    ax.tick_params(labelsize=10)
    ax.set_xlabel("3D CNN minus VLM (line: 95% CI); right of 0: the CNN is better", fontsize=10)
    _suptitle(fig, title, tiny)
    caption = (
        "Squares: grading (accuracy: McNemar p; balanced accuracy: bootstrap CI only) from "
        "metrics/comparisons.csv; dots: like-for-like Dice on the slices the VLM saw "
        "(Wilcoxon p) from metrics/localisation.csv."
    )
    return ReportFigure(key, title, caption, _png(fig, options.dpi), tiny)
