"""A seeded, grade-stratified sample of patients (e.g. for the repeated-query consistency stage).

BraTS 2020's LGG cases form one contiguous block of ids, so "the first N test ids" is likely all
HGG; a consistency figure from such a subset says nothing about LGG patients. This sample keeps
each grade's share (largest remainder), with at least one patient of every grade present when
``n`` allows, and is the same for the same seed and patients.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["stratified_sample"]


def stratified_sample(grades: Mapping[str, str | None], n: int | None, seed: int) -> list[str]:
    """``n`` patients drawn per grade in proportion to the grades' counts.

    Args:
        grades: case id -> grade (``"HGG"``, ``"LGG"``, or None for unknown: its own stratum).
        n: how many to draw; None or ``n >= len(grades)`` takes everyone.
        seed: random seed (the draw is deterministic for a seed and a set of ids).

    Returns:
        The chosen case ids, sorted.

    Raises:
        ValueError: when ``n`` < 1.
    """
    ids = sorted(grades)
    if n is None or n >= len(ids):
        return ids
    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")
    strata: dict[str, list[str]] = {}
    for case_id in ids:
        strata.setdefault(str(grades[case_id]), []).append(case_id)
    names = sorted(strata)
    sizes = np.array([len(strata[k]) for k in names], dtype=float)
    quota = sizes * n / sizes.sum()
    take = np.floor(quota).astype(int)
    if n >= len(names):  # every grade present is represented
        take = np.maximum(take, 1)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    i = 0
    while take.sum() < n:  # largest remainder first
        k = order[i % len(order)]
        if take[k] < sizes[k]:
            take[k] += 1
        i += 1
    while take.sum() > n:  # the minimum of one per grade overshot: trim the largest stratum
        take[int(np.argmax(take))] -= 1
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for k, name in enumerate(names):
        members = strata[name]
        chosen += [members[j] for j in rng.permutation(len(members))[: take[k]]]
    return sorted(chosen)
