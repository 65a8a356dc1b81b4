"""Tiny, randomly initialised vision-language models, built entirely in code, offline.

The default one (``tiny``) is a tiny Llama 3.2 Vision (Mllama): the real architecture
(``MllamaForConditionalGeneration``: a tiled vision encoder, a Llama text decoder with gated
cross-attention layers), a byte-level BPE tokenizer trained here with the ``tokenizers`` library
on a fixed corpus, the Llama 3 special tokens, a Llama 3.2 Vision-style chat template and a real
``MllamaProcessor``. Other families have tiny models too (:data:`TINY_FAMILIES`: LLaVA,
Idefics3, Gemma 3; see :mod:`~GliomaCompareLib.vlm.tiny_families`), each with its real
architecture, processor class and special tokens.

Their weights are random, so their answers mean nothing: everything they produce is labelled
:data:`TINY_MODEL_LABEL` (the Mllama's label is exactly that text; another family's label adds
the family in brackets, ``tiny random-weight model (LLaVA)``, so that several tiny models in
one run stay apart and are all recognised as tiny). They exist so that tests, benchmarks,
fine-tuning tests and the CPU demo run the real code paths.

Naming: ``tiny`` and ``tiny-mllama`` are the tiny Mllama; ``tiny-llava``, ``tiny-idefics3``,
``tiny-gemma3`` the others (:func:`parse_tiny_name`). The ``tiny`` backend takes them as its
``model`` (``--backend tiny --model tiny-llava``; in a run config ``backend: tiny`` with
``model: tiny-llava``), fine-tuning as its ``--model``. ``--seed`` picks the weights.

Sizes of the Mllama (about 0.28 M parameters): text hidden 64, 4 layers (cross-attention at
layers 1 and 3), 4 heads; vision hidden 32, 2 + 1 layers, one 56x56 tile of 14x14 patches (a
240x240 slice is resized to one tile). The cross-attention gates, which Mllama initialises to
zero, are set to 1 so that answers depend on the image. Greedy generation of 64 tokens takes a
few hundredths of a second per answer on a CPU.

Determinism: for a given family and ``seed``, :func:`build_tiny_model` gives the same tokenizer
and the same weights in every process (the corpus is fixed in code, not read from the editable
prompt templates, so editing prompts does not change the models).

Traps handled (FACTS.md): the Mllama ``<|image|>`` token id equals the text vocabulary size (it
is added after training, and ``image_token_index`` is set to it); the tokenizers emit only
``input_ids`` and ``attention_mask``; padding is on the left for batched generation.
"""

from __future__ import annotations

import json
from pathlib import Path

from GliomaCompareLib.vlm.families import FAMILIES
from GliomaCompareLib.vlm.tiny_families import (
    MLLAMA_CHAT_TEMPLATE,
    MLLAMA_IMAGE_TOKEN,
    MLLAMA_SPECIAL_TOKENS,
    TINY_BUILDERS,
    build_mllama_processor,
    build_mllama_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "MODEL_INFO_FILE",
    "SPECIAL_TOKENS",
    "TINY_FAMILIES",
    "TINY_MODEL_LABEL",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "parse_tiny_name",
    "save_tiny_model",
    "tiny_model_id",
    "tiny_model_label",
    "tiny_model_names",
]

#: The label every output of a tiny model carries (the tiny Mllama's label exactly).
TINY_MODEL_LABEL = "tiny random-weight model"
#: File written beside a saved model that says what it is (read by the transformers backend).
MODEL_INFO_FILE = "gliomacompare_model.json"
#: Llama 3 special tokens of the tiny Mllama (``<|image|>`` is added last).
SPECIAL_TOKENS = MLLAMA_SPECIAL_TOKENS
IMAGE_TOKEN = MLLAMA_IMAGE_TOKEN
#: The tiny Mllama's Llama 3.2 Vision-style chat template.
CHAT_TEMPLATE = MLLAMA_CHAT_TEMPLATE
#: Families with a tiny model (the first is the default, ``tiny``).
TINY_FAMILIES: tuple[str, ...] = tuple(TINY_BUILDERS)
_DEFAULT_FAMILY = "mllama"
#: What the other families' tiny labels call them.
_LABEL_NAMES = {"llava": "LLaVA", "idefics3": "Idefics3", "gemma3": "Gemma 3"}


def tiny_model_names() -> list[str]:
    """The model names the ``tiny`` backend and fine-tuning accept (``tiny``, ``tiny-<family>``)."""
    return ["tiny", *(f"tiny-{family}" for family in TINY_FAMILIES)]


def parse_tiny_name(name: str | None) -> str:
    """The family of a tiny model name: None, ``tiny`` and ``tiny-mllama`` give ``mllama``;
    ``tiny-<family>`` gives ``<family>``.

    Raises:
        ValueError: any other name, listing the accepted ones.
    """
    if name in (None, "", "tiny"):
        return _DEFAULT_FAMILY
    family = name[len("tiny-") :] if name.startswith("tiny-") else None
    if family not in TINY_BUILDERS:
        raise ValueError(
            f"Unknown tiny model {name!r}; the tiny models are {', '.join(tiny_model_names())} "
            "(for a model folder use the transformers backend)"
        )
    return family


def tiny_model_id(seed: int = 0, family: str = _DEFAULT_FAMILY) -> str:
    """The model id of the tiny model of ``family`` built with ``seed`` (recorded by adapters
    and answer caches; the Mllama's is ``gliomacompare/tiny-mllama-seed<seed>``)."""
    parse_tiny_name(f"tiny-{family}")
    return f"gliomacompare/tiny-{family}-seed{int(seed)}"


def tiny_model_label(family: str = _DEFAULT_FAMILY) -> str:
    """What tables call the tiny model of ``family`` (always contains :data:`TINY_MODEL_LABEL`)."""
    parse_tiny_name(f"tiny-{family}")
    if family == _DEFAULT_FAMILY:
        return TINY_MODEL_LABEL
    return f"{TINY_MODEL_LABEL} ({_LABEL_NAMES.get(family, FAMILIES[family].display)})"


def build_tiny_tokenizer():
    """The tiny Mllama's byte-level BPE ``PreTrainedTokenizerFast`` with the Llama 3 special
    tokens and the chat template; ``<|image|>`` has the id equal to the text vocabulary size."""
    return build_mllama_tokenizer()


def build_tiny_processor():
    """``MllamaProcessor`` of the tiny Mllama (tokenizer + 1-tile 56x56 image processor)."""
    return build_mllama_processor()


def build_tiny_model(seed: int = 0, family: str = _DEFAULT_FAMILY):
    """Build a tiny model and its processor.

    Args:
        seed: weight initialisation seed (same seed, same weights, in any process).
        family: one of :data:`TINY_FAMILIES` (default the Mllama).

    Returns:
        ``(model, processor)``: the family's ``...ForConditionalGeneration`` in eval mode on
        the CPU (float32) and its processor. ``model.name_or_path`` is :func:`tiny_model_id`
        ``(seed, family)``, which peft records as an adapter's base model.

    Raises:
        ValueError: an unknown family.
    """
    model_id = tiny_model_id(seed, family)
    model, processor = TINY_BUILDERS[family](seed)
    model.config.name_or_path = model_id
    model.name_or_path = model_id
    return model, processor


def save_tiny_model(folder: str | Path, seed: int = 0, family: str = _DEFAULT_FAMILY) -> Path:
    """Save a tiny model, its processor and :data:`MODEL_INFO_FILE` to ``folder``.

    The folder then loads offline with ``AutoModelForImageTextToText.from_pretrained`` and
    ``AutoProcessor.from_pretrained`` (and through the ``transformers`` backend, which keeps the
    tiny label from the info file).

    Returns:
        the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_model(seed, family)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    info = {
        "model_id": tiny_model_id(seed, family),
        "model_label": tiny_model_label(family),
        "seed": int(seed),
        "note": "randomly initialised; built by GliomaCompareLib.vlm.tiny; answers mean nothing",
    }
    if family != _DEFAULT_FAMILY:  # the Mllama's file stays as it was (its folder hash)
        info["family"] = family
    (folder / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return folder
