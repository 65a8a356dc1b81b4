"""The tiny Llama 3.2 Vision and the transformers backend (real models, built and saved in code)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from GliomaCompareLib.vlm.backends import make_backend
from GliomaCompareLib.vlm.hf_backend import (
    ADAPTER_META_FILE,
    TransformersBackend,
    check_adapter_base,
    folder_fingerprint,
    read_adapter,
)
from GliomaCompareLib.vlm.tasks import load_tasks
from GliomaCompareLib.vlm.tiny import (
    MODEL_INFO_FILE,
    TINY_MODEL_LABEL,
    build_tiny_model,
    save_tiny_model,
    tiny_model_id,
)
from GliomaCompareLib.vlm.types import DecodingConfig, Query

GREEDY = DecodingConfig(max_new_tokens=24)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # nothing may be downloaded at test time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return TransformersBackend.tiny(seed=0)


@pytest.fixture(scope="module")
def queries():
    tasks = load_tasks()
    rng = np.random.default_rng(1)
    out = []
    for i, task in enumerate(["grade", "point", "box", "polygon", "grade", "box"]):
        size = 48 if i % 2 else 64  # different sizes -> different prompt lengths in one batch
        image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        prompt = tasks[task].render(size, size)
        out.append(Query(image=image, prompt=prompt, seed=i, score_options=task == "grade"))
    return out


def _state_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_tiny_model_is_deterministic_and_avoids_the_traps():
    model_a, processor = build_tiny_model(seed=3)
    model_b, _ = build_tiny_model(seed=3)
    model_c, _ = build_tiny_model(seed=4)
    assert _state_hash(model_a) == _state_hash(model_b) != _state_hash(model_c)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image|>")
    assert image_id == model_a.config.text_config.vocab_size == model_a.config.image_token_index
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert tok.padding_side == "left"
    for token in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert tok.convert_tokens_to_ids(token) < image_id
    assert model_a.name_or_path == tiny_model_id(3)
    n_params = sum(p.numel() for p in model_a.parameters())
    assert n_params < 1_000_000


def test_tiny_answers_depend_on_the_image(tiny, queries):
    a, b = queries[1], queries[1]
    other = Query(image=255 - a.image, prompt=a.prompt, seed=a.seed)
    texts = [x.text for x in tiny.answer([a, b, other], GREEDY)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_batched_greedy_equals_one_at_a_time(tiny, queries):
    batched = tiny.answer(queries, GREEDY)
    single = [tiny.answer([q], GREEDY)[0] for q in queries]
    assert [a.text for a in batched] == [a.text for a in single]
    assert all(a.error is None for a in batched)
    assert all(a.finish_reason in ("stop", "length") for a in batched)
    for a, s in zip(batched, single, strict=True):
        if a.option_logprobs:
            for option, value in a.option_logprobs.items():
                assert value == pytest.approx(s.option_logprobs[option], abs=1e-4)


def test_grade_probabilities_are_teacher_forced_option_scores(tiny, queries):
    import torch

    query = queries[0]
    answer = tiny.answer([query], GREEDY)[0]
    assert answer.option_method == "sequence"
    assert set(answer.option_logprobs) == {"HGG", "LGG"}
    assert sum(answer.p_options.values()) == pytest.approx(1.0)
    # recompute one option by hand: log P(option tokens + '"}' | prompt + '{"grade": "')
    context = tiny.chat_text(query.prompt.text) + query.prompt.answer_prefix
    tok = tiny.processor.tokenizer
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    for option in ("HGG", "LGG"):
        full = context + option + query.prompt.answer_suffix
        inputs = tiny._inputs([query.image], [full])
        ids = inputs["input_ids"][0]
        assert ids[: len(ctx_ids)].tolist() == ctx_ids
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(**inputs).logits[0].float(), -1)
        expected = sum(logp[t - 1, ids[t]].item() for t in range(len(ctx_ids), len(ids)))
        assert answer.option_logprobs[option] == pytest.approx(expected, abs=1e-4)


def test_decoding_config_overrides_checkpoint_sampling_defaults(tiny, queries):
    generation = tiny.model.generation_config
    old = (generation.do_sample, generation.temperature, generation.top_p)
    reference = [a.text for a in tiny.answer(queries[:3], GREEDY)]
    try:
        generation.do_sample, generation.temperature, generation.top_p = True, 5.0, 0.5
        again = [a.text for a in tiny.answer(queries[:3], GREEDY)]
    finally:
        generation.do_sample, generation.temperature, generation.top_p = old
    assert again == reference  # greedy stays greedy whatever the checkpoint says
    hot = DecodingConfig.from_temperature(1.5, max_new_tokens=24, seed=0)
    one = [a.text for a in tiny.answer(queries[:3], hot)]
    two = [a.text for a in tiny.answer(queries[:3], hot)]
    assert one == two  # same seeds, same samples
    reseeded = [Query(q.image, q.prompt, seed=q.seed + 100) for q in queries[:3]]
    assert [a.text for a in tiny.answer(reseeded, hot)] != one
    assert one != reference


def test_transformers_backend_loads_a_saved_model_offline(tmp_path, tiny, queries):
    folder = save_tiny_model(tmp_path / "tiny", seed=0)
    assert (folder / MODEL_INFO_FILE).is_file()
    backend = make_backend("transformers", model=str(folder), device="cpu")
    assert backend.name == "transformers"
    assert backend.model_label == TINY_MODEL_LABEL  # the label survives saving
    assert backend.identity()["dtype"] == "float32"
    assert backend.identity()["revision"] == folder_fingerprint(folder)
    loaded = [a.text for a in backend.answer(queries, GREEDY)]
    assert loaded == [a.text for a in tiny.answer(queries, GREEDY)]


def test_the_tiny_backend_names_its_models(tiny):
    """``tiny`` and ``tiny-mllama`` are the same model (same cache identity); the other tiny
    families are picked by name and keep the tiny label."""
    assert make_backend("tiny", model="tiny-mllama").identity() == tiny.identity()
    assert make_backend("tiny").identity() == tiny.identity()
    assert tiny.family.name == "mllama" and tiny.model_label == TINY_MODEL_LABEL
    llava = make_backend("tiny", model="tiny-llava", seed=2)
    assert llava.family.name == "llava"
    assert llava.identity()["model_id"] == "gliomacompare/tiny-llava-seed2"
    assert TINY_MODEL_LABEL in llava.model_label and llava.model_label != TINY_MODEL_LABEL
    with pytest.raises(ValueError, match="tiny-idefics3"):
        make_backend("tiny", model="meta-llama/Llama-3.2-11B-Vision-Instruct")


def test_missing_model_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        TransformersBackend("meta-llama/Llama-3.2-11B-Vision-Instruct", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "hf download meta-llama/Llama-3.2-11B-Vision-Instruct" in message
    assert str(tmp_path) in message and "--model /path/to/folder" in message
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        TransformersBackend(str(tmp_path / "no" / "such" / "folder"))


def test_4bit_needs_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: 4-bit may load")
    folder = save_tiny_model(tmp_path / "tiny")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        TransformersBackend(str(folder), load_in_4bit=True)
    with pytest.raises(ValueError, match="not quantised"):
        make_backend("tiny", load_in_4bit=True)


def _make_adapter(folder, seed=0):
    """A real LoRA adapter for the tiny model, with non-zero B so that it changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = build_tiny_model(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 2.0)
    peft_model.save_pretrained(folder)
    return folder


def test_adapter_loads_changes_answers_and_wrong_base_is_refused(tmp_path, tiny, queries):
    folder = _make_adapter(tmp_path / "adapter")
    info = read_adapter(folder)
    assert info.base_model == tiny_model_id(0)
    adapted = TransformersBackend.tiny(seed=0, adapter=folder)
    assert adapted.identity()["adapter"] == info.hash
    assert adapted.identity() != tiny.identity()
    base = [a.text for a in tiny.answer(queries, GREEDY)]
    assert [a.text for a in adapted.answer(queries, GREEDY)] != base
    with pytest.raises(ValueError, match="trained on base model"):
        TransformersBackend.tiny(seed=1, adapter=folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-model"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="someone/other-model"):
        check_adapter_base(read_adapter(folder), [tiny_model_id(0)])
    # the fine-tuning's meta file names the base and the task; a local copy of a hub model
    # matches its hub id
    meta = {"base_model": "meta-llama/Llama-3.2-11B-Vision-Instruct", "task": "box"}
    (folder / "gliomacompare_adapter.json").write_text(json.dumps(meta))
    info = read_adapter(folder)
    assert info.tasks == ("box",)
    check_adapter_base(info, ["/models/Llama-3.2-11B-Vision-Instruct"])
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        read_adapter(tmp_path)


def test_adapter_fingerprint_ignores_when_and_where_it_was_trained(tmp_path):
    """Retraining the same adapter gives the same hash (the manifest and the answer cache use
    it); other weights or other settings give another."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights-1")
    meta = {
        "base_model": "gliomacompare/tiny-mllama-seed0",
        "training": {"rank": 8, "lr": 0.005},
        "history": [{"epoch": 1, "train_loss": 0.5, "seconds": 9.1}],
        "created": "2026-11-29T04:00:00+0000",
        "split_file": "/tmp/run-a/splits.json",
    }
    (folder / ADAPTER_META_FILE).write_text(json.dumps(meta))
    first = folder_fingerprint(folder)
    again = dict(meta, created="2026-11-30T09:00:00+0000", split_file="/tmp/run-b/splits.json")
    again["history"] = [dict(meta["history"][0], seconds=10.3)]
    (folder / ADAPTER_META_FILE).write_text(json.dumps(again))
    assert folder_fingerprint(folder) == first
    (folder / ADAPTER_META_FILE).write_text(json.dumps(dict(meta, training={"rank": 16})))
    assert folder_fingerprint(folder) != first
    (folder / ADAPTER_META_FILE).write_text(json.dumps(meta))
    (folder / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert folder_fingerprint(folder) != first
