"""The backend factory: :func:`make_backend` builds a backend by name (the CLI's ``--backend``).

It sits above the implementations (:mod:`~GliomaCompareLib.vlm.hf_backend`,
:mod:`~GliomaCompareLib.vlm.openai_backend`), which import only the protocol and types of
:mod:`~GliomaCompareLib.vlm.types`, so there is no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from GliomaCompareLib.vlm import tiny
from GliomaCompareLib.vlm.hf_backend import TransformersBackend
from GliomaCompareLib.vlm.openai_backend import STRUCTURED_OUTPUTS, OpenAIBackend
from GliomaCompareLib.vlm.types import BACKEND_NAMES, DEFAULT_MODEL_ID, VLMBackend

__all__ = ["DEFAULT_RETRIES", "DEFAULT_TIMEOUT_S", "BackendSettings", "make_backend"]

#: Seconds per request, and retries after the first attempt (openai).
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 4


@dataclass(frozen=True)
class BackendSettings:
    """Which backend to build and how (the ``vlm`` command's backend options are generated from
    these fields; the sampling seed and the batch size come from the run's
    :class:`~GliomaCompareLib.vlm.inference.VLMConfig`)."""

    backend: str = field(
        metadata={
            "help": "tiny: random-weight test model built in code; transformers: a local "
            "Hugging Face model; openai: an OpenAI-compatible /v1/chat/completions server",
            "choices": BACKEND_NAMES,
        }
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": f"transformers: local folder or cached hub id (default {DEFAULT_MODEL_ID}; "
            "never downloaded); openai: the server's model name (default: its only model); "
            f"tiny: {', '.join(tiny.tiny_model_names())} (default tiny, the tiny Llama 3.2 Vision)"
        },
    )
    base_url: str | None = field(
        default=None, metadata={"help": "openai: server URL, e.g. http://127.0.0.1:8000/v1"}
    )
    allow_remote: bool = field(
        default=False,
        metadata={
            "help": "openai: allow a server that is not on this machine (patient images leave it)"
        },
    )
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter folder (tiny / transformers)"}
    )
    device: str | None = field(
        default=None,
        metadata={"help": "cpu, cuda, cuda:N or auto (default: CUDA when available)"},
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "transformers: 4-bit (CUDA only)"})
    timeout_s: float = field(
        default=DEFAULT_TIMEOUT_S,
        metadata={"help": "openai: seconds per request", "flags": ("--timeout",)},
    )
    max_retries: int = field(
        default=DEFAULT_RETRIES,
        metadata={"help": "openai: retries per request", "flags": ("--retries",)},
    )
    structured_output: str = field(
        default="auto",
        metadata={
            "help": "openai: how answers are constrained to the task's JSON schema: "
            "response_format json_schema, response_format json_object, Ollama's /api/chat "
            "format, or none; auto tries them in that order and keeps the first the server takes",
            "choices": STRUCTURED_OUTPUTS,
        },
    )

    def build(self, *, seed: int = 0, concurrency: int = 4) -> VLMBackend:
        """:func:`make_backend` with these settings."""
        return make_backend(
            self.backend,
            model=self.model,
            base_url=self.base_url,
            allow_remote=self.allow_remote,
            adapter=self.adapter,
            seed=seed,
            device=self.device,
            load_in_4bit=self.load_in_4bit,
            concurrency=concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            structured_output=self.structured_output,
        )


def make_backend(
    name: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    allow_remote: bool = False,
    adapter: str | None = None,
    seed: int = 0,
    device: str | None = None,
    load_in_4bit: bool = False,
    concurrency: int = 4,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_RETRIES,
    structured_output: str = "auto",
) -> VLMBackend:
    """Build a backend by name (the CLI's ``--backend``).

    Args:
        name: ``tiny``, ``transformers`` or ``openai``.
        model: model id or local folder (transformers; default :data:`DEFAULT_MODEL_ID`), the
            server's model name (openai; default: the server's only model), or which tiny model
            (tiny: ``tiny`` / ``tiny-mllama``, the default, ``tiny-llava``, ``tiny-idefics3``,
            ``tiny-gemma3``; see :func:`~GliomaCompareLib.vlm.tiny.parse_tiny_name`).
        base_url: server URL (openai).
        allow_remote: allow a non-loopback server (openai; patient images leave the machine).
        adapter: LoRA adapter folder (tiny / transformers).
        seed: weight seed of the tiny model.
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (default: CUDA when available).
        load_in_4bit: 4-bit base weights via bitsandbytes (CUDA only).
        concurrency: parallel requests (openai).
        timeout_s: per-request timeout (openai).
        max_retries: retries after the first attempt (openai).
        structured_output: how answers are constrained (openai; see
            :data:`~GliomaCompareLib.vlm.openai_backend.STRUCTURED_OUTPUTS`).

    Raises:
        ValueError: unknown name, or options that do not fit the backend.
        FileNotFoundError: a model or adapter that is not on this machine.
    """
    if structured_output != "auto" and name != "openai":
        raise ValueError(f"--structured-output is for the openai backend, not {name}")
    if name == "tiny":
        family = tiny.parse_tiny_name(model)  # --seed picks the weights
        if base_url:
            raise ValueError("--base-url is for the openai backend, not tiny")
        if load_in_4bit:
            raise ValueError("The tiny model is not quantised (--load-in-4bit is for transformers)")
        return TransformersBackend.tiny(seed=seed, adapter=adapter, device=device, family=family)
    if name == "transformers":
        if base_url:
            raise ValueError("--base-url is for the openai backend, not transformers")
        return TransformersBackend(
            model or DEFAULT_MODEL_ID, adapter=adapter, device=device, load_in_4bit=load_in_4bit
        )
    if name == "openai":
        if adapter:
            raise ValueError(
                "--adapter applies to local models; for a server, load the adapter there "
                "(e.g. vLLM --lora-modules) and pass its name as --model"
            )
        if not base_url:
            raise ValueError("The openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIBackend(
            base_url,
            model=model,
            allow_remote=allow_remote,
            concurrency=concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            structured_output=structured_output,
        )
    raise ValueError(f"Unknown VLM backend {name!r}; use {', '.join(BACKEND_NAMES)}")
