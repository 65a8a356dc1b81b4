"""Printing a built :class:`~GliomaCompareLib.report.table.Table`: GitHub-flavoured Markdown
(``metrics/<key>.md``) and an HTML ``<section>`` for the report page.

Rendering knows nothing about where the cells came from: it prints headings, cells, the row
kinds (published lines in italics), notes, and the tiny-model and "not run" notices.
"""

from __future__ import annotations

import html

from GliomaCompareLib.report.rundata import TINY_LABEL
from GliomaCompareLib.report.table import Table

__all__ = ["render_html_table", "render_markdown"]


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
