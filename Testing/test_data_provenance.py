"""Pretrained weights that saw test patients are found through name_mapping.csv."""

from __future__ import annotations

import pytest

from GliomaCompareLib.data.provenance import prior_challenge_ids, weights_overlap

MAPPING = """\
Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID
HGG,Brats17_CBICA_AAB_1,Brats18_CBICA_AAB_1,NA,BraTS19_CBICA_AAB_1,BraTS20_Training_001
HGG,NA,NA,NA,BraTS19_CBICA_AAC_1,BraTS20_Training_002
LGG,NA,Brats18_TCIA10_103_1,TCGA-XX,BraTS19_TCIA10_103_1,BraTS20_Training_003
LGG,NA,NA,NA,NA,BraTS20_Training_004
"""


@pytest.fixture
def prior(tmp_path):
    path = tmp_path / "name_mapping.csv"
    path.write_text(MAPPING)
    return prior_challenge_ids(path, "BraTS_2020_subject_ID")


def test_prior_ids_read_every_challenge_column(prior):
    assert prior["BraTS20_Training_001"] == {
        "brats2017": "Brats17_CBICA_AAB_1",
        "brats2018": "Brats18_CBICA_AAB_1",
        "brats2019": "BraTS19_CBICA_AAB_1",
    }
    assert prior["BraTS20_Training_004"] == {}


def test_brats2018_weights_flag_the_2018_cases(prior):
    ids = [f"BraTS20_Training_00{i}" for i in (1, 2, 3, 4)]
    overlap = weights_overlap(ids, "brats2018", prior)
    assert overlap.case_ids == ("BraTS20_Training_001", "BraTS20_Training_003")
    assert overlap.any and overlap.n_checked == 4
    assert "2 of 4 test patients" in overlap.note and "brats2018" in overlap.note


def test_no_overlap_and_own_training_say_nothing(prior):
    assert not weights_overlap(["BraTS20_Training_004"], "brats2018", prior).any
    assert weights_overlap(["BraTS20_Training_001"], "none", prior).note == ""


def test_unknown_or_unmapped_flags_everyone(prior):
    ids = ["BraTS20_Training_002", "BraTS20_Training_004"]
    assert weights_overlap(ids, "unknown", prior).case_ids == tuple(ids)
    assert weights_overlap(ids, "brats2020", prior).case_ids == tuple(ids)
    unmapped = weights_overlap(ids, "brats2018", None)
    assert unmapped.case_ids == tuple(ids) and "no name_mapping.csv" in unmapped.note


def test_bad_values_are_named(tmp_path, prior):
    with pytest.raises(ValueError, match="brats2015"):
        weights_overlap(["x"], "brats2015", prior)
    bad = tmp_path / "bad.csv"
    bad.write_text("Grade,ID\nHGG,x\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*BraTS_2020_subject_ID"):
        prior_challenge_ids(bad, "BraTS_2020_subject_ID")


def test_the_metrics_stage_labels_rows_the_weights_saw(tmp_path):
    """Through the metrics stage's own helper and the report's warning."""
    from types import SimpleNamespace

    from GliomaCompareLib.data.conventions import load_convention
    from GliomaCompareLib.pipeline.aggregate import CaseScores, _weights_overlap
    from GliomaCompareLib.pipeline.config import parse_run_config
    from GliomaCompareLib.report.tables import _seen_by_weights

    (tmp_path / "name_mapping.csv").write_text(MAPPING)
    cohort = SimpleNamespace(data_dir=tmp_path, convention=load_convention("brats2020"))
    raw = {
        "data": {"synthetic": {"cases": 4}},
        "cnn": {"enabled": False, "weights": {"seg": "x.pt"}, "weights_trained_on": "brats2018"},
    }
    config = parse_run_config(raw)
    config = config.__class__(**{**config.__dict__, "cnn": config.cnn.__class__(
        **{**config.cnn.__dict__, "enabled": True})})  # fmt: skip
    scores = CaseScores()
    ids = [f"BraTS20_Training_00{i}" for i in (1, 2, 3, 4)]
    _weights_overlap(cohort, ids, config, scores)
    assert scores.seen == {"seg": frozenset({"BraTS20_Training_001", "BraTS20_Training_003"})}
    assert "2 of 4 test patients" in scores.warnings[0]
    rows = [
        {"case_id": c, "seen_by_weights": 1.0 if c in scores.seen["seg"] else None} for c in ids
    ]
    assert "WARNING: 2 test patients" in _seen_by_weights(rows)
    assert _seen_by_weights([{"case_id": "x", "seen_by_weights": None}]) == ""
