"""Model families: what differs between vision-language model architectures, in one small
adapter per family.

The ``transformers`` backend, the fine-tuning collator and the LoRA trainer are generic: they
load any local image-text-to-text model with ``AutoModelForImageTextToText`` /
``AutoProcessor``, render prompts with the processor's chat template (the messages of
:func:`~GliomaCompareLib.vlm.types.build_messages`: one ``{"type": "image"}`` item before the
text, a format every supported family's template reads) and let the processor expand the image
placeholder into the family's image tokens. What is left model-specific lives in a
:class:`Family`:

- **which models** (``model_types``: the ``model_type`` of ``config.json``; ``architectures``:
  the model classes, which peft records in an adapter's ``adapter_config.json``);
- **where the answer ends** (``stop_tokens``: end-of-turn tokens generated after an answer,
  beside the tokenizer's end-of-sequence token) and the padding token used when the tokenizer
  has none (``pad_tokens``);
- **which modules LoRA adapts** (``text_scope``: the module holding the language model, so
  LoRA reaches its attention and MLP projections and never the vision tower or the projector;
  ``vision_scopes``: the image-side modules, which must receive no LoRA layer);
- **which tokens are image tokens** (``image_token_attrs``: the config attributes naming them);
  the collator never makes them training targets.

Grade probabilities need no family hook: the backend scores each label option by a
teacher-forced pass over ``prompt + answer prefix + option + suffix`` *with the image*, and
counts only the tokens after the longest token prefix shared with ``prompt + answer prefix``.
The processor expands the image placeholder before the answer (into one ``<|image|>`` for
Mllama, many ``<image>`` / ``<image_soft_token>`` / ``<|image_pad|>`` tokens for the others), so
the option's tokens are always the last ones of the row, the same in every family.

A family is found from ``config.json`` (:func:`detect_family`) or from a loaded model
(:func:`family_of_model`); an unknown ``model_type`` raises :class:`ValueError` naming the
supported ones (:data:`FAMILIES`).

What has been run: Mllama, LLaVA, Idefics3 and Gemma 3 with tiny random-weight models built in
code (:mod:`~GliomaCompareLib.vlm.tiny_families`): loading from a folder, generation, P(HGG),
the collator and LoRA steps (``Testing/test_vlm_families.py``). The ``smolvlm`` and
``qwen2_vl`` adapters follow the transformers 5.24 sources (module names, special tokens) but
have not been run: their processors need torchvision, which the test environment lacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "FAMILIES",
    "Family",
    "detect_family",
    "family_by_name",
    "family_for_architectures",
    "family_for_model_type",
    "family_of_model",
    "supported_model_types",
]

#: The FinetuneConfig ``target_scope`` that means "the language model, whatever the family
#: calls it" (its default).
GENERIC_TEXT_SCOPE = "language_model"


@dataclass(frozen=True)
class Family:
    """The model-specific parts of one family of vision-language models (module docstring).

    Attributes:
        name: short name (``mllama``, ``llava`` ...), used by ``tiny-<name>`` model names.
        display: what people call it (``Llama 3.2 Vision``).
        model_types: ``config.json`` ``model_type`` values of this family.
        architectures: model class names (``config.json`` ``architectures``; peft records the
            class an adapter was trained on).
        text_scope: name of the module holding the language model (LoRA stays under it).
        vision_scopes: names of the image-side modules (vision tower, projector).
        stop_tokens: end-of-turn tokens that end a generated answer (those in the vocabulary
            are used, beside the tokenizer's and the generation config's end-of-sequence ids).
        pad_tokens: tokens used for padding, in order of preference, when the tokenizer has no
            padding token (else the end-of-sequence token).
        image_token_attrs: model config attributes holding image token ids.
        needs: extra Python packages its processor needs (e.g. ``torchvision`` for the video
            processor of Qwen2-VL and SmolVLM).
    """

    name: str
    display: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    text_scope: str = "language_model"
    vision_scopes: tuple[str, ...] = ("vision_tower", "multi_modal_projector")
    stop_tokens: tuple[str, ...] = ()
    pad_tokens: tuple[str, ...] = ()
    image_token_attrs: tuple[str, ...] = ("image_token_id", "image_token_index")
    needs: tuple[str, ...] = ()

    # ------------------------------------------------------------------ tokens
    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids of :attr:`stop_tokens` present in ``tokenizer``'s vocabulary."""
        vocab = tokenizer.get_vocab()
        return [vocab[t] for t in self.stop_tokens if t in vocab]

    def set_pad_token(self, tokenizer) -> None:
        """Give ``tokenizer`` a padding token when it has none (see :attr:`pad_tokens`)."""
        if tokenizer.pad_token is not None:
            return
        vocab = tokenizer.get_vocab()
        chosen = next((t for t in self.pad_tokens if t in vocab), None)
        tokenizer.pad_token = chosen or tokenizer.eos_token

    def image_token_ids(self, config: Any, processor: Any = None) -> tuple[int, ...]:
        """The image token ids of a model (``config``) and its processor, without duplicates."""
        ids: list[int] = []
        for attr in self.image_token_attrs:
            value = getattr(config, attr, None)
            if isinstance(value, int) and value not in ids:
                ids.append(value)
        value = getattr(processor, "image_token_id", None)
        if isinstance(value, int) and value not in ids:
            ids.append(value)
        return tuple(ids)

    # ------------------------------------------------------------------ LoRA
    def lora_config(self, config):
        """``config`` (a :class:`~GliomaCompareLib.vlm.finetune_config.FinetuneConfig`) with its
        generic ``target_scope`` ``language_model`` replaced by this family's
        :attr:`text_scope`; other scopes are kept as given."""
        if config.target_scope == GENERIC_TEXT_SCOPE and self.text_scope != GENERIC_TEXT_SCOPE:
            return replace(config, target_scope=self.text_scope)
        return config

    def is_vision_module(self, name: str) -> bool:
        """Whether module ``name`` (dotted path) belongs to the image side."""
        parts = name.split(".")
        return any(scope in parts for scope in self.vision_scopes)


#: The supported families, by name.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="mllama",
            display="Llama 3.2 Vision",
            model_types=("mllama",),
            architectures=("MllamaForConditionalGeneration",),
            vision_scopes=("vision_model", "multi_modal_projector"),
            stop_tokens=("<|eot_id|>",),
            pad_tokens=("<|finetune_right_pad_id|>",),
        ),
        Family(
            name="llava",
            display="LLaVA",
            model_types=("llava",),
            architectures=("LlavaForConditionalGeneration",),
            stop_tokens=("</s>", "<|eot_id|>", "<|im_end|>"),
            pad_tokens=("<pad>", "<unk>"),
        ),
        Family(
            name="idefics3",
            display="Idefics3",
            model_types=("idefics3",),
            architectures=("Idefics3ForConditionalGeneration",),
            text_scope="text_model",
            vision_scopes=("vision_model", "connector"),
            stop_tokens=("<end_of_utterance>",),
            pad_tokens=("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>"),
        ),
        Family(  # Idefics3's architecture with a video processor
            name="smolvlm",
            display="SmolVLM",
            model_types=("smolvlm",),
            architectures=("SmolVLMForConditionalGeneration",),
            text_scope="text_model",
            vision_scopes=("vision_model", "connector"),
            stop_tokens=("<end_of_utterance>",),
            pad_tokens=("<|im_end|>", "<|endoftext|>", "<pad>"),
            needs=("torchvision",),
        ),
        Family(
            name="gemma3",
            display="Gemma 3 / MedGemma",
            model_types=("gemma3",),
            architectures=("Gemma3ForConditionalGeneration",),
            stop_tokens=("<end_of_turn>",),
            pad_tokens=("<pad>",),
        ),
        Family(
            name="qwen2_vl",
            display="Qwen2-VL / Qwen2.5-VL / Qwen3-VL",
            model_types=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"),
            architectures=(
                "Qwen2VLForConditionalGeneration",
                "Qwen2_5_VLForConditionalGeneration",
                "Qwen3VLForConditionalGeneration",
            ),
            vision_scopes=("visual",),
            stop_tokens=("<|im_end|>",),
            pad_tokens=("<|endoftext|>",),
            needs=("torchvision",),
        ),
    )
}


def supported_model_types() -> list[str]:
    """Every ``model_type`` some family covers, sorted."""
    return sorted(t for f in FAMILIES.values() for t in f.model_types)


def _supported_text() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES.values())


def family_by_name(name: str) -> Family:
    """The family called ``name``.

    Raises:
        ValueError: naming the supported families.
    """
    if name not in FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; supported: {_supported_text()}")
    return FAMILIES[name]


def family_for_model_type(model_type: str | None, source: str = "the model") -> Family:
    """The family of a ``config.json`` ``model_type``.

    Raises:
        ValueError: for an unknown or missing ``model_type``, naming ``source`` and the
            supported families.
    """
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"{source}: model_type {model_type!r} is not a supported vision-language model family; "
        f"supported families (model_type): {_supported_text()}"
    )


def family_for_architectures(names) -> Family | None:
    """The family one of the model class ``names`` belongs to, or None."""
    for name in names or ():
        for family in FAMILIES.values():
            if name in family.architectures:
                return family
    return None


def detect_family(folder: str | Path) -> Family:
    """The family of the model in ``folder``, from its ``config.json`` (``model_type``, else
    ``architectures``).

    Raises:
        FileNotFoundError: no ``config.json`` in ``folder``.
        ValueError: an unreadable ``config.json``, or a model of no supported family (the
            message lists the supported ones).
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {folder} is not a model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable model config ({exc})") from exc
    model_type = config.get("model_type")
    try:
        return family_for_model_type(model_type, str(path))
    except ValueError:
        by_class = family_for_architectures(config.get("architectures"))
        if by_class is None:
            raise
        return by_class


def family_of_model(model) -> Family:
    """The family of a loaded model (its config's ``model_type``; a peft wrapper is looked
    through).

    Raises:
        ValueError: a model of no supported family.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    try:
        return family_for_model_type(model_type, type(base).__name__)
    except ValueError:
        by_class = family_for_architectures([type(base).__name__])
        if by_class is None:
            raise
        return by_class
