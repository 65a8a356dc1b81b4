"""``gliomacompare train-cnn`` / ``predict-cnn`` end to end, and DDP with 2 CPU processes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from GliomaCompareLib.cli import main

CONFIG = """\
cnn:
  seg:
    network: {name: SegResNet, init_filters: 8, blocks_down: [1, 1, 1], blocks_up: [1, 1]}
    patch_size: [24, 24, 16]
    roi_size: [48, 48, 32]
    overlap: 0.25
    train: {epochs: 1, learning_rate: 0.003}
  cls:
    network: {name: resnet10, conv1_t_stride: 2, widen_factor: 0.25}
    input_size: [24, 24, 16]
    train: {epochs: 1, batch_size: 2}
"""


@pytest.fixture(scope="module")
def data_dir(synth_cohort_factory):
    """Read-only (shared): tests copy it before changing anything."""
    return synth_cohort_factory(cases=6, seed=5, shape=(40, 40, 28), hgg_fraction=0.5)


@pytest.mark.slow
def test_train_then_predict_from_the_command_line(data_dir, tmp_path, capsys):
    config = tmp_path / "cnn.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "cnn"
    rc = main(
        [
            "train-cnn",
            "--data",
            str(data_dir),
            "--task",
            "both",
            "--out",
            str(out),
            "--config",
            str(config),
            "--split-fractions",
            "0.34,0.33,0.33",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "seg: seg-SegResNet-" in printed and "cls: cls-resnet10-" in printed
    splits = json.loads((out / "splits.json").read_text())
    assert (out / "seg" / "model.safetensors").is_file() and (out / "cls" / "model.json").is_file()
    assert json.loads((out / "seg" / "model.json").read_text())["split_hash"] == splits["hash"]

    # the split is written once and re-used; training again without --resume is refused
    before = (out / "splits.json").read_text()
    rc = main(
        [
            "train-cnn",
            "--data",
            str(data_dir),
            "--task",
            "seg",
            "--out",
            str(out),
            "--config",
            str(config),
            "--quiet",
        ]
    )
    assert rc == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "splits.json").read_text() == before

    # break one test case: it is reported and skipped, the others are predicted
    data_copy = tmp_path / "data"
    shutil.copytree(data_dir, data_copy)
    bad = splits["test"][0]
    (data_copy / bad / f"{bad}_t1.nii.gz").write_bytes(b"truncated")
    pred = tmp_path / "pred"
    rc = main(
        [
            "predict-cnn",
            "--data",
            str(data_copy),
            "--model",
            str(out),
            "--out",
            str(pred),
            "--split",
            str(out / "splits.json"),
            "--subset",
            "test",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1  # one case failed
    assert f"failed {bad}" in captured.err
    good = [c for c in splits["test"] if c != bad]
    with open(pred / "grades.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in rows] == good
    cls_id = json.loads((out / "cls" / "model.json").read_text())["model_id"]
    assert all(r["model_id"] == cls_id for r in rows)
    for case_id in good:
        label = nib.load(str(pred / f"{case_id}.nii.gz"))
        flair = nib.load(str(data_dir / case_id / f"{case_id}_flair.nii.gz"))
        np.testing.assert_allclose(label.affine, flair.affine)
        assert label.shape == flair.shape
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 4}
    assert not any(p.name.startswith(splits["train"][0]) for p in pred.iterdir())


def test_command_line_errors_are_one_line(data_dir, tmp_path, capsys):
    rc = main(
        [
            "predict-cnn",
            "--data",
            str(data_dir),
            "--model",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert rc == 2
    assert "model folder or weights file not found" in capsys.readouterr().err
    rc = main(
        [
            "predict-cnn",
            "--data",
            str(data_dir),
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert rc == 2
    assert "holds no model" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        rc = main(
            [
                "train-cnn",
                "--data",
                str(data_dir),
                "--task",
                "seg",
                "--out",
                str(tmp_path / "o"),
                "--device",
                "cuda",
            ]
        )
        assert rc == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_bare_bundle_weights_predict_without_training(data_dir, tmp_path):
    """predict-cnn --model model.pt: the bundle's state dict into the configured SegResNet."""
    import torch

    from GliomaCompareLib.cnn.config import load_cnn_config
    from GliomaCompareLib.cnn.networks import build_network

    config = tmp_path / "cnn.yaml"
    config.write_text(CONFIG)
    seg = load_cnn_config(config).seg
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    torch.save(build_network(seg.network, 4, 3, "seg").state_dict(), weights)
    pred = tmp_path / "pred"
    case = sorted(p.name for p in data_dir.iterdir() if p.is_dir())[0]
    rc = main(
        [
            "predict-cnn",
            "--data",
            str(data_dir),
            "--model",
            str(weights),
            "--config",
            str(config),
            "--out",
            str(pred),
            "--case",
            case,
            "--save-probabilities",
            "--quiet",
        ]
    )
    assert rc == 0
    assert (pred / f"{case}.nii.gz").is_file() and (
        pred / "probabilities" / f"{case}.nii.gz"
    ).is_file()
    assert not (pred / "grades.csv").exists()
    assert json.loads((pred / "predictions.json").read_text())["seg_model_id"].startswith(
        "seg-SegResNet-"
    )


@pytest.mark.slow
def test_ddp_training_with_two_cpu_processes(data_dir, tmp_path):
    """The same command under torchrun (gloo backend, 2 processes) trains one model."""
    config = tmp_path / "cnn.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "GliomaCompareLib.cli",
        "train-cnn",
        "--data",
        str(data_dir),
        "--task",
        "seg",
        "--out",
        str(out),
        "--config",
        str(config),
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--split-fractions",
        "0.34,0.33,0.33",
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("seg: seg-SegResNet-") == 1  # only rank 0 reports
    info = json.loads((out / "seg" / "model.json").read_text())
    assert info["split_hash"] == json.loads((out / "splits.json").read_text())["hash"]
    with open(out / "seg" / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # every validation case was scored once across the two ranks
    assert len(info["metrics"]["val_cases"]) == 2


#: Every option train-cnn had before its training options were generated from TrainSettings.
TRAIN_OPTIONS = [
    "--data", "--task", "--out", "--splits", "--split-fractions", "--split-seed", "--config",
    "--epochs", "--device", "--weights", "--resume", "--overwrite", "--convention", "--quiet",
]  # fmt: skip
TRAIN = ["train-cnn", "--data", "d", "--task", "seg", "--out", "o"]


def _train_parser():
    import argparse

    from GliomaCompareLib.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices["train-cnn"]


def test_every_former_train_option_still_parses_to_the_same_setting(tmp_path):
    from dataclasses import fields, replace

    from GliomaCompareLib.cnn.commands import _read_config, train_settings_given
    from GliomaCompareLib.cnn.config import TrainSettings

    parser, train_cnn = _train_parser()
    assert [o for o in TRAIN_OPTIONS if o not in train_cnn._option_string_actions] == []
    # every TrainSettings field is an option (a new field becomes one with no other change)
    dests = {a.dest for a in train_cnn._actions}
    assert {f.name for f in fields(TrainSettings)} <= dests
    # not given: the config's train: values stay; --epochs overrides only the epochs
    assert train_settings_given(parser.parse_args(TRAIN)) == {}
    args = parser.parse_args([*TRAIN, "--epochs", "0", "--split-seed", "3", "--resume"])
    assert train_settings_given(args) == {"epochs": 0}
    assert args.split_seed == 3 and args.resume and args.split_fractions == (0.6, 0.2, 0.2)
    config = tmp_path / "cnn.yaml"
    config.write_text(CONFIG)
    seg = _read_config(str(config))[0].seg
    assert replace(seg.train, **train_settings_given(args)) == replace(seg.train, epochs=0)
    assert seg.train.learning_rate == 0.003  # from the config, untouched by the options
    # the generated options, each to its field
    argv = [*TRAIN, "--lr", "1e-3", "--batch-size", "2", "--no-amp", "--deterministic"]
    argv += ["--cache", "none", "--scheduler", "constant", "--seed", "4", "--num-workers", "1"]
    argv += ["--weight-decay", "0"]
    assert train_settings_given(parser.parse_args(argv)) == {
        "learning_rate": 1e-3, "batch_size": 2, "amp": False, "deterministic": True,
        "cache": "none", "scheduler": "constant", "seed": 4, "num_workers": 1,
        "weight_decay": 0.0,
    }  # fmt: skip
    assert train_settings_given(parser.parse_args([*TRAIN, "--learning-rate", "2e-4"])) == {
        "learning_rate": 2e-4
    }


@pytest.mark.parametrize("bad", [["--epochs", "-1"], ["--batch-size", "0"], ["--cache", "x"]])
def test_bad_train_values_are_usage_errors(bad, capsys):
    parser, _ = _train_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*TRAIN, *bad])
    assert exc.value.code == 2
    assert bad[0] in capsys.readouterr().err
