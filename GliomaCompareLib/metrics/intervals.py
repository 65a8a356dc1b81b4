"""Confidence intervals for a proportion (accuracy, sensitivity, specificity of k / n patients).

A percentile bootstrap of a proportion collapses at the edges: 3 / 3 LGG patients right gives
"1.000 [1.000, 1.000]", as if three patients proved a perfect specificity. The two intervals
here behave at 0 / n and n / n:

* :func:`wilson_interval`: the Wilson score interval (the default for the report: close to the
  nominal coverage on average, never outside [0, 1], non-degenerate at 0 / n and n / n);
* :func:`clopper_pearson_interval`: the "exact" interval from the binomial distribution
  (conservative: coverage at least the nominal level for every true proportion).

Both equal ``statsmodels.stats.proportion.proportion_confint`` with ``method="wilson"`` and
``method="beta"``. ``n = 0`` gives ``(nan, nan)``: there is nothing to estimate.
"""

from __future__ import annotations

import math

__all__ = ["clopper_pearson_interval", "wilson_interval"]


def _check(successes: int, n: int, confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1.0 - (1.0 - confidence) / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n``.

    ``(k + z^2/2) / (n + z^2) -/+ z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)`` with ``z``
    the two-sided normal quantile of ``confidence``. At ``k = 0`` the lower bound is exactly 0,
    at ``k = n`` the upper bound exactly 1; the other bound stays informative (3 / 3 gives
    about [0.44, 1.00] at 95%).

    Args:
        successes: ``k``, a whole number in ``[0, n]``.
        n: trials (patients), a whole number >= 0.
        confidence: two-sided level in (0, 1).

    Returns:
        ``(low, high)`` within [0, 1]; ``(nan, nan)`` when ``n == 0``.

    Raises:
        ValueError: for a level outside (0, 1) or counts that are not whole numbers with
            ``0 <= successes <= n``.
    """
    _check(successes, n, confidence)
    if n == 0:
        return (math.nan, math.nan)
    k, n = int(successes), int(n)
    z = _z(confidence)
    z2 = z * z
    centre = (k + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4.0)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def clopper_pearson_interval(
    successes: int, n: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Clopper-Pearson ("exact", beta) interval of the proportion ``successes / n``.

    ``low = Beta(alpha/2; k, n - k + 1)``, ``high = Beta(1 - alpha/2; k + 1, n - k)`` quantiles,
    with ``low = 0`` at ``k = 0`` and ``high = 1`` at ``k = n``.

    Args:
        successes: ``k``, a whole number in ``[0, n]``.
        n: trials (patients), a whole number >= 0.
        confidence: two-sided level in (0, 1).

    Returns:
        ``(low, high)`` within [0, 1]; ``(nan, nan)`` when ``n == 0``.

    Raises:
        ValueError: as :func:`wilson_interval`.
    """
    from scipy.stats import beta

    _check(successes, n, confidence)
    if n == 0:
        return (math.nan, math.nan)
    k, n = int(successes), int(n)
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2.0, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return (low, high)
