"""The consistency sample is seeded and keeps both grades."""

from __future__ import annotations

import pytest

from GliomaCompareLib.data.sampling import stratified_sample

# BraTS-like: the LGG ids form one contiguous block at the end
GRADES = {f"BraTS20_Training_{i:03d}": ("HGG" if i <= 40 else "LGG") for i in range(1, 51)}


def test_both_grades_in_proportion():
    chosen = stratified_sample(GRADES, 20, seed=0)
    assert len(chosen) == 20
    n_lgg = sum(GRADES[c] == "LGG" for c in chosen)
    assert n_lgg == 4  # 10/50 of 20
    assert chosen != sorted(GRADES)[:20]  # not the first ids


def test_a_rare_grade_is_never_left_out():
    grades = {**{f"h{i}": "HGG" for i in range(30)}, "l0": "LGG"}
    assert "l0" in stratified_sample(grades, 3, seed=5)


def test_seeded_and_complete():
    assert stratified_sample(GRADES, 7, seed=1) == stratified_sample(GRADES, 7, seed=1)
    assert stratified_sample(GRADES, 7, seed=1) != stratified_sample(GRADES, 7, seed=2)
    assert stratified_sample(GRADES, None, seed=0) == sorted(GRADES)
    assert stratified_sample(GRADES, 500, seed=0) == sorted(GRADES)
    with pytest.raises(ValueError, match="sample size"):
        stratified_sample(GRADES, 0, seed=0)


def test_unknown_grade_is_its_own_stratum():
    grades = {"a": "HGG", "b": "HGG", "c": None, "d": None}
    chosen = stratified_sample(grades, 2, seed=0)
    assert {grades[c] for c in chosen} == {"HGG", None}
