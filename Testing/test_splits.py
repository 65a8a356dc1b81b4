"""Patient-level stratified splits."""

from __future__ import annotations

import json

import pytest

from GliomaCompareLib.data.splits import Splits, make_splits


def _grades(n_hgg=29, n_lgg=8, n_unknown=3):
    grades = {f"H{i:03d}": "HGG" for i in range(n_hgg)}
    grades |= {f"L{i:03d}": "LGG" for i in range(n_lgg)}
    grades |= {f"U{i:03d}": None for i in range(n_unknown)}
    return grades


def test_split_is_patient_level_stratified_and_complete():
    grades = _grades()
    s = make_splits(grades, (0.6, 0.2, 0.2), seed=3)
    assert sorted(s.ids("all")) == sorted(grades)
    counts = s.to_dict()["counts"]
    assert counts["train"]["HGG"] + counts["val"]["HGG"] + counts["test"]["HGG"] == 29
    assert (counts["train"]["LGG"], counts["val"]["LGG"], counts["test"]["LGG"]) in {
        (5, 2, 1),
        (5, 1, 2),
        (4, 2, 2),
    }
    for name in ("train", "val", "test"):
        assert counts[name]["LGG"] >= 1 and counts[name]["HGG"] >= 1


def test_split_is_deterministic_and_seed_dependent():
    grades = _grades()
    assert make_splits(grades, seed=1) == make_splits(dict(reversed(grades.items())), seed=1)
    assert make_splits(grades, seed=1).test != make_splits(grades, seed=2).test


def test_save_load_and_hash(tmp_path):
    s = make_splits(_grades(), seed=0)
    path = s.save(tmp_path / "splits.json")
    again = Splits.load(path)
    assert again == s and again.hash == s.hash
    raw = json.loads(path.read_text())
    raw["test"].append(raw["train"].pop())
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="edited"):
        Splits.load(path)


def test_bad_input():
    with pytest.raises(ValueError, match="sum"):
        make_splits(_grades(), (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="empty"):
        make_splits({})
    with pytest.raises(ValueError, match="both"):
        Splits(("a",), (), ("a",), {}, 0, (0.5, 0, 0.5))
    assert make_splits({"a": "HGG", "b": "LGG"}, (0.5, 0.0, 0.5)).val == ()


def test_load_or_make_splits_writes_once_then_only_reads(tmp_path):
    from types import SimpleNamespace

    from GliomaCompareLib.data.splits import load_or_make_splits

    def cohort(grades):
        cases = [SimpleNamespace(case_id=c, grade=g) for c, g in grades.items()]
        return SimpleNamespace(cases=cases, usable=cases)

    grades = _grades()
    path = tmp_path / "splits.json"
    with pytest.raises(FileNotFoundError, match="split file not found"):
        load_or_make_splits(cohort(grades), path, create=False)
    made = load_or_make_splits(cohort(grades), path, seed=4)
    assert path.is_file()
    # another seed does not re-split an existing file
    assert load_or_make_splits(cohort(grades), path, seed=9) == made
    one = next(c for c in made.test if grades[c] == "HGG")
    flipped = dict(grades, **{one: "LGG"})
    with pytest.raises(ValueError, match=f"grades differ from the data for {one}"):
        load_or_make_splits(cohort(flipped), path)
