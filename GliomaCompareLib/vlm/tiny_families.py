"""The tiny random-weight models of each family, built entirely in code (no download).

One builder per family (:data:`TINY_BUILDERS`): it trains a small byte-level BPE tokenizer on a
fixed corpus with the family's special tokens, writes a chat template shaped like the family's
real one, builds the family's real processor (its own PIL image processor class, so no
torchvision is needed) and a randomly initialised model of the family's real architecture with
a few tiny layers. The public entry points are in :mod:`GliomaCompareLib.vlm.tiny`
(:func:`~GliomaCompareLib.vlm.tiny.build_tiny_model`, ``save_tiny_model`` ...).

Families built here (all take an image of 56 x 56 pixels in 14 x 14 patches; 0.15 to 0.3 M
parameters; a forward pass takes milliseconds on a CPU):

- ``mllama``: Llama 3.2 Vision (:func:`build_mllama`; the ``tiny`` model of the DESIGN, whose
  tokenizer, weights and id never change: answer caches are keyed by them). Its ``<|image|>``
  token is added after training, so its id equals the text vocabulary size.
- ``llava``: a CLIP vision tower, a two-layer projector and a Llama decoder; the image becomes
  16 ``<image>`` tokens; ``USER: <image>\\n... ASSISTANT:`` chat format, ``</s>`` ends a turn.
- ``idefics3``: the SigLIP-style vision encoder, the pixel-shuffle connector (scale factor 2)
  and a Llama decoder; the image becomes ``<fake_token_around_image><global-img>`` + 4
  ``<image>`` + ``<fake_token_around_image>`` (no image splitting); ``User:<image>...
  <end_of_utterance>\\nAssistant:`` chat format.
- ``gemma3``: a SigLIP vision tower, the pooling projector and a Gemma 3 decoder (sliding and
  global attention layers); the image becomes ``<start_of_image>`` + 4 ``<image_soft_token>``
  + ``<end_of_image>``; ``<start_of_turn>user ... <end_of_turn>`` chat format.

Qwen2-VL is supported by the ``transformers`` backend (:mod:`~GliomaCompareLib.vlm.families`)
but has no tiny model here: its processor needs torchvision (for its video processor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = [
    "CORPUS_LINES",
    "MLLAMA_CHAT_TEMPLATE",
    "MLLAMA_IMAGE_TOKEN",
    "MLLAMA_SPECIAL_TOKENS",
    "TINY_BUILDERS",
    "build_mllama",
    "build_mllama_processor",
    "build_mllama_tokenizer",
    "corpus",
    "train_tokenizer",
]

_VOCAB_SIZE = 640
_MLLAMA_TILE = 56
_IMAGE = 56  # image side of the other families
_PATCH = 14

# A fixed corpus: the words of the default prompts and answers, JSON punctuation and digits.
CORPUS_LINES = (
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
#: Role words of the other families' chat formats (not in the Mllama corpus, which is fixed).
_CHAT_LINES = ("USER: ASSISTANT: User: Assistant: model\n\n", "user\nmodel\n")


def corpus(extra: Sequence[str] = ()) -> list[str]:
    """The tokenizer training corpus (the Mllama tokenizer uses it without ``extra``)."""
    numbers = [", ".join(str(n) for n in range(start, start + 16)) for start in range(0, 256, 16)]
    decimals = [" ".join(f"0.{d}{e}" for e in range(10)) for d in range(10)]
    return [*CORPUS_LINES, *extra] * 4 + numbers * 2 + decimals


def train_tokenizer(
    special_tokens: Sequence[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    chat_template: str,
    added_after: Sequence[str] = (),
    extra_lines: Sequence[str] = (),
    extra_special_tokens: dict[str, str] | None = None,
):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :func:`corpus`.

    Args:
        special_tokens: special tokens, given the first ids in this order.
        bos, eos, pad: the tokenizer's begin, end and padding tokens.
        chat_template: its chat template.
        added_after: special tokens added after training (their ids follow the vocabulary).
        extra_lines: more corpus lines.
        extra_special_tokens: named special tokens the family's processor reads as tokenizer
            attributes (e.g. Gemma 3's ``boi_token``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(extra_lines), trainer)
    if added_after:
        tokenizer.add_special_tokens(list(added_after))
    kwargs = {"extra_special_tokens": dict(extra_special_tokens)} if extra_special_tokens else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        chat_template=chat_template,
        **kwargs,
    )
    if added_after:
        fast.add_special_tokens({"additional_special_tokens": list(added_after)})
    return fast


def _seeded(build: Callable, seed: int):
    """``build()`` with torch's generator seeded by ``seed`` (its state restored afterwards)."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def _text_config(tok, **extra) -> dict:
    """A tiny decoder's settings: hidden 64, 2 layers, 4 heads (2 key/value heads)."""
    return {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        **extra,
    }


def _vision_config(**extra) -> dict:
    """A tiny ViT's settings: hidden 32, 2 layers, 56 x 56 images in 14 x 14 patches."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": _IMAGE,
        "patch_size": _PATCH,
        **extra,
    }


def _finish(model, tok, eos_ids: list[int]):
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


# --------------------------------------------------------------------------- mllama

#: Llama 3 special tokens (``<|image|>`` is added last so its id == text vocab size).
MLLAMA_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
MLLAMA_IMAGE_TOKEN = "<|image|>"
#: A Llama 3.2 Vision-style chat template (images become ``<|image|>`` before the text).
MLLAMA_CHAT_TEMPLATE = (
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


def build_mllama_tokenizer():
    """The tiny Mllama's tokenizer: the Llama 3 special tokens and the chat template;
    ``<|image|>`` has the id equal to the text vocabulary size."""
    return train_tokenizer(
        MLLAMA_SPECIAL_TOKENS,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        chat_template=MLLAMA_CHAT_TEMPLATE,
        added_after=(MLLAMA_IMAGE_TOKEN,),
    )


def _mllama_image_processor():
    try:  # transformers >= 5 without torchvision: the PIL processor, named explicitly
        from transformers.models.mllama.image_processing_pil_mllama import (
            MllamaImageProcessorPil as ImageProcessor,
        )
    except ImportError:  # older transformers
        from transformers import MllamaImageProcessor as ImageProcessor
    return ImageProcessor(size={"height": _MLLAMA_TILE, "width": _MLLAMA_TILE}, max_image_tiles=1)


def build_mllama_processor():
    """``MllamaProcessor`` of the tiny Mllama (tokenizer + 1-tile 56x56 image processor)."""
    from transformers import MllamaProcessor

    return MllamaProcessor(
        _mllama_image_processor(), build_mllama_tokenizer(), chat_template=MLLAMA_CHAT_TEMPLATE
    )


def build_mllama(seed: int = 0):
    """The tiny Llama 3.2 Vision: text hidden 64, 4 layers (cross-attention at 1 and 3);
    vision hidden 32, 2 + 1 layers, one 56x56 tile. Mllama initialises its cross-attention
    gates to zero (a fresh model ignores the image); they are set to 1 so that answers depend
    on the image, as a trained model's do."""
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    processor = build_mllama_processor()
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(MLLAMA_IMAGE_TOKEN)
    if image_id != len(tok) - 1:
        raise RuntimeError(f"tiny tokenizer: <|image|> id {image_id} is not the last token")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    eos_ids = [eot, tok.convert_tokens_to_ids("<|end_of_text|>")]
    config = MllamaConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "intermediate_size": 64,
            "vision_output_dim": 64,
            "image_size": _MLLAMA_TILE,
            "patch_size": 14,
            "max_num_tiles": 1,
            "supported_aspect_ratios": [[1, 1]],
            "intermediate_layers_indices": [0],
        },
        text_config={
            "vocab_size": image_id,  # everything before <|image|>
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "cross_attention_layers": [1, 3],
            "max_position_embeddings": 4096,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": eos_ids,
            "pad_token_id": tok.pad_token_id,
        },
        image_token_index=image_id,
    )
    model = _seeded(lambda: MllamaForConditionalGeneration(config), seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)
    return _finish(model, tok, eos_ids), processor


# --------------------------------------------------------------------------- llava


#: A LLaVA-1.5-style chat template (``USER: <image>\\n... ASSISTANT: answer</s>``).
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ 'USER: ' if message['role'] == 'user' else ' ASSISTANT: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


def build_llava(seed: int = 0):
    """The tiny LLaVA (see module docstring)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tok = train_tokenizer(
        ("<unk>", "<s>", "</s>", "<pad>", "<image>"),
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        chat_template=LLAVA_CHAT_TEMPLATE,
        extra_lines=_CHAT_LINES,
    )
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": _IMAGE}, crop_size={"height": _IMAGE, "width": _IMAGE}
    )
    processor = LlavaProcessor(
        image_processor,
        tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's class token, dropped by "default"
    )
    config = LlavaConfig(
        vision_config=_vision_config(model_type="clip_vision_model", projection_dim=32),
        text_config=_text_config(tok, model_type="llama"),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(_IMAGE // _PATCH) ** 2,
    )
    model = _seeded(lambda: LlavaForConditionalGeneration(config), seed)
    return _finish(model, tok, [tok.eos_token_id]), processor


# --------------------------------------------------------------------------- idefics3

#: The Idefics3 chat template (as HuggingFaceM4/Idefics3-8B-Llama3 writes it).
IDEFICS3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics3(seed: int = 0):
    """The tiny Idefics3 (see module docstring)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    tok = train_tokenizer(
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<fake_token_around_image>",
            "<image>",
            "<global-img>",
            "<end_of_utterance>",
        ),
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<|finetune_right_pad_id|>",
        chat_template=IDEFICS3_CHAT_TEMPLATE,
        extra_lines=_CHAT_LINES,
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": _IMAGE},
        max_image_size={"longest_edge": _IMAGE},
    )
    scale = 2
    seq_len = (_IMAGE // _PATCH) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor, tok, image_seq_len=seq_len, chat_template=IDEFICS3_CHAT_TEMPLATE
    )
    config = Idefics3Config(
        vision_config=_vision_config(),
        text_config=_text_config(tok, model_type="llama"),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    model = _seeded(lambda: Idefics3ForConditionalGeneration(config), seed)
    return _finish(model, tok, [tok.eos_token_id]), processor


# --------------------------------------------------------------------------- gemma3

#: A Gemma 3-style chat template (the assistant's role is ``model``).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) "
    "+ '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def build_gemma3(seed: int = 0):
    """The tiny Gemma 3 (see module docstring)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = train_tokenizer(
        (
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        chat_template=GEMMA3_CHAT_TEMPLATE,
        extra_lines=_CHAT_LINES,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tokens_per_image = 4  # 4 x 4 patches pooled to 2 x 2
    processor = Gemma3Processor(
        Gemma3ImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}),
        tok,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    eos_ids = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    config = Gemma3Config(
        vision_config=_vision_config(model_type="siglip_vision_model"),
        text_config=_text_config(
            tok,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=64,
            eos_token_id=eos_ids,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        mm_tokens_per_image=tokens_per_image,
    )
    model = _seeded(lambda: Gemma3ForConditionalGeneration(config), seed)
    return _finish(model, tok, eos_ids), processor


#: family name -> ``build(seed) -> (model, processor)``.
TINY_BUILDERS: dict[str, Callable] = {
    "mllama": build_mllama,
    "llava": build_llava,
    "idefics3": build_idefics3,
    "gemma3": build_gemma3,
}
