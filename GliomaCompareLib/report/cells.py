"""Cell text: numbers, intervals, percentages and method names, the way every table prints them.

A missing or non-finite number prints as an em dash (:data:`DASH`), never as ``nan``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from GliomaCompareLib.report.published import PublishedFigure
from GliomaCompareLib.runlayout import METHODS, is_vlm_method, method_label, vlm_name_of

__all__ = [
    "DASH",
    "NOT_RUN",
    "decimals",
    "fmt",
    "fmt_int",
    "label",
    "mean_sd",
    "method_order",
    "models_of",
    "num",
    "pct",
    "source_cell",
    "text_or_dash",
    "with_ci",
]

DASH = "—"
NOT_RUN = "not run"

_SHORT_LABELS = {"majority": "Majority class", "vlm": "VLM (variant not recorded)"}


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, bool, inf, nan)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or an em dash when missing or not finite."""
    x = num(value)
    return DASH if x is None else f"{round(x, digits) + 0.0:.{digits}f}"  # no "-0.000"


def decimals(digits: int) -> Callable[[Any], str]:
    """A formatter: :func:`fmt` with ``digits`` decimals."""
    return functools.partial(fmt, digits=digits)


def fmt_int(value: Any) -> str:
    """A count (rounded to an integer), or an em dash."""
    x = num(value)
    return DASH if x is None else str(round(x))


def text_or_dash(value: Any) -> Any:
    """A text cell as it is, or an em dash when empty."""
    return value or DASH


def with_ci(metric: str, digits: int = 3) -> Callable[[Mapping[str, Any]], str]:
    """A cell getter: ``"value [low, high]"`` from ``metric`` and ``metric_ci_low/_high``."""

    def cell(row: Mapping[str, Any]) -> str:
        value = fmt(row.get(metric), digits)
        lo, hi = num(row.get(f"{metric}_ci_low")), num(row.get(f"{metric}_ci_high"))
        if value == DASH or lo is None or hi is None:
            return value
        return f"{value} [{lo:.{digits}f}, {hi:.{digits}f}]"

    return cell


def mean_sd(metric: str, digits: int) -> Callable[[Mapping[str, Any]], str]:
    """A cell getter: ``"mean ± sd"`` from ``<metric>_mean`` and ``<metric>_std``."""

    def cell(row: Mapping[str, Any]) -> str:
        m = fmt(row.get(f"{metric}_mean"), digits)
        s = num(row.get(f"{metric}_std"))
        return m if m == DASH or s is None else f"{m} ± {s:.{digits}f}"

    return cell


def pct(count: float, total: float) -> str:
    """``count`` as a percentage of ``total`` with one decimal, or an em dash for 0 / 0."""
    return f"{100.0 * count / total:.1f}%" if total else DASH


def label(method: str | None) -> str:
    """A method's name as printed (``"3D CNN"``, ``"VLM (base)"``, ``"Majority class"``)."""
    if method is None:
        return DASH
    return _SHORT_LABELS.get(method) or method_label(method)


def source_cell(fig: PublishedFigure) -> str:
    """The Source cell of a published line: published, or derived by us."""
    if fig.source == "derived":
        return f"Not published: derived ({fig.row})"
    return f"Published ({fig.row})"


def models_of(rows: Iterable[Mapping[str, Any]], method: str) -> str:
    """The distinct ``model`` values of ``method``'s rows, joined (an em dash for none)."""
    seen: list[str] = []
    for row in rows:
        if row.get("method") == method and row.get("model") and row["model"] not in seen:
            seen.append(row["model"])
    return "; ".join(seen) if seen else DASH


def method_order(methods: Iterable[str]) -> list[str]:
    """``methods`` in report order (the run's methods, the majority class, then the rest)."""
    order = {m: i for i, m in enumerate((*METHODS, "majority"))}
    # the named VLMs of a several-VLM run: by name, each base before its fine-tuned model
    named = lambda m: vlm_name_of(m) if is_vlm_method(m) else ""  # noqa: E731
    return sorted(methods, key=lambda m: (order.get(m, len(order)), named(m), m))
