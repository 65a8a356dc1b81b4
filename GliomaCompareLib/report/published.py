"""The study's published figures (``Resources/published.yaml``), as typed data.

The report prints them beside our numbers; every figure keeps where it comes from (the abstract,
with the sentence quoted; a secondary summary of the paper's results, not checked against the
paper's tables; or derived from public
counts) so that a reader can tell a quoted figure from a summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from GliomaCompareLib.resources import resource_path

__all__ = [
    "PUBLISHED_FILE",
    "SOURCES",
    "Citation",
    "Published",
    "PublishedFigure",
    "PublishedFinding",
    "load_published",
]

#: The file under ``Resources/``.
PUBLISHED_FILE = "published.yaml"
#: Where a figure may come from, and how the report says so.
SOURCES = {
    "abstract": "quoted from the abstract",
    "results": "from a secondary summary of the paper, not checked against its tables",
    "derived": "not published: derived from public counts",
}
_METHODS = ("cnn", "vlm_base", "vlm_finetuned", "vlm", "majority")
_TABLES = ("classification", "segmentation", "localisation")


@dataclass(frozen=True)
class Citation:
    """The study: authors, title, arXiv id and URL, a short name for captions."""

    authors: str
    title: str
    arxiv: str
    url: str
    short: str
    version: str = ""
    data: str = ""


@dataclass(frozen=True)
class PublishedFigure:
    """One published number.

    Attributes:
        id: unique key.
        table: the report table it belongs to (``classification``, ``segmentation``,
            ``localisation``).
        method: ``cnn``, ``vlm_base``, ``vlm_finetuned``, ``vlm`` (variant not recorded) or
            ``majority``.
        row: the table line it is printed on (figures with the same method and row share one).
        metric: the column, e.g. ``accuracy``, ``specificity``, ``dice``.
        value: the value as published (a string, so ``"0.80"`` keeps its precision).
        qualifier: e.g. ``"up to"``, ``"as low as"``; empty for an exact figure.
        task: for localisation figures, ``seg`` / ``point`` / ``box`` / ``polygon``.
        source: a key of :data:`SOURCES`.
        quote: the published sentence (abstract figures), verbatim.
        note: what else a reader needs to know.
    """

    id: str
    table: str
    method: str
    row: str
    metric: str
    value: str
    qualifier: str = ""
    task: str | None = None
    source: str = "results"
    quote: str = ""
    note: str = ""

    @property
    def number(self) -> float:
        """The value as a float (in [0, 1] for every figure in the file)."""
        return float(self.value)

    @property
    def text(self) -> str:
        """The value as printed: ``"0.80"`` or ``"up to 0.80"``."""
        return f"{self.qualifier} {self.value}".strip()


@dataclass(frozen=True)
class PublishedFinding:
    """A finding the study states in words (``quote`` verbatim, or ``text`` summarised)."""

    id: str
    topic: str
    source: str
    quote: str = ""
    text: str = ""

    @property
    def sentence(self) -> str:
        return self.quote or self.text


@dataclass(frozen=True)
class Published:
    """Everything in ``published.yaml``."""

    citation: Citation
    figures: tuple[PublishedFigure, ...]
    findings: tuple[PublishedFinding, ...]
    models: Mapping[str, str] = field(default_factory=dict)
    path: Path | None = None

    def model(self, method: str) -> str:
        """What produced the study's figures for ``method``."""
        return self.models.get(method, "")

    def figures_for(self, table: str, method: str | None = None) -> list[PublishedFigure]:
        """Figures of ``table`` (and ``method`` when given), in file order."""
        return [
            f for f in self.figures if f.table == table and (method is None or f.method == method)
        ]

    def findings_for(self, topic: str) -> list[PublishedFinding]:
        return [f for f in self.findings if f.topic == topic]

    def source_text(self, source: str) -> str:
        return SOURCES.get(source, source)


def _text(entry: Mapping[str, Any], key: str, where: str, required: bool = True) -> str:
    value = entry.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing {key!r}")
        return ""
    return " ".join(str(value).split())


def load_published(path: str | Path | None = None) -> Published:
    """Read the published figures (default ``Resources/published.yaml``).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file and entry, for a malformed entry (unknown source, method or
            table, a value that is not a number in [0, 1], a duplicate id).
    """
    path = Path(path) if path is not None else resource_path(PUBLISHED_FILE)
    data = _read_yaml(path)
    citation = _citation(data.get("citation") or {}, path)
    figures, seen = [], set()
    for i, entry in enumerate(data.get("figures") or []):
        fig = _figure(entry, f"{path}: figures[{i}]")
        where = f"{path}: figure {fig.id!r}"
        if fig.id in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(fig.id)
        _check_figure(fig, where)
        figures.append(fig)
    findings = [
        _finding(entry, f"{path}: findings[{i}]")
        for i, entry in enumerate(data.get("findings") or [])
    ]
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise ValueError(f"{path}: models must be a mapping method -> text")
    models = {str(k): " ".join(str(v).split()) for k, v in models.items()}
    return Published(citation, tuple(figures), tuple(findings), models, path)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path}: the published-figures file is missing")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with citation, figures, findings")
    return data


def _citation(cite: Mapping[str, Any], path: Path) -> Citation:
    return Citation(
        **{
            k: _text(cite, k, f"{path}: citation", required=k in ("authors", "title", "url"))
            for k in ("authors", "title", "arxiv", "url", "short", "version", "data")
        }
    )


def _figure(entry: Mapping[str, Any], where: str) -> PublishedFigure:
    return PublishedFigure(
        id=_text(entry, "id", where),
        table=_text(entry, "table", where),
        method=_text(entry, "method", where),
        row=_text(entry, "row", where),
        metric=_text(entry, "metric", where),
        value=_text(entry, "value", where),
        qualifier=_text(entry, "qualifier", where, required=False),
        task=_text(entry, "task", where, required=False) or None,
        source=_text(entry, "source", where),
        quote=_text(entry, "quote", where, required=False),
        note=_text(entry, "note", where, required=False),
    )


def _check_figure(fig: PublishedFigure, where: str) -> None:
    """Refuse a figure with an unknown source, method or table, or a value outside [0, 1]."""
    if fig.source not in SOURCES:
        raise ValueError(f"{where}: source {fig.source!r} is not one of {sorted(SOURCES)}")
    if fig.method not in _METHODS:
        raise ValueError(f"{where}: method {fig.method!r} is not one of {_METHODS}")
    if fig.table not in _TABLES:
        raise ValueError(f"{where}: table {fig.table!r} is not one of {_TABLES}")
    if fig.source == "abstract" and not fig.quote:
        raise ValueError(f"{where}: a figure from the abstract needs its sentence (quote)")
    try:
        number = fig.number
    except ValueError:
        raise ValueError(f"{where}: value {fig.value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{where}: value {fig.value} is outside [0, 1]")


def _finding(entry: Mapping[str, Any], where: str) -> PublishedFinding:
    finding = PublishedFinding(
        id=_text(entry, "id", where),
        topic=_text(entry, "topic", where),
        source=_text(entry, "source", where),
        quote=_text(entry, "quote", where, required=False),
        text=_text(entry, "text", where, required=False),
    )
    if not finding.sentence:
        raise ValueError(f"{where}: needs a quote or a text")
    if finding.source not in SOURCES:
        raise ValueError(f"{where}: source {finding.source!r} is not one of {sorted(SOURCES)}")
    return finding
