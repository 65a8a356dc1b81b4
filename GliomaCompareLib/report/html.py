"""The self-contained HTML page: banners, tables, embedded PNG figures, gallery, what was run.

Every text that comes from a file is escaped with :func:`html.escape`; images are ``data:``
URIs; the only link leaving the page is the citation of the study. No scripts, no external
styles or fonts: the page reads the same offline and without JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from GliomaCompareLib.report.answer_panels import AnswerPanel
from GliomaCompareLib.report.figures import ReportFigure
from GliomaCompareLib.report.headline import RULES, Headline
from GliomaCompareLib.report.prompts import PromptsSummary
from GliomaCompareLib.report.published import Published
from GliomaCompareLib.report.render import render_html_table
from GliomaCompareLib.report.rundata import TINY_LABEL, RunData
from GliomaCompareLib.report.summaries import USABLE_STATUSES
from GliomaCompareLib.report.table import Table
from GliomaCompareLib.runlayout import METHOD_LABELS

__all__ = [
    "OPEN_CHOICES",
    "GalleryItem",
    "GallerySection",
    "flatten",
    "open_choices",
    "render_page",
]

e = html.escape

#: The choices the study left open, and the words that find them among the flattened keys of
#: the manifest (``config.vlm.slice_rule.mode`` and so on).
OPEN_CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Slice selection rule", ("slice",)),
    ("Prompts and their hashes", ("prompt", "template")),
    ("Coordinate convention", ("coordinate",)),
    ("LoRA / fine-tuning settings", ("config.finetune.", "lora", "adapter")),
    ("CNN architectures and training recipe", ("config.cnn.",)),
)

_CSS = """
.headline{background:#fff;border:2px solid #345;border-radius:6px;padding:.2rem 1rem .6rem;
margin-top:1rem}.headline h2{margin-top:.6rem}.headline li{margin:.25rem 0}
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
color:#1b1b1b;background:#fafafa;line-height:1.4}
header,main,footer{max-width:1300px;margin:0 auto;padding:0 .9rem}
h1{font-size:1.6rem;margin:1.2rem 0 .3rem}h2{font-size:1.25rem;margin-top:2rem;
border-bottom:1px solid #ccc;padding-bottom:.2rem}h3{font-size:1.05rem}
.sub{color:#555;margin:.2rem 0 1rem}
.banner{border-radius:6px;padding:.4rem .8rem;margin:.4rem 0;font-size:.9rem}
.banner.tiny{background:#ffe1e1;border:2px solid #b00020;color:#5c0010}
.banner.synthetic{background:#fff4d6;border:2px solid #c98a00}
.banner.problems{background:#eef;border:1px solid #99c}
.tiny-note{background:#ffe1e1;border-left:4px solid #b00020;padding:.3rem .6rem}
nav ul{columns:3;list-style:none;padding:0}nav a{color:#0645ad}
.scroll{overflow-x:auto;max-width:100%}
td{overflow-wrap:anywhere}td.num{overflow-wrap:normal}.ci{color:#555;font-size:.72rem}
table{border-collapse:collapse;font-size:.78rem;background:#fff;margin:.4rem 0}
th,td{border:1px solid #ccc;padding:.2rem .35rem;vertical-align:top}
th{background:#eee;text-align:left}td.num,th.num{text-align:right}td.num{white-space:nowrap}
tr.published td{font-style:italic;background:#f3f0ff;color:#333}
tr.not_run td{color:#888;background:#f4f4f4}tr.baseline td{background:#f7fbf1}
.not-run{color:#666;background:#f4f4f4;padding:.4rem .6rem;border-left:4px solid #999}
.produced,.description{font-size:.9rem;color:#333}
ul.notes{font-size:.85rem;color:#333}
figure{margin:.8rem 0;background:#fff;border:1px solid #ddd;padding:.5rem}
figure img{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#333}
.gallery{display:flex;flex-wrap:wrap;gap:.6rem}
.gallery figure{width:310px;margin:0}
.gallery figcaption{font-size:.78rem}
.gallery.answers figcaption code{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.72rem}
.missing{color:#666;font-style:italic}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem}
pre.prompt{white-space:pre-wrap;max-height:20rem}
table.raw code{white-space:pre-wrap;overflow-wrap:anywhere}
pre{background:#fff;border:1px solid #ddd;padding:.6rem;overflow-x:auto;max-height:40rem}
footer{color:#666;font-size:.8rem;margin:2rem auto}
"""


@dataclass(frozen=True)
class GalleryItem:
    """One gallery panel: the image (or why there is none) and its caption lines."""

    case_id: str
    png: bytes | None
    caption: tuple[str, ...]
    missing: str = ""


@dataclass(frozen=True)
class GallerySection:
    """The worst and best cases of one ranking."""

    title: str
    worst: tuple[GalleryItem, ...]
    best: tuple[GalleryItem, ...]
    status_detail: str = ""
    tiny: bool = False
    ties: str = ""


# --------------------------------------------------------------------------- helpers


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted.key, value text)`` pairs of a nested mapping; lists of scalars are joined."""
    out: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        if not obj and prefix:
            out.append((prefix, "{}"))
        for key, value in obj.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in obj):
            out.append((prefix, ", ".join(_scalar(v) for v in obj) if obj else "[]"))
        else:
            for i, value in enumerate(obj):
                out += flatten(value, f"{prefix}[{i}]")
    else:
        out.append((prefix, _scalar(obj)))
    return out


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value)


def open_choices(manifest: Mapping[str, Any] | None) -> list[tuple[str, list[tuple[str, str]]]]:
    """For each of :data:`OPEN_CHOICES`, the manifest entries that record it (may be empty)."""
    pairs = [(k, v) for k, v in flatten(manifest or {}) if not k.startswith("versions.")]
    out = []
    for choice, words in OPEN_CHOICES:
        found = [(k, v) for k, v in pairs if any(w in k.lower() for w in words)]
        out.append((choice, found))
    return out


def _kv_table(pairs: Iterable[tuple[str, str]], headings=("Setting", "Value")) -> str:
    rows = "".join(f"<tr><td><code>{e(k)}</code></td><td>{e(v)}</td></tr>" for k, v in pairs)
    if not rows:
        return '<p class="missing">not recorded</p>'
    return (
        f'<div class="scroll"><table><thead><tr><th>{e(headings[0])}</th><th>{e(headings[1])}'
        f"</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{data}">'


def render_figure(figure: ReportFigure) -> str:
    """A figure as ``<figure>`` with an embedded PNG, or a "not run" note."""
    parts = [f'<section class="figure" id="{e(figure.key)}"><h3>{e(figure.title)}</h3>']
    if figure.png is None:
        parts.append(f'<p class="not-run"><strong>not run</strong> — {e(figure.status_detail)}</p>')
    else:
        tiny = (
            f' <strong class="tiny-note">{e(TINY_LABEL)}: says nothing about real VLMs.</strong>'
            if figure.tiny
            else ""
        )
        parts.append(
            f"<figure>{_img(figure.png, figure.title)}<figcaption>{e(figure.caption)}{tiny}"
            "</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _render_gallery(sections: Sequence[GallerySection], count: int) -> str:
    parts = [
        '<section id="gallery"><h2>Gallery: worst and best cases</h2>',
        f'<p class="description">The {count} worst and {count} best cases of each ranking, on the '
        "axial slice with the largest tumour area among those the VLM saw (radiological view: "
        "the patient's right on the image's left, marked R / L). Green: ground truth (WT); orange: CNN (WT); cyan: "
        "VLM base; magenta: VLM fine-tuned (any other VLM: its colour in the panel's legend); X = point, "
        "solid = box, dashed = polygon.</p>",
    ]
    if not sections:
        parts.append('<p class="not-run"><strong>not run</strong> — no ranking available</p>')
    for section in sections:
        title = section.title + (f" — {TINY_LABEL}" if section.tiny else "")
        parts.append(f"<h3>{e(title)}</h3>")
        if section.status_detail:
            parts.append(
                f'<p class="not-run"><strong>not run</strong> — {e(section.status_detail)}</p>'
            )
            continue
        if section.ties:
            parts.append(f'<p class="description"><strong>{e(section.ties)}</strong></p>')
        for name, items in (("Worst", section.worst), ("Best", section.best)):
            if not items:
                continue
            parts.append(f'<h4>{name}</h4><div class="gallery">')
            for item in items:
                caption = "<br>".join(e(line) for line in item.caption)
                if item.png is None:
                    body = f'<p class="missing">{e(item.missing)}</p>'
                else:
                    body = _img(item.png, f"case {item.case_id}")
                parts.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
            parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _render_what_was_run(run: RunData) -> str:
    m = run.manifest
    parts = ['<section id="what-was-run"><h2>What was run</h2>']
    if m is None:
        parts.append(
            '<p class="not-run"><strong>not recorded</strong> — manifest.json is missing or '
            "unreadable.</p></section>"
        )
        return "\n".join(parts)
    config = run.config
    git = m.get("git") or {}
    overview = [
        ("run name", _scalar(config.get("name"))),
        ("description", _scalar(config.get("description"))),
        ("created", _scalar(m.get("created"))),
        ("tool version", f"{m.get('tool', 'gliomacompare')} {m.get('version', '')}".strip()),
        (
            "git revision",
            f"{git.get('commit')}" + (" (with local changes)" if git.get("dirty") else ""),
        ),
        ("config file", _scalar(m.get("config_path"))),
        ("command", " ".join(map(str, m.get("command") or [])) or "null"),
        ("shard", _scalar(m.get("shard"))),
        ("synthetic cohort", "yes" if run.synthetic else "no"),
    ]
    parts.append(_kv_table(overview, ("", "")))
    parts.append(
        "<details><summary>Details: the choices the study left open, seeds, models, device, "
        "time per stage, library versions, configuration, manifest.json</summary>"
    )
    parts.append("<h3>Choices the study left open</h3>")
    parts.append(
        '<p class="description">The study does not publish these; this run\'s values, found in '
        "the manifest.</p>"
    )
    for choice, found in open_choices(m):
        parts.append(f"<h4>{e(choice)}</h4>")
        if not found and choice.startswith("Prompts"):
            parts.append(
                '<p>Recorded with every answer: see <a href="#prompts">the prompts</a>.</p>'
            )
        else:
            parts.append(_kv_table(found))
    parts.append("<h3>Seeds</h3>" + _kv_table(flatten(m.get("seeds") or {})))
    parts.append("<h3>Models and adapters</h3>" + _kv_table(flatten(m.get("models") or {})))
    parts.append("<h3>Device</h3>" + _kv_table(flatten(m.get("device") or {})))
    timings = run.stage_timings()
    parts.append(
        "<h3>Time per stage</h3>"
        + _kv_table(((k, f"{v:.1f} s") for k, v in timings.items()), ("Stage", "Wall time"))
    )
    parts.append("<h3>Library versions</h3>" + _kv_table(flatten(m.get("versions") or {})))
    parts.append("<h3>Configuration</h3>")
    sections = [k for k in config if isinstance(config[k], Mapping)]
    scalars = [(k, _scalar(v)) for k, v in config.items() if not isinstance(v, Mapping)]
    parts.append(_kv_table(scalars))
    for key in sections:
        parts.append(f"<h4><code>{e(key)}</code></h4>" + _kv_table(flatten(config[key])))
    rest = {k: v for k, v in m.items() if k != "config"}
    parts.append(
        "<details><summary>manifest.json, in full (but its <code>config</code>, printed "
        "above)</summary><pre>"
        + e(json.dumps(rest, indent=2, sort_keys=False, default=str))
        + "</pre></details></details></section>"
    )
    return "\n".join(parts)


def _render_published(published: Published) -> str:
    c = published.citation
    parts = [
        '<section id="published"><h2>The study and its published figures</h2>',
        f'<p>{e(c.authors)}, “{e(c.title)}”, <a href="{e(c.url)}">arXiv {e(c.arxiv)}'
        f"{e(c.version)}</a>. Data: {e(c.data)}.</p>",
    ]
    rows = []
    for f in published.figures:
        where = published.source_text(f.source)
        detail = f"“{f.quote}”" if f.quote else f.note
        rows.append(
            "<tr>"
            f"<td>{e(METHOD_LABELS.get(f.method, published.model(f.method) or f.method))}</td>"
            f"<td>{e(f.metric)}{e(' (' + f.task + ')' if f.task else '')}</td>"
            f'<td class="num">{e(f.text)}</td><td>{e(f.row)}</td><td>{e(where)}</td>'
            f"<td>{e(detail)}</td></tr>"
        )
    parts.append(
        '<div class="scroll"><table><thead><tr><th>Method</th><th>Metric</th>'
        '<th class="num">Value</th><th>Line</th><th>Source</th><th>Wording / note</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    if published.findings:
        parts.append('<h3>Findings stated in words</h3><ul class="notes">')
        for f in published.findings:
            text = f"“{f.quote}”" if f.quote else f.text
            parts.append(f"<li>{e(text)} ({e(published.source_text(f.source))})</li>")
        parts.append("</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def render_page(
    *,
    run: RunData,
    published: Published,
    tables: Sequence[Table],
    figures: Mapping[str, ReportFigure],
    gallery: Sequence[GallerySection],
    gallery_count: int,
    headline: Sequence[str],
    problems: Sequence[str],
    generated: str,
    verdict: Headline | None = None,
    forest: ReportFigure | None = None,
    prompts: PromptsSummary | None = None,
    answer_panels: Mapping[str, Sequence[AnswerPanel]] | None = None,
) -> str:
    """The whole report page.

    Args:
        run: the run.
        published: the study's figures.
        tables: the tables, in order.
        figures: table key after which to show it -> figure (``classification`` -> confusion...).
        gallery: the gallery sections.
        gallery_count: cases per list (for the description).
        headline: summary sentences.
        problems: problems met while reading the run.
        generated: a line saying what generated the page and when.
        verdict: the headline sentences per question (the panel at the top).
        forest: the forest plot of the paired differences, shown in that panel.
        prompts: the prompts and a few raw VLM answers (the section before "What was run").
        answer_panels: parse status -> raw answers drawn on the slice the VLM saw.
    """
    parts = [
        *_page_header(run, tables, problems, generated, _headline_panel(verdict, forest)),
        *_summary_section(headline, published),
    ]
    previous: Table | None = None
    for table in tables:
        same = previous is not None and (previous.produced_by, previous.tiny) == (
            table.produced_by,
            table.tiny,
        )
        parts.append(render_html_table(table, same_models_as_above=same))
        previous = table if table.status == "ok" else previous
        if table.key in figures:
            parts.append(render_figure(figures[table.key]))
    parts.append(_render_gallery(gallery, gallery_count))
    parts.append(_render_prompts(prompts, answer_panels or {}))
    parts.append(_render_what_was_run(run))
    parts.append(_render_published(published))
    parts.append(
        f"</main><footer>{e(generated)}. Rebuild with <code>gliomacompare report "
        f"{e(str(run.run_dir))}</code> (reads the run folder; recomputes nothing).</footer>"
        "</body></html>"
    )
    return "\n".join(parts) + "\n"


def _page_header(
    run: RunData, tables: Sequence[Table], problems: Sequence[str], generated: str, panel: str
) -> list[str]:
    """The page's head, title, banners (tiny model, synthetic cohort, problems), the headline
    ``panel`` and the contents."""
    name = run.config.get("name") or run.run_dir.name
    title = f"GliomaCompare report — {name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body><header>",
        "<h1>GliomaCompare: 3D CNN vs vision-language model, grading and localising gliomas</h1>",
        f'<p class="sub">Run <strong>{e(str(name))}</strong> · folder <code>{e(str(run.run_dir))}'
        f"</code> · {e(generated)}</p>",
    ]
    if run.tiny:
        parts.append(
            '<div class="banner tiny" role="alert"><strong>Tiny random-weight model.</strong> '
            f"The VLM outputs in this report come from the “{e(TINY_LABEL)}”: a very small "
            "Llama 3.2 Vision built in code with random weights, so that the pipeline runs "
            "anywhere. Its numbers say nothing about real vision-language models; every table "
            "and figure that contains them says so.</div>"
        )
    if run.synthetic:
        parts.append(
            '<div class="banner synthetic"><strong>Synthetic cohort.</strong> The cases are '
            "simulated gliomas on a template brain (the run's config says data.synthetic), not "
            "patients; the numbers test the software, not the methods.</div>"
        )
    if problems:
        parts.append(
            '<div class="banner problems"><strong>Problems met while building this report</strong>'
            "<ul>" + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul></div>"
        )
    parts.append(panel)
    nav = [("headline", "At a glance"), ("summary", "Summary")]
    for table in tables:
        nav.append((table.key, table.title.split(" — ")[0]))
    nav += [
        ("gallery", "Gallery"),
        ("prompts", "Prompts and raw answers"),
        ("what-was-run", "What was run"),
        ("published", "The study"),
    ]
    parts.append(
        "<nav><ul>"
        + "".join(f'<li><a href="#{e(k)}">{e(t)}</a></li>' for k, t in nav)
        + "</ul></nav></header><main>"
    )
    return parts


def _summary_section(headline: Sequence[str], published: Published) -> list[str]:
    parts = ['<section id="summary"><h2>Summary</h2>']
    if headline:
        parts.append("<ul>" + "".join(f"<li>{e(s)}</li>" for s in headline) + "</ul>")
    else:
        parts.append('<p class="not-run">No results yet: no metrics tables were found.</p>')
    c = published.citation
    parts.append(
        f'<p class="description">Re-implementation of the protocol of {e(c.short)}: '
        f'<a href="{e(c.url)}">{e(c.url)}</a>. Published figures are printed in italics beside '
        "ours; their sources are listed at the end.</p></section>"
    )
    return parts


def _headline_panel(verdict: Headline | None, forest: ReportFigure | None) -> str:
    """The panel at the top: which method is better at each question, and how sure that is."""
    parts = ['<section id="headline" class="headline"><h2>At a glance</h2>']
    for question, sentences in (
        ("Grading (HGG vs LGG): accuracy on the test patients", verdict.grading if verdict else ()),
        ("Localisation: like-for-like Dice", verdict.localisation if verdict else ()),
    ):
        parts.append(f"<h3>{e(question)}</h3>")
        if sentences:
            parts.append("<ul>" + "".join(f"<li>{e(s)}</li>" for s in sentences) + "</ul>")
        else:
            parts.append('<p class="not-run">No paired comparison in this run.</p>')
    if verdict and verdict.grading:
        rules = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in RULES.items())
        parts.append(f'<p class="description">Decision rules — {e(rules)}.</p>')
    if forest is not None:
        parts.append(render_figure(forest))
    parts.append("</section>")
    return "\n".join(parts)


def _render_answer_panels(
    summary: PromptsSummary, panels: Mapping[str, Sequence[AnswerPanel]]
) -> str:
    """Per parse status, a few raw answers on the slice the VLM saw (open, not collapsed)."""
    parts = [
        '<h3 id="answer-images">Raw answers on the slice the VLM saw, per parse status</h3>',
        '<p class="description">A few answers of each parse status, taken from the answers given '
        "on the slice whose image the run folder keeps for each case (the gallery slice). "
        "Magenta: the answer as parsed (X = point, solid = box, dashed = polygon; nothing drawn "
        "when the answer gave no usable geometry); green: the reference whole tumour; "
        "radiological view, R / L marked. Usable statuses: "
        f"{e(', '.join(USABLE_STATUSES))}; every other status is scored as a failure.</p>",
    ]
    statuses = list(dict.fromkeys([*panels, *(x.status for x in summary.examples)]))
    if not statuses:
        parts.append('<p class="not-run">No answers to show.</p>')
    for status in statuses:
        kind = "usable" if status in USABLE_STATUSES else "scored as a failure"
        parts.append(f"<h4>{e(status)} ({kind})</h4>")
        shown = panels.get(status) or []
        if not shown:
            parts.append(
                '<p class="missing">No answer of this status was given on a slice whose image '
                "the run folder keeps; its raw text is in the table below.</p>"
            )
            continue
        parts.append('<div class="gallery answers">')
        for panel in shown:
            x = panel.example
            body = (
                _img(panel.png, f"{x.status} answer, {x.case_id} slice {x.slice_index}")
                if panel.png is not None
                else f'<p class="missing">{e(panel.missing)}</p>'
            )
            note = f"<br>parser: {e(x.note)}" if x.note else ""
            parts.append(
                f"<figure>{body}<figcaption>{e(x.stage)} · {e(x.task)} · run {x.run}<br>"
                f"<code>{e(x.raw_text) or '(no text)'}</code>{note}</figcaption></figure>"
            )
        parts.append("</div>")
    return "\n".join(parts)


def _render_prompts(
    summary: PromptsSummary | None, panels: Mapping[str, Sequence[AnswerPanel]] | None = None
) -> str:
    """The prompts as rendered, with the hashes the answers carry, per parse status a few raw
    answers on their images, and a few raw answers per stage, task and status (collapsed)."""
    parts = ['<section id="prompts"><h2>Prompts and raw VLM answers</h2>']
    if summary is None or not (summary.prompts or summary.examples):
        parts.append(
            '<p class="not-run"><strong>not run</strong> — no VLM answers (answers.jsonl) in '
            "this run folder.</p></section>"
        )
        return "\n".join(parts)
    parts.append(
        f'<p class="description">From {len(summary.files)} answer files: '
        + ", ".join(f"<code>{e(f)}</code>" for f in summary.files)
        + ".</p>"
    )
    parts.append("<details><summary>The prompts, as rendered, with their hashes</summary>")
    for use in summary.prompts:
        check = (
            "the current template renders exactly this prompt (both hashes match)"
            if use.matches
            else "the current template renders a different prompt: the template has changed "
            "since this run, the text below is today's"
        )
        parts.append(
            f"<h4>{e(use.task)} — template <code>{e(use.template_hash)}</code>, prompt "
            f'<code>{e(use.prompt_hash)}</code></h4><p class="description">{use.count} answers; '
            f"{use.width}×{use.height} px, {e(use.coordinate_system)} coordinates; {e(check)}.</p>"
        )
        if use.text:
            parts.append(f'<pre class="prompt">{e(use.text)}</pre>')
    parts.append("</details>")
    parts.append(_render_answer_panels(summary, panels or {}))
    parts.append(
        "<details><summary>Raw answers: a few per stage, task and parse status "
        "(text truncated)</summary>"
    )
    rows = "".join(
        f"<tr><td>{e(x.stage)}</td><td>{e(x.task)}</td><td>{e(x.status)}</td>"
        f"<td>{e(x.case_id)} / {e(x.slice_index)}</td><td><code>{e(x.raw_text)}</code></td>"
        f"<td>{e(x.note)}</td></tr>"
        for x in summary.examples
    )
    parts.append(
        '<div class="scroll"><table class="raw"><thead><tr><th>Stage</th><th>Task</th>'
        "<th>Status</th><th>Case / slice</th><th>Raw text</th><th>Parser note</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></details></section>"
    )
    return "\n".join(parts)
