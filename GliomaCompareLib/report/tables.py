"""The report's tables, laid out like the study's, with the published figures beside ours.

Each table is declared once as a :class:`~GliomaCompareLib.report.table.TableSpec` (its
columns: heading, how to get the cell, numeric or not, which published figure goes there); a
table function gathers the lines (this run's rows, the study's figures, "not run" lines) and
the notes, and :func:`~GliomaCompareLib.report.table.build_table` makes the cells.
:mod:`GliomaCompareLib.report.render` prints them. Nothing here recomputes a model output: the
numbers are the CSV values, or summaries of CSV rows (means, medians, counts) that the notes
name as such. A table whose CSV is missing is "not run"; a method without rows gets a "not run"
row; nothing is ever invented.

Tables (the Markdown file is ``metrics/<key>.md``):

- ``classification``: accuracy, precision, sensitivity, specificity, F1, balanced accuracy, AUC
  with 95% CIs, per method and decision rule (fixed, and a threshold chosen on validation
  patients), McNemar against the majority-class baseline, with the published figures.
- ``comparisons``: McNemar tests between methods under the same decision rule, with the
  bootstrap intervals of the paired differences and a verdict in words.
- ``segmentation``: 3D Dice / HD95 per method, task and region (CNN WT/TC/ET, VLM point / box /
  polygon stacked over slices), with the published Dice.
- ``localisation``: slice-level (2D) scores of the VLM answers.
- ``centres``: how far predicted and true centres lie from the image centre.
- ``answer_status``: answer-format statuses per method and task.
- ``consistency``: agreement of repeated identical queries.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from GliomaCompareLib.data.slices import SliceRule
from GliomaCompareLib.metrics import small_test_set_warning
from GliomaCompareLib.report.cells import (
    DASH,
    NOT_RUN,
    decimals,
    fmt,
    fmt_int,
    label,
    mean_sd,
    method_order,
    num,
    pct,
    source_cell,
    with_ci,
)
from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.published import Published, PublishedFigure
from GliomaCompareLib.report.render import render_html_table, render_markdown
from GliomaCompareLib.report.rundata import RunData, is_tiny
from GliomaCompareLib.report.summaries import (
    ANSWER_STATUSES,
    CNN_METHODS,
    CNN_REGIONS,
    USABLE_STATUSES,
    VLM_METHODS,
    VLM_TASKS,
    CentreSummary,
    centre_sentence,
    centre_summaries,
    first_run_rows,
    normalised_centres,
    run_vlm_methods,
    summarise_localisation,
    summarise_segmentation,
    vlm_rank,
)
from GliomaCompareLib.report.table import (
    Column,
    Line,
    Row,
    Table,
    TableSpec,
    build_table,
    missing_table,
    unavailable_table,
)
from GliomaCompareLib.runlayout import (
    METHODS,
    is_finetuned_method,
    is_vlm_method,
    vlm_method,
    vlm_methods_in,
    vlm_name_of,
)

__all__ = [
    "ANSWER_STATUS",
    "ANSWER_STATUSES",
    "BY_GROUP",
    "CENTRES",
    "CLASSIFICATION",
    "COMPARISONS",
    "CONSISTENCY",
    "LIKE_FOR_LIKE",
    "LOCALISATION",
    "SEGMENTATION",
    "SENSITIVITY",
    "USABLE_STATUSES",
    "CentreSummary",
    "Row",
    "Table",
    "answer_status_table",
    "build_tables",
    "by_group_table",
    "centre_summaries",
    "centres_table",
    "classification_table",
    "comparisons_table",
    "consistency_table",
    "first_run_rows",
    "fmt",
    "headline",
    "like_for_like_table",
    "localisation_table",
    "normalised_centres",
    "render_html_table",
    "render_markdown",
    "segmentation_table",
    "sensitivity_table",
]

_METRIC_NAMES = {"dice": "Dice", "auc": "AUC", "f1": "F1"}


# --------------------------------------------------------------------------- columns

#: the columns several tables share: what produced a line and where it comes from
_METHOD = Column("Method", lambda r: label(r.get("method")), label="method")
_TASK = Column("Task", "task", label="task")
_SOURCE = Column("Source", lambda r: "This run", label="source")
_MODEL = Column("Model", "model", label="model")


def _count(heading: str, key: str) -> Column:
    return Column(heading, key, fmt_int, numeric=True)


def _number(heading: str, key: str, digits: int = 3, figure: tuple[str, ...] = ()) -> Column:
    return Column(heading, key, decimals(digits), numeric=True, figure=figure)


# --------------------------------------------------------------------------- shared lines


def _produced_by(run: RunData, methods: Iterable[str]) -> tuple[tuple[str, ...], bool]:
    """``"method: models"`` lines for ``methods``, and whether any model is the tiny VLM."""
    labels = run.model_labels()
    lines, tiny = [], False
    for method in dict.fromkeys(methods):
        models = labels.get(method)
        if not models:
            continue
        tiny = tiny or any(is_tiny(m) for m in models)
        lines.append(f"{label(method)}: {'; '.join(models)}")
    return tuple(lines), tiny


def _methods_in(rows: Iterable[Mapping[str, Any]], *keys: str) -> list[str]:
    found: list[str] = []
    for row in rows:
        for key in keys or ("method",):
            m = row.get(key)
            if m and m not in found:
                found.append(m)
    return method_order(found)


def _published_lines(figures: Sequence[PublishedFigure], published: Published) -> list[Line]:
    """Published figures grouped by (method, row) into table lines."""
    groups: dict[tuple[str, str], list[PublishedFigure]] = {}
    for fig in figures:
        groups.setdefault((fig.method, fig.row), []).append(fig)
    lines = []
    for (method, _row_name), figs in groups.items():
        labels = {
            "method": label(method),
            "source": source_cell(figs[0]),
            "model": published.model(method) or DASH,
            "task": figs[0].task or "",
            "region": "not recorded",
        }
        lines.append(Line("published", labels=labels, figures={f.metric: f.text for f in figs}))
    return lines


def _not_run(method: str, task: str | None = None) -> Line:
    labels = {"method": label(method), "source": NOT_RUN}
    if task is not None:
        labels["task"] = task
    return Line("not_run", labels=labels)


def _published_notes(figures: Sequence[PublishedFigure], published: Published) -> list[str]:
    notes, seen = [], set()
    cite = published.citation.short
    for fig in figures:
        if fig.source == "abstract":
            text = f"{cite}, abstract: “{fig.quote}”"
        else:
            metric = _METRIC_NAMES.get(fig.metric, fig.metric)
            text = f"{cite} — {metric} {fig.text} ({published.source_text(fig.source)})"
            if fig.note:
                text += f": {fig.note}"
        if text not in seen:
            seen.add(text)
            notes.append(text)
    return notes


def _abstract_findings(published: Published, topic: str) -> list[str]:
    return [
        f"{published.citation.short}, abstract: “{f.sentence}”"
        for f in published.findings_for(topic)
    ]


# --------------------------------------------------------------------------- classification

_DECISIONS = {"fixed": "fixed", "val_threshold": "validation threshold"}
_SCORES = {"p_hgg": "P(HGG)", "vote_share": "HGG vote share", "mean_p": "mean P(HGG)"}


def _decision_cell(row: Mapping[str, Any]) -> str:
    """The decision rule of a classification row, in a few words."""
    decision, threshold = row.get("decision"), num(row.get("threshold"))
    if decision is None:
        return DASH
    if decision == "fixed" and is_vlm_method(str(row.get("method"))):
        ties = num(row.get("n_ties"))
        return "fixed: majority vote" + (f" ({int(ties)} tied)" if ties else "")
    score = _SCORES.get(row.get("threshold_on") or "p_hgg", row.get("threshold_on"))
    text = f"{_DECISIONS.get(decision, decision)}: {score} ≥ {fmt(threshold)}"
    n_val = num(row.get("threshold_n_val"))
    return text + (f" (chosen on {int(n_val)} val)" if n_val is not None else "")


def _auc_cell(row: Mapping[str, Any]) -> str:
    """AUC [CI], with the patients it was computed on when some had no score."""
    text = with_ci("auc")(row)
    n, n_auc = num(row.get("n")), num(row.get("auc_n"))
    return text if n_auc is None or n_auc == n else f"{text} (n = {int(n_auc)})"


def _vs_majority_cell(row: Mapping[str, Any]) -> str:
    """McNemar against the majority baseline: p (b: method right and baseline wrong, c)."""
    p = num(row.get("mcnemar_vs_majority_p"))
    if p is None:
        return DASH
    b, c = fmt_int(row.get("mcnemar_vs_majority_b")), fmt_int(row.get("mcnemar_vs_majority_c"))
    return f"p = {p:.3g} (b {b}, c {c})"


CLASSIFICATION = TableSpec(
    "classification",
    "Classification: LGG vs HGG (HGG positive)",
    "Patient-level grade per method on the test patients under two decision rules (fixed, "
    "and a threshold chosen on the validation patients), with Wilson intervals for accuracy, "
    "sensitivity and specificity and percentile-bootstrap intervals (patients resampled) for "
    "balanced accuracy and AUC, beside the study's published figures.",
    ("classification",),
    (
        Column("Method", lambda r: label(r.get("method") or "?"), label="method"),
        _SOURCE,
        _MODEL,
        Column("Decision rule", _decision_cell),
        _count("n", "n"),
        Column(
            "TP / FP / TN / FN",
            lambda r: " / ".join(fmt_int(r.get(k)) for k in ("tp", "fp", "tn", "fn")),
            numeric=True,
        ),
        _count("Invalid", "n_invalid"),
        Column("Accuracy [95% CI]", with_ci("accuracy"), numeric=True, figure=("accuracy",)),
        _number("Precision", "precision", figure=("precision",)),
        Column(
            "Sensitivity (HGG recall) [95% CI]",
            with_ci("sensitivity"),
            numeric=True,
            figure=("sensitivity", "recall"),
        ),
        Column(
            "Specificity (LGG recall) [95% CI]",
            with_ci("specificity"),
            numeric=True,
            figure=("specificity",),
        ),
        _number("F1", "f1", figure=("f1",)),
        Column(
            "Balanced accuracy [95% CI]",
            with_ci("balanced_accuracy"),
            numeric=True,
            figure=("balanced_accuracy",),
        ),
        Column("AUC [95% CI]", _auc_cell, numeric=True, figure=("auc",)),
        _number("Brier", "brier"),
        _number(
            "Majority baseline",
            "majority_baseline_accuracy",
            figure=("majority_baseline_accuracy",),
        ),
        Column("vs majority (McNemar)", _vs_majority_cell, numeric=True),
    ),
)


def classification_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Patient-level LGG vs HGG grading per method (``metrics/classification.csv``)."""
    missing = missing_table(run, CLASSIFICATION)
    if missing is not None:
        return missing
    rows_in = run.rows("classification")
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows_in:
        by_method[row.get("method") or "?"].append(row)
    # this run's methods, each followed by the study's figures for it
    lines, used = _classification_method_lines(by_method, published, _run_methods(run))
    # the majority-class baseline: this run's, then the derived BraTS 2020 figure
    lines += _majority_lines(by_method.get("majority", []), rows_in)
    figures = published.figures_for("classification", "majority")
    lines += _published_lines(figures, published)
    warning = _small_test_set_note(run)
    notes = [
        *([warning] if warning else []),
        _classification_definitions(rows_in),
        *_called_hgg_notes(by_method),
        *_vs_majority_notes(rows_in, options.alpha),
        *_published_notes([*used, *figures], published),
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return build_table(CLASSIFICATION, lines, produced_by=produced, notes=notes, tiny=tiny)


def _small_test_set_note(run: RunData) -> str | None:
    """The small-test-set warning, from the test patients' true grades (``grades``)."""
    truth = {r.get("case_id"): r.get("grade_true") for r in run.rows("grades")}
    n_lgg = sum(g == "LGG" for g in truth.values())
    n_hgg = sum(g == "HGG" for g in truth.values())
    if not n_lgg + n_hgg:
        return None
    warning = small_test_set_warning(n_lgg, n_hgg)
    return f"Warning: {warning}" if warning else None


def _vs_majority_notes(rows_in: Sequence[Mapping[str, Any]], alpha: float) -> list[str]:
    """Which methods grade significantly better than always answering the majority grade."""
    tested = [r for r in rows_in if num(r.get("mcnemar_vs_majority_p")) is not None]
    if not tested:
        return []
    better = [
        f"{label(r.get('method'))} ({_DECISIONS.get(r.get('decision'), r.get('decision'))})"
        for r in tested
        if _beats_majority(r, alpha)
    ]
    verdict = (
        f"significantly better than always answering the majority grade at α = {alpha:g}: "
        + ", ".join(better)
        if better
        else f"no method is significantly better than always answering the majority grade at "
        f"α = {alpha:g}"
    )
    return [
        "vs majority: McNemar's test of each method against the majority-class baseline on the "
        "same patients (b: patients the method gets right and the baseline wrong, c: the "
        f"reverse; exact binomial when b + c < 25). {verdict[0].upper()}{verdict[1:]}."
    ]


def _beats_majority(row: Mapping[str, Any], alpha: float) -> bool:
    p = num(row.get("mcnemar_vs_majority_p"))
    b, c = num(row.get("mcnemar_vs_majority_b")) or 0, num(row.get("mcnemar_vs_majority_c")) or 0
    return p is not None and p < alpha and b > c


def _run_methods(run: RunData) -> tuple[str, ...]:
    """The methods a run compares: the CNN and each of its VLM methods (:data:`METHODS` for a
    run with one ``vlm:`` section; see :func:`~.summaries.run_vlm_methods`)."""
    return ("cnn", *run_vlm_methods(run))


def _method_rank(method: str | None) -> tuple:
    """Sort key of methods: :data:`METHODS` in order, then named VLMs (by name, base first)."""
    if method in METHODS:
        return (METHODS.index(method), "", 0)
    return (len(METHODS), *vlm_rank(str(method))[1:])


def _classification_order(
    by_method: Mapping[str, Any], expected: Sequence[str] = METHODS
) -> list[str]:
    """The run's methods first (even those without rows), then any other method but majority."""
    return [*expected, *[m for m in by_method if m not in (*expected, "majority")]]


def _classification_method_lines(
    by_method: Mapping[str, list[dict]], published: Published, expected: Sequence[str] = METHODS
) -> tuple[list[Line], list[PublishedFigure]]:
    lines: list[Line] = []
    used: list[PublishedFigure] = []
    for method in _classification_order(by_method, expected):
        lines += [Line(row=row) for row in by_method.get(method, [])]
        if method in expected and not by_method.get(method):
            lines.append(_not_run(method))
        figures = published.figures_for("classification", method)
        used += figures
        lines += _published_lines(figures, published)
    return lines, used


def _majority_lines(majority_rows: Sequence[dict], rows_in: Sequence[dict]) -> list[Line]:
    """This run's majority-class line: its own rows, else the methods' baseline column when
    they all agree on it."""
    if majority_rows:
        return [
            Line(
                "baseline",
                {
                    **row,
                    "model": row.get("model") or "no model",
                    "majority_baseline_accuracy": row.get("majority_baseline_accuracy")
                    or row.get("accuracy"),
                },
            )
            for row in majority_rows
        ]
    baselines = {
        fmt(r.get("majority_baseline_accuracy"))
        for r in rows_in
        if num(r.get("majority_baseline_accuracy")) is not None
    }
    if len(baselines) != 1:
        return []
    value = baselines.pop()
    labels = {"method": label("majority"), "source": "This run", "model": "no model"}
    figures = {"accuracy": value, "majority_baseline_accuracy": value}
    return [Line("baseline", labels=labels, figures=figures)]


def _classification_definitions(rows_in: Sequence[Mapping[str, Any]]) -> str:
    level = {r.get("ci_level") for r in rows_in if r.get("ci_level") is not None}
    boots = {r.get("n_bootstrap") for r in rows_in if r.get("n_bootstrap") is not None}
    levels = ", ".join(f"{100 * float(x):g}%" for x in sorted(level))
    ci_text = (
        f"{levels} Wilson intervals for accuracy, sensitivity and specificity; {levels} "
        "percentile-bootstrap intervals over patients for balanced accuracy and AUC "
        f"({', '.join(str(int(b)) for b in sorted(boots))} resamples)"
        if level and boots
        else "confidence intervals as given in metrics/classification.csv"
    )
    return (
        "HGG is the positive class: sensitivity = HGG recall, specificity = LGG recall. Invalid "
        "answers (no usable grade) count as wrong in accuracy, sensitivity and specificity and "
        f"are left out of precision. [..] = {ci_text}. Decision rules, the same kind for both "
        "arms: fixed (the CNN calls HGG at P(HGG) ≥ 0.5; the VLM takes the majority vote of its "
        "slice answers, ties broken by the configured tie rule and counted), and a threshold "
        "chosen on the validation patients by Youden's J and applied unchanged to the test "
        "patients (the CNN's on P(HGG), the VLM's on its patient score from its answers on the "
        "validation patients). AUC and Brier score are computed on the patients with a score "
        "(n given when some had none) and do not depend on the rule."
    )


def _called_hgg_notes(by_method: Mapping[str, list[dict]]) -> list[str]:
    notes = []
    for method in _classification_order(by_method):
        for row in by_method.get(method, []):
            n = num(row.get("n")) or 0
            called_hgg = (num(row.get("tp")) or 0) + (num(row.get("fp")) or 0)
            if n:
                rule = _DECISIONS.get(row.get("decision"), row.get("decision"))
                notes.append(
                    f"{label(method)}{f' ({rule})' if rule else ''} called HGG for "
                    f"{int(called_hgg)} of {int(n)} patients "
                    f"({pct(called_hgg, n)}); {fmt_int(row.get('n_invalid'))} gave no valid "
                    "grade."
                )
    return notes


# --------------------------------------------------------------------------- comparisons

_TESTS = {
    "exact": "McNemar exact (binomial)",
    "chi2_cc": "McNemar χ² (continuity-corrected)",
}

COMPARISONS = TableSpec(
    "comparisons",
    "Paired comparisons of grading accuracy (McNemar)",
    "Each pair of methods graded the same patients under the same decision rule; only the "
    "patients one got right and the other wrong (b, c) decide the test. The differences A − B "
    "carry percentile-bootstrap intervals (the same patients resampled for both methods).",
    ("comparisons",),
    (
        Column("Method A", lambda r: label(r.get("method_a"))),
        Column("Method B", lambda r: label(r.get("method_b"))),
        Column("Decision rule", lambda r: _DECISIONS.get(r.get("decision"), DASH)),
        _count("n", "n"),
        _count("b: A right, B wrong", "b"),
        _count("c: A wrong, B right", "c"),
        _number("Statistic", "statistic"),
        _number("p-value", "p_value", 4),
        Column("Test", lambda r: _TESTS.get(r.get("test") or "", r.get("test") or DASH)),
        Column("Accuracy A − B [95% CI]", with_ci("accuracy_diff"), numeric=True),
        Column("Balanced accuracy A − B [95% CI]", with_ci("balanced_accuracy_diff"), numeric=True),
        Column("Verdict", "verdict"),
    ),
)


def _pair(row: Mapping[str, Any]) -> str:
    """``A vs B`` (and the decision rule, when the row has one)."""
    rule = _DECISIONS.get(row.get("decision"))
    text = f"{label(row.get('method_a'))} vs {label(row.get('method_b'))}"
    return f"{text} ({rule} rule)" if rule else text


def _verdict(row: Mapping[str, Any], alpha: float) -> str:
    p = num(row.get("p_value"))
    a, b = label(row.get("method_a")), label(row.get("method_b"))
    n_b, n_c = num(row.get("b")) or 0, num(row.get("c")) or 0
    if p is None:
        return "no test result"
    if n_b + n_c == 0:
        return f"no discordant patients: {a} and {b} were right on exactly the same patients"
    if p < alpha:
        better = a if n_b > n_c else b
        worse = b if n_b > n_c else a
        return (
            f"significant at α = {alpha:g} (p = {p:.3g}): {better} was right on more patients "
            f"than {worse}"
        )
    return (
        f"not significant at α = {alpha:g} (p = {p:.3g}): no evidence that {a} and {b} differ "
        "in accuracy"
    )


def comparisons_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """McNemar comparisons of methods on the same patients (``metrics/comparisons.csv``)."""
    missing = missing_table(run, COMPARISONS)
    if missing is not None:
        return missing
    rows_in = [{**r, "verdict": _verdict(r, options.alpha)} for r in run.rows("comparisons")]
    if not rows_in:
        return unavailable_table(COMPARISONS, NOT_RUN, "no comparison rows")
    notes = [f"{_pair(r)}: {r['verdict']}." for r in rows_in]
    notes.append(
        "The exact test is used when b + c < 25, otherwise the χ² test with continuity "
        "correction; invalid answers count as wrong. No paired test is among the study's "
        "published figures used here."
    )
    produced, tiny = _produced_by(run, _methods_in(rows_in, "method_a", "method_b"))
    lines = [Line(row=r) for r in rows_in]
    return build_table(COMPARISONS, lines, produced_by=produced, notes=notes, tiny=tiny)


# --------------------------------------------------------------------------- segmentation

SEGMENTATION = TableSpec(
    "segmentation",
    "Segmentation and localisation in 3D (Dice, HD95)",
    "CNN: the predicted label map per region (WT, TC, ET). VLM: its point / box / polygon "
    "masks on the slices it saw, stacked into a 3D mask and scored against the whole tumour "
    "(WT). The VLM's 3D figure is NOT comparable with the CNN's: it cannot exceed its coverage "
    "ceiling (perfect answers on only those slices); compare them in the like-for-like table.",
    ("segmentation_summary", "segmentation"),
    (
        _METHOD,
        _TASK,
        Column("Region", "region", label="region"),
        _SOURCE,
        _MODEL,
        _count("n", "n"),
        Column("Dice mean ± SD", mean_sd("dice", 4), numeric=True, figure=("dice",)),
        _number("Dice median", "dice_median", 4),
        Column("HD95 mean ± SD (mm)", mean_sd("hd95", 1), numeric=True),
        _number("HD95 median (mm)", "hd95_median", 1),
    ),
)


def _group_order(method: str | None, task: str | None, region: str | None) -> tuple:
    t = {"seg": 0, "point": 1, "box": 2, "polygon": 3}
    r = {k: i for i, k in enumerate(CNN_REGIONS)}
    if method in CNN_METHODS:
        return (0, t.get(task, 9), CNN_METHODS.index(method), r.get(region, 9), region or "")
    return (1, t.get(task, 9), _method_rank(method), r.get(region, 9), region or "")


def _task_figures(
    published: Published, table: str, method: str, task: str
) -> list[PublishedFigure]:
    return [
        f for f in published.figures_for(table) if f.method == method and f.task in (None, task)
    ]


def _dice_lines(
    summary: Sequence[Mapping[str, Any]],
    published: Published,
    *,
    table: str,
    include_cnn: bool,
    vlms: Sequence[str] = VLM_METHODS,
) -> tuple[list[Line], list[PublishedFigure]]:
    """Our rows in study order, "not run" lines for missing groups, published lines beside."""
    have = {(r.get("method"), r.get("task")) for r in summary}
    ordered = sorted(summary, key=lambda r: _group_order(r["method"], r["task"], r["region"]))
    lines: list[Line] = []
    used: list[PublishedFigure] = []
    if include_cnn:
        cnn = [r for r in ordered if r["method"] in CNN_METHODS]
        lines += [Line(row=r) for r in cnn]
        if not any(r["method"] == "cnn" for r in cnn):
            lines.append(_not_run("cnn", "seg"))
        figures = _task_figures(published, table, "cnn", "seg")
        used += figures
        lines += _published_lines(figures, published)
    for task in VLM_TASKS:
        figures = []
        for method in vlms:
            lines += [Line(row=r) for r in ordered if r["method"] == method and r["task"] == task]
            if (method, task) not in have:
                lines.append(_not_run(method, task))
            figures += _task_figures(published, table, method, task)
        figures += _task_figures(published, table, "vlm", task)
        used += figures
        lines += _published_lines(figures, published)
    lines += [
        Line(row=r)
        for r in ordered
        if not (r["method"] in CNN_METHODS and include_cnn)
        and not (r["method"] in vlms and r["task"] in VLM_TASKS)
    ]
    return lines, used


def segmentation_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """3D Dice and HD95 per method, task and region (segmentation summary or per-case rows)."""
    missing = missing_table(run, SEGMENTATION)
    if missing is not None:
        return missing
    summary, where = _segmentation_summary(run)
    lines, used = _dice_lines(summary, published, table="segmentation", include_cnn=True,
                              vlms=run_vlm_methods(run))  # fmt: skip
    # the study's VLM Dice (variant and scoring level not recorded) also beside our 3D VLM rows
    used += _insert_localisation_figures(lines, published)
    notes = [
        where,
        *_segmentation_status_notes(run.rows("segmentation")),
        *_abstract_findings(published, "segmentation"),
        *_published_notes(used, published),
    ]
    methods = _methods_in([*summary, *run.rows("segmentation")])
    produced, tiny = _produced_by(run, methods)
    tiny = tiny or any(is_tiny(r.get("model")) for r in summary)
    return build_table(SEGMENTATION, lines, produced_by=produced, notes=notes, tiny=tiny)


def _segmentation_summary(run: RunData) -> tuple[list[dict[str, Any]], str]:
    """The summary rows (from the summary CSV, else from the per-case rows) and where from."""
    if run.tables["segmentation_summary"].ok and run.rows("segmentation_summary"):
        summary = [dict(r) for r in run.rows("segmentation_summary")]
        where = "Summary rows from metrics/segmentation_summary.csv."
    else:
        summary = summarise_segmentation(run.rows("segmentation"))
        where = (
            "Means, SDs (population) and medians computed by the report from the per-case rows "
            "of metrics/segmentation.csv."
        )
    for r in summary:
        r.setdefault("model", None)
    return summary, where


def _insert_localisation_figures(lines: list[Line], published: Published) -> list[PublishedFigure]:
    """Put each published localisation figure after the last line of its task; returns those
    placed."""
    used = []
    for fig in published.figures_for("localisation"):
        idx = max((i for i, line in enumerate(lines) if _TASK.text(line) == fig.task), default=None)
        if idx is None:
            continue
        labels = {
            "method": label(fig.method),
            "task": fig.task or "",
            "region": "not recorded",
            "source": source_cell(fig),
            "model": published.model(fig.method),
        }
        lines.insert(idx + 1, Line("published", labels=labels, figures={fig.metric: fig.text}))
        used.append(fig)
    return used


def _seen_by_weights(rows: Iterable[Mapping[str, Any]]) -> str:
    """A warning when scores come from test patients the pretrained weights were trained on."""
    seen = sorted({r.get("case_id") for r in rows if num(r.get("seen_by_weights"))})
    if not seen:
        return ""
    return (
        f"WARNING: {len(seen)} test patients ({', '.join(seen[:5])}"
        f"{', ...' if len(seen) > 5 else ''}) were in the data the pretrained CNN weights were "
        "trained on (cnn.weights_trained_on, name_mapping.csv): their CNN scores are not "
        "held-out scores."
    )


def _segmentation_status_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    notes = []
    statuses: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        status = row.get("status")
        if status and status != "ok":
            statuses[(row.get("method") or "?", status)] += 1
    for (method, status), count in sorted(statuses.items()):
        notes.append(f"{label(method)}: {count} case-region scores had status '{status}'.")
    seen = _seen_by_weights(rows)
    if seen:
        notes.append(seen)
    empty_rules = sum(1 for r in rows if r.get("empty_rule"))
    if empty_rules:
        notes.append(
            f"{empty_rules} scores used the BraTS empty-region rule (both empty: Dice 1, HD95 0; "
            "one empty: Dice 0, HD95 = the volume diagonal)."
        )
    return notes


# --------------------------------------------------------------------------- like for like


def _dice_with_ci(row: Mapping[str, Any]) -> str:
    mean = num(row.get("dice_slices_mean"))
    if mean is None:
        return DASH
    low, high = num(row.get("dice_slices_ci_low")), num(row.get("dice_slices_ci_high"))
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{mean:.3f}{ci}"


LIKE_FOR_LIKE = TableSpec(
    "like_for_like",
    "Localisation, like for like: on the slices the VLM was asked about",
    "Per-slice Dice against the reference whole tumour (WT) on exactly the slices each VLM "
    "answered, averaged per patient first, then over patients (95% patient-bootstrap CI), beside "
    "the CNN's segmentation on the same slices, the best answer of the same kind (oracle: the "
    "true centre disc, the true tight box, the true K-vertex polygon) and a trivial baseline (the "
    "training patients' mean box / centre, placed without looking at the image). The stacked 3D "
    "Dice stands beside its ceiling: perfect answers on only those slices.",
    ("localisation",),
    (
        _METHOD,
        _TASK,
        _count("Patients", "n_patients"),
        _count("Slices", "n_slices"),
        Column("VLM Dice [95% CI]", _dice_with_ci, numeric=True, figure=("dice",)),
        _number("CNN, same slices", "cnn_dice_same_slices"),
        _number("Oracle (ceiling)", "oracle_dice_same_slices"),
        _number("Trivial baseline", "baseline_dice_same_slices"),
        _number("Lenient (polygon hull)", "dice_slices_lenient_mean"),
        _number("3D Dice", "dice_3d_mean"),
        _number("3D ceiling", "dice_3d_ceiling"),
        Column("CNN − VLM [95% CI]", lambda r: _paired_dice(r), numeric=True),
        Column("Wilcoxon p", lambda r: _p_value(r.get("wilcoxon_p")), numeric=True),
    ),
)


def _paired_dice(row: Mapping[str, Any]) -> str:
    diff = num(row.get("cnn_minus_vlm_dice"))
    if diff is None:
        return DASH
    low, high = num(row.get("cnn_minus_vlm_ci_low")), num(row.get("cnn_minus_vlm_ci_high"))
    ci = f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
    return f"{diff:+.3f}{ci}"


def _p_value(value: Any) -> str:
    p = num(value)
    return DASH if p is None else f"{p:.3g}"


def like_for_like_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """``metrics/localisation.csv``: the VLM's localisation beside the CNN, the oracle and a
    trivial baseline on the same slices."""
    missing = missing_table(run, LIKE_FOR_LIKE)
    if missing is not None:
        return missing
    rows_in = list(run.rows("localisation"))
    lines: list[Line] = []
    used: list[PublishedFigure] = []
    for task in VLM_TASKS:
        lines += [Line(row=r) for r in rows_in if r.get("task") == task]
        figures = [
            f for m in VLM_METHODS for f in _task_figures(published, "localisation", m, task)
        ]
        used += figures
        lines += _published_lines(figures, published)
    empty = sum(int(num(r.get("n_slices_empty_reference")) or 0) for r in rows_in)
    notes = [
        f"{options_slice_rule(run)}",
        "Slices with no reference tumour are left out of every per-slice Dice"
        + (f" ({empty} such answers)." if empty else " (there were none)."),
        "The study's published Dice values are printed beside our per-slice Dice; the summary "
        "they come from does not say whether they were scored per slice or per volume.",
        *_published_notes(used, published),
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return build_table(LIKE_FOR_LIKE, lines, produced_by=produced, notes=notes, tiny=tiny)


_SCOPES = {
    "3d": "3D, whole volume",
    "slices": "slices the VLM saw",
    "cnn_same_slices": "CNN on the VLM's slices",
}

BY_GROUP = TableSpec(
    "dice_by_group",
    "Dice by grade and by tumour size",
    "Mean Dice per group of test patients (grade; reference whole-tumour volume below / above "
    "the median): the CNN's 3D Dice per region, the VLM's per-slice Dice on the slices it saw and "
    "the CNN's on those same slices.",
    ("dice_by_group",),
    (
        _METHOD,
        _TASK,
        Column("Region", "region"),
        Column("Scored on", lambda r: _SCOPES.get(r.get("scope"), r.get("scope") or DASH)),
        Column("Group", lambda r: f"{r.get('group')}: {r.get('level')}"),
        _count("Patients", "n"),
        _number("Dice mean", "dice_mean"),
        _number("Dice median", "dice_median"),
    ),
)


def by_group_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """``metrics/dice_by_group.csv``: Dice per grade and per tumour-size group."""
    missing = missing_table(run, BY_GROUP)
    if missing is not None:
        return missing
    rows_in = list(run.rows("dice_by_group"))
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    notes = ["Small groups (a few LGG patients) give means that can move a lot with one patient."]
    lines = [Line(row=r) for r in rows_in]
    return build_table(BY_GROUP, lines, produced_by=produced, notes=notes, tiny=tiny)


def _rule_name(row: Mapping[str, Any]) -> str:
    kind = "oracle" if num(row.get("oracle")) else "label-free"
    return f"{row.get('slice_rule')} ({kind})"


SENSITIVITY = TableSpec(
    "slice_sensitivity",
    "Sensitivity to the slice rule: the base VLM on other slices",
    "The base VLM asked again on the same test patients under other slice rules: oracle rules "
    "read the reference labels (the study's protocol: slices known to show tumour), label-free "
    "rules do not (the CNN's own tumour slices, or brain slices, with a prompt that does not say "
    "a glioma is visible). Grade: accuracy of the voted grade. Localisation: per-slice Dice on "
    "the slices with reference tumour, beside the CNN and the oracle on the same slices.",
    ("slice_sensitivity",),
    (
        Column("Slice rule", _rule_name),
        _TASK,
        _count("Patients", "n_patients"),
        _number("Accuracy", "accuracy"),
        _count("Slices scored", "n_slices"),
        _count("Slices without tumour", "n_slices_empty_reference"),
        Column("VLM Dice [95% CI]", _dice_with_ci, numeric=True),
        _number("CNN, same slices", "cnn_dice_same_slices"),
        _number("Oracle (ceiling)", "oracle_dice_same_slices"),
    ),
)


def sensitivity_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """``metrics/slice_sensitivity.csv``: the base VLM under each slice rule."""
    missing = missing_table(run, SENSITIVITY)
    if missing is not None:
        return missing
    rows_in = list(run.rows("slice_sensitivity"))
    # the stage asks the first VLM's base model
    produced, tiny = _produced_by(run, run_vlm_methods(run)[:1] if rows_in else [])
    notes = [
        "A label-free rule can pick slices without tumour: they are left out of the per-slice "
        "Dice and counted; the grade is voted over every asked slice."
    ]
    lines = [Line(row=r) for r in rows_in]
    return build_table(SENSITIVITY, lines, produced_by=produced, notes=notes, tiny=tiny)


def options_slice_rule(run: RunData) -> str:
    """How the run chose the VLM's slices, in the report's words (oracle or label-free)."""
    config = (run.manifest or {}).get("config") or {}
    vlm = config.get("vlm") or {}
    rule = dict(vlm.get("slice_rule") or {})
    if vlm.get("slices_per_case"):
        rule["max_slices"] = vlm["slices_per_case"]
    try:
        text = SliceRule(**rule).describe()
    except (TypeError, ValueError):
        return "Slice selection: not recorded in the manifest."
    return f"Slice selection: {text}."


# --------------------------------------------------------------------------- slice level


def _points_inside(row: Mapping[str, Any]) -> str:
    inside = row.get("inside")
    return DASH if not inside else f"{int(inside[0])} / {inside[1]} ({pct(*inside)})"


LOCALISATION = TableSpec(
    "localisation",
    "VLM localisation per slice (2D)",
    "Every slice the VLM saw, scored against the whole tumour on that slice; failed answers "
    "(invalid, refused, empty, error) are scored as failures, not dropped.",
    ("slices",),
    (
        _METHOD,
        _TASK,
        _SOURCE,
        _MODEL,
        Column("Slices", lambda r: str(r["n"]), numeric=True),
        Column(
            "Usable answers", lambda r: f"{r['usable']} ({pct(r['usable'], r['n'])})", numeric=True
        ),
        _number("Dice (2D) mean", "dice_mean", 4, figure=("dice",)),
        _number("Dice (2D) median", "dice_median", 4),
        _number("HD95 (2D) median (mm)", "hd95_median", 1),
        Column("Point inside tumour", _points_inside, numeric=True),
        _number("Point distance median (mm)", "dist_median", 1),
    ),
)


def localisation_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Slice-level scores of every VLM answer (``metrics/slices.csv``, first run)."""
    missing = missing_table(run, LOCALISATION)
    if missing is not None:
        return missing
    rows_in = first_run_rows(run.rows("slices"))
    summary = summarise_localisation(rows_in)
    lines, used = _dice_lines(summary, published, table="localisation", include_cnn=False,
                              vlms=run_vlm_methods(run))  # fmt: skip
    notes = [
        "Summaries (counts, means, medians) computed by the report from metrics/slices.csv, "
        "first run of each query only. A point is scored by whether it falls inside the tumour "
        "and its distance to the tumour's centre.",
        *_abstract_findings(published, "localisation"),
        *_published_notes(used, published),
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return build_table(LOCALISATION, lines, produced_by=produced, notes=notes, tiny=tiny)


# --------------------------------------------------------------------------- centres

CENTRES = TableSpec(
    "centres",
    "Where the VLM puts the tumour: predicted vs true centres",
    "Centres of every usable point / box / polygon answer and of the true tumour on the same "
    "slice, in normalised image coordinates (0..1; image centre 0.5, 0.5). Predicted / true "
    "from centre: mean distance from the image centre; ratio: predicted / true; "
    "predicted–true: mean distance between a slice's two centres; r(x), r(y): correlation "
    "of predicted with true position.",
    ("slices",),
    (
        _METHOD,
        Column("Task", lambda r: r["task"]),
        Column("Model", lambda r: r["model"]),
        Column("Slices", lambda r: str(r["n"]), numeric=True),
        _number("Predicted from centre", "pred_from_centre"),
        _number("True from centre", "true_from_centre"),
        _number("Ratio", "ratio", 2),
        _number("Predicted–true", "pred_to_true"),
        _number("r(x)", "r_x", 2),
        _number("r(y)", "r_y", 2),
        Column("Clustered near centre", lambda r: "yes" if r["clustered"] else "no"),
        Column("Collapsed", lambda r: r.get("collapse") or DASH),
    ),
)


def centres_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Distance of predicted vs true centres from the image centre (``metrics/slices.csv``)."""
    missing = missing_table(run, CENTRES)
    if missing is not None:
        return missing
    summaries = centre_summaries(run, options)
    if not summaries:
        return unavailable_table(
            CENTRES,
            NOT_RUN,
            "metrics/slices.csv has no rows with both a predicted and a true centre",
        )
    notes = [centre_sentence(s, options) for s in summaries]
    notes.append(
        "Computed by the report from pred_cx/pred_cy and true_cx/true_cy of metrics/slices.csv "
        "(first run). r near 0 means the predicted position does not follow the tumour's position."
    )
    notes += _abstract_findings(published, "centres")
    produced, tiny = _produced_by(run, [s.method for s in summaries])
    lines = [Line(row=dataclasses.asdict(s)) for s in summaries]
    return build_table(CENTRES, lines, produced_by=produced, notes=notes, tiny=tiny)


# --------------------------------------------------------------------------- answer statuses


def _status_count(status: str) -> Column:
    def cell(r: Mapping[str, Any]) -> str:
        count = r["counts"].get(status)
        return f"{int(count)} ({pct(count, r['total'])})" if count else "0"

    return Column(status, cell, numeric=True)


def answer_status_spec(statuses: Sequence[str]) -> TableSpec:
    """The answer-status table with one column per status in ``statuses``."""
    return TableSpec(
        "answer_status",
        "Answer format: parse status of every VLM answer",
        "ok: valid as asked; repaired: fixed JSON or clipped coordinates; pattern: read from "
        "free text; invalid / refused / empty / error: no usable answer (scored as failures).",
        ("answer_status",),
        (
            _METHOD,
            _TASK,
            _MODEL,
            Column("Answers", lambda r: str(int(r["total"])), numeric=True),
            *[_status_count(s) for s in statuses],
            Column(
                "Usable",
                lambda r: f"{int(r['usable'])} ({pct(r['usable'], r['total'])})",
                numeric=True,
            ),
        ),
    )


#: the answer-status table of a run with no other status than the known ones
ANSWER_STATUS = answer_status_spec(ANSWER_STATUSES)


def _status_groups(rows_in: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, task): status counts, total and usable answers, in report order."""
    counts: dict[tuple, dict[str, float]] = defaultdict(dict)
    models: dict[tuple, str] = {}
    for row in rows_in:
        group = (row.get("method"), row.get("task"))
        counts[group][row.get("status") or "?"] = num(row.get("count")) or 0.0
        models.setdefault(group, row.get("model") or DASH)
    task_order = {"grade": 0, **{t: i + 1 for i, t in enumerate(VLM_TASKS)}}
    groups = sorted(counts, key=lambda g: (_method_rank(g[0]), task_order.get(g[1], 9), str(g)))
    return [
        {
            "method": method,
            "task": task,
            "model": models[(method, task)],
            "counts": counts[(method, task)],
            "total": sum(counts[(method, task)].values()),
            "usable": sum(counts[(method, task)].get(s, 0) for s in USABLE_STATUSES),
        }
        for method, task in groups
    ]


def answer_status_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Answer-format statuses per method and task (``metrics/answer_status.csv``)."""
    rows_in = run.rows("answer_status")
    found = [s for s in dict.fromkeys(r.get("status") for r in rows_in) if s]
    spec = answer_status_spec(
        [*ANSWER_STATUSES, *sorted(s for s in found if s not in ANSWER_STATUSES)]
    )
    missing = missing_table(run, spec)
    if missing is not None:
        return missing
    groups = _status_groups(rows_in)
    lines = [Line(row=g) for g in groups]
    lines += [
        _not_run_answers(method)
        for method in run_vlm_methods(run)
        if not any(g["method"] == method for g in groups)
    ]
    notes = [*_usable_rate_notes(groups), *_abstract_findings(published, "answer_status")]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return build_table(spec, lines, produced_by=produced, notes=notes, tiny=tiny)


def _not_run_answers(method: str) -> Line:
    """A method without answers: "not run" where its task would be (the table has no source)."""
    return Line("not_run", labels={"method": label(method), "task": NOT_RUN})


def _usable_rate_notes(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    rate = {
        (g["method"], g["task"]): g["usable"] / g["total"] if g["total"] else None for g in groups
    }
    notes = []
    bases = [m for m in vlm_methods_in(g["method"] for g in groups) if not is_finetuned_method(m)]
    for method in bases:  # each VLM's base against its own fine-tuned model
        name = vlm_name_of(method)
        whose = f" of VLM {name}" if name else ""
        for task in ("grade", *VLM_TASKS):
            base = rate.get((method, task))
            tuned = rate.get((vlm_method(name, finetuned=True), task))
            if base is None or tuned is None:
                continue
            change = "raised" if tuned > base else "lowered" if tuned < base else "did not change"
            notes.append(
                f"{task}: fine-tuning {change} the usable-answer rate{whose} "
                f"({100 * base:.1f}% base, {100 * tuned:.1f}% fine-tuned)."
            )
    return notes


# --------------------------------------------------------------------------- consistency

CONSISTENCY = TableSpec(
    "consistency",
    "Consistency of repeated identical queries",
    "The same image and prompt asked several times: how often every answer was identical, "
    "Fleiss' κ and entropy of the grade answers, and the spread of repeated geometry.",
    ("consistency",),
    (
        _METHOD,
        _TASK,
        _MODEL,
        _count("Items", "n_items"),
        _count("Runs", "runs"),
        _number("Temperature", "temperature", 2),
        _number("All identical", "all_identical_rate"),
        _number("Fleiss κ", "fleiss_kappa"),
        _number("Mean entropy (bits)", "mean_entropy"),
        _number("IoU spread (box / polygon)", "iou_spread_mean"),
        _number("Point dispersion (mm)", "point_dispersion_mm_mean", 2),
    ),
)


def consistency_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Agreement of repeated identical queries (``metrics/consistency.csv``)."""
    missing = missing_table(run, CONSISTENCY)
    if missing is not None:
        return missing
    rows_in = run.rows("consistency")
    if not rows_in:
        return unavailable_table(CONSISTENCY, NOT_RUN, "no consistency rows")
    notes = [
        "With greedy decoding (temperature 0) a deterministic backend repeats itself exactly; "
        "variation then comes from the serving stack (batching, non-deterministic kernels).",
        *[
            f"{published.citation.short} ({published.source_text(f.source)}): {f.sentence}"
            for f in published.findings_for("consistency")
        ],
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    lines = [Line(row=r) for r in rows_in]
    return build_table(CONSISTENCY, lines, produced_by=produced, notes=notes, tiny=tiny)


# --------------------------------------------------------------------------- all tables

_BUILDERS = (
    classification_table,
    comparisons_table,
    segmentation_table,
    like_for_like_table,
    localisation_table,
    by_group_table,
    sensitivity_table,
    centres_table,
    answer_status_table,
    consistency_table,
)


def build_tables(run: RunData, published: Published, options: ReportOptions) -> list[Table]:
    """Every report table, in report order. A builder that fails on damaged data gives an
    "unreadable" table naming the error instead of stopping the report."""
    tables = []
    for builder in _BUILDERS:
        try:
            tables.append(builder(run, published, options))
        except Exception as exc:  # one damaged table must not cost the whole report
            key = builder.__name__.removesuffix("_table")
            tables.append(
                Table(
                    key,
                    key.replace("_", " ").capitalize(),
                    "",
                    (),
                    status="unreadable",
                    status_detail=f"could not be built: {type(exc).__name__}: {exc}",
                )
            )
    return tables


# --------------------------------------------------------------------------- headline


def headline(run: RunData, published: Published, options: ReportOptions) -> list[str]:
    """A few sentences with the main numbers of this run beside the study's."""
    out = [w for w in (_seen_by_weights([*run.rows("segmentation"), *run.rows("grades")]),) if w]
    out += _grading_sentences(run, published, options.alpha)
    out += [f"{_pair(row)}: {_verdict(row, options.alpha)}." for row in run.rows("comparisons")]
    out += _like_for_like_sentences(run)
    out += _dice_sentences(run, published)
    out += [
        centre_sentence(s, options)
        for s in centre_summaries(run, options)
        if s.task == "point" or s.clustered
    ]
    return out


def _grading_sentences(run: RunData, published: Published, alpha: float = 0.05) -> list[str]:
    """Each method's accuracy and specificity under each decision rule (methods compared under
    the same kind of rule), the majority baseline and whether a method beats it (McNemar), the
    study's figures."""
    rows = run.rows("classification")
    out = []
    for decision in (*_DECISIONS, None):
        parts = [
            f"{label(r.get('method'))} {fmt(r.get('accuracy'))} "
            f"(specificity {fmt(r.get('specificity'))})"
            for m in _run_methods(run)
            for r in rows
            if r.get("method") == m and r.get("decision") == decision
        ]
        if parts:
            rule = {
                "fixed": ", fixed rule (CNN P(HGG) ≥ 0.5, VLM majority vote)",
                "val_threshold": ", threshold chosen on the validation patients",
            }.get(decision or "", "")
            out.append(f"Grading accuracy{rule}: " + "; ".join(parts) + ".")
    if not out:
        return []
    baseline = next(
        (
            fmt(r.get("majority_baseline_accuracy"))
            for r in rows
            if num(r.get("majority_baseline_accuracy")) is not None
        ),
        None,
    )
    if baseline:
        out.append(f"Always answering the majority grade: {baseline}. " + _vs_majority(rows, alpha))
    pub = [
        f"{label(f.method)} {f.metric} {f.text}"
        for f in published.figures_for("classification")
        if f.row == "abstract"
    ]
    if pub:
        out.append(f"Published ({published.citation.short}, abstract): " + "; ".join(pub) + ".")
    return out


def _like_for_like_sentences(run: RunData) -> list[str]:
    """Localisation on the slices the VLM saw: its Dice beside the CNN's, the oracle's and the
    trivial baseline's on the same slices (the like-for-like figures, ``localisation.csv``)."""
    out = []
    for r in run.rows("localisation"):
        if r.get("task") not in ("box", "polygon") or num(r.get("dice_slices_mean")) is None:
            continue
        parts = [f"{label(r.get('method'))} {r.get('task')} Dice {_dice_with_ci(r)}"]
        for key, name in (
            ("cnn_dice_same_slices", "the CNN"),
            ("oracle_dice_same_slices", f"a perfect {r.get('task')}"),
            ("baseline_dice_same_slices", "the image-blind baseline"),
        ):
            if num(r.get(key)) is not None:
                parts.append(f"{name} {fmt(r.get(key))}")
        out.append(
            f"On the {fmt_int(r.get('n_slices'))} slices it was asked about "
            f"({fmt_int(r.get('n_patients'))} patients): " + "; ".join(parts) + "."
        )
    return out


def _vs_majority(rows: Sequence[Mapping[str, Any]], alpha: float) -> str:
    """Whether any method grades significantly better than the majority baseline."""
    if not any(num(r.get("mcnemar_vs_majority_p")) is not None for r in rows):
        return ""
    better = [
        f"{label(r.get('method'))} ({_DECISIONS.get(r.get('decision'), r.get('decision'))}, "
        f"McNemar p = {num(r.get('mcnemar_vs_majority_p')):.3g})"
        for r in rows
        if _beats_majority(r, alpha)
    ]
    if better:
        return f"Significantly better than that at α = {alpha:g}: {', '.join(better)}."
    return f"No method is significantly better than that (McNemar, α = {alpha:g})."


def _dice_sentences(run: RunData, published: Published) -> list[str]:
    """The mean 3D Dice of the CNN (WT) and of the VLM's boxes and polygons, and the study's."""
    seg = run.rows("segmentation_summary") or summarise_segmentation(run.rows("segmentation"))
    dice = [
        f"{label(r.get('method'))} {r.get('task')}"
        + (f" {r.get('region')}" if r.get("method") in CNN_METHODS else "")
        + f" {fmt(r.get('dice_mean'), 4)}"
        for r in sorted(
            seg, key=lambda r: _group_order(r.get("method"), r.get("task"), r.get("region"))
        )
        if (r.get("method") in CNN_METHODS and r.get("region") == "WT")
        or (is_vlm_method(str(r.get("method"))) and r.get("task") in ("box", "polygon"))
    ]
    if not dice:
        return []
    pub_dice = "; ".join(
        f"{label(f.method)} {f.task} {f.text}"
        for f in (
            *published.figures_for("segmentation"),
            *published.figures_for("localisation"),
        )
    )
    return [
        "Mean 3D Dice (the VLM's only on the slices it saw, so bounded by its coverage; see the "
        "like-for-like table): "
        + "; ".join(dice)
        + "."
        + (f" Published: {pub_dice}." if pub_dice else "")
    ]
