"""Synthetic BraTS cohorts: geometry, determinism, labels, contrast, files and the CLI."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from GliomaCompareLib.data.synthetic import (
    DATA_DIR_NAME,
    TISSUE_INTENSITIES,
    SynthConfig,
    brats_affine,
    case_id_for,
    cohort_grades,
    generate_case,
    tissue_maps,
    write_case,
    write_cohort,
)

SMALL = (48, 48, 32)
MODALITIES = ("flair", "t1", "t1ce", "t2")


@pytest.fixture(scope="module")
def cohort60():
    """60 in-memory cases of 48x48x32 (about 2 s), for statistics over grades."""
    config = SynthConfig(cases=60, seed=11, shape=SMALL, hgg_fraction=0.8)
    return config, [generate_case(i, config) for i in range(config.cases)]


def _same_case(a, b) -> bool:
    return (
        a.grade == b.grade
        and np.array_equal(a.label, b.label)
        and all(np.array_equal(a.volumes[m], b.volumes[m]) for m in MODALITIES)
        and np.array_equal(a.affine, b.affine)
    )


# ---------------------------------------------------------------------------- geometry


def test_full_size_affine_is_the_brats_affine():
    expected = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    np.testing.assert_array_equal(brats_affine((240, 240, 155)), expected)
    np.testing.assert_array_equal(SynthConfig().affine, expected)


@pytest.mark.parametrize("shape", [(48, 48, 32), (96, 80, 62), (16, 16, 16)])
def test_smaller_shapes_keep_the_field_of_view(shape):
    full, small = brats_affine((240, 240, 155)), brats_affine(shape)
    spacing = np.linalg.norm(small[:3, :3], axis=0)
    np.testing.assert_allclose(spacing * np.array(shape), [240, 240, 155], atol=1e-9)
    # the outer voxel edges (index -0.5 and n - 0.5) land on the same mm in both grids
    for edge_small, edge_full in (
        (np.full(3, -0.5), np.full(3, -0.5)),
        (np.array(shape) - 0.5, np.array([240, 240, 155]) - 0.5),
    ):
        np.testing.assert_allclose(
            small @ np.append(edge_small, 1), full @ np.append(edge_full, 1), atol=1e-9
        )
    assert np.all(np.sign(np.diag(small)[:3]) == [-1, -1, 1])


def test_tissue_maps_are_fractions_of_a_brain_sized_mask():
    maps = tissue_maps(SMALL)
    brain = maps["brain"]
    total = maps["gm"] + maps["wm"] + maps["csf"]
    np.testing.assert_allclose(total[brain], 1.0, atol=1e-4)
    assert not total[~brain].any()
    volume_ml = brain.sum() * np.prod(SynthConfig(shape=SMALL).spacing) / 1000
    assert 1700 < volume_ml < 2000  # the MNI152 brain mask holds ~1.88 l
    # the brain sits inside the field of view: no brain on the left/right/front/back faces
    for axis in (0, 1):
        assert not np.take(brain, 0, axis=axis).any()
        assert not np.take(brain, -1, axis=axis).any()
    # deep white matter is mostly white matter, ventricles exist
    assert (maps["wm"] > 0.9).sum() > 500
    assert (maps["csf"] > 0.6).sum() > 50


# ---------------------------------------------------------------------------- config, grades


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cases": 0}, "cases"),
        ({"seed": -1}, "seed"),
        ({"hgg_fraction": 1.5}, "hgg_fraction"),
        ({"shape": (8, 48, 48)}, "shape"),
        ({"shape": (48, 48)}, "shape"),
        ({"ext": ".mha"}, "ext"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


@pytest.mark.parametrize(
    ("cases", "fraction", "hgg"),
    [(8, 0.75, 6), (10, 0.8, 8), (369, 0.8, 295), (3, 0.5, 2), (1, 0.8, 1), (5, 0.0, 0), (4, 1, 4)],
)
def test_hgg_count_is_exact(cases, fraction, hgg):
    grades = cohort_grades(SynthConfig(cases=cases, hgg_fraction=fraction, shape=SMALL))
    assert len(grades) == cases
    assert grades.count("HGG") == hgg
    assert grades.count("LGG") == cases - hgg


def test_grades_are_shuffled_by_the_seed():
    a = cohort_grades(SynthConfig(cases=40, seed=0, shape=SMALL))
    b = cohort_grades(SynthConfig(cases=40, seed=1, shape=SMALL))
    assert a != b
    assert a != tuple(sorted(a))  # not all HGG first


def test_generate_case_rejects_bad_index_and_grade():
    config = SynthConfig(cases=3, shape=SMALL)
    with pytest.raises(ValueError, match="outside the cohort"):
        generate_case(3, config)
    with pytest.raises(ValueError, match="grade"):
        generate_case(0, config, grade="GBM")


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_cases_and_other_seed_differs():
    config = SynthConfig(cases=4, seed=5, shape=SMALL)
    a, b = generate_case(2, config), generate_case(2, config)
    assert _same_case(a, b)
    assert a.truth == b.truth
    other = generate_case(2, SynthConfig(cases=4, seed=6, shape=SMALL), grade=a.grade)
    assert not np.array_equal(a.volumes["flair"], other.volumes["flair"])
    assert not np.array_equal(a.label, other.label)


def test_case_does_not_depend_on_cohort_size_or_order():
    small = SynthConfig(cases=6, seed=2, shape=SMALL)
    large = SynthConfig(cases=50, seed=2, shape=SMALL)
    g_small, g_large = cohort_grades(small), cohort_grades(large)
    shared = [i for i in range(6) if g_small[i] == g_large[i]]
    assert shared, "expected some cases with the same grade in both cohorts"
    made_backwards = {i: generate_case(i, large) for i in reversed(shared)}
    for i in shared:
        assert _same_case(generate_case(i, small), made_backwards[i])
    # with the grade given, case i is the same whatever the cohort
    i = next(i for i in range(6) if g_small[i] != g_large[i])
    assert _same_case(generate_case(i, small), generate_case(i, large, grade=g_small[i]))


def test_tumour_geometry_is_the_same_at_every_shape():
    coarse = generate_case(0, SynthConfig(cases=2, seed=4, shape=SMALL))
    fine = generate_case(0, SynthConfig(cases=2, seed=4, shape=(96, 96, 62)))
    assert coarse.truth["tumour"]["centre_ras_mm"] == fine.truth["tumour"]["centre_ras_mm"]
    wt_coarse = coarse.truth["measured"]["volume_ml"]["WT"]
    wt_fine = fine.truth["measured"]["volume_ml"]["WT"]
    assert wt_fine == pytest.approx(wt_coarse, rel=0.25)
    centroid_coarse = np.array(coarse.truth["measured"]["wt_centroid_ras_mm"])
    centroid_fine = np.array(fine.truth["measured"]["wt_centroid_ras_mm"])
    assert np.linalg.norm(centroid_coarse - centroid_fine) < 5.0


# ---------------------------------------------------------------------------- labels


def test_labels_are_brats_values_inside_the_brain(cohort60):
    config, cases = cohort60
    brain = tissue_maps(config.shape)["brain"]
    for case in cases:
        assert case.label.dtype == np.uint8
        assert set(np.unique(case.label).tolist()) <= {0, 1, 2, 4}
        tumour = case.label > 0
        assert tumour.any(), f"{case.case_id}: empty whole tumour"
        assert not (tumour & ~brain).any(), f"{case.case_id}: tumour outside the brain"
        for m in MODALITIES:
            volume = case.volumes[m]
            assert volume.dtype == np.int16
            assert (volume[brain] >= 1).all(), f"{case.case_id} {m}: zero inside the brain"
            assert not volume[~brain].any(), f"{case.case_id} {m}: non-zero background"


def test_enhancement_mostly_in_hgg_and_sizes_overlap(cohort60):
    _, cases = cohort60
    hgg = [c for c in cases if c.grade == "HGG"]
    lgg = [c for c in cases if c.grade == "LGG"]
    assert (len(hgg), len(lgg)) == (48, 12)
    hgg_et = np.mean([(c.label == 4).any() for c in hgg])
    lgg_et = np.mean([(c.label == 4).any() for c in lgg])
    assert hgg_et >= 0.75
    assert lgg_et <= 0.4
    # not trivially separable: HGG without enhancement and LGG with enhancement both exist
    assert hgg_et < 1.0
    assert lgg_et > 0.0
    wt = {
        g: [c.truth["measured"]["volume_ml"]["WT"] for c in cs]
        for g, cs in (("HGG", hgg), ("LGG", lgg))
    }
    assert min(wt["HGG"]) < max(wt["LGG"]) and min(wt["LGG"]) < max(wt["HGG"])
    # LGG enhancement is small: far less enhancing tumour than HGG rims
    et_hgg = np.median(
        [c.truth["measured"]["volume_ml"]["ET"] for c in hgg if (c.label == 4).any()]
    )
    et_lgg = [c.truth["measured"]["volume_ml"]["ET"] for c in lgg if (c.label == 4).any()]
    assert max(et_lgg) < et_hgg
    # tumours on both sides of the brain
    sides = {c.truth["tumour"]["hemisphere"] for c in cases}
    assert sides == {"left", "right"}


def test_truth_matches_the_label_map():
    case = generate_case(1, SynthConfig(cases=3, seed=8, shape=SMALL))
    truth = case.truth
    assert truth["case_id"] == case.case_id == case_id_for(1) == "BraTS20_Training_002"
    voxel_ml = np.prod(case.spacing) / 1000
    for value, n in truth["measured"]["voxels"].items():
        assert n == int((case.label == int(value)).sum())
    wt = (case.label > 0).sum() * voxel_ml
    assert truth["measured"]["volume_ml"]["WT"] == pytest.approx(wt, abs=1e-3)
    centre_vox = np.array(truth["tumour"]["centre_voxel"])
    centre_ras = case.affine @ np.append(centre_vox, 1.0)
    np.testing.assert_allclose(centre_ras[:3], truth["tumour"]["centre_ras_mm"], atol=0.01)
    centroid = np.array(truth["measured"]["wt_centroid_ras_mm"])
    assert np.linalg.norm(centroid - centre_ras[:3]) < 25.0
    # hemisphere from MNI x, consistent with the voxel index (i runs right -> left)
    mni_x = truth["tumour"]["centre_mni_mm"][0]
    assert truth["tumour"]["hemisphere"] == ("right" if mni_x > 0 else "left")


# ---------------------------------------------------------------------------- contrast


def _mean(case, modality: str, mask: np.ndarray) -> float:
    assert mask.any(), f"{case.case_id}: empty mask"
    return float(case.volumes[modality][mask].astype(float).mean())


def test_contrasts_a_radiologist_would_recognise(cohort60):
    config, cases = cohort60
    maps = tissue_maps(config.shape)
    checked_rim = 0
    for case in cases[:20]:
        free = case.label == 0
        wm = free & (maps["wm"] > 0.9)
        gm = free & (maps["gm"] > 0.7)
        csf = free & (maps["csf"] > 0.6)
        tumour = case.label > 0
        # FLAIR: oedema bright, CSF dark
        if (case.label == 2).any():
            edema = case.label == 2
            assert (
                _mean(case, "flair", edema) > _mean(case, "flair", wm) > _mean(case, "flair", csf)
            )
        # T1: WM > GM > CSF, tumour hypointense
        assert _mean(case, "t1", wm) > _mean(case, "t1", gm) > _mean(case, "t1", csf)
        assert _mean(case, "t1", tumour) < _mean(case, "t1", wm)
        # T2: CSF bright, tumour brighter than white matter
        assert _mean(case, "t2", csf) > 1.5 * _mean(case, "t2", wm)
        assert _mean(case, "t2", tumour) > 1.5 * _mean(case, "t2", wm)
        if case.truth["enhancement"] == "rim" and (case.label == 1).any():
            checked_rim += 1
            et = case.label == 4
            t1ce_rel = _mean(case, "t1ce", et) / _mean(case, "t1ce", wm)
            t1_rel = _mean(case, "t1", et) / _mean(case, "t1", wm)
            assert t1ce_rel > 1.2 * t1_rel and t1ce_rel > 1.1
            # FLAIR: necrosis darker than oedema
            assert _mean(case, "flair", case.label == 1) < _mean(case, "flair", case.label == 2)
    assert checked_rim >= 5


def test_faint_lgg_enhancement_is_fainter_than_hgg_rims(cohort60):
    config, cases = cohort60
    wm = tissue_maps(config.shape)["wm"] > 0.9

    def et_contrast(case):
        t1ce = case.volumes["t1ce"].astype(float)
        return t1ce[case.label == 4].mean() / t1ce[wm & (case.label == 0)].mean()

    rim = [et_contrast(c) for c in cases if c.truth["enhancement"] == "rim"]
    faint = [et_contrast(c) for c in cases if c.truth["enhancement"] == "faint"]
    assert faint and rim
    assert np.median(faint) < np.median(rim)


def test_nominal_contrast_table_orders():
    t = TISSUE_INTENSITIES
    assert t["t1"]["wm"] > t["t1"]["gm"] > t["t1"]["csf"]
    assert t["flair"]["edema"] > t["flair"]["wm"] > t["flair"]["csf"]
    assert t["flair"]["necrosis"] < t["flair"]["edema"]
    assert t["t2"]["csf"] > t["t2"]["wm"]
    assert t["t1ce"]["enhancing"] > t["t1ce"]["wm"] > t["t1"]["enhancing"]


def test_as_case_gives_channels_in_convention_order():
    synthetic = generate_case(0, SynthConfig(cases=1, seed=0, shape=SMALL))
    case = synthetic.as_case()
    assert case.channels == ("flair", "t1", "t1ce", "t2")
    assert case.image.shape == (4, *SMALL) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.modality("t1ce"), synthetic.volumes["t1ce"])
    np.testing.assert_allclose(case.spacing, (5.0, 5.0, 155 / 32))
    assert case.regions()["WT"].sum() == (synthetic.label > 0).sum()


# ---------------------------------------------------------------------------- files


def test_cohort_passes_discovery_with_correct_grades(synth_cohort):
    from GliomaCompareLib.data.discovery import discover_cases

    cohort = discover_cases(synth_cohort, "brats2020", validate=True, full=True)
    assert synth_cohort.name == DATA_DIR_NAME
    assert len(cohort.cases) == 8
    assert not cohort.warnings
    manifest = json.loads((synth_cohort / "synthetic.json").read_text())
    assert manifest["complete"] is True
    assert manifest["config"]["cases"] == 8 and manifest["config"]["shape"] == list(SMALL)
    truth_grade = {c["case_id"]: c["grade"] for c in manifest["cases"]}
    for record in cohort.cases:
        assert record.usable, record.problems
        assert not record.warnings
        assert record.grade == truth_grade[record.case_id]
        assert record.shape == SMALL
        np.testing.assert_allclose(record.spacing, (5.0, 5.0, 155 / 32))
    assert sum(r.grade == "HGG" for r in cohort.cases) == 6


def test_name_mapping_has_the_real_columns(synth_cohort):
    with (synth_cohort / "name_mapping.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "Grade",
        "BraTS_2017_subject_ID",
        "BraTS_2018_subject_ID",
        "TCGA_TCIA_subject_ID",
        "BraTS_2019_subject_ID",
        "BraTS_2020_subject_ID",
    ]
    assert [r["BraTS_2020_subject_ID"] for r in rows] == [case_id_for(i) for i in range(8)]
    assert {r["BraTS_2017_subject_ID"] for r in rows} == {"NA"}


def test_written_files_round_trip(synth_cohort):
    from GliomaCompareLib.data.io import read_image

    config = SynthConfig(cases=8, seed=0, shape=SMALL, hgg_fraction=0.75)
    case = generate_case(3, config)
    folder = synth_cohort / case.case_id
    for m in MODALITIES:
        array, meta = read_image(folder / f"{case.case_id}_{m}.nii.gz")
        assert array.dtype == np.int16
        np.testing.assert_array_equal(array, case.volumes[m])
        np.testing.assert_allclose(meta.affine, config.affine, atol=1e-5)
    label, _ = read_image(folder / f"{case.case_id}_seg.nii.gz")
    np.testing.assert_array_equal(label, case.label)
    assert not list(synth_cohort.rglob(".*"))  # no temporary files left behind


def test_jobs_do_not_change_the_files(tmp_path):
    config = SynthConfig(cases=4, seed=3, shape=(32, 32, 24), hgg_fraction=0.5)
    one = write_cohort(tmp_path / "one", config, jobs=1)
    two = write_cohort(tmp_path / "two", config, jobs=2)
    files_one = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    files_two = sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert files_one == files_two and len(files_one) == 4 * 5 + 2
    for rel in files_one:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


def test_plain_nii_extension(tmp_path):
    from GliomaCompareLib.data.discovery import discover_cases

    config = SynthConfig(cases=2, seed=1, shape=(32, 32, 24), ext=".nii")
    data_dir = write_cohort(tmp_path, config)
    assert len(list(data_dir.rglob("*.nii"))) == 10
    assert not list(data_dir.rglob("*.nii.gz"))
    cohort = discover_cases(data_dir)
    assert all(r.usable for r in cohort.cases) and len(cohort.cases) == 2


def test_interrupted_cohort_is_resumed_and_others_refused(tmp_path, synth_cohort, capsys):
    out = tmp_path / "resume"
    shutil.copytree(synth_cohort, out / DATA_DIR_NAME)
    data_dir = out / DATA_DIR_NAME
    # simulate an interruption: case 5 never finished and the manifest was not completed
    shutil.rmtree(data_dir / case_id_for(4))
    kept = data_dir / case_id_for(0) / f"{case_id_for(0)}_flair.nii.gz"
    kept_mtime = kept.stat().st_mtime_ns
    config = SynthConfig(cases=8, seed=0, shape=SMALL, hgg_fraction=0.75)
    write_cohort(out, config, progress=True)
    err = capsys.readouterr().err
    assert "resuming, 7 cases" in err and "8/8 BraTS20_Training_005" in err
    assert kept.stat().st_mtime_ns == kept_mtime  # finished cases are not redone
    for path in (synth_cohort / case_id_for(4)).iterdir():
        assert (data_dir / case_id_for(4) / path.name).read_bytes() == path.read_bytes()
    assert (data_dir / "synthetic.json").read_bytes() == (
        synth_cohort / "synthetic.json"
    ).read_bytes()
    # a different configuration in the same folder is refused, nothing is overwritten
    with pytest.raises(ValueError, match="another configuration"):
        write_cohort(out, SynthConfig(cases=8, seed=1, shape=SMALL, hgg_fraction=0.75))
    # a folder of real (non-synthetic) cases is never written into
    real = tmp_path / "real"
    shutil.copytree(synth_cohort, real / DATA_DIR_NAME)
    (real / DATA_DIR_NAME / "synthetic.json").unlink()
    with pytest.raises(ValueError, match="not a synthetic cohort"):
        write_cohort(real, config)


def test_write_case_writes_five_files(tmp_path):
    case = generate_case(0, SynthConfig(cases=1, seed=0, shape=(32, 32, 24)))
    files = write_case(case, tmp_path, ".nii.gz")
    assert sorted(files) == ["flair", "label", "t1", "t1ce", "t2"]
    assert all(p.is_file() and p.parent.name == case.case_id for p in files.values())
    assert files["label"].name == "BraTS20_Training_001_seg.nii.gz"


def test_atlas_disk_cache_gives_identical_maps(tmp_path, monkeypatch):
    from GliomaCompareLib.data import synthetic

    shape = (20, 24, 18)  # a shape no other test uses
    monkeypatch.setenv("GLIOMACOMPARE_CACHE_DIR", str(tmp_path))
    synthetic._atlas.cache_clear()
    try:
        fresh = tissue_maps(shape)
        cached_files = list((tmp_path / "synthetic").glob("atlas-20x24x18-*.npz"))
        assert len(cached_files) == 1
        synthetic._atlas.cache_clear()
        again = tissue_maps(shape)  # now read from the cache file
        for name in fresh:
            np.testing.assert_array_equal(fresh[name], again[name])
        # an empty variable turns the disk cache off
        monkeypatch.setenv("GLIOMACOMPARE_CACHE_DIR", "")
        synthetic._atlas.cache_clear()
        tissue_maps((20, 24, 17))
        assert not list((tmp_path / "synthetic").glob("atlas-20x24x17-*"))
    finally:
        synthetic._atlas.cache_clear()


# ---------------------------------------------------------------------------- CLI


def test_cli_synth_then_inspect_json(tmp_path, capsys):
    from GliomaCompareLib.cli import main

    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--cases", "3", "--seed", "2", "--shape", "32,32,24"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "wrote 3 synthetic cases" in captured.out
    assert captured.err.count("synth: ") == 3  # one progress line per case
    rc = main(["inspect", str(out), "--json"])
    assert rc == 0
    listed = json.loads(capsys.readouterr().out)
    grades = cohort_grades(SynthConfig(cases=3, seed=2, shape=(32, 32, 24)))
    assert [c["case_id"] for c in listed] == [case_id_for(i) for i in range(3)]
    assert [c["grade"] for c in listed] == list(grades)
    assert all(c["usable"] and c["problems"] == [] for c in listed)


def test_cli_synth_refuses_a_different_cohort(tmp_path, capsys):
    from GliomaCompareLib.cli import main

    args = ["synth", str(tmp_path), "--cases", "2", "--shape", "32,32,24"]
    assert main(args) == 0
    assert main([*args[:-1], "24,24,24"]) == 2
    assert "another configuration" in capsys.readouterr().err


# ---------------------------------------------------------------------------- full size


@pytest.mark.slow
def test_full_size_case(tmp_path):
    from GliomaCompareLib.data.discovery import discover_cases

    config = SynthConfig(cases=1, seed=0)
    data_dir = write_cohort(tmp_path, config)
    record = discover_cases(data_dir).cases[0]
    assert record.usable, record.problems
    assert record.shape == (240, 240, 155)
    np.testing.assert_allclose(record.spacing, (1.0, 1.0, 1.0))
    case = generate_case(0, config)
    brain = case.volumes["flair"] > 0
    for m in MODALITIES:
        np.testing.assert_array_equal(case.volumes[m] > 0, brain)
    assert 1700e3 < brain.sum() < 2000e3  # about 1.88 l of 1 mm voxels
    assert not (case.label.astype(bool) & ~brain).any()
    assert not brain[:, :, -1].any()  # top of the brain just below the top slice
    wt_ml = case.truth["measured"]["volume_ml"]["WT"]
    assert 1.0 < wt_ml < 500.0
