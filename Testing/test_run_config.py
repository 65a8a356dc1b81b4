"""The typed run config: one frozen section per YAML section, checked once, with the refusals
(and messages) a run has always given for a bad config."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from GliomaCompareLib.cnn.config import ClsConfig, SegConfig
from GliomaCompareLib.data.synthetic import SynthConfig
from GliomaCompareLib.pipeline.config import (
    CnnSection,
    ConsistencySection,
    DataSection,
    FinetuneSection,
    MetricsSection,
    RunConfig,
    SplitSection,
    VlmSection,
    load_run_config,
    parse_run_config,
    read_run_config,
)
from GliomaCompareLib.report import ReportOptions
from GliomaCompareLib.vlm import FinetuneConfig, VLMConfig

#: The smallest config a run accepts (no CNN: nothing is built).
MINIMAL = {"data": {"synthetic": {"cases": 4}}, "cnn": {"enabled": False}}


def _with(**sections) -> dict:
    config = copy.deepcopy(MINIMAL)
    config.update(sections)
    return config


@pytest.mark.slow  # builds the demo's networks (imports torch and MONAI)
def test_the_demo_preset_parses_into_typed_sections():
    raw, _ = load_run_config("demo")
    config = parse_run_config(raw)
    assert isinstance(config.data, DataSection) and isinstance(config.data.synthetic, SynthConfig)
    assert config.data.synthetic.shape == (64, 64, 48) and config.data.jobs == 1
    assert isinstance(config.split, SplitSection)
    assert config.split.fractions == (0.6, 0.2, 0.2) and config.split.seed == 0
    assert isinstance(config.cnn, CnnSection) and config.cnn.enabled
    assert isinstance(config.cnn.seg, SegConfig) and isinstance(config.cnn.cls, ClsConfig)
    assert config.cnn.network("seg") is config.cnn.seg and config.cnn.seg.train.epochs == 12
    assert isinstance(config.vlm, VlmSection) and isinstance(config.vlm.inference, VLMConfig)
    assert config.vlm.backend == "tiny" and config.vlm.device == "cpu"  # the run's device
    assert config.vlm.inference.tasks == ("grade", "point", "box", "polygon")
    assert config.vlm.inference.max_vertices == 8
    assert isinstance(config.finetune, FinetuneSection) and config.finetune.enabled
    assert isinstance(config.finetune.training, FinetuneConfig)
    assert config.finetune.training.device == "cpu" and config.finetune.training.rank == 8
    assert config.finetune.tasks == ("grade", "point", "box", "polygon")
    assert isinstance(config.consistency, ConsistencySection)
    assert config.consistency.tasks == ("grade", "box") and config.consistency.max_cases == 3
    assert config.consistency.methods == ("vlm_base",)
    assert config.metrics == MetricsSection(n_bootstrap=1000)
    assert isinstance(config.report, ReportOptions) and config.report.gallery_count == 3
    assert (config.name, config.seed, config.device) == ("demo", 0, "cpu")
    assert config.raw == raw and config.raw is not raw  # kept, as a copy


def test_defaults_follow_the_other_sections():
    config = parse_run_config(
        _with(
            seed=5,
            vlm={"tasks": "grade, box", "device": "cuda:1"},
            finetune={"enabled": True, "tasks": ["box", "polygon"]},
        )
    )
    assert config.split.seed == 5  # the split's seed defaults to the run's
    assert config.vlm.inference.tasks == ("grade", "box") and config.vlm.device == "cuda:1"
    assert config.finetune.tasks == ("box",)  # only tasks the VLM is asked
    assert config.finetune.training.device == "auto"  # the run's device, not the VLM's
    assert config.finetune.training.max_vertices == config.vlm.inference.max_vertices
    assert config.consistency.tasks == ("grade", "box") and not config.consistency.enabled
    assert config.finetune.base is None and config.cnn.weights == {}


def test_the_config_and_its_sections_are_frozen():
    config = parse_run_config(MINIMAL)
    for obj, name in (
        (config, "seed"),
        (config.vlm, "backend"),
        (config.data, "jobs"),
        (config.finetune, "enabled"),
        (config.metrics, "n_bootstrap"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 1)
    assert dataclasses.replace(config, seed=3).seed == 3 and config.seed == 0


def test_parsing_does_not_keep_or_change_the_mapping():
    raw = _with(vlm={"tasks": ["grade"]})
    before = copy.deepcopy(raw)
    config = parse_run_config(raw)
    raw["vlm"]["tasks"].append("box")
    assert config.raw["vlm"]["tasks"] == ["grade"] and before["vlm"] == {"tasks": ["grade"]}


REFUSALS = [
    ({"data": [1]}, "run config: 'data' must be a mapping, got list"),
    (
        {"data": {"rot": "x"}},
        "run config: data: unknown keys ['rot'] (known: root, synthetic, convention, jobs)",
    ),
    (
        {"data": {"convention": "brats2020"}},
        "run config: data: give 'root' (a BraTS folder) or 'synthetic'",
    ),
    ({"data": {"synthetic": {"casez": 3}}}, "run config: data.synthetic: unknown keys ['casez']"),
    ({"data": {"synthetic": {"cases": 0}}}, "run config: data.synthetic: "),
    (
        {"split": {"fraction": [1, 1, 1]}},
        "run config: split: unknown keys ['fraction'] (known: file, fractions, seed)",
    ),
    (
        {"cnn": {"segg": {}}},
        "run config: cnn: unknown keys ['segg'] (known: enabled, seg, cls, weights, "
        "weights_trained_on)",
    ),
    ({"cnn": {"enabled": False, "seg": {"epochz": 1}}}, "cnn.seg: unknown keys ['epochz']"),
    (
        {"cnn": {"enabled": False, "weights": {"x": 1}}},
        "run config: cnn.weights: unknown keys ['x'] (known: seg, cls)",
    ),
    (
        {"cnn": {"enabled": False, "weights_trained_on": "brats2015"}},
        "run config: cnn.weights_trained_on 'brats2015': use one of none, unknown, brats2017",
    ),
    ({"vlm": {"taks": ["grade"]}}, "run config: vlm: unknown keys ['taks']"),
    (
        {"sensitivity": {"slice_rules": ["cnn", "random"]}},
        "run config: sensitivity.slice_rules: unknown rule 'random'",
    ),
    ({"vlm": {"decoding": {"temp": 1}}}, "run config: vlm.decoding: unknown keys ['temp']"),
    ({"vlm": {"slice_rule": {"mod": "x"}}}, "run config: vlm.slice_rule: unknown keys ['mod']"),
    ({"vlm": {"window": {"low": 1}}}, "run config: vlm.window: unknown keys ['low']"),
    ({"vlm": {"tasks": ["grades"]}}, "run config: vlm: Tasks ['grades']: use some of"),
    ({"finetune": {"enabled": True, "rnk": 4}}, "run config: finetune: unknown keys ['rnk']"),
    (
        {"consistency": {"run": 3}},
        "run config: consistency: unknown keys ['run'] (known: "
        "enabled, runs, temperature, tasks, max_cases, methods)",
    ),
    (
        {"consistency": {"methods": ["vlm_tuned"]}},
        "run config: consistency.methods: unknown method 'vlm_tuned'",
    ),
    ({"device": "gpu"}, "run config: device 'gpu': use auto, cpu or cuda"),
    ({"metrics": {"n_bootsrap": 10}}, "run config: metrics: unknown keys ['n_bootsrap']"),
    ({"report": {"dpi": 1000}}, "report.dpi must be in 30..300, got 1000"),
]


@pytest.mark.parametrize(("sections", "message"), REFUSALS, ids=[m for _, m in REFUSALS])
def test_each_refusal_names_the_key(sections, message):
    with pytest.raises(ValueError) as info:
        parse_run_config(_with(**sections))
    assert message in str(info.value)


def test_refusals_come_in_section_order_with_the_device_last():
    bad = _with(device="gpu", vlm={"taks": 1}, split={"x": 1})
    with pytest.raises(ValueError, match="run config: split: unknown keys"):
        parse_run_config(bad)
    del bad["split"]
    with pytest.raises(ValueError, match="run config: vlm: unknown keys"):
        parse_run_config(bad)


def test_a_disabled_section_is_not_checked_beyond_its_keys():
    config = parse_run_config(_with(finetune={"enabled": False, "rnk": 4}))
    assert config.finetune.training is None
    # a disabled CNN builds no network, so a bad architecture only fails when it is enabled
    bad_network = {"seg": {"network": {"name": "SegResNet", "init_filterz": 8}}}
    with pytest.raises(ValueError, match="init_filterz"):
        parse_run_config(_with(cnn=bad_network))


def test_unknown_report_keys_are_left_to_the_report():
    config = parse_run_config(_with(report={"gallery_count": 1, "colour": "blue"}))
    assert config.report.gallery_count == 1


def test_read_run_config_loads_and_parses(tmp_path):
    (tmp_path / "run.yaml").write_text("extends: demo\nseed: 3\ncnn: {enabled: false}\n")
    config, path = read_run_config(tmp_path / "run.yaml", ["vlm.batch_size=2"])
    assert isinstance(config, RunConfig) and path == (tmp_path / "run.yaml").resolve()
    assert config.seed == 3 and config.vlm.inference.batch_size == 2
    assert config.name == "demo"  # the preset names it; a file without a name gets its stem
    assert config.raw["vlm"]["batch_size"] == 2


def test_weights_trained_on_defaults_to_unknown_when_weights_are_given():
    assert parse_run_config(MINIMAL).cnn.weights_trained_on == "none"
    given = _with(cnn={"enabled": False, "weights": {"seg": "model.pt"}})
    assert parse_run_config(given).cnn.weights_trained_on == "unknown"
    named = _with(
        cnn={"enabled": False, "weights": {"seg": "m.pt"}, "weights_trained_on": "brats2018"}
    )
    assert parse_run_config(named).cnn.weights_trained_on == "brats2018"


def test_a_yaml_alias_bomb_or_a_huge_config_is_refused(tmp_path):
    lines = ["seed: 1", "report:", "  a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"  {name}: &{name} [{', '.join([f'*{prev}'] * 6)}]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "bomb.yaml").stat().st_size < 500  # 9 * 6**8 (15 million) values
    with pytest.raises(ValueError, match=r"bomb\.yaml: expands to more than"):
        load_run_config(tmp_path / "bomb.yaml")
    (tmp_path / "big.yaml").write_text("seed: 1\n" + "#" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ValueError, match=r"big\.yaml: \d+ bytes is more than"):
        load_run_config(tmp_path / "big.yaml")
