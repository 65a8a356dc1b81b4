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
        "weights_trained_on, engine, threads)",
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


# ------------------------------------------------------------------------------ several VLMs
def _vlms(*items, **sections) -> dict:
    return _with(vlms=list(items), **sections)


def test_a_vlm_config_is_one_unnamed_vlm_with_the_ids_and_stages_it_always_had():
    config = parse_run_config(_with(vlm={"backend": "tiny"}, finetune={"enabled": True}))
    (entry,) = config.vlms
    assert entry.name == "" and entry.vlm is config.vlm and entry.finetune is config.finetune
    assert config.vlm_methods() == ["vlm_base", "vlm_finetuned"]
    assert [entry.stage(k) for k in ("vlm-base", "vlm-finetune", "vlm-finetuned")] == [
        "vlm-base", "vlm-finetune", "vlm-finetuned",
    ]  # fmt: skip
    assert config.consistency.methods == ("vlm_base",)


def test_vlms_entries_inherit_the_shared_vlm_section_and_get_their_own_ids():
    config = parse_run_config(
        _vlms(
            {"name": "a", "backend": "tiny", "seed": 1},
            {
                "name": "b-2",
                "backend": "tiny",
                "seed": 2,
                "finetune": False,
                "decoding": {"max_new_tokens": 12},
            },
            {"name": "c", "backend": "openai", "model": "qwen", "base_url": "http://127.0.0.1:9"},
            vlm={"backend": "tiny", "tasks": "grade, box", "decoding": {"max_new_tokens": 40}},
            finetune={"enabled": True, "rank": 4},
        )
    )
    a, b, c = config.vlms
    assert [e.name for e in config.vlms] == ["a", "b-2", "c"]
    assert config.vlm_methods() == [
        "vlm_base-a", "vlm_finetuned-a", "vlm_base-b-2", "vlm_base-c", "vlm_finetuned-c",
    ]  # fmt: skip
    assert (a.vlm.seed, b.vlm.seed) == (1, 2)
    assert a.vlm.inference.tasks == b.vlm.inference.tasks == ("grade", "box")  # shared
    assert a.vlm.inference.decoding.max_new_tokens == 40
    assert b.vlm.inference.decoding.max_new_tokens == 12  # its own
    assert a.finetune.enabled and a.finetune.training.rank == 4 and not b.finetune.enabled
    assert a.finetune.training.tiny_seed == 1  # the adapter is trained on the model it asks
    assert (c.vlm.backend, c.vlm.model) == ("openai", "qwen")
    assert a.stage("vlm-base") == "vlm-base-a" and c.stage("vlm-finetuned") == "vlm-finetuned-c"
    assert config.vlm == a.vlm and config.finetune == a.finetune  # the first stands in
    assert config.vlm_entry("vlm_base-b-2") is b
    assert config.consistency.methods == ("vlm_base-a",)
    assert a.raw["vlm"]["seed"] == 1 and a.raw["vlm"]["tasks"] == "grade, box"


def test_vlms_refuses_duplicate_names():
    with pytest.raises(ValueError, match=r"vlms: duplicate names \['a'\]"):
        parse_run_config(_vlms({"name": "a", "backend": "tiny"}, {"name": "a", "backend": "tiny"}))


@pytest.mark.parametrize("name", ["", "Upper", "has space", "a/b", "x" * 41, None])
def test_vlms_refuses_names_that_cannot_be_ids_or_folders(name):
    with pytest.raises(ValueError, match=r"vlms\[0\]: name .*short name of lower-case"):
        parse_run_config(_vlms({"name": name, "backend": "tiny"}))


def test_vlms_refuses_unknown_keys_naming_the_entry():
    with pytest.raises(ValueError, match=r"vlms\[1\] \(b\): unknown keys \['temprature'\]"):
        parse_run_config(
            _vlms(
                {"name": "a", "backend": "tiny"},
                {"name": "b", "backend": "tiny", "temprature": 0.3},
            )
        )
    with pytest.raises(ValueError, match=r"vlms\[0\] \(a\)\.decoding: unknown keys"):
        parse_run_config(_vlms({"name": "a", "backend": "tiny", "decoding": {"temp": 1}}))


def test_vlms_entries_must_name_their_own_backend_and_model():
    with pytest.raises(ValueError, match=r"vlms\[0\] \(a\): say which backend and model"):
        parse_run_config(_vlms({"name": "a", "seed": 3}, vlm={"backend": "tiny"}))
    with pytest.raises(ValueError, match=r"vlms\[0\] \(q\): say which backend and model"):
        parse_run_config(_vlms({"name": "q", "backend": "transformers"}))


def test_vlms_refuses_a_top_level_model_that_no_entry_compares():
    ambiguous = _vlms(
        {"name": "qwen", "backend": "transformers", "model": "Qwen/Qwen2.5-VL-7B-Instruct"},
        vlm={"backend": "transformers", "model": "meta-llama/Llama-3.2-11B-Vision-Instruct"},
    )
    with pytest.raises(ValueError, match="is it compared or not"):
        parse_run_config(ambiguous)
    # listed as one of the entries: the top-level section is then just the shared settings
    ambiguous["vlms"].append(
        {"name": "llama", "backend": "transformers",
         "model": "meta-llama/Llama-3.2-11B-Vision-Instruct"}
    )  # fmt: skip
    assert [e.name for e in parse_run_config(ambiguous).vlms] == ["qwen", "llama"]


def test_vlms_refuses_a_shared_finetune_base_and_bad_shapes():
    with pytest.raises(ValueError, match=r"finetune\.base with 'vlms:'"):
        parse_run_config(_vlms({"name": "a", "backend": "tiny"}, finetune={"base": "x"}))
    with pytest.raises(ValueError, match="vlms: a non-empty list"):
        parse_run_config(_with(vlms=[]))
    with pytest.raises(ValueError, match="vlms: a non-empty list"):
        parse_run_config(_with(vlms={"name": "a"}))
    with pytest.raises(ValueError, match=r"vlms\[0\]: each VLM is a mapping"):
        parse_run_config(_with(vlms=["a"]))
    with pytest.raises(ValueError, match=r"vlms\[0\] \(a\)\.finetune: use true, false"):
        parse_run_config(_vlms({"name": "a", "backend": "tiny", "finetune": "yes"}))


def test_vlms_consistency_methods_name_the_entries():
    config = parse_run_config(
        _vlms(
            {"name": "a", "backend": "tiny"},
            {"name": "b", "backend": "tiny"},
            consistency={"methods": ["vlm_base-b", "vlm_finetuned-a"]},
        )
    )
    assert config.consistency.methods == ("vlm_base-b", "vlm_finetuned-a")
    with pytest.raises(ValueError, match=r"unknown method 'vlm_base'.*use vlm_base-a"):
        parse_run_config(
            _vlms({"name": "a", "backend": "tiny"}, consistency={"methods": ["vlm_base"]})
        )


def test_the_several_vlm_presets_parse():
    demo, _ = read_run_config("demo-vlms")
    assert len(demo.vlms) == 3 and all(e.vlm.backend == "tiny" for e in demo.vlms)
    assert [e.vlm.model for e in demo.vlms] == [None, "tiny-llava", "tiny-idefics3"]
    compare, _ = read_run_config("compare-vlms", ["data.root=/nowhere"])
    assert [e.vlm.model for e in compare.vlms] == [
        "meta-llama/Llama-3.2-11B-Vision-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct",
        "google/medgemma-4b-it",
    ]  # fmt: skip
    assert compare.vlms[0].finetune.enabled and not compare.vlms[1].finetune.enabled


def test_vlms_entries_share_the_slices_and_the_scoring():
    with pytest.raises(
        ValueError, match=r"vlms\[0\] \(a\): \['slice_rule', 'window'\] are the same"
    ):
        parse_run_config(
            _vlms(
                {
                    "name": "a",
                    "backend": "tiny",
                    "slice_rule": {"mode": "brain"},
                    "window": {"lower": 1},
                }
            )
        )
