"""The headline of the report: one sentence per question and the paired differences behind it.

The two questions of the study are grading (HGG vs LGG) and localisation. For each, the
sentence names the better method, by how much, with the 95% confidence interval and the
p-value of the paired test, under which decision rule, and says "no significant difference"
when ``p >= alpha``. Everything comes from the run's own tables: ``comparisons.csv`` (McNemar
and bootstrap CIs of accuracy and balanced-accuracy differences, per decision rule),
``classification.csv`` (each method's accuracy) and ``localisation.csv`` (like-for-like Dice:
CNN minus VLM on the slices the VLM saw, Wilcoxon signed-rank p).

A run that compares several VLMs gets one sentence per VLM method (in the run's order; no VLM is
picked out as "the best") and a note that the p-values are not adjusted for the number of VLMs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from GliomaCompareLib.report.cells import fmt, label, num
from GliomaCompareLib.report.rundata import RunData
from GliomaCompareLib.report.summaries import CNN_METHODS
from GliomaCompareLib.runlayout import is_vlm_method, vlm_name_of

__all__ = ["RULES", "Difference", "Headline", "build_headline"]

#: Decision rules in the order they are told, with the words that name them.
RULES = {
    "fixed": "fixed rule (CNN P(HGG) ≥ 0.5, VLM majority vote)",
    "val_threshold": "threshold chosen on the validation patients",
}
_SHORT_RULES = {"fixed": "fixed rule", "val_threshold": "validation threshold"}


def _is_vlm(method: str | None) -> bool:
    """Whether ``method`` is one of the run's VLMs (the study's two, or any further VLM of a run
    with several): any method but the CNNs and the majority-class baseline."""
    return bool(method) and method not in (*CNN_METHODS, "majority")


@dataclass(frozen=True)
class Difference:
    """One paired difference, CNN minus a VLM (a line of the forest plot).

    Attributes:
        question: ``"grading"`` or ``"localisation"``.
        metric: what differs (``"accuracy"``, ``"balanced accuracy"``, ``"box Dice"``...).
        rule: the decision rule's short name (grading), or the task (localisation).
        vlm: the VLM method (``vlm_base``...).
        value, low, high: the difference and its 95% CI (None when not computed).
        p: the paired test's p-value (None when there is none for this metric).
        test: the paired test's name.
    """

    question: str
    metric: str
    rule: str
    vlm: str
    value: float
    low: float | None
    high: float | None
    p: float | None
    test: str

    @property
    def label(self) -> str:
        """The line's label: ``"accuracy · fixed rule · VLM (base)"``."""
        return f"{self.metric} · {self.rule} · {label(self.vlm)}"


@dataclass(frozen=True)
class Headline:
    """The headline: sentences (grading, localisation) and the differences they rest on."""

    grading: tuple[str, ...]
    localisation: tuple[str, ...]
    differences: tuple[Difference, ...]


def _ci(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "CI not computed"
    return f"95% CI {low:+.3f} to {high:+.3f}"


def _p_text(p: float | None, test: str) -> str:
    return "no test" if p is None else f"{test} p = {p:.2g}"


def _who_is_better(value: float, vlm: str, p: float | None, alpha: float, what: str) -> str:
    """``"3D CNN is better than VLM (base) by +0.727 accuracy"`` or "no significant difference"."""
    if p is not None and p >= alpha:
        return (
            f"no significant difference between {label('cnn')} and {label(vlm)} in {what} "
            f"(difference {value:+.3f})"
        )
    if value == 0:
        return f"{label('cnn')} and {label(vlm)} have the same {what}"
    better, worse = ("cnn", vlm) if value > 0 else (vlm, "cnn")
    return f"{label(better)} is better than {label(worse)} by {abs(value):.3f} {what}"


def _accuracy(rows: Sequence[Mapping[str, Any]], method: str, decision: str) -> str:
    for r in rows:
        # a table without decision rules holds the fixed rule's rows
        if r.get("method") == method and (r.get("decision") or "fixed") == decision:
            return fmt(r.get("accuracy"))
    return "—"


def _grading(run: RunData, alpha: float) -> tuple[list[str], list[Difference]]:
    """Sentences and differences for grading: CNN vs each VLM under each decision rule."""
    classification = run.rows("classification")
    sentences, diffs = [], []
    for decision in RULES:
        for row in run.rows("comparisons"):
            vlm = row.get("method_b")
            if row.get("method_a") != "cnn" or not _is_vlm(vlm):
                continue
            if (row.get("decision") or "fixed") != decision:
                continue
            p = num(row.get("p_value"))
            value = num(row.get("accuracy_diff"))
            if value is None:
                continue
            low, high = num(row.get("accuracy_diff_ci_low")), num(row.get("accuracy_diff_ci_high"))
            sentences.append(
                f"{_SHORT_RULES[decision].capitalize()}: {_who_is_better(value, vlm, p, alpha, 'accuracy')} "
                f"({label('cnn')} {_accuracy(classification, 'cnn', decision)} vs {label(vlm)} "
                f"{_accuracy(classification, vlm, decision)}; {_ci(low, high)}; "
                f"{_p_text(p, 'McNemar')}; n = {fmt(row.get('n'), 0)})."
            )
            short = _SHORT_RULES[decision]
            diffs.append(
                Difference("grading", "accuracy", short, vlm, value, low, high, p, "McNemar")
            )
            balanced = num(row.get("balanced_accuracy_diff"))
            if balanced is not None:
                diffs.append(
                    Difference(
                        "grading",
                        "balanced accuracy",
                        short,
                        vlm,
                        balanced,
                        num(row.get("balanced_accuracy_diff_ci_low")),
                        num(row.get("balanced_accuracy_diff_ci_high")),
                        None,
                        "bootstrap CI only",
                    )
                )
    return sentences, diffs


def _localisation(run: RunData, alpha: float) -> tuple[list[str], list[Difference]]:
    """Sentences and differences for localisation: like-for-like Dice, CNN minus each VLM."""
    sentences, diffs = [], []
    for r in run.rows("localisation"):
        vlm, task = r.get("method"), r.get("task")
        value = num(r.get("cnn_minus_vlm_dice"))
        if not _is_vlm(vlm) or value is None:
            continue
        low, high = num(r.get("cnn_minus_vlm_ci_low")), num(r.get("cnn_minus_vlm_ci_high"))
        p = num(r.get("wilcoxon_p"))
        diffs.append(
            Difference("localisation", f"{task} Dice", "same slices", vlm, value, low, high, p,
                       "Wilcoxon")
        )  # fmt: skip
        if task not in ("box", "polygon"):
            continue
        sentences.append(
            f"{task.capitalize()}, {fmt(r.get('n_slices'), 0)} slices the VLM saw "
            f"({fmt(r.get('n_patients'), 0)} patients): "
            f"{_who_is_better(value, vlm, p, alpha, 'Dice')} ({label('cnn')} "
            f"{fmt(r.get('cnn_dice_same_slices'))} vs {label(vlm)} {fmt(r.get('dice_slices_mean'))}"
            f"; {_ci(low, high)}; {_p_text(p, 'Wilcoxon')})."
        )
    return sentences, diffs


def build_headline(run: RunData, alpha: float = 0.05) -> Headline:
    """The headline of ``run`` at significance level ``alpha``.

    Args:
        run: the run (its ``comparisons``, ``classification`` and ``localisation`` tables).
        alpha: significance level; a difference with ``p >= alpha`` is "no significant
            difference".

    Returns:
        The sentences per question and the differences for the forest plot (empty when the
        tables are missing).
    """
    grading, grading_diffs = _grading(run, alpha)
    localisation, localisation_diffs = _localisation(run, alpha)
    grading += _multiplicity_note([*grading_diffs, *localisation_diffs], alpha)
    return Headline(tuple(grading), tuple(localisation), (*grading_diffs, *localisation_diffs))


def _multiplicity_note(diffs: Sequence[Difference], alpha: float) -> list[str]:
    """With several VLMs compared to the CNN, one sentence saying so: each is compared on its
    own, none chosen as the best, and the p-values are not adjusted for the number of VLMs."""
    names = list(
        dict.fromkeys(vlm_name_of(d.vlm) if is_vlm_method(d.vlm) else d.vlm for d in diffs)
    )
    if len(names) < 2:
        return []
    return [
        f"{len(names)} VLMs are each compared with the CNN above, one sentence per VLM (none is "
        f"picked out as the best); the p-values are not adjusted for these {len(names)} "
        f"comparisons (Bonferroni: compare each with {alpha / len(names):.3g} instead of {alpha:g})."
    ]
