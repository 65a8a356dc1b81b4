"""Printing a built :class:`~GliomaCompareLib.report.table.Table`: GitHub-flavoured Markdown
(``metrics/<key>.md``) and an HTML ``<section>`` for the report page.

Rendering knows nothing about where the cells came from: it prints headings, cells, the row
kinds (published lines in italics), notes, and the tiny-model and "not run" notices.
"""

from __future__ import annotations

import html
import re

from GliomaCompareLib.report.rundata import TINY_LABEL
from GliomaCompareLib.report.table import Table

__all__ = ["render_html_table", "render_markdown"]


def _md_text(text: str) -> str:
    """Free text for Markdown: HTML escaped (``<``, ``>``, ``&``), so a model id or a raw answer
    holding markup shows as text instead of running in a Markdown viewer."""
    return html.escape(" ".join(str(text).split()), quote=False)


def _md_cell(text: str) -> str:
    """A table cell: :func:`_md_text` on one line, with ``|`` escaped so it stays one cell."""
    return _md_text(text).replace("|", "\\|") or " "


def render_markdown(table: Table) -> str:
    """The table as GitHub-flavoured Markdown (title, what produced it, table, notes)."""
    lines = [f"## {_md_text(table.title)}", ""]
    if table.tiny:
        lines += [
            f"> **{TINY_LABEL}**: numbers from the tiny VLM with random weights, built in code "
            "to exercise the pipeline. They say nothing about real vision-language models.",
            "",
        ]
    if table.description:
        lines += [_md_text(table.description), ""]
    if table.status != "ok":
        lines += [f"**{_md_text(table.status)}** — {_md_text(table.status_detail)}", ""]
        return "\n".join(lines)
    if table.produced_by:
        lines += ["Produced by: " + "; ".join(_md_text(p) for p in table.produced_by), ""]
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
        lines += [f"- {_md_text(note)}" for note in table.notes]
    return "\n".join(lines) + "\n"


#: The column whose long model ids move out of the HTML cells into the legend above the table.
MODEL_COLUMN = "Model"


def _html_layout(table: Table) -> tuple[list[int], list[str]]:
    """The indices of the columns shown in HTML, and the legend lines that replace the model
    column (the run's models per method, then those named only on published lines)."""
    keep = [i for i, c in enumerate(table.columns) if c != MODEL_COLUMN]
    if len(keep) == len(table.columns):
        return keep, list(table.produced_by)
    dropped = next(i for i, c in enumerate(table.columns) if c == MODEL_COLUMN)
    legend = list(table.produced_by)
    others: dict[str, str] = {}  # one entry per method name (its first other model)
    for row in table.rows:
        cell = row.cells[dropped] if dropped < len(row.cells) else ""
        if cell.strip() and cell != "—" and not any(cell in line for line in legend):
            others.setdefault(row.cells[0], f"{row.cells[0]}: {cell}")
    return keep, legend + list(others.values())


_CI = re.compile(r"^(\S+) (\[[^\]]*\])$")


def _html_cell(text: str, numeric: bool) -> str:
    """A cell's HTML: a number with its ``[CI]`` puts the interval on a second, smaller line."""
    found = _CI.match(text) if numeric else None
    if found:
        value, ci = found.groups()
        return f'<td class="num">{html.escape(value)}<br><span class="ci">{html.escape(ci)}</span></td>'
    return f'<td class="{"num" if numeric else ""}">{html.escape(text)}</td>'


def render_html_table(table: Table, *, same_models_as_above: bool = False) -> str:
    """The table as an HTML ``<section>`` (every text escaped).

    The model column's ids move into a legend above the table (the cells keep the short method
    names), so the table fits a 1280 px window. With ``same_models_as_above`` (the previous
    table was produced by the same models) the legend and the tiny-model note shrink to one
    short line instead of being printed again.
    """
    e = html.escape
    parts = [f'<section class="table" id="{e(table.key)}">', f"<h2>{e(table.title)}</h2>"]
    if table.tiny and not same_models_as_above:
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
    keep, legend = _html_layout(table)
    if same_models_as_above and table.produced_by:
        tiny = f" ({e(TINY_LABEL)})" if table.tiny else ""
        parts.append(f'<p class="produced">Models: as in the table above{tiny}.</p>')
    elif legend:
        parts.append(
            '<p class="produced"><strong>Models</strong> — '
            + "; ".join(e(p) for p in legend)
            + "</p>"
        )
    numeric = table.numeric or (False,) * len(table.columns)
    parts.append('<div class="scroll"><table>')
    parts.append(
        "<thead><tr>"
        + "".join(
            f'<th class="{"num" if numeric[i] else ""}">{e(table.columns[i])}</th>' for i in keep
        )
        + "</tr></thead><tbody>"
    )
    for row in table.rows:
        parts.append(
            f'<tr class="{e(row.kind)}">'
            + "".join(_html_cell(row.cells[i], numeric[i]) for i in keep if i < len(row.cells))
            + "</tr>"
        )
    parts.append("</tbody></table></div>")
    if table.notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in table.notes) + "</ul>"
        )
    parts.append("</section>")
    return "\n".join(parts)
