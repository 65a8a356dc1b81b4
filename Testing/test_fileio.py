"""``GliomaCompareLib.fileio``: the one CSV writer and the atomic writers."""

from __future__ import annotations

import csv
import math
import os
import stat

import numpy as np
import pytest

from GliomaCompareLib import fileio
from GliomaCompareLib.runlayout import TABLES, write_table

# every kind of value a metrics row holds, with the awkward ones (NaN, inf, numpy scalars,
# commas and quotes in text, a missing column)
VALUES = [
    {"method": "cnn", "model": "a, b", "task": 'say "x"', "status": "ok", "count": 3,
     "fraction": 0.123456789},
    {"method": "vlm_base", "model": None, "task": "box", "status": "invalid", "count": True,
     "fraction": math.nan},
    {"method": "vlm_finetuned", "model": "m", "task": "point", "status": "empty",
     "count": np.int64(7), "fraction": np.float64(1 / 3)},
    {"method": "majority", "model": "m", "task": "grade", "status": "refused", "count": 0,
     "fraction": math.inf},
    {"method": "x", "model": "m", "task": "polygon", "status": "error", "count": np.bool_(False),
     "fraction": np.float32(0.1)},
    {"method": "y", "task": "grade", "count": -1, "fraction": 1e-12},
    {"method": "z", "model": "", "task": "grade", "status": "ok", "count": 12345678,
     "fraction": 123456789.0},
]  # fmt: skip


def test_write_csv_matches_the_run_tables_byte_for_byte(tmp_path):
    ours = fileio.write_csv(tmp_path / "ours.csv", TABLES["answer_status"], VALUES)
    theirs = write_table(tmp_path / "theirs.csv", "answer_status", VALUES)
    assert ours.read_bytes() == theirs.read_bytes()
    lines = ours.read_bytes().split(b"\n")
    assert lines[0] == b"method,model,task,status,count,fraction"
    assert lines[1] == b'cnn,"a, b","say ""x""",ok,3,0.123457'
    assert lines[2] == b"vlm_base,,box,invalid,1,"  # None and NaN are empty, True is 1
    assert lines[4].endswith(b",inf")
    assert b"\r" not in ours.read_bytes()


def test_format_cell():
    assert fileio.format_cell(None) == ""
    assert fileio.format_cell(math.nan) == ""
    assert fileio.format_cell(2 / 3) == "0.666667"
    assert fileio.format_cell(2 / 3, digits=10) == "0.6666666667"
    assert fileio.format_cell(-math.inf) == "-inf"
    assert fileio.format_cell(True) == "1" and fileio.format_cell(False) == "0"
    assert fileio.format_cell(5) == "5"
    assert fileio.format_cell("text") == "text"


def test_write_csv_refuses_unknown_columns_unless_asked(tmp_path):
    path = tmp_path / "t.csv"
    with pytest.raises(KeyError, match="unknown columns \\['extra'\\]"):
        fileio.write_csv(path, ["a"], [{"a": 1, "extra": 2}])
    assert not path.exists()
    fileio.write_csv(path, ["a", "b"], [{"a": 1, "extra": 2}], ignore_extra=True)
    with path.open(newline="") as handle:
        assert list(csv.reader(handle)) == [["a", "b"], ["1", ""]]


def test_write_csv_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "t.csv"
    fileio.write_csv(path, ["a"], [{"a": 1.5}])

    class Boom(Exception):
        pass

    class Unprintable:
        def __str__(self):
            raise Boom

    with pytest.raises(Boom):  # fails half-way through writing the rows
        fileio.write_csv(path, ["a"], [{"a": 2.5}, {"a": Unprintable()}])
    assert path.read_text() == "a\n1.5\n"
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]


def test_atomic_path_keeps_the_suffix_and_cleans_up(tmp_path):
    path = tmp_path / "deep" / "image.nii.gz"
    with fileio.atomic_path(path, suffix=".nii.gz") as tmp:
        assert tmp.parent == path.parent and tmp.name.endswith(".tmp.nii.gz")
        assert not tmp.exists()
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    with pytest.raises(RuntimeError), fileio.atomic_path(path, suffix=".nii.gz") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["image.nii.gz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    written = [
        fileio.atomic_write_text(tmp_path / "a.txt", "x"),
        fileio.atomic_write_bytes(tmp_path / "b.bin", b"x"),
        fileio.atomic_write_json(tmp_path / "c.json", {"a": 1}),
        fileio.write_csv(tmp_path / "d.csv", ["a"], [{"a": 1}]),
    ]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name


def test_text_cells_that_a_spreadsheet_would_run_are_written_inert(tmp_path):
    """CSV injection (issue 17): a model's raw answer or a user-given name starting with = + - @
    opens as text (leading '); numbers, negative ones included, stay numbers."""
    rows = [
        {"a": '=HYPERLINK("http://x","y")', "b": -0.12},
        {"a": "+1+cmd|' /C calc'!A0", "b": "-0.12"},
        {"a": "-2+3", "b": -math.inf},
        {"a": "@SUM(A1)", "b": np.float64(-1e-7)},
        {"a": "plain = text", "b": -3},
        {"a": "-", "b": "+5"},
    ]
    path = fileio.write_csv(tmp_path / "t.csv", ["a", "b"], rows)
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["a"] for r in read] == [
        '\'=HYPERLINK("http://x","y")',
        "'+1+cmd|' /C calc'!A0",
        "'-2+3",
        "'@SUM(A1)",
        "plain = text",
        "'-",
    ]
    assert [r["b"] for r in read] == ["-0.12", "-0.12", "-inf", "-1e-07", "-3", "+5"]
    assert fileio.inert_text("-0.5") == "-0.5" and fileio.inert_text("=1") == "'=1"
