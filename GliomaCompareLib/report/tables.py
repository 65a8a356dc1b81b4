"""The report's tables, laid out like the study's, with the published figures beside ours.

Each builder turns rows of the run's ``metrics/*.csv`` into a :class:`Table` (title, columns,
rows, what produced them, notes); :func:`render_markdown` and :func:`render_html_table` print it.
Nothing here recomputes a model output: the numbers are the CSV values, or summaries of CSV
rows (means, medians, counts) that the notes name as such. A table whose CSV is missing is
"not run"; a method without rows gets a "not run" row; nothing is ever invented.

Tables (the Markdown file is ``metrics/<key>.md``):

- ``classification``: accuracy, precision, sensitivity, specificity, F1, balanced accuracy, AUC
  with 95% CIs, per method, and the majority-class baseline, with the published figures.
- ``comparisons``: McNemar tests between methods, with a verdict in words.
- ``segmentation``: 3D Dice / HD95 per method, task and region (CNN WT/TC/ET, VLM point / box /
  polygon stacked over slices), with the published Dice.
- ``localisation``: slice-level (2D) scores of the VLM answers.
- ``centres``: how far predicted and true centres lie from the image centre.
- ``answer_status``: answer-format statuses per method and task.
- ``consistency``: agreement of repeated identical queries.
"""

from __future__ import annotations

import html
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from GliomaCompareLib.report.options import ReportOptions
from GliomaCompareLib.report.published import Published, PublishedFigure
from GliomaCompareLib.report.rundata import TINY_LABEL, RunData, is_tiny
from GliomaCompareLib.runlayout import METHOD_LABELS, METHODS

__all__ = [
    "ANSWER_STATUSES",
    "USABLE_STATUSES",
    "CentreSummary",
    "Row",
    "Table",
    "answer_status_table",
    "build_tables",
    "centre_summaries",
    "centres_table",
    "classification_table",
    "comparisons_table",
    "consistency_table",
    "first_run_rows",
    "fmt",
    "headline",
    "localisation_table",
    "normalised_centres",
    "render_html_table",
    "render_markdown",
    "segmentation_table",
]

#: Answer-format statuses in display order (those of ``GliomaCompareLib.vlm.parsing.STATUSES``);
#: any other status found in a run is shown after them.
ANSWER_STATUSES = ("ok", "repaired", "pattern", "invalid", "refused", "empty", "error")
#: Statuses whose answer is used for scoring (``vlm.parsing.USABLE_STATUSES``).
USABLE_STATUSES = ("ok", "repaired", "pattern")
VLM_METHODS = ("vlm_base", "vlm_finetuned")
#: the CNN and its untrained baseline (same network, random initialisation), shown together
CNN_METHODS = ("cnn", "cnn_untrained")
VLM_TASKS = ("point", "box", "polygon")
CNN_REGIONS = ("WT", "TC", "ET")
DASH = "—"
NOT_RUN = "not run"


# --------------------------------------------------------------------------- the table model


@dataclass(frozen=True)
class Row:
    """One table line.

    Attributes:
        cells: the printed cells (plain text; escaped when rendered).
        kind: ``"ours"`` (this run), ``"published"`` (the study's figures), ``"not_run"``, or
            ``"baseline"`` (a reference line such as the majority class).
    """

    cells: tuple[str, ...]
    kind: str = "ours"


@dataclass(frozen=True)
class Table:
    """A report table.

    Attributes:
        key: short name; the Markdown file is ``metrics/<key>.md`` and the HTML anchor ``key``.
        title: heading.
        description: one sentence saying what the table shows.
        columns: column headings.
        rows: the lines.
        produced_by: ``"method: model"`` lines (the ``model`` column of the CSV rows).
        notes: sentences under the table (verdicts, definitions, sources of published figures).
        tiny: whether any number in it comes from the tiny random-weight VLM.
        status: ``"ok"``, ``"not run"`` (no CSV) or ``"unreadable"``.
        status_detail: why it is not ok.
        numeric: per column, whether it holds numbers (right-aligned).
    """

    key: str
    title: str
    description: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...] = ()
    produced_by: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    tiny: bool = False
    status: str = "ok"
    status_detail: str = ""
    numeric: tuple[bool, ...] = field(default=())


# --------------------------------------------------------------------------- formatting


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or an em dash when missing or not finite."""
    x = _num(value)
    return DASH if x is None else f"{round(x, digits) + 0.0:.{digits}f}"  # no "-0.000"


def _int(value: Any) -> str:
    x = _num(value)
    return DASH if x is None else str(round(x))


def _with_ci(row: Mapping[str, Any], metric: str, digits: int = 3) -> str:
    value = fmt(row.get(metric), digits)
    lo, hi = _num(row.get(f"{metric}_ci_low")), _num(row.get(f"{metric}_ci_high"))
    if value == DASH or lo is None or hi is None:
        return value
    return f"{value} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _pct(count: float, total: float) -> str:
    return f"{100.0 * count / total:.1f}%" if total else DASH


_SHORT_LABELS = {"majority": "Majority class", "vlm": "VLM (variant not recorded)"}
_METRIC_NAMES = {"dice": "Dice", "auc": "AUC", "f1": "F1"}


def _label(method: str | None) -> str:
    if method is None:
        return DASH
    return _SHORT_LABELS.get(method) or METHOD_LABELS.get(method, method)


def _source_cell(fig: PublishedFigure) -> str:
    if fig.source == "derived":
        return f"Not published: derived ({fig.row})"
    return f"Published ({fig.row})"


def _models(rows: Iterable[Mapping[str, Any]], method: str) -> str:
    seen: list[str] = []
    for row in rows:
        if row.get("method") == method and row.get("model") and row["model"] not in seen:
            seen.append(row["model"])
    return "; ".join(seen) if seen else DASH


def _produced_by(run: RunData, methods: Iterable[str]) -> tuple[tuple[str, ...], bool]:
    labels = run.model_labels()
    lines, tiny = [], False
    for method in dict.fromkeys(methods):
        models = labels.get(method)
        if not models:
            continue
        tiny = tiny or any(is_tiny(m) for m in models)
        lines.append(f"{_label(method)}: {'; '.join(models)}")
    return tuple(lines), tiny


def _methods_in(rows: Iterable[Mapping[str, Any]], *keys: str) -> list[str]:
    found: list[str] = []
    for row in rows:
        for key in keys or ("method",):
            m = row.get(key)
            if m and m not in found:
                found.append(m)
    order = {m: i for i, m in enumerate((*METHODS, "majority"))}
    return sorted(found, key=lambda m: (order.get(m, len(order)), m))


def _missing_table(run: RunData, key: str, title: str, description: str, columns, csv_names):
    """A table whose CSV is missing or unreadable, or None when one of ``csv_names`` is ok."""
    tables = [run.tables[n] for n in csv_names]
    if any(t.ok for t in tables):
        return None
    unreadable = [t for t in tables if t.status == "unreadable"]
    status = "unreadable" if unreadable else NOT_RUN
    detail = "; ".join(t.detail for t in (unreadable or tables))
    return Table(key, title, description, tuple(columns), status=status, status_detail=detail)


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


def _tiny_title(title: str, tiny: bool) -> str:
    return f"{title} — {TINY_LABEL}" if tiny else title


# --------------------------------------------------------------------------- classification

_CLS_COLUMNS = (
    "Method",
    "Source",
    "Model",
    "n",
    "TP / FP / TN / FN",
    "Invalid",
    "Accuracy [95% CI]",
    "Precision",
    "Sensitivity (HGG recall) [95% CI]",
    "Specificity (LGG recall) [95% CI]",
    "F1",
    "Balanced accuracy [95% CI]",
    "AUC [95% CI]",
    "Majority baseline",
)
_CLS_METRIC_COLUMN = {
    "accuracy": 6,
    "precision": 7,
    "sensitivity": 8,
    "recall": 8,
    "specificity": 9,
    "f1": 10,
    "balanced_accuracy": 11,
    "auc": 12,
}


def _published_rows(
    figures: Sequence[PublishedFigure],
    published: Published,
    ncols: int,
    place: Mapping[str, int],
    first: Mapping[int, str],
) -> list[Row]:
    """Published figures grouped by (method, row) into table lines."""
    groups: dict[tuple[str, str], list[PublishedFigure]] = {}
    for fig in figures:
        groups.setdefault((fig.method, fig.row), []).append(fig)
    rows = []
    for (method, _row_name), figs in groups.items():
        cells = [""] * ncols
        for index, text in first.items():
            cells[index] = text.format(
                method=_label(method),
                source=_source_cell(figs[0]),
                model=published.model(method) or DASH,
                task=figs[0].task or "",
            )
        for fig in figs:
            if fig.metric in place:
                cells[place[fig.metric]] = fig.text
        rows.append(Row(tuple(cells), "published"))
    return rows


def classification_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Patient-level LGG vs HGG grading per method (``metrics/classification.csv``)."""
    key, title = "classification", "Classification: LGG vs HGG (HGG positive)"
    description = (
        "Patient-level grade per method on the test patients, with percentile-bootstrap "
        "confidence intervals (patients resampled), beside the study's published figures."
    )
    missing = _missing_table(run, key, title, description, _CLS_COLUMNS, ["classification"])
    if missing is not None:
        return missing
    rows_in = run.rows("classification")
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows_in:
        by_method[row.get("method") or "?"].append(row)
    ncols = len(_CLS_COLUMNS)
    first = {0: "{method}", 1: "{source}", 2: "{model}"}
    out: list[Row] = []
    notes: list[str] = []
    used_figures: list[PublishedFigure] = []
    for method in (*METHODS, *[m for m in by_method if m not in (*METHODS, "majority")]):
        for row in by_method.get(method, []):
            n = _num(row.get("n")) or 0
            out.append(
                Row(
                    (
                        _label(method),
                        "This run",
                        row.get("model") or DASH,
                        _int(row.get("n")),
                        " / ".join(_int(row.get(k)) for k in ("tp", "fp", "tn", "fn")),
                        _int(row.get("n_invalid")),
                        _with_ci(row, "accuracy"),
                        fmt(row.get("precision")),
                        _with_ci(row, "sensitivity"),
                        _with_ci(row, "specificity"),
                        fmt(row.get("f1")),
                        _with_ci(row, "balanced_accuracy"),
                        _with_ci(row, "auc"),
                        fmt(row.get("majority_baseline_accuracy")),
                    )
                )
            )
            called_hgg = (_num(row.get("tp")) or 0) + (_num(row.get("fp")) or 0)
            if n:
                notes.append(
                    f"{_label(method)} called HGG for {int(called_hgg)} of {int(n)} patients "
                    f"({_pct(called_hgg, n)}); {_int(row.get('n_invalid'))} gave no valid grade."
                )
        if method in METHODS and not by_method.get(method):
            out.append(Row((_label(method), NOT_RUN, *[""] * (ncols - 2)), "not_run"))
        figures = published.figures_for("classification", method)
        used_figures += figures
        out += _published_rows(figures, published, ncols, _CLS_METRIC_COLUMN, first)
    # the majority-class baseline: this run's (a "majority" row, or the methods' column) and
    # the derived BraTS 2020 figure
    majority_rows = by_method.get("majority", [])
    for row in majority_rows:
        out.append(
            Row(
                (
                    _label("majority"),
                    "This run",
                    row.get("model") or "no model",
                    _int(row.get("n")),
                    " / ".join(_int(row.get(k)) for k in ("tp", "fp", "tn", "fn")),
                    _int(row.get("n_invalid")),
                    _with_ci(row, "accuracy"),
                    fmt(row.get("precision")),
                    _with_ci(row, "sensitivity"),
                    _with_ci(row, "specificity"),
                    fmt(row.get("f1")),
                    _with_ci(row, "balanced_accuracy"),
                    _with_ci(row, "auc"),
                    fmt(row.get("majority_baseline_accuracy") or row.get("accuracy")),
                ),
                "baseline",
            )
        )
    if not majority_rows:
        baselines = {
            fmt(r.get("majority_baseline_accuracy"))
            for r in rows_in
            if _num(r.get("majority_baseline_accuracy")) is not None
        }
        if len(baselines) == 1:
            cells = [""] * ncols
            cells[0], cells[1], cells[2] = _label("majority"), "This run", "no model"
            cells[6] = cells[13] = baselines.pop()
            out.append(Row(tuple(cells), "baseline"))
    figures = published.figures_for("classification", "majority")
    used_figures += figures
    out += _published_rows(figures, published, ncols, _CLS_METRIC_COLUMN, first)

    level = {r.get("ci_level") for r in rows_in if r.get("ci_level") is not None}
    boots = {r.get("n_bootstrap") for r in rows_in if r.get("n_bootstrap") is not None}
    ci_text = (
        f"{', '.join(f'{100 * float(x):g}%' for x in sorted(level))} percentile-bootstrap "
        f"intervals over patients ({', '.join(str(int(b)) for b in sorted(boots))} resamples)"
        if level and boots
        else "confidence intervals as given in metrics/classification.csv"
    )
    notes = [
        "HGG is the positive class: sensitivity = HGG recall, specificity = LGG recall. Invalid "
        "answers (no usable grade) count as wrong in accuracy, sensitivity and specificity and "
        f"are left out of precision. [..] = {ci_text}.",
        *notes,
        *_published_notes(used_figures, published),
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return Table(
        key,
        _tiny_title(title, tiny),
        description,
        _CLS_COLUMNS,
        tuple(out),
        produced,
        tuple(notes),
        tiny,
        numeric=(False, False, False, *[True] * (ncols - 3)),
    )


# --------------------------------------------------------------------------- comparisons

_TESTS = {
    "exact": "McNemar exact (binomial)",
    "chi2_cc": "McNemar χ² (continuity-corrected)",
}


def _verdict(row: Mapping[str, Any], alpha: float) -> str:
    p = _num(row.get("p_value"))
    a, b = _label(row.get("method_a")), _label(row.get("method_b"))
    n_b, n_c = _num(row.get("b")) or 0, _num(row.get("c")) or 0
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
    key, title = "comparisons", "Paired comparisons of grading accuracy (McNemar)"
    description = (
        "Each pair of methods graded the same patients; only the patients one got right and the "
        "other wrong (b, c) decide the test."
    )
    columns = (
        "Method A",
        "Method B",
        "n",
        "b: A right, B wrong",
        "c: A wrong, B right",
        "Statistic",
        "p-value",
        "Test",
        "Verdict",
    )
    missing = _missing_table(run, key, title, description, columns, ["comparisons"])
    if missing is not None:
        return missing
    rows_in = run.rows("comparisons")
    out = []
    for row in rows_in:
        out.append(
            Row(
                (
                    _label(row.get("method_a")),
                    _label(row.get("method_b")),
                    _int(row.get("n")),
                    _int(row.get("b")),
                    _int(row.get("c")),
                    fmt(row.get("statistic")),
                    fmt(row.get("p_value"), 4),
                    _TESTS.get(row.get("test") or "", row.get("test") or DASH),
                    _verdict(row, options.alpha),
                )
            )
        )
    if not out:
        return Table(
            key, title, description, columns, status=NOT_RUN, status_detail="no comparison rows"
        )
    notes = [
        f"{_label(r.get('method_a'))} vs {_label(r.get('method_b'))}: {_verdict(r, options.alpha)}."
        for r in rows_in
    ]
    notes.append(
        "The exact test is used when b + c < 25, otherwise the χ² test with continuity "
        "correction; invalid answers count as wrong. No paired test is among the study's "
        "published figures used here."
    )
    produced, tiny = _produced_by(run, _methods_in(rows_in, "method_a", "method_b"))
    return Table(
        key,
        _tiny_title(title, tiny),
        description,
        columns,
        tuple(out),
        produced,
        tuple(notes),
        tiny,
        numeric=(False, False, True, True, True, True, True, False, False),
    )


# --------------------------------------------------------------------------- segmentation

_SEG_COLUMNS = (
    "Method",
    "Task",
    "Region",
    "Source",
    "Model",
    "n",
    "Dice mean ± SD",
    "Dice median",
    "HD95 mean ± SD (mm)",
    "HD95 median (mm)",
)


def _mean_sd(mean: Any, sd: Any, digits: int) -> str:
    m = fmt(mean, digits)
    s = _num(sd)
    return m if m == DASH or s is None else f"{m} ± {s:.{digits}f}"


def _summarise_segmentation(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
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
            "model": _models(items, method),
        }
        for metric in ("dice", "hd95"):
            values = [v for v in (_num(r.get(metric)) for r in items) if v is not None]
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else None
            entry[f"{metric}_median"] = statistics.median(values) if values else None
            entry[f"{metric}_std"] = statistics.pstdev(values) if len(values) > 1 else None
            if metric == "dice":
                entry["n"] = len(values)
        out.append(entry)
    return out


def _group_order(method: str | None, task: str | None, region: str | None) -> tuple:
    m = {k: i for i, k in enumerate(METHODS)}
    t = {"seg": 0, "point": 1, "box": 2, "polygon": 3}
    r = {k: i for i, k in enumerate(CNN_REGIONS)}
    if method in CNN_METHODS:
        return (0, t.get(task, 9), CNN_METHODS.index(method), r.get(region, 9), region or "")
    return (1, t.get(task, 9), m.get(method, 9), r.get(region, 9), region or "")


def _dice_rows(
    summary: Sequence[Mapping[str, Any]],
    published: Published,
    *,
    table: str,
    vlm_tasks: Sequence[str],
    include_cnn: bool,
    cells_for,
    ncols: int,
    place: Mapping[str, int],
    first: Mapping[int, str],
    source_col: int,
) -> tuple[list[Row], list[PublishedFigure]]:
    """Our rows in study order, "not run" rows for missing groups, published rows beside."""
    have = {(r.get("method"), r.get("task")) for r in summary}
    ordered = sorted(summary, key=lambda r: _group_order(r["method"], r["task"], r["region"]))
    out: list[Row] = []
    used: list[PublishedFigure] = []

    def published_for(method: str, task: str) -> list[Row]:
        figs = [
            f
            for f in published.figures_for(table)
            if f.method in (method,) and (f.task in (None, task))
        ]
        used.extend(figs)
        return _published_rows(figs, published, ncols, place, first)

    if include_cnn:
        cnn = [r for r in ordered if r["method"] in CNN_METHODS]
        out += [Row(cells_for(r)) for r in cnn]
        if not any(r["method"] == "cnn" for r in cnn):
            cells = [""] * ncols
            cells[0], cells[1], cells[source_col] = _label("cnn"), "seg", NOT_RUN
            out.append(Row(tuple(cells), "not_run"))
        out += published_for("cnn", "seg")
    for task in vlm_tasks:
        for method in VLM_METHODS:
            group = [r for r in ordered if r["method"] == method and r["task"] == task]
            out += [Row(cells_for(r)) for r in group]
            if (method, task) not in have:
                cells = [""] * ncols
                cells[0], cells[1], cells[source_col] = _label(method), task, NOT_RUN
                out.append(Row(tuple(cells), "not_run"))
        out += published_for("vlm", task)
    others = [
        r
        for r in ordered
        if not (r["method"] in CNN_METHODS and include_cnn)
        and not (r["method"] in VLM_METHODS and r["task"] in vlm_tasks)
    ]
    out += [Row(cells_for(r)) for r in others]
    return out, used


def segmentation_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """3D Dice and HD95 per method, task and region (segmentation summary or per-case rows)."""
    key, title = "segmentation", "Segmentation and localisation in 3D (Dice, HD95)"
    description = (
        "CNN: the predicted label map per region (WT, TC, ET). VLM: its point / box / polygon "
        "masks on the slices it saw, stacked into a 3D mask and scored against the whole tumour "
        "(WT), so its Dice is comparable with the CNN's."
    )
    missing = _missing_table(
        run, key, title, description, _SEG_COLUMNS, ["segmentation_summary", "segmentation"]
    )
    if missing is not None:
        return missing
    notes: list[str] = []
    if run.tables["segmentation_summary"].ok and run.rows("segmentation_summary"):
        summary = [dict(r) for r in run.rows("segmentation_summary")]
        notes.append("Summary rows from metrics/segmentation_summary.csv.")
    else:
        summary = _summarise_segmentation(run.rows("segmentation"))
        notes.append(
            "Means, SDs (population) and medians computed by the report from the per-case rows "
            "of metrics/segmentation.csv."
        )
    for r in summary:
        r.setdefault("model", None)

    def cells_for(r: Mapping[str, Any]) -> tuple[str, ...]:
        return (
            _label(r.get("method")),
            r.get("task") or DASH,
            r.get("region") or DASH,
            "This run",
            r.get("model") or DASH,
            _int(r.get("n")),
            _mean_sd(r.get("dice_mean"), r.get("dice_std"), 4),
            fmt(r.get("dice_median"), 4),
            _mean_sd(r.get("hd95_mean"), r.get("hd95_std"), 1),
            fmt(r.get("hd95_median"), 1),
        )

    place = {"dice": 6}
    first = {0: "{method}", 1: "{task}", 2: "not recorded", 3: "{source}", 4: "{model}"}
    out, used = _dice_rows(
        summary,
        published,
        table="segmentation",
        vlm_tasks=VLM_TASKS,
        include_cnn=True,
        cells_for=cells_for,
        ncols=len(_SEG_COLUMNS),
        place=place,
        first=first,
        source_col=3,
    )
    # the study's VLM Dice (variant and scoring level not recorded) also beside our 3D VLM rows
    out2 = list(out)
    for fig in published.figures_for("localisation"):
        # insert after the last row of that task
        idx = max((i for i, r in enumerate(out2) if r.cells[1] == fig.task), default=None)
        if idx is None:
            continue
        cells = [""] * len(_SEG_COLUMNS)
        cells[0], cells[1], cells[2] = _label(fig.method), fig.task or "", "not recorded"
        cells[3], cells[4], cells[6] = (
            _source_cell(fig),
            published.model(fig.method),
            fig.text,
        )
        out2.insert(idx + 1, Row(tuple(cells), "published"))
        used.append(fig)
    statuses: dict[tuple[str, str], int] = defaultdict(int)
    for row in run.rows("segmentation"):
        status = row.get("status")
        if status and status != "ok":
            statuses[(row.get("method") or "?", status)] += 1
    for (method, status), count in sorted(statuses.items()):
        notes.append(f"{_label(method)}: {count} case-region scores had status '{status}'.")
    empty_rules = sum(1 for r in run.rows("segmentation") if r.get("empty_rule"))
    if empty_rules:
        notes.append(
            f"{empty_rules} scores used the BraTS empty-region rule (both empty: Dice 1, HD95 0; "
            "one empty: Dice 0, HD95 = the volume diagonal)."
        )
    notes += [
        f"{published.citation.short}, abstract: “{f.sentence}”"
        for f in published.findings_for("segmentation")
    ]
    notes += _published_notes(used, published)
    methods = _methods_in([*summary, *run.rows("segmentation")])
    produced, tiny = _produced_by(run, methods)
    tiny = tiny or any(is_tiny(r.get("model")) for r in summary)
    return Table(
        key,
        _tiny_title(title, tiny),
        description,
        _SEG_COLUMNS,
        tuple(out2),
        produced,
        tuple(notes),
        tiny,
        numeric=(False, False, False, False, False, True, True, True, True, True),
    )


# --------------------------------------------------------------------------- slice level


def first_run_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows of the first run only (repeats of identical queries belong to consistency)."""
    runs = [_num(r.get("run")) for r in rows]
    known = [r for r in runs if r is not None]
    if not known:
        return list(rows)
    first = min(known)
    return [r for r, k in zip(rows, runs, strict=False) if k is None or k == first]


_LOC_COLUMNS = (
    "Method",
    "Task",
    "Source",
    "Model",
    "Slices",
    "Usable answers",
    "Dice (2D) mean",
    "Dice (2D) median",
    "HD95 (2D) median (mm)",
    "Point inside tumour",
    "Point distance median (mm)",
)


def localisation_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Slice-level scores of every VLM answer (``metrics/slices.csv``, first run)."""
    key, title = "localisation", "VLM localisation per slice (2D)"
    description = (
        "Every slice the VLM saw, scored against the whole tumour on that slice; failed answers "
        "(invalid, refused, empty, error) are scored as failures, not dropped."
    )
    missing = _missing_table(run, key, title, description, _LOC_COLUMNS, ["slices"])
    if missing is not None:
        return missing
    rows_in = first_run_rows(run.rows("slices"))
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows_in:
        groups[(row.get("method"), row.get("task"))].append(row)
    summary = []
    for (method, task), items in groups.items():
        if task == "grade":
            continue
        dice = [v for v in (_num(r.get("dice_2d")) for r in items) if v is not None]
        hd = [v for v in (_num(r.get("hd95_2d")) for r in items) if v is not None]
        inside = [v for v in (_num(r.get("point_inside")) for r in items) if v is not None]
        dist = [v for v in (_num(r.get("point_dist_mm")) for r in items) if v is not None]
        usable = sum(1 for r in items if r.get("status") in USABLE_STATUSES)
        summary.append(
            {
                "method": method,
                "task": task,
                "region": None,
                "model": _models(items, method),
                "n": len(items),
                "usable": usable,
                "dice_mean": statistics.fmean(dice) if dice else None,
                "dice_median": statistics.median(dice) if dice else None,
                "hd95_median": statistics.median(hd) if hd else None,
                "inside": (sum(inside), len(inside)) if inside else None,
                "dist_median": statistics.median(dist) if dist else None,
            }
        )

    def cells_for(r: Mapping[str, Any]) -> tuple[str, ...]:
        inside = r.get("inside")
        return (
            _label(r.get("method")),
            r.get("task") or DASH,
            "This run",
            r.get("model") or DASH,
            str(r["n"]),
            f"{r['usable']} ({_pct(r['usable'], r['n'])})",
            fmt(r.get("dice_mean"), 4),
            fmt(r.get("dice_median"), 4),
            fmt(r.get("hd95_median"), 1),
            DASH if not inside else f"{int(inside[0])} / {inside[1]} ({_pct(*inside)})",
            fmt(r.get("dist_median"), 1),
        )

    place = {"dice": 6}
    first = {0: "{method}", 1: "{task}", 2: "{source}", 3: "{model}"}
    out, used = _dice_rows(
        summary,
        published,
        table="localisation",
        vlm_tasks=VLM_TASKS,
        include_cnn=False,
        cells_for=cells_for,
        ncols=len(_LOC_COLUMNS),
        place=place,
        first=first,
        source_col=2,
    )
    notes = [
        "Summaries (counts, means, medians) computed by the report from metrics/slices.csv, "
        "first run of each query only. A point is scored by whether it falls inside the tumour "
        "and its distance to the tumour's centre.",
        *[
            f"{published.citation.short}, abstract: “{f.sentence}”"
            for f in published.findings_for("localisation")
        ],
        *_published_notes(used, published),
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return Table(
        key,
        _tiny_title(title, tiny),
        description,
        _LOC_COLUMNS,
        tuple(out),
        produced,
        tuple(notes),
        tiny,
        numeric=(False, False, False, False, *[True] * 7),
    )


# --------------------------------------------------------------------------- centres


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
        clustered: whether ``ratio`` is below the report's ``centre_cluster_ratio``.
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


def normalised_centres(
    rows: Iterable[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], float, float, float, float]]:
    """``(row, pred_u, pred_v, true_u, true_v)`` for slice rows with both centres and a size.

    ``pred_cx`` / ``pred_cy`` / ``true_cx`` / ``true_cy`` are pixel coordinates ``(x, y) =
    (col, row)`` of a ``width`` x ``height`` slice image (pixel centres at integers).
    """
    out = []
    for row in rows:
        values = [_num(row.get(k)) for k in ("pred_cx", "pred_cy", "true_cx", "true_cy")]
        w, h = _num(row.get("width")), _num(row.get("height"))
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
        out.append(
            CentreSummary(
                method=method or "?",
                task=task or "?",
                model=_models([i[0] for i in items], method),
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
            )
        )
    order = {(m, t): i for i, (m, t) in enumerate((m, t) for m in VLM_METHODS for t in VLM_TASKS)}
    return sorted(out, key=lambda s: (order.get((s.method, s.task), 99), s.method, s.task))


def _centre_sentence(s: CentreSummary, options: ReportOptions) -> str:
    head = (
        f"{_label(s.method)}, {s.task}: predicted centres lie on average {s.pred_from_centre:.3f} "
        f"(image widths) from the image centre, the true centres {s.true_from_centre:.3f}"
    )
    if s.ratio is None:
        return head + "."
    if s.clustered:
        return (
            head + f" — {s.ratio:.2f} times as far: the predictions cluster near the image "
            f"centre (threshold {options.centre_cluster_ratio:g})."
        )
    return head + f" — {s.ratio:.2f} times as far: no clustering near the centre by this measure."


def centres_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Distance of predicted vs true centres from the image centre (``metrics/slices.csv``)."""
    key, title = "centres", "Where the VLM puts the tumour: predicted vs true centres"
    description = (
        "Centres of every usable point / box / polygon answer and of the true tumour on the same "
        "slice, in normalised image coordinates (0..1; image centre 0.5, 0.5). Predicted / true "
        "from centre: mean distance from the image centre; ratio: predicted / true; "
        "predicted–true: mean distance between a slice's two centres; r(x), r(y): correlation "
        "of predicted with true position."
    )
    columns = (
        "Method",
        "Task",
        "Model",
        "Slices",
        "Predicted from centre",
        "True from centre",
        "Ratio",
        "Predicted–true",
        "r(x)",
        "r(y)",
        "Clustered near centre",
    )
    missing = _missing_table(run, key, title, description, columns, ["slices"])
    if missing is not None:
        return missing
    summaries = centre_summaries(run, options)
    if not summaries:
        return Table(
            key,
            title,
            description,
            columns,
            status=NOT_RUN,
            status_detail="metrics/slices.csv has no rows with both a predicted and a true centre",
        )
    out = [
        Row(
            (
                _label(s.method),
                s.task,
                s.model,
                str(s.n),
                fmt(s.pred_from_centre),
                fmt(s.true_from_centre),
                fmt(s.ratio, 2),
                fmt(s.pred_to_true),
                fmt(s.r_x, 2),
                fmt(s.r_y, 2),
                "yes" if s.clustered else "no",
            )
        )
        for s in summaries
    ]
    notes = [_centre_sentence(s, options) for s in summaries]
    notes.append(
        "Computed by the report from pred_cx/pred_cy and true_cx/true_cy of metrics/slices.csv "
        "(first run). r near 0 means the predicted position does not follow the tumour's position."
    )
    notes += [
        f"{published.citation.short}, abstract: “{f.sentence}”"
        for f in published.findings_for("centres")
    ]
    produced, tiny = _produced_by(run, [s.method for s in summaries])
    return Table(
        key,
        _tiny_title(title, tiny),
        description,
        columns,
        tuple(out),
        produced,
        tuple(notes),
        tiny,
        numeric=(False, False, False, *[True] * 7, False),
    )


# --------------------------------------------------------------------------- answer statuses


def answer_status_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Answer-format statuses per method and task (``metrics/answer_status.csv``)."""
    key, title = "answer_status", "Answer format: parse status of every VLM answer"
    description = (
        "ok: valid as asked; repaired: fixed JSON or clipped coordinates; pattern: read from "
        "free text; invalid / refused / empty / error: no usable answer (scored as failures)."
    )
    rows_in = run.rows("answer_status")
    found = [s for s in dict.fromkeys(r.get("status") for r in rows_in) if s]
    statuses = [s for s in ANSWER_STATUSES] + sorted(s for s in found if s not in ANSWER_STATUSES)
    columns = ("Method", "Task", "Model", "Answers", *statuses, "Usable")
    missing = _missing_table(run, key, title, description, columns, ["answer_status"])
    if missing is not None:
        return missing
    groups: dict[tuple, dict[str, float]] = defaultdict(dict)
    models: dict[tuple, str] = {}
    for row in rows_in:
        group = (row.get("method"), row.get("task"))
        groups[group][row.get("status") or "?"] = _num(row.get("count")) or 0.0
        models.setdefault(group, row.get("model") or DASH)
    task_order = {"grade": 0, **{t: i + 1 for i, t in enumerate(VLM_TASKS)}}
    method_order = {m: i for i, m in enumerate(METHODS)}
    out, usable_rate = [], {}
    for group in sorted(
        groups, key=lambda g: (method_order.get(g[0], 9), task_order.get(g[1], 9), str(g))
    ):
        counts = groups[group]
        total = sum(counts.values())
        usable = sum(counts.get(s, 0) for s in USABLE_STATUSES)
        usable_rate[group] = usable / total if total else None
        cells = [
            f"{int(counts[s])} ({_pct(counts[s], total)})" if counts.get(s) else "0"
            for s in statuses
        ]
        out.append(
            Row(
                (
                    _label(group[0]),
                    group[1] or DASH,
                    models[group],
                    str(int(total)),
                    *cells,
                    f"{int(usable)} ({_pct(usable, total)})",
                )
            )
        )
    for method in VLM_METHODS:
        if not any(g[0] == method for g in groups):
            cells = [""] * len(columns)
            cells[0], cells[1] = _label(method), NOT_RUN
            out.append(Row(tuple(cells), "not_run"))
    notes = []
    for task in ("grade", *VLM_TASKS):
        base, tuned = usable_rate.get(("vlm_base", task)), usable_rate.get(("vlm_finetuned", task))
        if base is not None and tuned is not None:
            change = "raised" if tuned > base else "lowered" if tuned < base else "did not change"
            notes.append(
                f"{task}: fine-tuning {change} the usable-answer rate "
                f"({100 * base:.1f}% base, {100 * tuned:.1f}% fine-tuned)."
            )
    notes += [
        f"{published.citation.short}, abstract: “{f.sentence}”"
        for f in published.findings_for("answer_status")
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return Table(
        key,
        _tiny_title(title, tiny),
        description,
        columns,
        tuple(out),
        produced,
        tuple(notes),
        tiny,
        numeric=(False, False, False, *[True] * (len(columns) - 3)),
    )


# --------------------------------------------------------------------------- consistency


def consistency_table(run: RunData, published: Published, options: ReportOptions) -> Table:
    """Agreement of repeated identical queries (``metrics/consistency.csv``)."""
    key, title = "consistency", "Consistency of repeated identical queries"
    description = (
        "The same image and prompt asked several times: how often every answer was identical, "
        "Fleiss' κ and entropy of the grade answers, and the spread of repeated geometry."
    )
    columns = (
        "Method",
        "Task",
        "Model",
        "Items",
        "Runs",
        "Temperature",
        "All identical",
        "Fleiss κ",
        "Mean entropy (bits)",
        "IoU spread (box / polygon)",
        "Point dispersion (mm)",
    )
    missing = _missing_table(run, key, title, description, columns, ["consistency"])
    if missing is not None:
        return missing
    rows_in = run.rows("consistency")
    out = [
        Row(
            (
                _label(r.get("method")),
                r.get("task") or DASH,
                r.get("model") or DASH,
                _int(r.get("n_items")),
                _int(r.get("runs")),
                fmt(r.get("temperature"), 2),
                fmt(r.get("all_identical_rate")),
                fmt(r.get("fleiss_kappa")),
                fmt(r.get("mean_entropy")),
                fmt(r.get("iou_spread_mean")),
                fmt(r.get("point_dispersion_mm_mean"), 2),
            )
        )
        for r in rows_in
    ]
    if not out:
        return Table(
            key, title, description, columns, status=NOT_RUN, status_detail="no consistency rows"
        )
    notes = [
        "With greedy decoding (temperature 0) a deterministic backend repeats itself exactly; "
        "variation then comes from the serving stack (batching, non-deterministic kernels).",
        *[
            f"{published.citation.short} ({published.source_text(f.source)}): {f.sentence}"
            for f in published.findings_for("consistency")
        ],
    ]
    produced, tiny = _produced_by(run, _methods_in(rows_in))
    return Table(
        key,
        _tiny_title(title, tiny),
        description,
        columns,
        tuple(out),
        produced,
        tuple(notes),
        tiny,
        numeric=(False, False, False, *[True] * 8),
    )


# --------------------------------------------------------------------------- all tables

_BUILDERS = (
    classification_table,
    comparisons_table,
    segmentation_table,
    localisation_table,
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


def headline(run: RunData, published: Published, options: ReportOptions) -> list[str]:
    """A few sentences with the main numbers of this run beside the study's."""
    out = []
    cls = {r.get("method"): r for r in run.rows("classification")}
    parts = [
        f"{_label(m)} {fmt(cls[m].get('accuracy'))} (specificity {fmt(cls[m].get('specificity'))})"
        for m in METHODS
        if m in cls
    ]
    if parts:
        baseline = next(
            (
                fmt(r.get("majority_baseline_accuracy"))
                for r in cls.values()
                if _num(r.get("majority_baseline_accuracy")) is not None
            ),
            None,
        )
        text = "Grading accuracy: " + "; ".join(parts)
        if baseline:
            text += f"; always answering the majority grade: {baseline}"
        out.append(text + ".")
    pub = [
        f"{_label(f.method)} {f.metric} {f.text}"
        for f in published.figures_for("classification")
        if f.row == "abstract"
    ]
    if pub and parts:
        out.append(f"Published ({published.citation.short}, abstract): " + "; ".join(pub) + ".")
    for row in run.rows("comparisons"):
        out.append(
            f"{_label(row.get('method_a'))} vs {_label(row.get('method_b'))}: "
            f"{_verdict(row, options.alpha)}."
        )
    seg = run.rows("segmentation_summary") or _summarise_segmentation(run.rows("segmentation"))
    dice = [
        f"{_label(r.get('method'))} {r.get('task')}"
        + (f" {r.get('region')}" if r.get("method") in CNN_METHODS else "")
        + f" {fmt(r.get('dice_mean'), 4)}"
        for r in sorted(
            seg, key=lambda r: _group_order(r.get("method"), r.get("task"), r.get("region"))
        )
        if (r.get("method") in CNN_METHODS and r.get("region") == "WT")
        or (r.get("method") in VLM_METHODS and r.get("task") in ("box", "polygon"))
    ]
    if dice:
        pub_dice = "; ".join(
            f"{_label(f.method)} {f.task} {f.text}"
            for f in (
                *published.figures_for("segmentation"),
                *published.figures_for("localisation"),
            )
        )
        out.append(
            "Mean 3D Dice: "
            + "; ".join(dice)
            + "."
            + (f" Published: {pub_dice}." if pub_dice else "")
        )
    for s in centre_summaries(run, options):
        if s.task == "point" or s.clustered:
            out.append(_centre_sentence(s, options))
    return out


# --------------------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


def render_markdown(table: Table) -> str:
    """The table as GitHub-flavoured Markdown (title, what produced it, table, notes)."""
    lines = [f"## {table.title}", ""]
    if table.tiny:
        lines += [
            f"> **{TINY_LABEL}**: numbers from the tiny VLM with random weights, built in code "
            "to exercise the pipeline. They say nothing about real vision-language models.",
            "",
        ]
    if table.description:
        lines += [table.description, ""]
    if table.status != "ok":
        lines += [f"**{table.status}** — {table.status_detail}", ""]
        return "\n".join(lines)
    if table.produced_by:
        lines += ["Produced by: " + "; ".join(table.produced_by), ""]
    numeric = table.numeric or (False,) * len(table.columns)
    lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
    lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    for row in table.rows:
        cells = [_md_cell(c) for c in row.cells]
        if row.kind == "published":
            cells = [f"*{c}*" if c.strip() else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines.append("")
        lines += [f"- {' '.join(note.split())}" for note in table.notes]
    return "\n".join(lines) + "\n"


def render_html_table(table: Table) -> str:
    """The table as an HTML ``<section>`` (every text escaped)."""
    e = html.escape
    parts = [f'<section class="table" id="{e(table.key)}">', f"<h2>{e(table.title)}</h2>"]
    if table.tiny:
        parts.append(
            f'<p class="tiny-note"><strong>{e(TINY_LABEL)}</strong>: these numbers come from a '
            "tiny VLM with random weights; they say nothing about real vision-language "
            "models.</p>"
        )
    if table.description:
        parts.append(f'<p class="description">{e(table.description)}</p>')
    if table.status != "ok":
        parts.append(
            f'<p class="not-run"><strong>{e(table.status)}</strong> — {e(table.status_detail)}</p>'
        )
        parts.append("</section>")
        return "\n".join(parts)
    if table.produced_by:
        parts.append(
            '<p class="produced">Produced by: '
            + "; ".join(e(p) for p in table.produced_by)
            + "</p>"
        )
    numeric = table.numeric or (False,) * len(table.columns)
    parts.append('<div class="scroll"><table>')
    parts.append(
        "<thead><tr>"
        + "".join(
            f'<th class="{"num" if n else ""}">{e(c)}</th>'
            for c, n in zip(table.columns, numeric, strict=False)
        )
        + "</tr></thead><tbody>"
    )
    for row in table.rows:
        parts.append(
            f'<tr class="{e(row.kind)}">'
            + "".join(
                f'<td class="{"num" if n else ""}">{e(c)}</td>'
                for c, n in zip(row.cells, numeric, strict=False)
            )
            + "</tr>"
        )
    parts.append("</tbody></table></div>")
    if table.notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in table.notes) + "</ul>"
        )
    parts.append("</section>")
    return "\n".join(parts)
