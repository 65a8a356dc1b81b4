"""Every supported model family through the generic ``transformers`` backend, the fine-tuning
collator and LoRA, with tiny random-weight models of each family built and saved in code.

Real parts throughout: each family's real transformers model class, processor and image
processor; peft LoRA; the synthetic cohort; the ``vlm`` command.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from GliomaCompareLib.cli import main
from GliomaCompareLib.data.discovery import discover_cases
from GliomaCompareLib.data.slices import SliceRule
from GliomaCompareLib.data.splits import Splits
from GliomaCompareLib.vlm.backends import make_backend
from GliomaCompareLib.vlm.families import (
    FAMILIES,
    detect_family,
    family_by_name,
    family_of_model,
)
from GliomaCompareLib.vlm.finetune import FinetuneConfig, finetune
from GliomaCompareLib.vlm.finetune_data import (
    IGNORE_INDEX,
    ExampleSettings,
    FinetuneCollator,
    build_examples,
)
from GliomaCompareLib.vlm.hf_backend import TransformersBackend, read_adapter
from GliomaCompareLib.vlm.parsing import PARSE_STATUSES, parse_answer
from GliomaCompareLib.vlm.tasks import load_tasks
from GliomaCompareLib.vlm.tiny import (
    TINY_FAMILIES,
    TINY_MODEL_LABEL,
    build_tiny_model,
    save_tiny_model,
    tiny_model_id,
    tiny_model_label,
)
from GliomaCompareLib.vlm.types import DecodingConfig, Query

#: The tiny families besides the Mllama (whose own tests are in test_vlm_backends.py).
OTHERS = [f for f in TINY_FAMILIES if f != "mllama"]
GREEDY = DecodingConfig(max_new_tokens=12)
HGG, LGG = "BraTS20_Training_001", "BraTS20_Training_002"  # grades of the default synth cohort


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded at test time


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> folder of its saved tiny model (made once per module)."""
    root = tmp_path_factory.mktemp("tiny_families")
    return {f: save_tiny_model(root / f, seed=0, family=f) for f in TINY_FAMILIES}


@pytest.fixture(scope="module")
def queries():
    tasks = load_tasks()
    rng = np.random.default_rng(5)
    out = []
    for i, task in enumerate(["grade", "box", "grade", "point"]):
        size = 48 if i % 2 else 64  # different prompt lengths in one batch
        image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        out.append(
            Query(image, tasks[task].render(size, size), seed=i, score_options=task == "grade")
        )
    return out


def _direct_option_logprob(backend, query, option) -> float:
    """log P(option + suffix | prompt + prefix, image) from one plain forward pass."""
    import torch

    context = backend.chat_text(query.prompt.text) + query.prompt.answer_prefix
    tok = backend.processor.tokenizer
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    full = context + option + query.prompt.answer_suffix
    n_full = len(tok(full, add_special_tokens=False)["input_ids"])
    inputs = backend._inputs([query.image], [full])
    ids = inputs["input_ids"][0]
    with torch.no_grad():
        logp = torch.log_softmax(backend.model(**inputs).logits[0].float(), -1)
    start = len(ids) - (n_full - n_ctx)  # the option's tokens end the row
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


# --------------------------------------------------------------------------- the families


def test_families_are_detected_from_the_config_and_unknown_ones_refused(tmp_path, saved):
    for family, folder in saved.items():
        assert detect_family(folder).name == family
        model, _ = build_tiny_model(0, family)
        assert family_of_model(model).name == family
    assert family_by_name("idefics3").text_scope == "text_model"
    assert family_by_name("smolvlm").text_scope == "text_model"
    assert "qwen2_5_vl" in FAMILIES["qwen2_vl"].model_types
    strange = tmp_path / "strange"
    strange.mkdir()
    (strange / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not a supported") as info:
        TransformersBackend(str(strange))
    for family in ("mllama", "llava", "idefics3", "smolvlm", "gemma3", "qwen2_vl"):
        assert family in str(info.value)
    with pytest.raises(ValueError, match="Unknown tiny model 'tiny-bert'"):
        make_backend("tiny", model="tiny-bert")
    with pytest.raises(ValueError, match="Unknown model family"):
        family_by_name("bert")


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl", "smolvlm"])
def test_a_family_whose_processor_needs_torchvision_says_so_before_loading(model_type, tmp_path):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ValueError, match=r"needs torchvision.*pip install torchvision"):
        TransformersBackend(str(folder))


@pytest.mark.parametrize("family", OTHERS)
def test_tiny_models_of_each_family_are_small_deterministic_and_labelled(family):
    a, processor = build_tiny_model(3, family)
    b, _ = build_tiny_model(3, family)
    c, _ = build_tiny_model(4, family)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)
    assert not all(np.array_equal(sa[k].numpy(), sc[k].numpy()) for k in sa)
    assert sum(p.numel() for p in a.parameters()) < 1_000_000
    assert a.name_or_path == tiny_model_id(3, family) == f"gliomacompare/tiny-{family}-seed3"
    assert TINY_MODEL_LABEL in tiny_model_label(family) != TINY_MODEL_LABEL
    assert processor.tokenizer.model_input_names == ["input_ids", "attention_mask"]
    # the tiny Mllama keeps its id and label (answer caches are keyed by them)
    assert tiny_model_id(0) == "gliomacompare/tiny-mllama-seed0"
    assert tiny_model_label() == TINY_MODEL_LABEL


@pytest.mark.parametrize("family", OTHERS)
def test_a_saved_folder_answers_like_the_model_in_memory_with_exact_grade_scores(
    family, saved, queries
):
    backend = make_backend("transformers", model=str(saved[family]), device="cpu")
    assert backend.family.name == family and backend.describe()["family"] == family
    assert backend.model_label == tiny_model_label(family)  # the tiny label survives saving
    memory = make_backend("tiny", model=f"tiny-{family}")
    assert memory.identity()["model_id"] == tiny_model_id(0, family)
    answers = backend.answer(queries, GREEDY)
    assert [a.text for a in answers] == [a.text for a in memory.answer(queries, GREEDY)]
    assert all(a.error is None and a.finish_reason in ("stop", "length") for a in answers)
    specs = load_tasks()
    for query, answer in zip(queries, answers, strict=True):
        parsed = parse_answer(specs[query.prompt.task], answer.text, query.prompt)
        assert parsed.status in PARSE_STATUSES
        if not query.score_options:
            assert answer.option_logprobs is None
            continue
        assert answer.option_method == "sequence"
        p = answer.p_options
        assert 0 <= p["HGG"] <= 1 and p["HGG"] + p["LGG"] == pytest.approx(1.0)
        for option in ("HGG", "LGG"):
            direct = _direct_option_logprob(backend, query, option)
            assert answer.option_logprobs[option] == pytest.approx(direct, abs=1e-4)
    # one at a time, the same answers and scores as in a left-padded batch
    single = backend.answer(queries[:1], GREEDY)[0]
    assert single.text == answers[0].text
    assert single.option_logprobs["HGG"] == pytest.approx(answers[0].option_logprobs["HGG"], 1e-4)


@pytest.mark.parametrize("family", OTHERS)
def test_the_vlm_command_runs_a_local_folder_of_each_family(family, saved, synth_cohort, tmp_path):
    out = tmp_path / "vlm"
    argv = [
        "vlm", "--data", str(synth_cohort), "--backend", "transformers",
        "--model", str(saved[family]), "--device", "cpu", "--slices-per-case", "1",
        "--tasks", "grade,box", "--max-new-tokens", "8", "--bootstrap", "0", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == 8 * 2  # cases x tasks
    assert {x["model_label"] for x in lines} == {tiny_model_label(family)}
    assert all(x["status"] in PARSE_STATUSES for x in lines)
    grade = [x for x in lines if x["task"] == "grade"]
    assert all(0 <= x["p_hgg"] <= 1 and x["option_method"] == "sequence" for x in grade)
    manifest = json.loads((out / "vlm.json").read_text())
    assert manifest["identity"]["model_id"] == str(saved[family])


# --------------------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def cohort(synth_cohort):
    return discover_cases(synth_cohort)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_collator_masks_prompt_image_tokens_and_padding_in_every_family(family, cohort):
    model, processor = build_tiny_model(0, family)
    settings = ExampleSettings(slice_rule=SliceRule(max_slices=1))
    examples = list(build_examples(cohort, [HGG], ("grade", "polygon"), settings).examples)
    collator = FinetuneCollator.for_model(model, processor)
    image_ids = family_of_model(model).image_token_ids(model.config, processor)
    assert image_ids and collator.image_token_ids == image_ids
    batch = collator(examples)
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    tok = processor.tokenizer
    for row, e in enumerate(examples):
        prompt = collator.chat_text(e.prompt.text)
        answer_text = collator.chat_text(e.prompt.text, e.target)[len(prompt) :]
        learnt = labels[row][labels[row] != IGNORE_INDEX]
        assert tok.decode(learnt) == answer_text  # the answer and the end of turn, only
        assert e.target in answer_text
        n_image = sum(int((ids[row] == i).sum()) for i in image_ids)
        assert n_image >= 1
        for i in image_ids:
            assert (labels[row][ids[row] == i] == IGNORE_INDEX).all()
    assert (labels[attention == 0] == IGNORE_INDEX).all()
    assert attention[0, -1] == 0  # the short grade row is padded on the right


def _splits(cohort, train, val) -> Splits:
    ids = [c.case_id for c in cohort.cases]
    return Splits(
        train=tuple(train),
        val=tuple(val),
        test=tuple(c for c in ids if c not in (*train, *val)),
        grades={c.case_id: c.grade for c in cohort.cases},
        seed=0,
        fractions=(0.0, 0.0, 0.0),
    )


@pytest.mark.parametrize("family", OTHERS)
def test_lora_steps_on_each_family_and_the_adapter_stays_with_its_family(
    family, cohort, saved, tmp_path
):
    config = FinetuneConfig(
        epochs=2, batch_size=2, lr=3e-3, slices_per_case=1, max_val_slices=1, patience=None
    )
    splits = _splits(cohort, [HGG, LGG], ["BraTS20_Training_003"])
    result = finetune(cohort, "grade", f"tiny-{family}", tmp_path / "ft", config, splits=splits)

    assert all(math.isfinite(r.train_loss) and r.train_loss > 0 for r in result.history)
    assert result.history[-1].global_step == 2 and math.isfinite(result.best_val_loss)
    assert result.base_model == tiny_model_id(0, family)
    assert result.model_label == tiny_model_label(family)
    # LoRA reached the language model's projections, never the vision side
    from safetensors.torch import load_file

    keys = list(load_file(str(result.adapter_dir / "adapter_model.safetensors")))
    scope = FAMILIES[family].text_scope
    assert keys and all(f".{scope}." in k for k in keys)
    assert not any(FAMILIES[family].is_vision_module(k) for k in keys)
    assert any("q_proj" in k for k in keys) and any("down_proj" in k for k in keys)
    # the adapter reloads on its base (in code, and from the saved folder) and changes answers
    info = read_adapter(result.adapter_dir)
    assert info.base_model == tiny_model_id(0, family) and info.tasks == ("grade",)
    tuned = TransformersBackend.tiny(seed=0, family=family, adapter=result.adapter_dir)
    assert tuned.identity()["adapter"] == info.hash
    query = Query(
        np.full((48, 48, 3), 90, np.uint8), load_tasks()["grade"].render(48, 48), score_options=True
    )
    base = TransformersBackend.tiny(seed=0, family=family).answer([query], GREEDY)[0]
    adapted = tuned.answer([query], GREEDY)[0]
    assert adapted.option_logprobs != base.option_logprobs
    # a model of another family refuses it, naming both families
    other = next(f for f in TINY_FAMILIES if f != family)
    with pytest.raises(ValueError, match=rf"trained on a .*family {family}\).*family {other}"):
        TransformersBackend.tiny(seed=0, family=other, adapter=result.adapter_dir)
    with pytest.raises(ValueError, match=rf"family {family}"):
        TransformersBackend(str(saved[other]), adapter=result.adapter_dir, device="cpu")
