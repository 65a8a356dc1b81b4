"""A tiny, randomly initialised Llama 3.2 Vision (Mllama), built entirely in code, offline.

It has the real architecture (``MllamaForConditionalGeneration``: a tiled vision encoder, a
Llama text decoder with gated cross-attention layers), a byte-level BPE tokenizer trained here
with the ``tokenizers`` library on a fixed corpus, the Llama 3 special tokens, a Llama 3.2
Vision-style chat template and a real ``MllamaProcessor``. Its weights are random, so its
answers mean nothing: everything it produces is labelled :data:`TINY_MODEL_LABEL`. It exists so
that tests, benchmarks, fine-tuning tests and the CPU demo run the real code paths.

Sizes (about 0.28 M parameters): text hidden 64, 4 layers (cross-attention at layers 1 and 3),
4 heads; vision hidden 32, 2 + 1 layers, one 56x56 tile of 14x14 patches (a 240x240 slice is
resized to one tile). The cross-attention gates, which Mllama initialises to zero, are set to 1
so that answers depend on the image. Greedy generation of 64 tokens takes a few hundredths of a second per
answer on a CPU.

Determinism: for a given ``seed``, :func:`build_tiny_model` gives the same tokenizer and the same
weights in every process (the corpus is fixed in this file, not read from the editable prompt
templates, so editing prompts does not change the model).

Traps handled here (FACTS.md): the ``<|image|>`` token id equals the text vocabulary size (it is
added after training, and ``image_token_index`` is set to it); the tokenizer emits only
``input_ids`` and ``attention_mask``; padding is on the left for batched generation.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "CHAT_TEMPLATE",
    "MODEL_INFO_FILE",
    "SPECIAL_TOKENS",
    "TINY_MODEL_LABEL",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "save_tiny_model",
    "tiny_model_id",
]

#: The label every output of the tiny model carries.
TINY_MODEL_LABEL = "tiny random-weight model"
#: File written beside a saved model that says what it is (read by the transformers backend).
MODEL_INFO_FILE = "gliomacompare_model.json"
#: Llama 3 special tokens (``<|image|>`` is added last so its id == text vocab size).
SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
IMAGE_TOKEN = "<|image|>"
#: A Llama 3.2 Vision-style chat template (images become ``<|image|>`` before the text).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
_VOCAB_SIZE = 640
_TILE = 56

# A fixed corpus: the words of the default prompts and answers, JSON punctuation and digits.
_CORPUS_LINES = (
    "This image is an axial FLAIR MRI slice of a human brain that contains a glioma, shown as a "
    "240x240 pixel greyscale image in radiological convention (the patient's right side is on "
    "the left of the image, anterior is at the top).",
    "Classify the glioma as high grade (HGG) or low grade (LGG).",
    "Give the centre of the tumour as one point.",
    "Give the tightest axis-aligned bounding box around the whole tumour (tumour core and "
    "surrounding oedema).",
    "Outline the whole tumour with one closed polygon of 3 to 8 vertices, listed in order "
    "around the boundary.",
    "Coordinates are pixels: x is the column, from 0 at the left edge to 239 at the right edge; "
    "y is the row, from 0 at the top edge to 239 at the bottom edge.",
    "Coordinates are fractions of the image size: x from 0.0 at the left edge to 1.0 at the "
    "right edge. Coordinates are thousandths of the image size.",
    "(x_min, y_min) is the top-left corner and (x_max, y_max) the bottom-right corner of the box.",
    "Answer with one JSON object and nothing else, in exactly this form: where the value is one "
    "of HGG or LGG.",
    'user assistant system {"grade": "HGG"} {"grade": "LGG"} {"x": 120, "y": 96}',
    '{"x_min": 80, "y_min": 64, "x_max": 150, "y_max": 131}',
    '{"points": [[80, 64], [150, 70], [140, 131], [90, 120]]}',
    "I cannot determine the grade from this image. The tumour is in the left frontal lobe.",
    "high-grade low-grade glioblastoma oedema edema enhancing necrosis hyperintense lesion mass",
)


def tiny_model_id(seed: int = 0) -> str:
    """The model id of the tiny model built with ``seed`` (recorded by adapters and caches)."""
    return f"gliomacompare/tiny-mllama-seed{int(seed)}"


def _corpus() -> list[str]:
    numbers = [", ".join(str(n) for n in range(start, start + 16)) for start in range(0, 256, 16)]
    decimals = [" ".join(f"0.{d}{e}" for e in range(10)) for d in range(10)]
    return list(_CORPUS_LINES) * 4 + numbers * 2 + decimals


def build_tiny_tokenizer():
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the Llama 3 special tokens and the
    chat template; ``<|image|>`` has the id equal to the text vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.add_special_tokens([IMAGE_TOKEN])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return fast


def _image_processor():
    try:  # transformers >= 5 without torchvision: the PIL processor, named explicitly
        from transformers.models.mllama.image_processing_pil_mllama import (
            MllamaImageProcessorPil as ImageProcessor,
        )
    except ImportError:  # older transformers
        from transformers import MllamaImageProcessor as ImageProcessor
    return ImageProcessor(size={"height": _TILE, "width": _TILE}, max_image_tiles=1)


def build_tiny_processor():
    """``MllamaProcessor`` of the tiny model (tokenizer + 1-tile 56x56 image processor)."""
    from transformers import MllamaProcessor

    return MllamaProcessor(_image_processor(), build_tiny_tokenizer(), chat_template=CHAT_TEMPLATE)


def build_tiny_model(seed: int = 0):
    """Build the tiny Mllama model and its processor.

    Args:
        seed: weight initialisation seed (same seed, same weights, in any process).

    Returns:
        ``(model, processor)``: an ``MllamaForConditionalGeneration`` in eval mode on the CPU
        (float32) and its ``MllamaProcessor``. ``model.name_or_path`` is
        :func:`tiny_model_id` ``(seed)``, which peft records as an adapter's base model.
    """
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    processor = build_tiny_processor()
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text_vocab = image_id  # everything before <|image|>
    if image_id != len(tok) - 1:
        raise RuntimeError(f"tiny tokenizer: <|image|> id {image_id} is not the last token")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    config = MllamaConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "intermediate_size": 64,
            "vision_output_dim": 64,
            "image_size": _TILE,
            "patch_size": 14,
            "max_num_tiles": 1,
            "supported_aspect_ratios": [[1, 1]],
            "intermediate_layers_indices": [0],
        },
        text_config={
            "vocab_size": text_vocab,
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "cross_attention_layers": [1, 3],
            "max_position_embeddings": 4096,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": [eot, tok.convert_tokens_to_ids("<|end_of_text|>")],
            "pad_token_id": tok.pad_token_id,
        },
        image_token_index=image_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        model = MllamaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(generator_state)
    # Mllama initialises its cross-attention gates to zero (a fresh model ignores the image);
    # open them so that the tiny model's answers depend on the image, as a trained model's do
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = [eot, tok.convert_tokens_to_ids("<|end_of_text|>")]
    model.generation_config.bos_token_id = tok.bos_token_id
    model_id = tiny_model_id(seed)
    model.config.name_or_path = model_id
    model.name_or_path = model_id
    return model, processor


def save_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    """Save the tiny model, its processor and :data:`MODEL_INFO_FILE` to ``folder``.

    The folder then loads offline with ``AutoModelForImageTextToText.from_pretrained`` and
    ``AutoProcessor.from_pretrained`` (and through the ``transformers`` backend, which keeps the
    :data:`TINY_MODEL_LABEL` label from the info file).

    Returns:
        the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_model(seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    info = {
        "model_id": tiny_model_id(seed),
        "model_label": TINY_MODEL_LABEL,
        "seed": int(seed),
        "note": "randomly initialised; built by GliomaCompareLib.vlm.tiny; answers mean nothing",
    }
    (folder / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return folder
