"""One command-line vocabulary (issue 17): the same name for the same concept in every command,
old spellings accepted as hidden deprecated aliases, ``--device`` / ``--quiet`` / ``-v``
everywhere they apply. The tests walk the real parser of every sub-command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from GliomaCompareLib import argtypes, cli
from GliomaCompareLib.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]

#: Every sub-command (the DESIGN.md contract), so a command that fails to register fails here.
COMMANDS = (
    "synth", "inspect", "evaluate", "train-cnn", "predict-cnn", "vlm", "finetune-vlm",
    "report", "run", "demo",
)  # fmt: skip

#: One concept, one name: the spellings that must not show in any command's help, and the
#: name that replaced them.
RETIRED = {
    "--split": "--splits",
    "--split-name": "--subset",
    "--redo": "--overwrite",
    "--task": "--tasks",
    "--base": "--model",
}

#: (command, old spelling, new spelling, a value or None for a flag): each still works.
ALIASES = (
    ("predict-cnn", "--split", "--splits", "s.json"),
    ("predict-cnn", "--redo", "--overwrite", None),
    ("train-cnn", "--task", "--tasks", "seg"),
    ("finetune-vlm", "--task", "--tasks", "grade"),
    ("finetune-vlm", "--base", "--model", "tiny"),
    ("vlm", "--split", "--splits", "s.json"),
    ("vlm", "--split-name", "--subset", "val"),
)

#: Commands that run a model, so take a compute device.
DEVICE_COMMANDS = ("train-cnn", "predict-cnn", "vlm", "finetune-vlm", "run", "demo")

#: The least each command needs besides the option under test.
REQUIRED = {
    "synth": ["OUT"],
    "inspect": ["DATA"],
    "evaluate": ["--pred", "P", "--ref", "R", "--out", "o.csv"],
    "train-cnn": ["--data", "D", "--tasks", "seg", "--out", "O"],
    "predict-cnn": ["--data", "D", "--model", "M", "--out", "O"],
    "vlm": ["--data", "D", "--backend", "tiny", "--out", "O"],
    "finetune-vlm": ["--data", "D", "--tasks", "grade", "--model", "tiny", "--out", "O"],
    "report": ["RUN"],
    "run": ["demo", "--out", "O"],
    "demo": [],
}


@pytest.fixture(scope="module")
def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def shown_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings a person sees in ``--help`` (usage line and option list)."""
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", parser.format_help()))


def parse(command: str, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *REQUIRED[command], *extra])


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_shows_a_retired_spelling(commands, command):
    shown = shown_options(commands[command])
    assert not shown & set(RETIRED), (command, sorted(shown & set(RETIRED)))


@pytest.mark.parametrize("command", COMMANDS)
def test_quiet_and_verbose_in_every_command(commands, command):
    strings = commands[command]._option_string_actions
    for option in ("-q", "--quiet", "-v", "--verbose"):
        assert option in strings, (command, option)
    assert parse(command, "-q").quiet is True
    args = parse(command, "-v", "-v")
    assert args.command_verbose == 2  # -v after the command
    assert build_parser().parse_args(["-v", command, *REQUIRED[command]]).verbose == 1


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_the_same_device_option_where_a_model_runs(commands, command, capsys):
    action = commands[command]._option_string_actions["--device"]
    assert action.type is argtypes.device and action.choices is None
    assert argtypes.DEVICE_HELP in (action.help or "")
    for name in ("cpu", "cuda", "cuda:1", "auto", "CUDA:0"):
        assert parse(command, "--device", name).device == name.lower()
    for bad in ("gpu", "cuda:", "cuda:x", "mps0"):
        with pytest.raises(SystemExit) as exc:
            parse(command, "--device", bad)
        assert exc.value.code == 2
    assert "use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_device_only_where_a_model_runs(commands):
    with_device = {name for name, p in commands.items() if "--device" in p._option_string_actions}
    assert with_device == set(DEVICE_COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_data_and_out_have_the_short_forms(commands, command):
    strings = commands[command]._option_string_actions
    if "--data" in strings:
        assert strings["-i"] is strings["--data"], command
    if "--out" in strings:
        assert strings["-o"] is strings["--out"], command


def test_same_concept_same_name_across_commands(commands):
    """Where two commands have the concept, they spell it the same."""
    have = {name: shown_options(p) for name, p in commands.items()}
    for option, users in (
        ("--splits", ("train-cnn", "predict-cnn", "vlm", "finetune-vlm")),
        ("--subset", ("predict-cnn", "vlm")),
        ("--tasks", ("train-cnn", "vlm", "finetune-vlm")),
        ("--model", ("predict-cnn", "vlm", "finetune-vlm")),
        ("--overwrite", ("synth", "train-cnn", "predict-cnn")),
        ("--data", ("train-cnn", "predict-cnn", "vlm", "finetune-vlm")),
        ("--force", ("run", "demo")),
        ("--jobs", ("synth", "inspect", "evaluate", "vlm", "finetune-vlm")),
    ):
        missing = [name for name in users if option not in have[name]]
        assert not missing, (option, missing)
    # --subset offers the same parts of a split in both commands
    subsets = {
        tuple(commands[name]._option_string_actions["--subset"].choices)
        for name in ("predict-cnn", "vlm")
    }
    assert subsets == {("train", "val", "test", "all")}


@pytest.mark.parametrize(("command", "old", "new", "value"), ALIASES)
def test_old_spellings_still_work_and_warn(commands, command, old, new, value, capsys):
    value_args = [] if value is None else [value]
    argv = [command, *REQUIRED[command]]
    if new in argv:  # the required option given under its old name instead
        i = argv.index(new)
        del argv[i : i + 2]
    old_args = build_parser().parse_args([*argv, old, *value_args])
    assert f"{old} is deprecated" in capsys.readouterr().err
    new_args = build_parser().parse_args([*argv, new, *value_args])
    assert capsys.readouterr().err == ""
    assert vars(old_args) == vars(new_args)
    # hidden: neither in the usage line nor in the option list
    usage = commands[command].format_usage()
    assert old not in shown_options(commands[command]) and f"{old} " not in usage


def test_train_cnn_tasks_take_both_spellings():
    assert parse("train-cnn").tasks == ("seg",)
    args = build_parser().parse_args(["train-cnn", "--data", "D", "--out", "O", "--tasks", "both"])
    assert args.tasks == ("seg", "cls")
    args = build_parser().parse_args(["train-cnn", "-i", "D", "-o", "O", "--tasks", "cls,seg"])
    assert args.tasks == ("seg", "cls") and args.data == "D" and args.out == "O"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-cnn", "-i", "D", "-o", "O", "--tasks", "grade"])


def test_the_vocabulary_table_names_every_option():
    doc = cli.__doc__
    for option in ("--splits", "--subset", "--tasks", "--model", "--overwrite", "--force STAGE",
                   "--device", "-q/--quiet", "-v/--verbose", "-i/--data", "-o/--out"):  # fmt: skip
        assert option in doc, option
    for old in RETIRED:
        assert old in doc, old  # the table says what each old spelling became


def test_bare_command_prints_the_command_list(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\b", out, re.M), command


def test_demo_writes_where_make_demo_says():
    makefile = (REPO / "Makefile").read_text()
    made = re.search(r"gliomacompare demo --out (\S+)", makefile).group(1)
    assert build_parser().parse_args(["demo"]).out == made


def test_alias_helper_refuses_what_it_cannot_do():
    parser = argtypes.CommandParser(prog="x")
    parser.add_argument("--new")
    parser.add_argument("--other")
    with pytest.raises(ValueError, match="no option --missing"):
        argtypes.add_alias(parser, "--old", "--missing")
    with pytest.raises(ValueError, match="already an option"):
        argtypes.add_alias(parser, "--other", "--new")


def test_synth_can_overwrite_its_own_cohort_only(tmp_path, capsys):
    import json

    out = tmp_path / "synth"
    small = ["synth", str(out), "--cases", "1", "--shape", "32,32,24", "-q"]
    assert main(small) == 0
    manifest = out / "MICCAI_BraTS2020_TrainingData" / "synthetic.json"
    assert main([*small, "--seed", "1"]) == 2  # another cohort is there: refused, as before
    assert "choose another output folder" in capsys.readouterr().err
    assert main([*small, "--seed", "1", "--overwrite"]) == 0
    assert json.loads(manifest.read_text())["config"]["seed"] == 1
    # a folder of cases this tool did not make is never deleted
    real = tmp_path / "real" / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001"
    real.mkdir(parents=True)
    (real / "BraTS20_Training_001_flair.nii.gz").write_bytes(b"patient data")
    assert main(["synth", str(tmp_path / "real"), "--cases", "1", "--overwrite", "-q"]) == 2
    assert "not a synthetic cohort made by this tool" in capsys.readouterr().err
    assert (real / "BraTS20_Training_001_flair.nii.gz").read_bytes() == b"patient data"


@pytest.mark.slow  # imports torch
def test_run_device_is_the_configs_device(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (asking for CUDA must be refused)")
    out = tmp_path / "run"
    assert main(["run", "demo", "--out", str(out), "--device", "cuda", "--only", "report"]) == 2
    assert "device 'cuda' was requested but CUDA is not available" in capsys.readouterr().err
