"""VLM fine-tuning (LoRA) with the tiny Llama 3.2 Vision on a synthetic cohort.

Real parts throughout: the tiny Mllama built in code, peft LoRA, the data layer's slices, the
VLM arm's prompts, parser, backend and pipeline. The two-process test starts a real ``torchrun``
(gloo on the CPU).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from GliomaCompareLib import geometry as g
from GliomaCompareLib.data.case import load_case
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.slices import SliceRule, case_slices
from GliomaCompareLib.data.splits import Splits
from GliomaCompareLib.vlm.finetune import (
    DefaultLoader,
    FinetuneConfig,
    epoch_order,
    finetune,
)
from GliomaCompareLib.vlm.finetune_data import (
    IGNORE_INDEX,
    ExampleSettings,
    FinetuneCollator,
    build_examples,
    target_answer,
)
from GliomaCompareLib.vlm.finetune_eval import summarize_validation
from GliomaCompareLib.vlm.parsing import parse_answer
from GliomaCompareLib.vlm.tasks import TASK_NAMES, load_tasks

REPO = Path(__file__).resolve().parents[1]
HGG, LGG = "BraTS20_Training_001", "BraTS20_Training_002"  # grades of the default synth cohort


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded at test time


@pytest.fixture(scope="module")
def cohort(synth_cohort):
    return discover_cases(synth_cohort)


def _splits(cohort, train, val, test=None) -> Splits:
    ids = [c.case_id for c in cohort.cases]
    test = tuple(test) if test is not None else tuple(c for c in ids if c not in (*train, *val))
    return Splits(
        train=tuple(train),
        val=tuple(val),
        test=test,
        grades={c.case_id: c.grade for c in cohort.cases},
        seed=0,
        fractions=(0.0, 0.0, 0.0),
    )


class _KeepingLoader(DefaultLoader):
    """The default loader, keeping the model it built (peft adds LoRA layers to it in place)."""

    def load(self, *args, **kwargs):
        self.model, self.processor, info = super().load(*args, **kwargs)
        return self.model, self.processor, info


# --------------------------------------------------------------------------- targets and data


@pytest.mark.parametrize("system", ["pixel", "normalized", "per_mille"])
def test_targets_are_the_exact_answers_from_the_ground_truth(cohort, system):
    specs = load_tasks()
    case = load_case(cohort.get(HGG))
    wt = case.regions()["WT"]
    for image in case_slices(case)[::3]:
        mask = image.geometry.extract(wt)
        h, w = mask.shape
        for task in TASK_NAMES:
            spec = specs[task]
            prompt = spec.render(w, h, system)
            value, text = target_answer(spec, prompt, grade="HGG", mask=mask)
            parsed = parse_answer(spec, text, prompt)
            assert (parsed.status, parsed.stage) == ("ok", "strict"), text
            assert parsed.value == value
            assert text == spec.target_answer(prompt, mask=mask, grade="HGG")
            if task == "grade":
                assert text == '{"grade": "HGG"}'
            elif task == "box":
                box = parsed.geometry
                exact = g.mask_box(mask)
                tol = 0.0 if system == "pixel" else 0.6  # 3 decimals of a 48-pixel image
                assert np.allclose(box.as_tuple(), exact.as_tuple(), atol=tol)
            elif task == "point":
                centre = g.mask_centroid(mask)
                tol = 0.5 if system == "pixel" else 0.05
                assert abs(parsed.geometry.x - centre.x) <= tol
                assert abs(parsed.geometry.y - centre.y) <= tol
            else:
                covered = g.polygon_to_mask(parsed.geometry, mask.shape)
                assert len(parsed.value) <= 8
                assert (covered & mask).sum() >= 0.95 * mask.sum()  # a bounding polygon
    inside_prompt = specs["point"].render(w, h, system)
    _, text = target_answer(specs["point"], inside_prompt, mask=mask, point_target="inside")
    assert g.point_in_mask(parse_answer(specs["point"], text, inside_prompt).geometry, mask)
    with pytest.raises(ValueError, match="grade"):
        target_answer(specs["grade"], specs["grade"].render(w, h), grade=None)
    with pytest.raises(ValueError, match="mask"):
        target_answer(specs["box"], specs["box"].render(w, h), mask=np.zeros_like(mask))


def test_examples_are_the_slices_and_prompts_inference_uses(cohort, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cohort.data_dir, data)
    mapping = data / "name_mapping.csv"
    rows = mapping.read_text().splitlines()
    mapping.write_text("\n".join(r for r in rows if "Training_003" not in r) + "\n")
    flair = next((data / "BraTS20_Training_004").glob("*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:200])  # truncated: unreadable
    copy = discover_cases(data, validate=False)
    ids = [HGG, LGG, "BraTS20_Training_003", "BraTS20_Training_004", "BraTS20_Training_999"]
    settings = ExampleSettings(slice_rule=SliceRule(max_slices=3), keep_masks=True)

    examples = build_examples(copy, ids, ("box", "grade"), settings)

    assert "not found" in examples.skipped["BraTS20_Training_999"]
    assert "BraTS20_Training_004" in examples.skipped["BraTS20_Training_004"]
    assert "grade unknown" in examples.skipped["BraTS20_Training_003:grade"]
    assert {e.case_id for e in examples.examples} == {HGG, LGG, "BraTS20_Training_003"}
    specs = load_tasks()
    for case_id in (HGG, LGG, "BraTS20_Training_003"):
        case = load_case(copy.get(case_id))
        slices = {s.index: s for s in case_slices(case, settings.slice_rule)}
        tasks = ("grade", "box") if case.grade else ("box",)
        mine = [e for e in examples.examples if e.case_id == case_id]
        assert [(e.slice_index, e.task) for e in mine] == [(i, t) for i in slices for t in tasks]
        for e in mine:
            image = slices[e.slice_index]
            np.testing.assert_array_equal(e.rgb, image.rgb)
            h, w = image.rgb.shape[:2]
            assert e.prompt == specs[e.task].render(w, h, "pixel", None)  # as the VLM arm asks
            np.testing.assert_array_equal(e.mask, image.geometry.extract(case.regions()["WT"]))
            assert e.grade == case.grade
    counts = examples.counts()
    assert counts["grade"] == {"examples": 6, "cases": 2, "HGG": 3, "LGG": 3}
    assert counts["box"]["cases"] == 3
    parallel = build_examples(copy, ids, ("box", "grade"), settings, jobs=2)
    assert parallel.fingerprint() == examples.fingerprint()
    assert parallel.skipped == examples.skipped


def test_collator_masks_prompt_padding_and_image_token_exactly(cohort):
    from GliomaCompareLib.vlm.hf_backend import TransformersBackend
    from GliomaCompareLib.vlm.tiny import build_tiny_model

    model, processor = build_tiny_model(0)
    settings = ExampleSettings(slice_rule=SliceRule(max_slices=1))
    examples = list(build_examples(cohort, [HGG], ("grade", "polygon"), settings).examples)
    collator = FinetuneCollator.for_model(model, processor)

    batch = collator(examples)

    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image|>")
    assert image_id == model.config.text_config.vocab_size == collator.image_token_id
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert tok.padding_side == "left"  # the backend's setting is restored
    backend = TransformersBackend.from_model(model, processor, model_id="t", revision="r")
    for row, e in enumerate(examples):
        sent = backend._inputs([e.rgb], [backend.chat_text(e.prompt.text)])["input_ids"][0]
        n = len(sent)
        assert ids[row, :n].tolist() == sent.tolist()  # exactly what inference sends
        answer = tok(e.target + "<|eot_id|>", add_special_tokens=False)["input_ids"]
        length = int(attention[row].sum())
        assert ids[row, n:length].tolist() == answer
        width = ids.shape[1]
        assert labels[row].tolist() == [IGNORE_INDEX] * n + answer + [IGNORE_INDEX] * (
            width - length
        )
        assert (ids[row] == image_id).sum() == 1
        assert (labels[row][ids[row] == image_id] == IGNORE_INDEX).all()
        assert tok.decode(labels[row][labels[row] != IGNORE_INDEX]) == e.target + "<|eot_id|>"
    assert attention[0, -1] == 0 and attention[1, -1] == 1  # the short grade row is padded right
    assert (labels[attention == 0] == IGNORE_INDEX).all()


def test_epoch_order_balances_grades_deterministically():
    items = (
        [SimpleNamespace(task="grade", grade="HGG") for _ in range(9)]
        + [SimpleNamespace(task="grade", grade="LGG") for _ in range(2)]
        + [SimpleNamespace(task="box", grade="HGG") for _ in range(3)]
    )
    plain = epoch_order(items, 1, seed=0)
    assert sorted(plain) == list(range(14))
    assert epoch_order(items, 1, seed=0) == plain != epoch_order(items, 2, seed=0)

    over = epoch_order(items, 1, seed=0, balance="oversample")
    grades = [items[i].grade for i in over if items[i].task == "grade"]
    assert grades.count("HGG") == grades.count("LGG") == 9
    lgg_copies = sorted(over.count(i) for i in (9, 10))
    assert lgg_copies == [4, 5]  # two whole copies each... 9 = 2 x 4 + 1
    assert all(over.count(i) == 1 for i in range(9)) and all(
        over.count(i) == 1 for i in (11, 12, 13)
    )

    lgg = [
        np.mean([items[i].grade == "LGG" for i in epoch_order(items, e, 0, "weighted") if i < 11])
        for e in range(300)
    ]
    assert abs(np.mean(lgg) - 0.5) < 0.03
    assert len(epoch_order(items, 3, 0, "weighted")) == 14
    with pytest.raises(ValueError, match="balance"):
        epoch_order(items, 1, 0, "smote")


def test_validation_metrics_count_failures_and_vote_patients():
    rows = [
        {"task": "grade", "case_id": "a", "status": "ok", "exact": True, "label": "HGG", "grade_true": "HGG"},
        {"task": "grade", "case_id": "a", "status": "ok", "exact": True, "label": "HGG", "grade_true": "HGG"},
        {"task": "grade", "case_id": "a", "status": "invalid", "exact": False, "label": None, "grade_true": "HGG"},
        {"task": "grade", "case_id": "b", "status": "ok", "exact": True, "label": "LGG", "grade_true": "LGG"},
        {"task": "grade", "case_id": "b", "status": "repaired", "exact": False, "label": "HGG", "grade_true": "LGG"},
        {"task": "box", "case_id": "a", "status": "ok", "exact": False, "dice": 0.5, "hd95": 2.0, "inside": True},
        {"task": "box", "case_id": "a", "status": "empty", "exact": False, "dice": 0.0, "hd95": 60.0, "inside": False},
    ]  # fmt: skip
    m = summarize_validation(rows, ("grade", "box"))
    grade, box = m["grade"], m["box"]
    assert grade["n"] == 5 and grade["ok_rate"] == pytest.approx(0.6)
    assert grade["usable_rate"] == pytest.approx(0.8) and grade["exact_rate"] == pytest.approx(0.6)
    assert grade["accuracy"] == pytest.approx(3 / 5)  # the invalid answer counts as wrong
    assert grade["sensitivity"] == pytest.approx(2 / 3)
    assert grade["specificity"] == pytest.approx(1 / 2)
    assert grade["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # a: HGG by 2 votes to 0; b: 1-1 tie without probabilities -> HGG (the tie rule) -> wrong
    assert grade["patient_accuracy"] == pytest.approx(0.5)
    assert box["dice"] == pytest.approx(0.25) and box["hd95"] == pytest.approx(31.0)
    assert box["inside_rate"] == pytest.approx(0.5) and box["status_counts"]["empty"] == 1


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"rank must be >= 1.*dropout"):
        FinetuneConfig(rank=0, dropout=1.5)
    with pytest.raises(ValueError, match="balance_grades"):
        FinetuneConfig(balance_grades="smote")
    with pytest.raises(ValueError, match="target_modules"):
        FinetuneConfig(target_modules=("q_proj;rm",))
    config = FinetuneConfig(slices_per_case=2, extra_target_modules=("lm_head",))
    assert FinetuneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown fine-tuning settings: colour"):
        FinetuneConfig.from_dict({"colour": 1})


def test_qlora_needs_cuda(cohort, tmp_path, capsys):
    import torch

    from GliomaCompareLib.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = FinetuneConfig(load_in_4bit=True)
    with pytest.raises(ValueError, match=r"QLoRA.*CUDA"):
        finetune(cohort, "box", "tiny", tmp_path / "q", config)
    args = ["finetune-vlm", "--data", str(cohort.data_dir), "--task", "box", "--base", "tiny"]
    code = main([*args, "--out", str(tmp_path / "q2"), "--4bit"])
    assert code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.gpu
def test_qlora_trains_on_cuda(cohort, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("bitsandbytes")
    from GliomaCompareLib.vlm.hf_backend import TransformersBackend
    from GliomaCompareLib.vlm.tiny import save_tiny_model

    base = save_tiny_model(tmp_path / "tiny")
    config = FinetuneConfig(load_in_4bit=True, epochs=1, slices_per_case=1, lr=3e-3)
    result = finetune(
        cohort, "box", str(base), tmp_path / "q", config, splits=_splits(cohort, [HGG], [LGG])
    )
    assert result.history[0].train_loss > 0
    backend = TransformersBackend(str(base), adapter=result.adapter_dir, load_in_4bit=True)
    assert backend.adapter.tasks == ("box",)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_overfitting_reproduces_exact_answers_and_the_adapter_round_trips(cohort, tmp_path):
    from GliomaCompareLib.vlm.hf_backend import TransformersBackend, read_adapter
    from GliomaCompareLib.vlm.inference import VLMConfig, run_vlm
    from GliomaCompareLib.vlm.tiny import tiny_model_id
    from GliomaCompareLib.vlm.types import DecodingConfig, Query

    splits = _splits(cohort, [HGG, LGG], [])
    config = FinetuneConfig(
        epochs=100,
        batch_size=8,
        lr=3e-3,
        scheduler="constant",
        warmup_ratio=0.0,
        dropout=0.0,
        rank=8,
        alpha=16,
        extra_target_modules=("lm_head",),
        slices_per_case=2,
        patience=None,
    )
    loader = _KeepingLoader()
    tasks = ("grade", "point")

    result = finetune(cohort, tasks, "tiny", tmp_path / "ft", config, splits=splits, loader=loader)

    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.1 * losses[0]  # the loss goes down, a lot
    assert result.stop_reason == "no_validation" and result.n_train == 8 and result.n_val == 0
    assert result.train_cases == (HGG, LGG)
    examples = build_examples(cohort, [HGG, LGG], tasks, config.example_settings()).examples
    queries = [
        Query(image=e.rgb, prompt=e.prompt, score_options=e.task == "grade") for e in examples
    ]
    decoding = DecodingConfig(max_new_tokens=32)
    memory = TransformersBackend.from_model(
        loader.model, loader.processor, model_id=tiny_model_id(0), revision="in-memory"
    )
    trained = memory.answer(queries, decoding)
    specs = load_tasks()
    for e, answer in zip(examples, trained, strict=True):
        parsed = parse_answer(specs[e.task], answer.text, e.prompt)
        assert (parsed.status, parsed.value, answer.text) == ("ok", e.value, e.target)

    # the saved adapter, loaded by the VLM arm, answers exactly as the model in memory
    disk = TransformersBackend.tiny(seed=0, adapter=result.adapter_dir)
    loaded = disk.answer(queries, decoding)
    assert [a.text for a in loaded] == [a.text for a in trained]
    for a, b in zip(loaded, trained, strict=True):
        if a.option_logprobs:
            for option, value in a.option_logprobs.items():
                assert value == pytest.approx(b.option_logprobs[option], abs=1e-5)
    info = read_adapter(result.adapter_dir)
    assert info.base_model == tiny_model_id(0) and info.tasks == tasks
    assert info.template_hashes == {t: specs[t].template_hash for t in tasks}
    assert info.meta["split_hash"] == splits.hash and info.meta["coordinate_system"] == "pixel"
    assert info.meta["training"] == config.to_dict()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()

    # refused for another base model or another task
    with pytest.raises(ValueError, match="trained on base model"):
        TransformersBackend.tiny(seed=1, adapter=result.adapter_dir)
    with pytest.raises(ValueError, match="trained for task"):
        run_vlm(cohort, disk, VLMConfig(tasks=("box",)), tmp_path / "vlm_box", case_ids=[HGG])
    # and in another coordinate convention than it learnt
    with pytest.raises(ValueError, match="trained to answer in pixel coordinates"):
        run_vlm(
            cohort,
            disk,
            VLMConfig(tasks=tasks, coordinate_system="per_mille"),
            tmp_path / "vlm_mille",
            case_ids=[HGG],
        )
    # and it plugs into the VLM arm: every answer of the memorised slices is usable and right
    vlm = run_vlm(
        cohort,
        disk,
        VLMConfig(tasks=tasks, slices_per_case=2, n_bootstrap=0),
        tmp_path / "vlm",
        case_ids=[HGG, LGG],
    )
    assert vlm.status_counts["grade"]["ok"] == vlm.status_counts["point"]["ok"] == 4
    assert vlm.classification[0].accuracy == 1.0


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(cohort, tmp_path):
    from safetensors.torch import load_file

    splits = _splits(cohort, [HGG, LGG, "BraTS20_Training_003"], ["BraTS20_Training_004"])
    config = FinetuneConfig(
        epochs=2,
        batch_size=2,
        lr=3e-3,
        dropout=0.1,  # the dropout masks must continue from the saved random state
        slices_per_case=2,
        checkpoint_every=1,
        max_val_slices=1,
        patience=None,
    )
    full = finetune(cohort, "box", "tiny", tmp_path / "a", config, splits=splits)
    assert [r.global_step for r in full.history] == [3, 6]

    class Stop(Exception):
        pass

    def stop_at_step_5(event):
        if event.phase == "train" and event.global_step == 5:
            raise Stop

    with pytest.raises(Stop):
        finetune(
            cohort, "box", "tiny", tmp_path / "b", config, splits=splits, progress=stop_at_step_5
        )
    assert json.loads((tmp_path / "b" / "finetune.json").read_text())["status"] == "running"
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-00000004"]
    with pytest.raises(ValueError, match="--resume"):
        finetune(cohort, "box", "tiny", tmp_path / "b", config, splits=splits)
    with pytest.raises(ValueError, match=r"config\.lr"):
        finetune(
            cohort,
            "box",
            "tiny",
            tmp_path / "b",
            replace(config, lr=1e-3),
            splits=splits,
            resume=True,
        )

    resumed = finetune(cohort, "box", "tiny", tmp_path / "b", config, splits=splits, resume=True)

    assert resumed.resumed
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=0, atol=1e-7)
    for x, y in zip(full.history, resumed.history, strict=True):
        assert x.train_loss == pytest.approx(y.train_loss, abs=1e-6)
        assert x.val_loss == pytest.approx(y.val_loss, abs=1e-6)
    again = finetune(cohort, "box", "tiny", tmp_path / "b", config, splits=splits, resume=True)
    assert again.resumed and again.history == resumed.history


@pytest.mark.slow
def test_cli_early_stopping_balance_and_the_vlm_arm(cohort, tmp_path, capsys):
    from GliomaCompareLib.cli import main

    out = tmp_path / "ft"
    args = ["finetune-vlm", "--data", str(cohort.data_dir), "--task", "grade", "--base", "tiny"]
    args += ["--out", str(out), "--epochs", "4", "--lr", "3e-3", "--slices-per-case", "2"]
    args += ["--balance-grades", "--monitor", "task", "--patience", "1", "--min-delta", "10"]
    args += ["--split-fractions", "0.5,0.25,0.25"]

    assert main(args) == 0

    printed = capsys.readouterr().out
    assert f"adapter: {out / 'adapter'}" in printed and "early_stopping" in printed
    manifest = json.loads((out / "finetune.json").read_text())
    assert manifest["status"] == "finished" and manifest["stop_reason"] == "early_stopping"
    splits = Splits.load(out / "splits.json")
    assert set(manifest["data"]["train_cases"]) <= set(splits.train)
    assert set(manifest["data"]["val_cases"]) <= set(splits.val)
    assert not set(manifest["data"]["train_cases"] + manifest["data"]["val_cases"]) & set(
        splits.test
    )
    with (out / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [h["epoch"] for h in history] == ["1", "2"]  # epoch 2 did not improve by 10
    counts = manifest["data"]["counts"]["train"]["grade"]
    assert int(history[0]["examples"]) == 2 * max(counts["HGG"], counts["LGG"])  # balanced
    meta = json.loads((out / "adapter" / "gliomacompare_adapter.json").read_text())
    assert meta["epoch"] == 1 and meta["task"] == "grade"
    assert meta["metrics"]["grade"]["n"] == manifest["data"]["counts"]["val"]["grade"]["examples"]
    answers = (out / "val_answers.jsonl").read_text().splitlines()
    assert len(answers) == manifest["data"]["n_val"]

    vlm_out = tmp_path / "vlm"
    vlm_args = ["vlm", "--data", str(cohort.data_dir), "--backend", "tiny"]
    vlm_args += ["--adapter", str(out / "adapter"), "--split", str(out / "splits.json")]
    code = main([*vlm_args, "--slices-per-case", "1", "--out", str(vlm_out)])
    assert code == 0
    lines = [json.loads(x) for x in (vlm_out / "answers.jsonl").read_text().splitlines()]
    assert {x["task"] for x in lines} == {"grade"}
    assert {x["case_id"] for x in lines} == set(splits.test)


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one(cohort, tmp_path):
    from safetensors.torch import load_file

    split_file = _splits(cohort, [HGG, LGG, "BraTS20_Training_003"], ["BraTS20_Training_004"]).save(
        tmp_path / "splits.json"
    )
    common = ["finetune-vlm", "--data", str(cohort.data_dir), "--task", "box", "--base", "tiny"]
    common += ["--splits", str(split_file), "--epochs", "2", "--lr", "3e-3", "--dropout", "0"]
    common += ["--slices-per-case", "2", "--max-val-slices", "1", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    single = subprocess.run(
        [sys.executable, "-m", "GliomaCompareLib", *common, "--batch-size", "2", "--out", one],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(
        [*torchrun, "-m", "GliomaCompareLib", *common, "--batch-size", "1", "--out", two],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("adapter:") == 1  # only process 0 prints
    one = json.loads((tmp_path / "one" / "finetune.json").read_text())
    two = json.loads((tmp_path / "two" / "finetune.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_batch"] == two["global_batch"] == 2
    for x, y in zip(one["history"], two["history"], strict=True):
        assert x["examples"] == y["examples"] == one["data"]["n_train"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=2e-5, rtol=1e-3)


def test_adapter_metadata_records_the_same_versions_as_before():
    # the adapter's fingerprint (its model id) hashes these, so they must not gain keys
    import importlib.metadata as md
    import platform

    from GliomaCompareLib.vlm.finetune import _adapter_versions

    before = {"python": platform.python_version()}
    for name in ("gliomacompare", "torch", "transformers", "peft", "accelerate", "numpy"):
        try:
            before[name] = md.version(name)
        except md.PackageNotFoundError:
            before[name] = None
    assert _adapter_versions() == before
