"""Report tables declared, not filled by position.

A :class:`Column` says once what it shows: its heading, how to get its cell from a row of the
run's CSV, whether it holds numbers (right-aligned), which label of a summary line goes there
and which published figures. A :class:`TableSpec` is a title, a caption, the CSV files its rows
come from and a list of columns. :func:`build_table` turns a spec and its :class:`Line`\\ s
into a :class:`Table` of cells; :mod:`GliomaCompareLib.report.render` prints it as Markdown or
HTML. Adding a column to a report table is one more :class:`Column` in its spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from GliomaCompareLib.report.cells import NOT_RUN, text_or_dash
from GliomaCompareLib.report.rundata import TINY_LABEL, RunData

__all__ = [
    "Column",
    "Line",
    "Row",
    "Table",
    "TableSpec",
    "build_table",
    "missing_table",
    "unavailable_table",
]


@dataclass(frozen=True)
class Line:
    """One line of a table before it becomes cells.

    Either one of this run's rows (``row``: a CSV row or a summary of CSV rows), whose cells
    the columns' getters make, or a line that is not a row of ours (the study's published
    figures, "not run", a baseline): ``labels`` (method, source, model, task, region) and
    ``figures`` (metric -> text) fill the columns that name them; the other cells stay empty.

    Attributes:
        kind: ``"ours"``, ``"published"``, ``"not_run"`` or ``"baseline"``.
        row: the row, or None for a line of labels and figures.
        labels: label key -> text.
        figures: metric -> text (a published figure, or a baseline value).
    """

    kind: str = "ours"
    row: Mapping[str, Any] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    figures: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """One table column, declared once.

    Attributes:
        heading: the column heading.
        cell: how to get the cell from a row: a function of the row, or a key of the row whose
            value ``format`` turns into text.
        format: formats the value of ``cell`` when it is a key (default: the text, or a dash).
        numeric: whether the column holds numbers (right-aligned).
        label: which label of a line without a row goes here (``"method"``, ``"source"``,
            ``"model"``, ``"task"``, ``"region"``), if any.
        figure: the metrics whose published figures (or baseline values) go here.
    """

    heading: str
    cell: Callable[[Mapping[str, Any]], Any] | str
    format: Callable[[Any], Any] = text_or_dash
    numeric: bool = False
    label: str | None = None
    figure: tuple[str, ...] = ()

    def text(self, line: Line) -> str:
        """This column's cell of ``line``."""
        if line.row is not None:
            if callable(self.cell):
                return self.cell(line.row)
            return self.format(line.row.get(self.cell))
        if self.label is not None:
            return line.labels.get(self.label, "")
        found = [text for metric, text in line.figures.items() if metric in self.figure]
        return found[-1] if found else ""


@dataclass(frozen=True)
class TableSpec:
    """What a report table is: its name, title, caption, where its rows come from, its columns.

    Attributes:
        key: short name; the Markdown file is ``metrics/<key>.md`` and the HTML anchor ``key``.
        title: heading.
        description: the caption, one sentence saying what the table shows.
        sources: the ``metrics/<name>.csv`` tables its rows come from; the table is "not run"
            (or "unreadable") when none of them could be read.
        columns: the columns, in order.
    """

    key: str
    title: str
    description: str
    sources: tuple[str, ...]
    columns: tuple[Column, ...]

    def with_columns(self, *columns: Column) -> TableSpec:
        """This spec with ``columns`` added at the end."""
        return TableSpec(
            self.key, self.title, self.description, self.sources, (*self.columns, *columns)
        )


@dataclass(frozen=True)
class Row:
    """One table line as printed.

    Attributes:
        cells: the printed cells (plain text; escaped when rendered).
        kind: ``"ours"`` (this run), ``"published"`` (the study's figures), ``"not_run"``, or
            ``"baseline"`` (a reference line such as the majority class).
    """

    cells: tuple[str, ...]
    kind: str = "ours"


@dataclass(frozen=True)
class Table:
    """A report table, built: every cell as text.

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


def build_table(
    spec: TableSpec,
    lines: Iterable[Line],
    *,
    produced_by: Sequence[str] = (),
    notes: Sequence[str] = (),
    tiny: bool = False,
) -> Table:
    """The cells of ``spec``'s table: one :class:`Row` per line, one cell per column."""
    return Table(
        spec.key,
        f"{spec.title} — {TINY_LABEL}" if tiny else spec.title,
        spec.description,
        tuple(c.heading for c in spec.columns),
        tuple(Row(tuple(c.text(line) for c in spec.columns), line.kind) for line in lines),
        tuple(produced_by),
        tuple(notes),
        tiny,
        numeric=tuple(c.numeric for c in spec.columns),
    )


def unavailable_table(spec: TableSpec, status: str, detail: str) -> Table:
    """``spec``'s table without rows: ``status`` ("not run", "unreadable") and why."""
    return Table(
        spec.key,
        spec.title,
        spec.description,
        tuple(c.heading for c in spec.columns),
        status=status,
        status_detail=detail,
    )


def missing_table(run: RunData, spec: TableSpec) -> Table | None:
    """The table when none of ``spec.sources`` could be read ("not run" or "unreadable"), or
    None when one of them is ok."""
    tables = [run.tables[name] for name in spec.sources]
    if any(t.ok for t in tables):
        return None
    unreadable = [t for t in tables if t.status == "unreadable"]
    status = "unreadable" if unreadable else NOT_RUN
    return unavailable_table(spec, status, "; ".join(t.detail for t in (unreadable or tables)))
