"""The case list (grades, scores, sorting worst first, next / previous) and tolerant readers of
what a run or an arm wrote: ``metrics/*.csv``, ``cases/<id>/metrics.json``, ``answers.jsonl``.

No slicer / qt import, so all of it is tested in plain Python.

Metric tables are read tolerantly: any CSV in the folder with a case-id column (``case_id``,
``case``, ``subject``, ``BraTS_2020_subject_ID``, ... any case) contributes; rows of aggregates
(``mean``, ``median``, ...) are skipped; qualifier columns (``method``, ``arm``, ``variant``,
``task``, ``region``) become part of the score's name (``"cnn seg WT dice"``), so long tables
(one row per case and region) and wide tables (one column per score) both work. Other text
columns (``model``, ``status``, grades) are kept as text. A table with several rows for one
case and qualifier set (one row per slice, say) is not summarised into the case list: it is
named in the notes and skipped, rather than showing one arbitrary row's numbers.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "AGGREGATE_IDS",
    "CaseRow",
    "VlmAnswer",
    "flatten",
    "lower_is_better",
    "merge_scores",
    "neighbour",
    "predictions_from",
    "read_answers",
    "read_metrics_tables",
    "rows_from_cohort",
    "score_names",
    "sort_rows",
]

_ID_COLUMNS = (
    "case_id",
    "caseid",
    "case",
    "subject_id",
    "subject",
    "patient_id",
    "patient",
    "id",
    "brats_2020_subject_id",
    "brats20id",
)
_QUALIFIERS = ("method", "arm", "variant", "task", "region")
#: Row ids that are summaries, not cases.
AGGREGATE_IDS = frozenset(
    {"mean", "median", "std", "sd", "all", "overall", "summary", "total", "min", "max", "average"}
)
_MISSING = {"", "na", "n/a", "nan", "none", "null", "-"}
_LOWER_BETTER = re.compile(
    r"(^|[^a-z])(hd|hd95|hausdorff|dist|distance|error|err|loss|mae|rmse|mm)([^a-z]|$)", re.I
)


@dataclass(frozen=True)
class CaseRow:
    """One line of the case list.

    Attributes:
        case_id: the case.
        grade: ``"HGG"``, ``"LGG"`` or None.
        usable: whether the case's files are complete and readable.
        problems: what is wrong with it (file + reason).
        scores: score name -> number (NaN when missing) or text, from a run's tables.
        folder: the case's image folder, when known.
    """

    case_id: str
    grade: str | None = None
    usable: bool = True
    problems: tuple[str, ...] = ()
    scores: Mapping[str, float | str] = field(default_factory=dict)
    folder: str | None = None

    def score(self, name: str) -> float:
        """A numeric score (NaN when missing or not a number)."""
        value = self.scores.get(name)
        return float(value) if isinstance(value, int | float) else math.nan


def rows_from_cohort(cohort) -> list[CaseRow]:
    """Case rows from a :class:`~GliomaCompareLib.data.discovery.Cohort`, in cohort order."""
    return [
        CaseRow(r.case_id, r.grade, r.usable, tuple(r.problems), {}, str(r.folder))
        for r in cohort.cases
    ]


def _find_id_column(columns: Sequence[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    for name in _ID_COLUMNS:
        if name in lowered:
            return lowered[name]
    return None


def _number(text: str) -> float | None:
    t = text.strip()
    if t.lower() in _MISSING:
        return math.nan
    try:
        return float(t)
    except ValueError:
        return None


def read_metrics_tables(folder: str | Path) -> tuple[dict[str, dict[str, float | str]], list[str]]:
    """Per-case scores from every ``*.csv`` in ``folder`` (see the module docstring).

    Returns:
        ``({case_id: {score name: value}}, notes)``; notes name each file that was skipped and
        why (no case-id column, unreadable), so the GUI can show them.
    """
    folder = Path(folder)
    raw: list[tuple[str, str, tuple[str, ...], str, float | str]] = []
    notes: list[str] = []
    for path in sorted(folder.glob("*.csv")):
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                columns = [c for c in (reader.fieldnames or []) if c is not None]
                id_col = _find_id_column(columns)
                if id_col is None:
                    notes.append(f"{path.name}: no case id column; skipped")
                    continue
                rows = [r for r in reader if (r.get(id_col) or "").strip()]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            notes.append(f"{path.name}: unreadable ({exc}); skipped")
            continue
        quals = [c for c in columns if c.strip().lower() in _QUALIFIERS and c != id_col]
        values = [c for c in columns if c != id_col and c not in quals]
        keys = [
            (r[id_col].strip(), *((r.get(q) or "").strip() for q in quals))
            for r in rows
            if r[id_col].strip().lower() not in AGGREGATE_IDS
        ]
        if len(keys) != len(set(keys)):
            notes.append(
                f"{path.name}: several rows per case and {'/'.join(quals) or 'case'} "
                "(per-slice or per-run rows); not summarised in the case list"
            )
            continue
        numeric = {
            c: all(_number(r.get(c) or "") is not None for r in rows) and rows != [] for c in values
        }
        for r in rows:
            case_id = r[id_col].strip()
            if case_id.lower() in AGGREGATE_IDS:
                continue
            qual = tuple((r.get(q) or "").strip() for q in quals if (r.get(q) or "").strip())
            for c in values:
                text = r.get(c) or ""
                value: float | str = _number(text) if numeric[c] else text.strip()  # type: ignore[assignment]
                raw.append((case_id, path.stem, qual, c.strip(), value))
    short: dict[str, set[str]] = {}
    for _case, stem, qual, col, _v in raw:
        short.setdefault(" ".join([*qual, col]), set()).add(stem)
    out: dict[str, dict[str, float | str]] = {}
    for case_id, stem, qual, col, value in raw:
        name = " ".join([*qual, col])
        if len(short[name]) > 1:
            name = f"{stem}: {name}"
        out.setdefault(case_id, {})[name] = value
    return out, notes


def merge_scores(rows: Sequence[CaseRow], scores: Mapping[str, Mapping[str, float | str]]):
    """Rows with ``scores`` added; cases that only appear in ``scores`` are appended."""
    out = [replace(r, scores={**r.scores, **scores.get(r.case_id, {})}) for r in rows]
    known = {r.case_id for r in rows}
    out += [
        CaseRow(case_id, scores=dict(s))
        for case_id, s in sorted(scores.items())
        if case_id not in known
    ]
    return out


def score_names(rows: Iterable[CaseRow], numeric_only: bool = True) -> list[str]:
    """All score names in the rows (sorted), optionally only numeric ones."""
    names = set()
    for r in rows:
        for k, v in r.scores.items():
            if not numeric_only or isinstance(v, int | float):
                names.add(k)
    return sorted(names)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (distances, HD95, errors, losses)."""
    return bool(_LOWER_BETTER.search(metric))


def sort_rows(
    rows: Sequence[CaseRow], metric: str | None, worst_first: bool = True
) -> list[CaseRow]:
    """Rows ordered by ``metric``: worst first (lowest Dice / accuracy, largest HD95 / distance)
    or best first; cases without a value come last, in their original order. With ``metric``
    None or "" the rows are ordered by case id."""
    if not metric:
        return sorted(rows, key=lambda r: r.case_id)
    sign = 1.0 if lower_is_better(metric) else -1.0  # sign * value: ascending = best first
    present = [r for r in rows if not math.isnan(r.score(metric))]
    missing = [r for r in rows if math.isnan(r.score(metric))]
    ordered = sorted(present, key=lambda r: (sign * r.score(metric), r.case_id))
    if worst_first:
        ordered = sorted(present, key=lambda r: (-sign * r.score(metric), r.case_id))
    return ordered + missing


def neighbour(rows: Sequence[CaseRow], case_id: str | None, step: int) -> str | None:
    """The case ``step`` places after ``case_id`` in ``rows`` (clamped to the ends); the first
    case when ``case_id`` is None or not listed; None for no rows."""
    if not rows:
        return None
    ids = [r.case_id for r in rows]
    if case_id not in ids:
        return ids[0]
    index = min(max(ids.index(case_id) + step, 0), len(ids) - 1)
    return ids[index]


def flatten(doc, prefix: str = "") -> dict[str, float | str]:
    """Nested JSON -> ``{"a.b.c": scalar}`` (lists indexed ``a.0``; booleans as 0/1)."""
    out: dict[str, float | str] = {}
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(doc, list | tuple):
        for index, value in enumerate(doc):
            out.update(flatten(value, f"{prefix}.{index}" if prefix else str(index)))
    elif isinstance(doc, int | float):  # bool is an int: True -> 1.0
        out[prefix] = float(doc)
    elif doc is None:
        out[prefix] = math.nan
    else:
        out[prefix] = str(doc)
    return out


_GRADE_KEY = re.compile(r"(^|[._ ])((pred(icted)?_?)?grade|grade_pred(icted)?)$", re.I)
_TRUE_KEY = re.compile(r"(^|[._ ])(grade_true|true_grade)$", re.I)
_P_KEY = re.compile(r"(^|[._ ])p_?hgg$", re.I)


def predictions_from(flat: Mapping[str, float | str]) -> dict[str, dict[str, float | str]]:
    """Predicted grades and P(HGG) per method from flattened scores.

    A key ``<method>.grade`` / ``<method>.predicted_grade`` / ``<method> grade_pred`` with
    value HGG/LGG and ``<method>.p_hgg`` give ``{method: {"grade": ..., "p_hgg": ...}}``; a
    top-level ``grade`` or any ``grade_true`` is the ground truth (method ``"truth"``); a P(HGG)
    without a method is filed under ``"unnamed method"``.
    """
    out: dict[str, dict[str, float | str]] = {}
    for key, value in flat.items():
        if _TRUE_KEY.search(key) and isinstance(value, str) and value.upper() in ("HGG", "LGG"):
            out.setdefault("truth", {})["grade"] = value.upper()
            continue
        grade = _GRADE_KEY.search(key)
        if grade and isinstance(value, str) and value.upper() in ("HGG", "LGG"):
            method = key[: grade.start()].strip("._ ") or "truth"
            out.setdefault(method, {})["grade"] = value.upper()
        p = _P_KEY.search(key)
        if p and isinstance(value, float) and not math.isnan(value):
            method = key[: p.start()].strip("._ ") or "unnamed method"
            out.setdefault(method, {})["p_hgg"] = value
    return out


@dataclass(frozen=True)
class VlmAnswer:
    """One VLM answer, as the module places it.

    Attributes:
        case_id, slice_index, task, run: what was asked.
        status: the parser's status (``ok``, ``repaired``, ``pattern``, ``invalid``, ...).
        grade: ``HGG`` / ``LGG`` for the grade task, else None.
        p_hgg: P(HGG) when the backend gave probabilities.
        pixels: ``(N, 2)`` pixel (col, row) coordinates (point: 1, box: 2 corners, polygon: N).
        ras: ``(N, 3)`` RAS coordinates when the answer carried them.
        raw_text: the model's text.
    """

    case_id: str
    slice_index: int
    task: str
    run: int
    status: str
    grade: str | None = None
    p_hgg: float | None = None
    pixels: tuple[tuple[float, float], ...] = ()
    ras: tuple[tuple[float, float, float], ...] = ()
    raw_text: str = ""

    @property
    def placed(self) -> bool:
        """Whether the answer has a geometry to draw."""
        return bool(self.pixels or self.ras)


_VALUE_KEYS = ("pixels", "pixel", "parsed", "value", "answer", "prediction")


def _pairs(value) -> list[tuple[float, float]]:
    """Coordinates from the shapes answers come in: [x, y], {"x":..,"y":..}, boxes, lists."""
    if isinstance(value, Mapping):
        for key in ("points", "polygon", "vertices", "point", "box", "bbox", "center", "centre"):
            if key in value:
                return _pairs(value[key])
        keys = {k.lower(): v for k, v in value.items()}
        for a, b in (("x", "y"), ("col", "row"), ("c", "r")):
            if a in keys and b in keys:
                return [(float(keys[a]), float(keys[b]))]
        for names in (
            ("x0", "y0", "x1", "y1"),
            ("x_min", "y_min", "x_max", "y_max"),
            ("xmin", "ymin", "xmax", "ymax"),
            ("left", "top", "right", "bottom"),
        ):
            if all(n in keys for n in names):
                v = [float(keys[n]) for n in names]
                return [(v[0], v[1]), (v[2], v[3])]
        return []
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            if len(value) % 2 == 0:
                return [(float(value[i]), float(value[i + 1])) for i in range(0, len(value), 2)]
            return []
        out = []
        for item in value:
            out += _pairs(item)
        return out
    return []


def _answer(record: Mapping) -> VlmAnswer | None:
    try:
        case_id = str(record["case_id"])
        slice_index = int(record.get("slice_index", record.get("slice", -1)))
        task = str(record.get("task", ""))
    except (KeyError, TypeError, ValueError):
        return None
    status = str(record.get("status", "unknown"))
    value = None
    for key in _VALUE_KEYS:
        if record.get(key) is not None:
            value = record[key]
            break
    grade = p_hgg = None
    pixels: list[tuple[float, float]] = []
    ras: list[tuple[float, float, float]] = []
    if task == "grade":
        for text in (
            record.get("label"),
            value.get("grade") if isinstance(value, Mapping) else value,
        ):
            if isinstance(text, str) and text.strip().upper() in ("HGG", "LGG"):
                grade = text.strip().upper()
                break
        for key in ("p_hgg", "prob_hgg", "P(HGG)"):
            if isinstance(record.get(key), int | float):
                p_hgg = float(record[key])
    elif status not in ("invalid", "refused", "empty", "error"):
        raw_ras = record.get("ras")
        if raw_ras is not None:
            arr = [
                list(map(float, p))
                for p in (raw_ras if isinstance(raw_ras[0], list) else [raw_ras])
            ]
            ras = [tuple(p) for p in arr if len(p) == 3]  # type: ignore[misc]
        pixels = _pairs(value) if value is not None else []
    return VlmAnswer(
        case_id=case_id,
        slice_index=slice_index,
        task=task,
        run=int(record.get("run", 0) or 0),
        status=status,
        grade=grade,
        p_hgg=p_hgg,
        pixels=tuple(pixels),
        ras=tuple(ras),  # type: ignore[arg-type]
        raw_text=str(record.get("raw_text", "")),
    )


def read_answers(path: str | Path, case_id: str | None = None) -> tuple[list[VlmAnswer], int]:
    """VLM answers from an ``answers.jsonl`` (optionally only one case).

    Pixel coordinates are read from the first of ``pixels``, ``pixel``, ``parsed``, ``value``,
    ``answer``, ``prediction`` that is present (so the VLM arm's ``pixel`` geometry, already
    converted from the prompt's coordinate system, wins over the raw ``value``), RAS from
    ``ras`` when given; the grade from ``label``, else the value.

    Returns:
        ``(answers, bad_lines)``: lines that are not JSON or lack ``case_id`` are counted, not fatal.
    """
    answers, bad = [], 0
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            answer = _answer(record) if isinstance(record, Mapping) else None
            if answer is None:
                bad += 1
                continue
            if case_id is None or answer.case_id == case_id:
                answers.append(answer)
    return answers, bad
