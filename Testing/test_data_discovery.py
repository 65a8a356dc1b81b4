"""Discovery, validation and loading of BraTS folders with every quirk and broken case."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from GliomaCompareLib.cli import main
from GliomaCompareLib.data import (
    CaseLoadError,
    discover_cases,
    labels_from_regions,
    load_case,
    load_convention,
    region_masks,
)
from GliomaCompareLib.data.io import ImageReadError, read_header, read_image

SHAPE = (12, 10, 8)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
KEYS_2020 = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}


def _volume(seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros(SHAPE, dtype=dtype)
    vol[2:10, 2:8, 1:7] = rng.uniform(50, 500, size=(8, 6, 6)).astype(dtype)
    return vol


def _label(values=(1, 2, 4)) -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[4:8, 3:7, 2:6] = values[1]
    lab[5:7, 4:6, 3:5] = values[0]
    lab[5, 4, 3] = values[2]
    return lab


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def write_case(
    data_dir,
    case_id,
    *,
    ext=".nii.gz",
    sep="_",
    keys=KEYS_2020,
    label_name=None,
    seed=0,
    label_values=(1, 2, 4),
    skip=(),
):
    folder = data_dir / case_id
    for i, (channel, key) in enumerate(keys.items()):
        if channel in skip:
            continue
        _save(folder / f"{case_id}{sep}{key}{ext}", _volume(seed + i))
    if "seg" not in skip:
        name = label_name or f"{case_id}{sep}seg{ext}"
        _save(folder / name, _label(label_values))
    return folder


def write_mapping(data_dir, rows):
    lines = [
        "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,"
        "BraTS_2019_subject_ID,BraTS_2020_subject_ID"
    ]
    lines += [f"{grade},NA,NA,NA,NA,{case_id}" for case_id, grade in rows]
    (data_dir / "name_mapping.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture()
def quirky_cohort(tmp_path):
    """A BraTS 2020 folder with every quirk and every kind of broken case."""
    data = tmp_path / "MICCAI_BraTS2020_TrainingData"
    write_case(data, "BraTS20_Training_001", ext=".nii.gz", seed=1)
    write_case(data, "BraTS20_Training_002", ext=".nii", seed=2)
    write_case(data, "BraTS20_Training_355", label_name="W39_1998.09.19_Segm.nii", seed=3)
    write_case(data, "BraTS20_Training_010", skip=("t1ce",), seed=4)  # missing modality
    folder = write_case(data, "BraTS20_Training_011", seed=5)  # truncated .nii.gz
    path = folder / "BraTS20_Training_011_t2.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    folder = write_case(data, "BraTS20_Training_012", seed=6)  # shape mismatch
    _save(folder / "BraTS20_Training_012_t1.nii.gz", np.ones((12, 10, 9), np.float32))
    folder = write_case(data, "BraTS20_Training_013", seed=7)  # NaN voxels
    vol = _volume(8)
    vol[3, 3, 3] = np.nan
    _save(folder / "BraTS20_Training_013_flair.nii.gz", vol)
    write_case(data, "BraTS20_Training_014", label_values=(1, 2, 3), seed=8)  # label 3 in 2020
    folder = write_case(data, "BraTS20_Training_015", seed=9)  # 4D image
    _save(folder / "BraTS20_Training_015_t2.nii.gz", np.ones((*SHAPE, 2), np.float32))
    folder = write_case(data, "BraTS20_Training_016", seed=10)  # affine mismatch
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    _save(folder / "BraTS20_Training_016_t1.nii.gz", _volume(11), moved)
    write_case(data, "BraTS20_Training_020", skip=("seg",), seed=12)  # no label: inference only
    write_mapping(
        data,
        [
            ("BraTS20_Training_001", "HGG"),
            ("BraTS20_Training_002", "LGG"),
            ("BraTS20_Training_355", "HGG"),
            ("BraTS20_Training_010", "HGG"),
            ("BraTS20_Training_011", "LGG"),
            ("BraTS20_Training_012", "HGG"),
            ("BraTS20_Training_013", "HGG"),
            ("BraTS20_Training_014", "HGG"),
            ("BraTS20_Training_015", "HGG"),
            ("BraTS20_Training_016", "HGG"),
            ("BraTS20_Training_099", "HGG"),  # unknown id: no folder
        ],
    )
    return tmp_path


def _by_id(cohort):
    return {c.case_id: c for c in cohort.cases}


def test_discovery_finds_cases_from_parent_and_reads_grades(quirky_cohort):
    cohort = discover_cases(quirky_cohort)
    cases = _by_id(cohort)
    assert cohort.data_dir.name == "MICCAI_BraTS2020_TrainingData"
    assert len(cases) == 11
    assert cases["BraTS20_Training_001"].grade == "HGG"
    assert cases["BraTS20_Training_002"].grade == "LGG"
    assert cases["BraTS20_Training_020"].grade is None  # not in name_mapping
    assert any("BraTS20_Training_099" in w and "no case folder" in w for w in cohort.warnings)
    assert any(
        "no row for BraTS20_Training_020" in w for w in cases["BraTS20_Training_020"].warnings
    )


def test_quirks_are_usable(quirky_cohort):
    cases = _by_id(discover_cases(quirky_cohort))
    for case_id in ("BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_355"):
        assert cases[case_id].usable, cases[case_id].problems
    assert cases["BraTS20_Training_002"].modality_paths["flair"].name.endswith(".nii")
    assert cases["BraTS20_Training_355"].label_path.name == "W39_1998.09.19_Segm.nii"
    no_label = cases["BraTS20_Training_020"]
    assert no_label.usable and no_label.label_path is None
    assert any("no label map" in w for w in no_label.warnings)


@pytest.mark.parametrize(
    ("case_id", "fragments"),
    [
        ("BraTS20_Training_010", ["BraTS20_Training_010_t1ce", "missing t1ce"]),
        ("BraTS20_Training_011", ["BraTS20_Training_011_t2.nii.gz"]),
        ("BraTS20_Training_012", ["BraTS20_Training_012_t1.nii.gz", "shape (12, 10, 9)"]),
        ("BraTS20_Training_013", ["BraTS20_Training_013_flair.nii.gz", "NaN"]),
        ("BraTS20_Training_014", ["BraTS20_Training_014_seg.nii.gz", "[3]", "brats2020"]),
        ("BraTS20_Training_015", ["BraTS20_Training_015_t2.nii.gz", "4D"]),
        ("BraTS20_Training_016", ["BraTS20_Training_016_t1.nii.gz", "affine"]),
    ],
)
def test_broken_cases_are_reported_with_file_and_reason(quirky_cohort, case_id, fragments):
    case = _by_id(discover_cases(quirky_cohort))[case_id]
    assert not case.usable
    text = " | ".join(case.problems)
    for fragment in fragments:
        assert fragment in text, text
    with pytest.raises(CaseLoadError, match=case_id):
        load_case(case)


def test_every_problem_of_a_case_is_listed(tmp_path):
    data = tmp_path / "data"
    folder = write_case(data, "BraTS20_Training_030", skip=("t1",))
    vol = _volume(3)
    vol[0, 0, 0] = np.inf
    _save(folder / "BraTS20_Training_030_t2.nii.gz", vol)
    _save(folder / "BraTS20_Training_030_seg.nii.gz", _label((1, 2, 7)))
    case = discover_cases(data).cases[0]
    assert len(case.problems) == 3, case.problems


def test_quick_validation_reads_headers_only(quirky_cohort):
    cases = _by_id(discover_cases(quirky_cohort, full=False))
    assert cases["BraTS20_Training_013"].usable  # NaN needs the voxels
    assert not cases["BraTS20_Training_012"].usable  # shape is in the header


def test_parallel_validation_matches_serial(quirky_cohort):
    serial = discover_cases(quirky_cohort)
    parallel = discover_cases(quirky_cohort, jobs=2)
    assert [c.to_dict() for c in serial.cases] == [c.to_dict() for c in parallel.cases]


def test_missing_name_mapping_means_unknown_grades(tmp_path):
    data = tmp_path / "MICCAI_BraTS2020_TrainingData"
    write_case(data, "BraTS20_Training_001")
    cohort = discover_cases(tmp_path)
    assert cohort.cases[0].grade is None and cohort.cases[0].usable
    assert any("name_mapping.csv" in w and "not found" in w for w in cohort.warnings)


def test_unknown_grade_value_warns(tmp_path):
    data = tmp_path / "d"
    write_case(data, "BraTS20_Training_001")
    write_mapping(data, [("BraTS20_Training_001", "GBM?")])
    cohort = discover_cases(data)
    assert cohort.cases[0].grade is None
    assert any("unknown grade 'GBM?'" in w for w in cohort.warnings)


def test_load_case_channels_labels_geometry(quirky_cohort):
    cohort = discover_cases(quirky_cohort)
    record = cohort.get("BraTS20_Training_001")
    case = load_case(record)
    assert case.image.shape == (4, *SHAPE) and case.image.dtype == np.float32
    assert case.channels == ("flair", "t1", "t1ce", "t2")
    np.testing.assert_array_equal(case.flair, _volume(1))
    np.testing.assert_array_equal(case.modality("t2"), _volume(4))
    np.testing.assert_array_equal(case.label, _label())
    np.testing.assert_allclose(case.affine, AFFINE)
    assert case.spacing == (1.0, 1.0, 1.0)
    regions = case.regions()
    assert regions["WT"].sum() == (_label() > 0).sum()
    assert regions["ET"].sum() == 1
    assert regions["TC"].sum() == np.isin(_label(), [1, 4]).sum()
    rebuilt = labels_from_regions(regions["WT"], regions["TC"], regions["ET"])
    np.testing.assert_array_equal(rebuilt, case.label)
    case355 = load_case(cohort.get("BraTS20_Training_355"))
    np.testing.assert_array_equal(case355.label, _label())


def test_brats2023_convention_from_file_not_code(tmp_path):
    data = tmp_path / "gli"
    keys = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    write_case(data, "BraTS-GLI-00001-000", sep="-", keys=keys, label_values=(1, 2, 3))
    write_case(data, "BraTS-GLI-00002-000", sep="-", keys=keys, label_values=(1, 2, 4))
    cohort = discover_cases(data, "brats2023")
    cases = _by_id(cohort)
    good = cases["BraTS-GLI-00001-000"]
    assert good.usable, good.problems
    assert not cases["BraTS-GLI-00002-000"].usable  # label 4 is not a 2023 label
    case = load_case(good, "brats2023")
    np.testing.assert_array_equal(case.flair, _volume(0))  # t2f is FLAIR
    masks = region_masks(case.label, "brats2023")
    assert masks["ET"].sum() == 1
    assert load_convention("brats2021+").name == "brats2023"
    with pytest.raises(FileNotFoundError, match="BraTS20_"):
        discover_cases(data, "brats2020", validate=False)


def test_unknown_convention_lists_known():
    with pytest.raises(ValueError, match="brats2020"):
        load_convention("brats1999")


def test_no_cases_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no case folders"):
        discover_cases(tmp_path)


def test_inspect_cli_json_and_table(quirky_cohort, capsys):
    assert main(["inspect", str(quirky_cohort), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 11
    by_id = {o["case_id"]: o for o in out}
    for obj in out:
        assert set(obj) >= {"case_id", "grade", "usable", "problems"}
        assert isinstance(obj["problems"], list)
        assert obj["usable"] == (not obj["problems"])
    assert by_id["BraTS20_Training_002"]["grade"] == "LGG"
    assert by_id["BraTS20_Training_020"]["grade"] is None
    assert not by_id["BraTS20_Training_015"]["usable"]
    assert main(["inspect", str(quirky_cohort)]) == 0
    table = capsys.readouterr().out
    assert "BraTS20_Training_355" in table and "4 usable" in table


def test_inspect_exit_status_when_nothing_usable(tmp_path, capsys):
    data = tmp_path / "d"
    write_case(data, "BraTS20_Training_001", skip=("flair",))
    assert main(["inspect", str(data), "--json"]) == 1
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


def _huge_header_bytes(shape=(1024, 1024, 1024)) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + b"\1" * 100  # 452 bytes, 4 GiB claimed


def test_a_huge_header_on_a_tiny_file_is_reported_without_allocating(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "d"
    folder = write_case(data, "BraTS20_Training_001", ext=".nii")
    (folder / "BraTS20_Training_001_flair.nii").write_bytes(_huge_header_bytes())
    write_case(data, "BraTS20_Training_002", ext=".nii", seed=3)
    (data / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii").write_bytes(
        _huge_header_bytes()
    )
    script = (
        "import json, resource, sys, nibabel, SimpleITK\n"
        "from GliomaCompareLib.cli import main\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"rc = main(['inspect', {str(data)!r}, '--json'])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps([rc, (after - before) / 1024]), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    rc, grown_mb = json.loads(done.stderr.strip().splitlines()[-1])
    assert rc == 1 and grown_mb < 300, (rc, grown_mb)
    for case in json.loads(done.stdout):
        assert not case["usable"]
        assert any("header claims shape (1024, 1024, 1024)" in p for p in case["problems"])
        assert any("holds only 100 bytes" in p for p in case["problems"])


def test_a_compressed_image_claiming_too_much_is_refused(tmp_path):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_huge_header_bytes()))
    with pytest.raises(ImageReadError, match=r"more than the \d+ bytes allowed"):
        read_header(path)
    with pytest.raises(ImageReadError, match="header claims shape"):
        read_image(path)


def test_a_short_compressed_image_is_refused_before_allocating(tmp_path):
    path = tmp_path / "short.nii.gz"  # 256^3 float32 = 64 MiB claimed, under the ceiling
    path.write_bytes(gzip.compress(_huge_header_bytes((256, 256, 256))))
    for read in (read_header, read_image):
        with pytest.raises(ImageReadError, match=r"header claims shape .* holds only 100 bytes"):
            read(path)
    good = tmp_path / "good.nii.gz"
    _save(good, _volume(1))
    array, meta = read_image(good)
    assert meta.shape == SHAPE and read_header(good).shape == SHAPE
    # a valid file in two gzip members (its trailer holds only the last one's size)
    raw = gzip.decompress(good.read_bytes())
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    np.testing.assert_array_equal(read_image(two)[0], array)


def test_a_looping_case_folder_is_named_not_dropped(tmp_path, capsys):
    """Issue 17: a case folder that is a symbolic link loop (or points nowhere) vanished from
    ``inspect``; now it is a case that is not usable, with the reason."""
    data = tmp_path / "data"
    write_case(data, "BraTS20_Training_001")
    loop = data / "BraTS20_Training_002"
    loop.symlink_to(loop)
    (data / "BraTS20_Training_003").symlink_to(tmp_path / "gone")
    write_mapping(data, [("BraTS20_Training_001", "HGG"), ("BraTS20_Training_002", "LGG")])
    cohort = discover_cases(data)
    assert [c.case_id for c in cohort.cases] == [f"BraTS20_Training_00{i}" for i in (1, 2, 3)]
    assert [c.usable for c in cohort.cases] == [True, False, False]
    assert cohort.get("BraTS20_Training_002").grade == "LGG"
    assert main(["inspect", str(data), "--json"]) == 0
    found = {c["case_id"]: c for c in json.loads(capsys.readouterr().out)}
    assert found["BraTS20_Training_002"]["problems"] == [
        f"{loop}: the case folder is a symbolic link that loops back on itself; left out"
    ]
    assert "symbolic link that points nowhere" in found["BraTS20_Training_003"]["problems"][0]
    # the mapping's row for the looping case is not "a row without a case folder"
    assert not any("BraTS20_Training_002" in w for w in cohort.warnings)


def test_two_copies_of_one_image_are_said(tmp_path, capsys):
    """Issue 17: ``.nii`` beside ``.nii.gz`` of the same image was resolved without a word."""
    data = tmp_path / "data"
    folder = write_case(data, "BraTS20_Training_001")
    _save(folder / "BraTS20_Training_001_flair.nii", _volume(9))
    _save(folder / "BraTS20_Training_001_seg.nii", _label())
    cohort = discover_cases(data)
    case = cohort.get("BraTS20_Training_001")
    assert case.usable and case.modality_paths["flair"].name.endswith("_flair.nii.gz")
    assert case.warnings[:2] == (
        f"{folder}: two copies of one image (BraTS20_Training_001_flair.nii.gz and "
        "BraTS20_Training_001_flair.nii); using BraTS20_Training_001_flair.nii.gz",
        f"{folder}: two copies of one image (BraTS20_Training_001_seg.nii.gz and "
        "BraTS20_Training_001_seg.nii); using BraTS20_Training_001_seg.nii.gz",
    )
    main(["inspect", str(data)])
    assert "two copies of one image (BraTS20_Training_001_flair.nii.gz" in capsys.readouterr().out
