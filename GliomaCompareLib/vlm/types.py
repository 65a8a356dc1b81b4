"""The VLM backend protocol and its query / answer / decoding types (no backend imported here).

A backend turns a batch of :class:`Query` (an RGB slice and a rendered prompt) into the same
number of :class:`Answer` s, in order. It never raises for one failed query: it returns an
``Answer`` with ``error`` set (the pipeline records status ``error`` and goes on). It raises
only for what stops every query (a model that cannot be loaded, a refused URL), and does so
when it is built.

Three implementations (DESIGN.md): ``transformers`` (:class:`~GliomaCompareLib.vlm.hf_backend.
TransformersBackend`), ``tiny`` (the same class around :mod:`~GliomaCompareLib.vlm.tiny`'s model)
and ``openai`` (:class:`~GliomaCompareLib.vlm.openai_backend.OpenAIBackend`). Build them with
:func:`~GliomaCompareLib.vlm.backends.make_backend`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from GliomaCompareLib.argtypes import positive_int
from GliomaCompareLib.vlm.tasks import Prompt

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_MODEL_ID",
    "Answer",
    "DecodingConfig",
    "Query",
    "VLMBackend",
    "build_messages",
    "image_sha256",
    "png_bytes",
]

BACKEND_NAMES: tuple[str, ...] = ("tiny", "transformers", "openai")
#: The study's model (a Hugging Face id; loaded only from local files).
DEFAULT_MODEL_ID = "meta-llama/Llama-3.2-11B-Vision-Instruct"


@dataclass(frozen=True)
class DecodingConfig:
    """How answers are decoded; overrides a checkpoint's own sampling defaults.

    Attributes:
        do_sample: sample (True) or greedy decoding (False).
        temperature: sampling temperature (ignored when greedy).
        top_p: nucleus sampling mass (ignored when greedy).
        max_new_tokens: most tokens generated per answer.
        seed: base seed; each query's seed is derived from it, the image, prompt and run.
    """

    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass when sampling"})
    max_new_tokens: int = field(default=256, metadata={"help": "per answer", "type": positive_int})
    seed: int = field(default=0, metadata={"help": "sampling seed and tiny model seed"})

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"Temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature == 0:
            raise ValueError("Sampling needs a temperature > 0 (temperature 0 means greedy)")

    @classmethod
    def from_temperature(
        cls,
        temperature: float = 0.0,
        *,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int = 0,
    ) -> DecodingConfig:
        """Greedy for ``temperature == 0``, else sampling at that temperature."""
        return cls(
            do_sample=temperature > 0,
            temperature=float(temperature),
            top_p=float(top_p),
            max_new_tokens=int(max_new_tokens),
            seed=int(seed),
        )

    def to_dict(self) -> dict:
        """The decoding parameters (greedy decoding ignores temperature and top_p, so they are
        normalised away and do not split the cache)."""
        data = asdict(self)
        if not self.do_sample:
            data["temperature"] = 0.0
            data["top_p"] = 1.0
        return data


@dataclass(frozen=True, eq=False)
class Query:
    """One question to a VLM.

    Attributes:
        image: uint8 RGB slice ``(H, W, 3)``.
        prompt: the rendered prompt (its size matches ``image``).
        run: repeat index (``--runs``); part of the cache key.
        seed: this query's sampling seed.
        score_options: also record the probabilities of the prompt's label options (grade).
        key: the answer-cache key (for logs; backends do not need it).
    """

    image: np.ndarray
    prompt: Prompt
    run: int = 0
    seed: int = 0
    score_options: bool = False
    key: str = ""


@dataclass(frozen=True)
class Answer:
    """A backend's reply to one :class:`Query`.

    Attributes:
        text: the answer text (None when no answer came).
        error: why no answer came (server down, timeout after retries ...), else None.
        refused: the server flagged a refusal (OpenAI ``message.refusal``).
        finish_reason: ``stop``, ``length`` ... when known.
        option_logprobs: label option -> log-probability (natural log) of that option at the
            answer position, or None. ``option_method`` says how it was obtained.
        option_method: ``sequence`` (teacher-forced log-probability of the option's tokens and
            the closing ``"}`` after the prompt and the answer prefix; transformers/tiny) or
            ``first_token_top_logprobs`` (server-reported top log-probabilities of the first
            token of the label in the generated answer; openai).
        latency_s: seconds this answer took (batch time divided by batch size when batched).
        generated_tokens: tokens generated, when known.
        meta: backend-specific details (e.g. which optional request features a server refused).
    """

    text: str | None
    error: str | None = None
    refused: bool = False
    finish_reason: str | None = None
    option_logprobs: dict[str, float] | None = None
    option_method: str | None = None
    latency_s: float = 0.0
    generated_tokens: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def p_options(self) -> dict[str, float] | None:
        """Option probabilities renormalised over the options (softmax of the log-probs)."""
        if not self.option_logprobs:
            return None
        values = np.array(list(self.option_logprobs.values()), dtype=float)
        if not np.isfinite(values).any():
            return None
        values = np.exp(values - np.nanmax(values[np.isfinite(values)]))
        values = np.where(np.isfinite(values), values, 0.0)
        total = values.sum()
        return {k: float(v / total) for k, v in zip(self.option_logprobs, values, strict=True)}

    def to_record(self) -> dict:
        """JSON-able form stored in the answer cache."""
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict) -> Answer:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@runtime_checkable
class VLMBackend(Protocol):
    """What the pipeline needs from a VLM (see module docstring).

    Attributes:
        name: ``tiny``, ``transformers``, ``openai`` (or a test backend's name).
        model_label: what every table and figure calls the model; the tiny model's is
            ``"tiny random-weight model"``.
    """

    name: str
    model_label: str

    def identity(self) -> dict:
        """What determines the answers besides the query: backend, model id, revision, adapter
        hash ... (JSON-able; part of every cache key; never holds secrets)."""
        ...

    def answer(self, queries: Sequence[Query], decoding: DecodingConfig) -> list[Answer]:
        """Answer ``queries`` (one batch), in order."""
        ...


def image_sha256(image: np.ndarray) -> str:
    """sha256 of an image's shape, dtype and bytes (the cache's image identity)."""
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 ``(H, W, 3)`` or ``(H, W)`` image as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def build_messages(prompt_text: str, answer_text: str | None = None) -> list[dict]:
    """Chat messages of one query in the Hugging Face format (the image comes first, as the
    Llama 3.2 Vision documentation does); with ``answer_text``, the assistant's answer is added
    (fine-tuning targets)."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}
    ]
    if answer_text is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer_text}]})
    return messages
