"""A warning for test sets too small to support per-grade claims.

The study's specificities (0.18 and 0.55) fit 11 LGG test patients (2 / 11 and 6 / 11): one
patient moves a specificity by 9 points, and the 95% interval of 6 / 11 spans 0.28-0.79.
:func:`small_test_set_warning` returns the banner text a report prints in such a case.
"""

from __future__ import annotations

from GliomaCompareLib.metrics.intervals import wilson_interval

__all__ = ["small_test_set_warning"]


def small_test_set_warning(n_lgg: int, n_hgg: int, min_lgg: int = 20) -> str | None:
    """A warning when a grade has fewer than ``min_lgg`` test patients, else None.

    LGG is the minority grade in BraTS (76 of 369), so it is usually the one that is short and
    specificity (LGG recall) the figure that rests on few patients; the same limit applies to
    HGG (sensitivity). The text names the counts and, as a yardstick, the 95% Wilson interval
    of half the short grade's patients being right.

    Args:
        n_lgg: LGG patients in the test set (>= 0).
        n_hgg: HGG patients in the test set (>= 0).
        min_lgg: the smallest per-grade count that is not flagged (default 20).

    Returns:
        The warning text, or None when both grades have at least ``min_lgg`` patients.

    Raises:
        ValueError: for a negative count.
    """
    if n_lgg < 0 or n_hgg < 0:
        raise ValueError(f"patient counts must be >= 0, got n_lgg={n_lgg}, n_hgg={n_hgg}")
    short = [
        (grade, n, what)
        for grade, n, what in (
            ("LGG", int(n_lgg), "specificity"),
            ("HGG", int(n_hgg), "sensitivity"),
        )
        if n < min_lgg
    ]
    if not short:
        return None
    parts = []
    for grade, n, what in short:
        if n == 0:
            parts.append(f"no {grade} patients, so {what} is undefined")
            continue
        k = n // 2
        low, high = wilson_interval(k, n)
        parts.append(
            f"only {n} {grade} patients (fewer than {min_lgg}): one patient moves {what} by "
            f"{100 / n:.0f} points, and {k}/{n} has a 95% interval of {low:.2f}-{high:.2f}"
        )
    return (
        f"Small test set ({n_lgg} LGG, {n_hgg} HGG): "
        + "; ".join(parts)
        + ". Per-grade figures and differences between methods are uncertain."
    )
