"""The ``vlm`` and ``finetune-vlm`` options are generated from the config dataclasses.

Each setting is declared once (a dataclass field with its default and help text); these tests
check that every option name of before the change still works with the same meaning, that the
defaults come from the dataclasses, that a config converts itself back to options, and that a
new field is a new option with no other change.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from GliomaCompareLib.argtypes import (
    add_dataclass_arguments,
    dataclass_from_args,
    given,
    to_cli_args,
)
from GliomaCompareLib.cli import build_parser, main
from GliomaCompareLib.data.slices import SliceRule, WindowSpec
from GliomaCompareLib.pipeline.config import finetune_config_from_dict, vlm_config_from_dict
from GliomaCompareLib.vlm import finetune_commands
from GliomaCompareLib.vlm.backends import BackendSettings
from GliomaCompareLib.vlm.finetune import FinetuneConfig
from GliomaCompareLib.vlm.inference import VLMConfig, run_vlm
from GliomaCompareLib.vlm.types import DecodingConfig

FINETUNE = ["finetune-vlm", "--data", "d", "--task", "box", "--base", "tiny", "--out", "o"]
VLM = ["vlm", "--data", "d", "--backend", "tiny", "--out", "o"]

#: Every option the two commands had before their options were generated.
FINETUNE_OPTIONS = [
    "--data",
    "--task",
    "--base",
    "--out",
    "--splits",
    "--split-fractions",
    "--split-seed",
    "--resume",
    "--rank",
    "--alpha",
    "--dropout",
    "--target-modules",
    "--target-scope",
    "--extra-target-modules",
    "--4bit",
    "--load-in-4bit",
    "--gradient-checkpointing",
    "--epochs",
    "--lr",
    "--batch-size",
    "--grad-accum",
    "--weight-decay",
    "--warmup-ratio",
    "--scheduler",
    "--max-grad-norm",
    "--seed",
    "--balance-grades",
    "--checkpoint-every",
    "--device",
    "--tiny-seed",
    "--jobs",
    "--eval-every",
    "--patience",
    "--monitor",
    "--min-delta",
    "--max-val-slices",
    "--eval-batch-size",
    "--slices-per-case",
    "--min-area-mm2",
    "--coords",
    "--max-vertices",
    "--point-target",
    "--prompts",
]
VLM_OPTIONS = [
    "--data",
    "--backend",
    "--model",
    "--base-url",
    "--allow-remote",
    "--adapter",
    "--tasks",
    "--runs",
    "--temperature",
    "--top-p",
    "--max-new-tokens",
    "--seed",
    "--batch-size",
    "--slices-per-case",
    "--min-area-mm2",
    "--split",
    "--split-name",
    "--coords",
    "--max-vertices",
    "--tie-rule",
    "--point-radius-mm",
    "--no-grade-probabilities",
    "--prompts",
    "--cache",
    "--no-masks",
    "--device",
    "--load-in-4bit",
    "--timeout",
    "--retries",
    "--bootstrap",
    "--out",
]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize(
    ("command", "options"), [("finetune-vlm", FINETUNE_OPTIONS), ("vlm", VLM_OPTIONS)]
)
def test_every_former_option_is_still_there(command, options):
    known = _subparser(command)._option_string_actions
    assert [o for o in options if o not in known] == []


def test_finetune_defaults_come_from_the_dataclass():
    args = build_parser().parse_args(FINETUNE)
    assert dataclass_from_args(FinetuneConfig, args) == FinetuneConfig()
    assert "(default 16)" in _subparser("finetune-vlm").format_help()


def test_finetune_options_keep_their_meaning():
    argv = [*FINETUNE, "--patience", "0", "--max-grad-norm", "0", "--target-scope", "any"]
    argv += ["--target-modules", "q_proj, v_proj", "--extra-target-modules", "lm_head", "--4bit"]
    argv += ["--balance-grades", "--coords", "per_mille", "--min-area-mm2", "50", "--lr", "3e-3"]
    argv += ["--prompts", "p", "--slices-per-case", "2"]
    config = dataclass_from_args(FinetuneConfig, build_parser().parse_args(argv))
    assert config.patience is None and config.max_grad_norm is None
    assert config.target_scope is None
    assert config.target_modules == ("q_proj", "v_proj")
    assert config.extra_target_modules == ("lm_head",)
    assert config.load_in_4bit and config.balance_grades == "oversample"
    assert config.coordinate_system == "per_mille" and config.prompts_dir == "p"
    assert config.slice_rule == SliceRule(min_area_mm2=50.0)
    assert config.lr == 3e-3 and config.slices_per_case == 2
    weighted = build_parser().parse_args([*FINETUNE, "--balance-grades", "weighted"])
    assert dataclass_from_args(FinetuneConfig, weighted).balance_grades == "weighted"


@pytest.mark.parametrize("bad", [["--patience", "-1"], ["--rank", "0"], ["--coords", "mm"]])
def test_finetune_bad_values_are_usage_errors(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*FINETUNE, *bad])
    assert exc.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_vlm_options_keep_their_meaning():
    argv = [*VLM, "--temperature", "0.7", "--seed", "3", "--tasks", "box,grade", "--no-masks"]
    argv += ["--split", "s.json", "--split-name", "val", "--timeout", "5", "--retries", "0"]
    argv += ["--no-grade-probabilities", "--bootstrap", "10", "--cache", "c"]
    args = build_parser().parse_args(argv)
    config = dataclass_from_args(VLMConfig, args)
    assert config.decoding == DecodingConfig.from_temperature(0.7, seed=3)
    assert config.tasks == ("grade", "box") and config.split == "val"
    assert not config.save_masks and not config.grade_probabilities
    assert config.n_bootstrap == 10 and config.cache_dir == "c"
    assert args.splits_file == "s.json"
    settings = dataclass_from_args(BackendSettings, args)
    assert settings == BackendSettings("tiny", timeout_s=5.0, max_retries=0)
    bare = build_parser().parse_args(VLM)
    assert dataclass_from_args(VLMConfig, bare) == VLMConfig()
    assert not given(bare, "tasks") and given(args, "tasks")


def test_unknown_task_names_the_tasks(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*VLM, "--tasks", "grade,size"])
    assert "Unknown task(s) size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config",
    [
        FinetuneConfig(
            patience=None,
            max_grad_norm=None,
            target_scope=None,
            extra_target_modules=("lm_head",),
            slice_rule=SliceRule(min_area_mm2=50.0),
            load_in_4bit=True,
            coordinate_system="normalized",
            balance_grades="weighted",
            lr=3e-3,
            max_new_tokens=40,
        ),
        FinetuneConfig(),
    ],
)
def test_finetune_config_converts_itself_to_options(config):
    argv = config.to_cli_args()
    assert (
        dataclass_from_args(FinetuneConfig, build_parser().parse_args([*FINETUNE, *argv])) == config
    )


def test_vlm_config_converts_itself_to_options():
    config = VLMConfig(
        tasks=("point",),
        runs=3,
        decoding=DecodingConfig.from_temperature(0.5, max_new_tokens=32, seed=2),
        save_masks=False,
        coordinate_system="per_mille",
        slice_rule=SliceRule(min_area_mm2=20.0),
    )
    argv = config.to_cli_args()
    assert "--no-masks" in argv and "--tasks" in argv
    assert dataclass_from_args(VLMConfig, build_parser().parse_args([*VLM, *argv])) == config


def test_a_setting_without_an_option_is_refused_by_to_cli_args():
    with pytest.raises(ValueError, match="window"):
        to_cli_args(FinetuneConfig(window=WindowSpec(lower=1.0)))


@dataclass(frozen=True)
class _Extended(FinetuneConfig):
    """FinetuneConfig with one more setting, declared the one way a setting is declared."""

    label_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing of the answer tokens", "group": "training"}
    )


def test_a_new_config_field_is_a_new_finetune_option(monkeypatch):
    # finetune-vlm builds its options from whatever FinetuneConfig is: swap in the extended one
    monkeypatch.setattr(finetune_commands, "FinetuneConfig", _Extended)
    parser = argparse.ArgumentParser(prog="gliomacompare")
    finetune_commands.register(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["finetune-vlm"].format_help()
    assert "--label-smoothing" in text and "label smoothing of the answer tokens" in text
    args = parser.parse_args([*FINETUNE, "--label-smoothing", "0.1", "--epochs", "2"])
    config = dataclass_from_args(_Extended, args)
    assert config.label_smoothing == 0.1 and config.epochs == 2
    assert dataclass_from_args(_Extended, parser.parse_args(FINETUNE)).label_smoothing == 0.0
    assert to_cli_args(config) == ["--epochs", "2", "--label-smoothing", "0.1"]


def test_options_that_store_into_the_same_place_are_refused():
    parser = argparse.ArgumentParser()
    parser.add_argument("--split-name", dest="split")
    with pytest.raises(ValueError, match="split"):
        add_dataclass_arguments(parser, VLMConfig)


# --------------------------------------------------------------- slices chosen by the user
def test_slices_option_reads_cases_and_indices_and_converts_back():
    args = build_parser().parse_args([*VLM, "--slices", "P1:9,3,3", "BraTS20_Training_002:0"])
    config = dataclass_from_args(VLMConfig, args)
    assert config.slices == (("P1", (3, 9)), ("BraTS20_Training_002", (0,)))
    assert config.rule == SliceRule(mode="given") and config.rule.describe().startswith(
        "label-free: slices chosen by the user"
    )
    assert config.to_dict()["slices"] == {"P1": [3, 9], "BraTS20_Training_002": [0]}
    argv = config.to_cli_args()
    assert argv == ["--slices", "P1:3,9", "BraTS20_Training_002:0"]
    assert dataclass_from_args(VLMConfig, build_parser().parse_args([*VLM, *argv])) == config
    # a run by rule: no 'slices' in vlm.json, as before
    assert "slices" not in VLMConfig().to_dict() and VLMConfig().rule == SliceRule()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--slices", "P1"], "expected CASE:K"),
        (["--slices", "P1:4,x"], "slice index 'x' of P1 is not a whole number"),
        (["--slices", "P1:"], "no slice index after P1:"),
    ],
)
def test_bad_slices_are_usage_errors(bad, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*VLM, *bad])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slice-rule", "cnn"], "leave out --slice-rule cnn"),
        (["--slices-per-case", "1"], "leave out --slices-per-case"),
        (["--slices", "P1:1", "P1:2"], "P1 is listed twice"),
    ],
)
def test_slices_do_not_mix_with_a_rule(extra, message, tmp_path, capsys):
    argv = [*VLM[:-1], str(tmp_path / "out"), "--slices", "P1:3", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_given_rule_without_slices_is_refused():
    with pytest.raises(ValueError, match="name them with --slices CASE:K"):
        VLMConfig(slice_rule=SliceRule(mode="given"))
    # a mapping is taken too (numpy indices included); anything but whole numbers >= 0 is not
    assert VLMConfig(slices={"P": [np.int64(2)]}).slices == (("P", (2,)),)
    for bad in (["2"], [1.5], [-1], [True]):
        with pytest.raises(ValueError, match="of P is not a whole number >= 0"):
            VLMConfig(slices={"P": bad})
    with pytest.raises(ValueError, match="no slice index for P"):
        VLMConfig(slices={"P": []})


def _unlabelled(factory, dest: Path) -> Path:
    """A 3-case synthetic cohort without its label maps (a clinician's own patients)."""
    data = factory(cases=3, shape=(32, 32, 20))
    shutil.copytree(data, dest)
    for label in dest.glob("*/*_seg.nii*"):
        label.unlink()
    return dest


TINY = ["--backend", "tiny", "--max-new-tokens", "8", "--bootstrap", "0", "-q"]


def test_given_slices_of_an_unlabelled_case_are_asked_and_say_so(
    synth_cohort_factory, tmp_path, capsys, caplog
):
    data = _unlabelled(synth_cohort_factory, tmp_path / "data")
    out = tmp_path / "out"
    argv = ["vlm", "--data", str(data), "--tasks", "grade,point", *TINY, "--out", str(out)]
    argv += ["--slices", "BraTS20_Training_002:11,4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "slices chosen by the user (slice rule 'given'): BraTS20_Training_002 4,11" in printed
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    asked = sorted({(a["case_id"], a["slice_index"]) for a in answers})
    assert asked == [("BraTS20_Training_002", 4), ("BraTS20_Training_002", 11)]
    assert len(answers) == 2 * 2 and {a["slice_rule"] for a in answers} == {"given"}
    for a in answers:  # a point answer is placed on the slice it was asked about
        if a["voxel"] is not None:
            assert {round(v[2], 6) for v in a["voxel"]} == {a["slice_index"]}
    manifest = json.loads((out / "vlm.json").read_text())
    assert manifest["cases"] == ["BraTS20_Training_002"] and manifest["case_errors"] == {}
    assert manifest["config"]["slice_rule"]["mode"] == "given"
    assert manifest["config"]["slices"] == {"BraTS20_Training_002": [4, 11]}
    # the cases not listed are not asked, and the log says so
    assert "--slices lists 1 of the 3 cases" in caplog.text
    assert "BraTS20_Training_001, BraTS20_Training_003" in caplog.text


@pytest.mark.parametrize(
    ("slices", "message"),
    [
        ("BraTS20_Training_001:3,20", "BraTS20_Training_001: slice 20 is not an axial slice of "
         "the case (0..19)"),
        ("BraTS20_Training_009:3", "--slices: BraTS20_Training_009 not in the data folder"),
    ],
)  # fmt: skip
def test_a_slice_or_case_the_data_lacks_ends_the_command(
    synth_cohort_factory, tmp_path, capsys, slices, message
):
    data = _unlabelled(synth_cohort_factory, tmp_path / "data")
    out = tmp_path / "out"
    argv = ["vlm", "--data", str(data), "--tasks", "grade", *TINY, "--out", str(out)]
    assert main([*argv, "--slices", slices]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing was asked


def test_slices_name_the_cases_so_splits_are_refused(synth_cohort_factory, tmp_path):
    data = _unlabelled(synth_cohort_factory, tmp_path / "data")
    config = VLMConfig(tasks=("grade",), slices={"BraTS20_Training_001": [2]})
    with pytest.raises(ValueError, match="leave out --splits"):
        run_vlm(data, None, config, tmp_path / "out", case_ids=["BraTS20_Training_001"])


# ------------------------------------------------- a run over a cohort has no user's slices
@pytest.mark.parametrize(
    "section",
    [
        {"vlm": {"slice_rule": {"mode": "given"}}},
        {"vlm": {"slices": {"BraTS20_Training_001": [40]}}},
        {"finetune": {"slice_rule": {"mode": "given"}}},
    ],
)
def test_run_config_refuses_the_users_slices(section):
    with pytest.raises(ValueError, match=r"slices chosen by the user .* not for a run over a"):
        if "vlm" in section:
            vlm_config_from_dict(section["vlm"])
        else:
            finetune_config_from_dict(section["finetune"], VLMConfig())
