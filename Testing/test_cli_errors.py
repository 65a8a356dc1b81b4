"""Errors a person can read (issue 17): an operating-system error ends a command with one line
naming the path and the reason (exit status 2), a closed pipe ends it quietly, a file name that
is not UTF-8 does not stop ``evaluate``, and the standalone ``vlm`` refuses the label maps that
``inspect`` refuses."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from GliomaCompareLib.cli import main
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.io import read_image, write_nifti
from GliomaCompareLib.metrics import commands as metrics_commands

REPO = Path(__file__).resolve().parents[1]


def label_map(shift: int = 0) -> np.ndarray:
    label = np.zeros((16, 16, 12), np.uint8)
    label[4 + shift : 10 + shift, 5:11, 3:9] = 2
    label[6 + shift : 8 + shift, 7:9, 5:7] = 4
    return label


@pytest.fixture
def flat(tmp_path):
    """A flat reference folder and a prediction folder of one case each."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    write_nifti(ref / "c1_seg.nii.gz", label_map(), np.eye(4))
    write_nifti(pred / "c1.nii.gz", label_map(1), np.eye(4))
    return ref, pred


def evaluate(ref, pred, out) -> int:
    return main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out)])


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gliomacompare {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_an_output_that_is_a_folder_is_one_line(flat, tmp_path, capsys):
    ref, pred = flat
    folder = tmp_path / "results.csv"
    folder.mkdir()
    assert evaluate(ref, pred, folder) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert str(folder) in line


def test_an_output_below_a_file_is_one_line(flat, tmp_path, capsys):
    ref, pred = flat
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "scores.csv"
    assert evaluate(ref, pred, out) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert str(tmp_path / "afile") in line  # the reason's words differ between systems


def test_a_full_disk_is_one_line(flat, tmp_path, capsys, monkeypatch):
    ref, pred = flat
    out = tmp_path / "scores.csv"

    def disk_full(rows, path):  # what the operating system raises when the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(metrics_commands, "write_csv", disk_full)
    assert evaluate(ref, pred, out) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert line.endswith(f"{out}: {os.strerror(errno.ENOSPC)}")


def test_a_read_only_output_is_one_line(flat, tmp_path, capsys):
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("file modes do not stop this user (root, or not POSIX)")
    ref, pred = flat
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert evaluate(ref, pred, locked / "scores.csv") == 2
    finally:
        locked.chmod(0o700)
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert str(locked) in line and os.strerror(errno.EACCES) in line


def test_a_closed_pipe_ends_quietly(synth_cohort):
    """``gliomacompare inspect DATA --json | head -1``: the reader goes away first."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "GliomaCompareLib", "inspect", str(synth_cohort), "--json",
         "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    proc.stdout.close()  # before the command has written anything
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
    assert code == 141  # as a shell reports a pipe closed under a command (128 + SIGPIPE)


def test_a_non_utf8_prediction_name_is_skipped_with_a_warning(flat, tmp_path, capsys):
    ref, pred = flat
    odd = os.path.join(os.fsencode(pred), b"\xff\xfe_c2.nii.gz")
    try:
        with open(odd, "wb") as handle:
            handle.write((pred / "c1.nii.gz").read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "scores.csv"
    assert evaluate(ref, pred, out) == 0  # c1 is scored; the odd file does not stop it
    captured = capsys.readouterr()
    assert "\\xff\\xfe_c2.nii.gz" in captured.err and "not valid UTF-8" in captured.err
    assert "c1" in out.read_text()


def test_vlm_skips_a_case_whose_labels_inspect_rejects(synth_cohort, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_cohort, data)
    record = discover_cases(data, validate=False).cases[0]
    label, meta = read_image(record.label_path)
    label = np.asarray(label).copy()
    label[label == 1] = 3  # a label BraTS 2020 does not use: inspect calls the case unusable
    write_nifti(record.label_path, label, meta.affine)
    assert not discover_cases(data).get(record.case_id).usable  # what inspect says
    out = tmp_path / "vlm"
    argv = [
        "vlm", "--data", str(data), "--backend", "tiny", "--tasks", "grade",
        "--slices-per-case", "1", "--max-new-tokens", "4", "--bootstrap", "0", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"skipped {record.case_id}" in printed and "label" in printed
    asked = (out / "answers.jsonl").read_text()
    assert record.case_id not in asked
    assert discover_cases(data).cases[1].case_id in asked


def test_a_name_that_cannot_be_printed_is_named_escaped(synth_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_cohort, data)
    case = next(p for p in sorted(data.iterdir()) if p.is_dir())
    odd = os.path.join(os.fsencode(data), os.fsencode(case.name) + b"\xff")
    try:
        os.rename(case, odd)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "GliomaCompareLib", "inspect", str(data), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    errors = [x for x in done.stderr.splitlines() if not x.startswith("warning: ")]
    line = one_error_line("\n".join(errors), "inspect")
    assert f"{case.name}\\udcff" in line and "rename the file or folder" in line
