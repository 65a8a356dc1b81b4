"""The ``transformers`` backend (and the ``tiny`` backend, the same class around a tiny model).

Loading: ``AutoModelForImageTextToText`` / ``AutoProcessor`` from a local folder, or from the
local Hugging Face cache for a hub id; nothing is ever downloaded (``local_files_only``), and a
missing model raises :class:`FileNotFoundError` saying where to put the files. Any model of a
supported family loads (:mod:`~GliomaCompareLib.vlm.families`: Mllama, LLaVA, Idefics3 /
SmolVLM, Gemma 3, Qwen2-VL ...; the family comes from ``config.json``'s ``model_type``, and an
unknown one is refused naming the supported families); everything below is generic, the
family supplies its end-of-turn and padding tokens. bf16 on CUDA, float32 on CPU; optional
4-bit NF4 base weights (bitsandbytes, CUDA only); optional LoRA adapter folder (peft), refused
when its recorded base model, model family or task does not fit.

Decoding: batched, left-padded generation with an explicit ``GenerationConfig`` built from the
:class:`~GliomaCompareLib.vlm.types.DecodingConfig` (greedy unless a temperature is given), so
a checkpoint's sampling defaults (Llama 3.2: temperature 0.6, top_p 0.9) never apply silently.
Sampled answers in a batch share one seed (the first query's), so with sampling, answers depend
on how queries were batched; greedy answers do not.

Grade probabilities (``option_method="sequence"``): for each label option ``o`` the model scores
the text ``prompt + answer_prefix + o + answer_suffix`` (``{"grade": "`` + ``HGG`` + ``"}``) with
one teacher-forced forward pass; the option's log-probability is the sum of the log-probabilities
of the tokens after the longest token prefix shared with ``prompt + answer_prefix`` alone (so
tokens merged across the boundary are handled). P(HGG) is the softmax of the two sums. It does
not depend on what the model generated. The pass sees the image exactly as generation does (the
processor expands the image placeholder into the family's image tokens and pixel inputs); the
token prefix is compared on the unexpanded text, and since the image comes before the answer,
the option's tokens are the last ones of the row in every family.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from GliomaCompareLib.vlm.families import (
    Family,
    detect_family,
    family_for_architectures,
    family_of_model,
)
from GliomaCompareLib.vlm.tiny import build_tiny_model, tiny_model_id, tiny_model_label
from GliomaCompareLib.vlm.types import (
    DEFAULT_MODEL_ID,
    Answer,
    DecodingConfig,
    Query,
    build_messages,
)

__all__ = [
    "ADAPTER_META_FILE",
    "AdapterInfo",
    "TransformersBackend",
    "check_adapter_base",
    "check_adapter_family",
    "folder_fingerprint",
    "load_model",
    "missing_model_message",
    "read_adapter",
]

log = logging.getLogger(__name__)

#: JSON the fine-tuning writes beside ``adapter_config.json``: ``base_model`` (id), ``task`` or
#: ``tasks``, ``prompt_template_hash`` (or ``prompt_template_hashes`` per task), training info.
ADAPTER_META_FILE = "gliomacompare_adapter.json"
_HASH_LIMIT = 256 * 1024 * 1024  # hash weight files fully up to this total size


#: Keys of an adapter's metadata that record when and where it was trained, not what it is:
#: left out of its fingerprint, so the same training gives the same adapter hash.
_VOLATILE_META_KEYS = frozenset({"created", "seconds", "split_file"})


def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in _VOLATILE_META_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def folder_fingerprint(folder: str | Path) -> str:
    """A 16-hex fingerprint of a model or adapter folder: its JSON files' contents and, for
    weights, their full contents when the folder holds at most 256 MiB of weights, else their
    names and sizes. The adapter metadata (:data:`ADAPTER_META_FILE`) counts without the
    creation time, durations and split file path, so retraining the same adapter (same
    weights, settings and split) gives the same fingerprint."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf")]
    full = sum(p.stat().st_size for p in weights) <= _HASH_LIMIT
    digest = hashlib.sha256()
    for path in files:
        rel = path.relative_to(folder).as_posix()
        if path.name == ADAPTER_META_FILE:
            try:
                meta = _without_volatile(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                meta = None
            if meta is not None:
                digest.update(f"{rel}\0{json.dumps(meta, sort_keys=True)}".encode())
                continue
        if path.suffix in (".json", ".jinja", ".txt", ".model") or (path in weights and full):
            digest.update(f"{rel}\0".encode())
            with path.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
        elif path in weights:
            digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class AdapterInfo:
    """A LoRA adapter folder, as read from ``adapter_config.json`` and :data:`ADAPTER_META_FILE`.

    Attributes:
        path: the folder.
        base_model: the base model it was trained on (``base_model`` of the meta file, else
            peft's ``base_model_name_or_path``), or None when unrecorded.
        tasks: tasks it was trained for (empty when unrecorded).
        hash: fingerprint of the folder (part of the answer-cache key).
        template_hashes: task -> prompt template hash it was trained with.
        meta: the meta file's content (empty without one).
        base_class: the model class it was trained on (peft's ``auto_mapping``), or None.
    """

    path: Path
    base_model: str | None
    tasks: tuple[str, ...]
    hash: str
    template_hashes: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    base_class: str | None = None


def read_adapter(folder: str | Path) -> AdapterInfo:
    """Read an adapter folder.

    Raises:
        FileNotFoundError: when the folder or its ``adapter_config.json`` is missing.
        ValueError: naming the file when it is not valid JSON.
    """
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: adapter folder not found")
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found; {folder} is not a peft adapter folder")
    try:
        config = json.loads(config_file.read_text())
        meta_file = folder / ADAPTER_META_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder}: unreadable adapter JSON ({exc})") from exc
    tasks = meta.get("tasks") or ([meta["task"]] if meta.get("task") else [])
    hashes = dict(meta.get("prompt_template_hashes") or {})
    if meta.get("prompt_template_hash") and len(tasks) == 1:
        hashes.setdefault(tasks[0], meta["prompt_template_hash"])
    return AdapterInfo(
        path=folder,
        base_model=meta.get("base_model") or config.get("base_model_name_or_path"),
        tasks=tuple(str(t) for t in tasks),
        hash=folder_fingerprint(folder),
        template_hashes=hashes,
        meta=meta,
        base_class=(config.get("auto_mapping") or {}).get("base_model_class"),
    )


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    # a hub id and a local copy of it: compare the last component ("Llama-3.2-11B-Vision-Instruct")
    return pa.name.lower() == pb.name.lower() and bool(pa.name)


def check_adapter_base(info: AdapterInfo, names: Iterable[str]) -> None:
    """Refuse an adapter trained on another base model.

    Args:
        info: the adapter.
        names: every name the loaded base model goes by (id, folder, recorded id).

    Raises:
        ValueError: naming the adapter, its base model and the loaded model.
    """
    names = [n for n in names if n]
    if info.base_model is None:
        log.warning("%s records no base model; cannot check it fits %s", info.path, names[0])
        return
    if not any(_same_model(info.base_model, n) for n in names):
        raise ValueError(
            f"Adapter {info.path} was trained on base model {info.base_model!r}, but the loaded "
            f"model is {names[0]!r}; load it on its own base model"
        )


def check_adapter_family(info: AdapterInfo, family: Family) -> None:
    """Refuse an adapter trained on a model of another family (its module names and shapes
    belong to that family).

    Raises:
        ValueError: naming the adapter, the family it was trained on and the loaded one.
    """
    trained = family_for_architectures([info.base_class]) if info.base_class else None
    if trained is not None and trained.name != family.name:
        raise ValueError(
            f"Adapter {info.path} was trained on a {trained.display} model ({info.base_class}, "
            f"family {trained.name}), but the loaded model is a {family.display} model (family "
            f"{family.name}); load it on its own base model"
        )


# --------------------------------------------------------------------------- model loading


def missing_model_message(model: str, cache_dir: str | None = None) -> str:
    """The error text for a model that is not on this machine: where to put the files."""
    from huggingface_hub import constants

    cache = cache_dir or constants.HF_HUB_CACHE
    folder = "models--" + model.replace("/", "--")
    return (
        f"Model {model!r} is not on this machine, and nothing is downloaded at run time. Either "
        f"pass --model /path/to/folder (a folder holding config.json, the *.safetensors weights "
        f"and the processor / tokenizer files), or put it in the Hugging Face cache "
        f"{cache}/{folder}/snapshots/<revision>/ : on a machine with internet access run "
        f"`hf download {model}` (older huggingface_hub: `huggingface-cli download {model}`; "
        f"gated models need their licence accepted and `hf auth login` first), then copy the "
        f"cache folder here or point HF_HOME / HF_HUB_CACHE at it."
    )


def _resolve(model: str, revision: str | None, cache_dir: str | None) -> tuple[Path, str | None]:
    """Local folder of ``model`` and its revision (hub commit for a cached hub id)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, None
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise FileNotFoundError(f"{model}: model folder not found")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            model, revision=revision, cache_dir=cache_dir, local_files_only=True
        )
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise FileNotFoundError(missing_model_message(model, cache_dir)) from exc
    folder = Path(folder)
    return folder, folder.name


def _pick_device(device: str | None) -> str:
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} asked for, but CUDA is not available here")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    model: str = DEFAULT_MODEL_ID,
    *,
    device: str | None = None,
    load_in_4bit: bool = False,
    revision: str | None = None,
    cache_dir: str | None = None,
    for_training: bool = False,
):
    """Load a vision-language model and its processor from local files only.

    Args:
        model: a local folder, or a hub id present in the local Hugging Face cache.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (accelerate spreads the model over
            the GPUs); default CUDA when available.
        load_in_4bit: NF4 4-bit base weights with bf16 compute (bitsandbytes; CUDA only).
        revision: hub revision (cached hub ids only).
        cache_dir: Hugging Face cache folder (default: the standard one).
        for_training: leave the model in train mode.

    Returns:
        ``(model, processor, info)``; ``info`` has ``model_id``, ``path``, ``revision``,
        ``dtype``, ``device``, ``quantization``, ``model_label``, ``family`` (a
        :class:`~GliomaCompareLib.vlm.families.Family` name) and ``names`` (every name the
        model goes by, for adapter checks).

    Raises:
        FileNotFoundError: the model is not on this machine (message says where to put it).
        ValueError: a model of no supported family (the message lists them); a family whose
            processor needs a package that is missing; 4-bit without CUDA or bitsandbytes; a
            folder without a processor.
    """
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, hub_revision = _resolve(model, revision, cache_dir)
    family = detect_family(folder)
    _check_needs(family, folder)
    device = "auto" if device == "auto" else _pick_device(device)
    on_cuda = device == "auto" or device.startswith("cuda")
    kwargs: dict = {"local_files_only": True}
    quantization = None
    if load_in_4bit:
        if not on_cuda:
            raise ValueError("4-bit loading (bitsandbytes) needs a CUDA GPU; none is in use here")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                "4-bit loading needs bitsandbytes: pip install 'gliomacompare[quant]'"
            ) from exc
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0 if device == "auto" else torch.device(device).index or 0}
        quantization = "bnb-4bit-nf4"
    elif device == "auto":
        kwargs["device_map"] = "auto"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(f"{folder}: cannot load the model or processor ({exc})") from exc
    if "device_map" not in kwargs:
        loaded.to(device)
    loaded.train(for_training)
    info_file = folder / "gliomacompare_model.json"
    extra = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"{folder}: the processor has no chat template (chat_template.jinja)")
    model_id = model if hub_revision else str(folder)
    names = [model_id, str(folder), extra.get("model_id"), getattr(loaded, "name_or_path", None)]
    info = {
        "model_id": model_id,
        "path": str(folder),
        "revision": hub_revision or folder_fingerprint(folder),
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "quantization": quantization,
        "model_label": extra.get("model_label") or model_id,
        "family": family.name,
        "names": [n for n in names if n],
    }
    return loaded, processor, info


def _check_needs(family: Family, folder: Path) -> None:
    """Refuse, before loading, a family whose processor needs a package that is missing."""
    import importlib.util

    missing = [name for name in family.needs if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"{folder}: a {family.display} model's processor needs {', '.join(missing)}, which "
            f"is not installed here: pip install {' '.join(missing)}"
        )


def _state_fingerprint(model) -> str:
    digest = hashlib.sha256()
    total = 0
    for name, tensor in sorted(model.state_dict().items()):
        total += tensor.numel()
        if total > 50_000_000:
            return "unhashed-large-model"
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- the backend


class TransformersBackend:
    """A local Hugging Face vision-language model as a :class:`~GliomaCompareLib.vlm.types.
    VLMBackend` (see module docstring). Build with the constructor (a model id / folder),
    :meth:`tiny`, or :meth:`from_model` (an already loaded model and processor).

    Attributes:
        name: ``transformers`` or ``tiny``.
        model_label: what reports call the model.
        model: the (possibly peft-wrapped) model.
        processor: its processor.
        adapter: the loaded adapter's :class:`AdapterInfo`, or None.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL_ID,
        *,
        adapter: str | Path | None = None,
        device: str | None = None,
        load_in_4bit: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
    ):
        loaded, processor, info = load_model(
            model, device=device, load_in_4bit=load_in_4bit, revision=revision, cache_dir=cache_dir
        )
        self._setup("transformers", loaded, processor, info, adapter)

    @classmethod
    def from_model(
        cls,
        model,
        processor,
        *,
        model_id: str,
        model_label: str | None = None,
        name: str = "transformers",
        revision: str | None = None,
        adapter: str | Path | None = None,
    ) -> TransformersBackend:
        """Wrap a model and processor already in memory (e.g. one being fine-tuned)."""
        self = cls.__new__(cls)
        params = next(model.parameters())
        info = {
            "model_id": model_id,
            "path": None,
            "revision": revision or _state_fingerprint(model),
            "dtype": str(params.dtype).replace("torch.", ""),
            "device": str(params.device),
            "quantization": None,
            "model_label": model_label or model_id,
            "family": family_of_model(model).name,
            "names": [model_id, getattr(model, "name_or_path", None)],
        }
        self._setup(name, model, processor, info, adapter)
        return self

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        adapter: str | Path | None = None,
        device: str | None = None,
        family: str = "mllama",
    ) -> TransformersBackend:
        """The ``tiny`` backend: :func:`~GliomaCompareLib.vlm.tiny.build_tiny_model`
        ``(seed, family)`` (default the tiny Mllama), labelled
        :func:`~GliomaCompareLib.vlm.tiny.tiny_model_label` ``(family)``."""

        model, processor = build_tiny_model(seed, family)
        if device:
            model.to(_pick_device(device))
        return cls.from_model(
            model,
            processor,
            model_id=tiny_model_id(seed, family),
            model_label=tiny_model_label(family),
            name="tiny",
            adapter=adapter,
        )

    def _setup(self, name, model, processor, info, adapter) -> None:
        self.name = name
        self.info = {k: v for k, v in info.items() if k != "names"}
        self.model_label = info["model_label"]
        #: the model's :class:`~GliomaCompareLib.vlm.families.Family`
        self.family: Family = family_of_model(model)
        self.adapter: AdapterInfo | None = None
        if adapter is not None:
            self.adapter = read_adapter(adapter)
            check_adapter_family(self.adapter, self.family)
            check_adapter_base(self.adapter, info["names"])
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.adapter.path), is_trainable=False)
            model.eval()
        self.model = model
        self.processor = processor
        tok = processor.tokenizer
        tok.padding_side = "left"
        self.family.set_pad_token(tok)
        params = next(model.parameters())
        self._device = params.device
        self._dtype = params.dtype if params.dtype.is_floating_point else None
        # a model this small runs faster on one CPU thread: its matrices are so small that
        # thread hand-offs cost more than they save (4x slower with 2 threads on a busy 2-core
        # machine); answers do not depend on the thread count
        small = sum(p.numel() for p in model.parameters()) < 10_000_000
        #: torch CPU threads used while answering (None: leave torch's setting alone)
        self.num_threads: int | None = 1 if small else None

    # ------------------------------------------------------------------ protocol
    def identity(self) -> dict:
        """Backend, model id and revision, dtype, quantization, adapter hash, label."""
        return {
            "backend": self.name,
            "model_id": self.info["model_id"],
            "revision": self.info["revision"],
            "dtype": self.info["dtype"],
            "quantization": self.info["quantization"],
            "adapter": self.adapter.hash if self.adapter else None,
            "model_label": self.model_label,
        }

    def describe(self) -> dict:
        """:meth:`identity` plus where things came from (for manifests)."""
        out = dict(self.identity())
        out["path"] = self.info.get("path")
        out["device"] = str(self._device)
        out["family"] = self.family.name
        if self.adapter:
            out["adapter_path"] = str(self.adapter.path)
            out["adapter_base_model"] = self.adapter.base_model
            out["adapter_tasks"] = list(self.adapter.tasks)
        return out

    def answer(self, queries: Sequence[Query], decoding: DecodingConfig) -> list[Answer]:
        """Answer a batch; a batch that fails (e.g. out of memory) is split in halves and
        retried; a single query that fails becomes an :class:`Answer` with ``error``."""
        if not queries:
            return []
        import torch

        threads = torch.get_num_threads()
        if self.num_threads and self._device.type == "cpu":
            torch.set_num_threads(self.num_threads)
        try:
            return self._answer(list(queries), decoding)
        except Exception as exc:  # one bad batch must not stop the run
            if len(queries) == 1:
                log.warning("query failed: %s", exc)
                return [Answer(None, error=f"{type(exc).__name__}: {exc}")]
            self._free_memory()
            half = len(queries) // 2
            return self.answer(queries[:half], decoding) + self.answer(queries[half:], decoding)
        finally:
            torch.set_num_threads(threads)

    # ------------------------------------------------------------------ internals
    def chat_text(self, prompt_text: str, answer_text: str | None = None) -> str:
        """The model's chat-formatted text for a prompt (generation prompt added when no
        answer is given)."""
        return self.processor.apply_chat_template(
            build_messages(prompt_text, answer_text),
            add_generation_prompt=answer_text is None,
            tokenize=False,
        )

    def _inputs(self, images: list[np.ndarray], texts: list[str]):
        from PIL import Image

        inputs = self.processor(
            images=[[Image.fromarray(np.ascontiguousarray(im))] for im in images],
            text=texts,
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        inputs = inputs.to(self._device)
        if self._dtype is not None and "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        return inputs

    def _generation_config(self, decoding: DecodingConfig):
        from transformers import GenerationConfig

        base = self.model.generation_config
        tok = self.processor.tokenizer
        eos = base.eos_token_id
        eos_ids = [e for e in ([eos] if isinstance(eos, int) else list(eos or [])) if e is not None]
        eos_ids += [t for t in self.family.stop_token_ids(tok) if t not in eos_ids]
        if not eos_ids and tok.eos_token_id is not None:
            eos_ids = [tok.eos_token_id]
        sampling = {}
        if decoding.do_sample:
            sampling = {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=decoding.do_sample,
            eos_token_id=eos_ids,
            pad_token_id=tok.pad_token_id,
            bos_token_id=base.bos_token_id,
            **sampling,
        )

    def _answer(self, queries: list[Query], decoding: DecodingConfig) -> list[Answer]:
        import torch

        start = time.perf_counter()
        texts = [self.chat_text(q.prompt.text) for q in queries]
        inputs = self._inputs([q.image for q in queries], texts)
        config = self._generation_config(decoding)
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(queries[0].seed) % (2**63))
            output = self.model.generate(**inputs, generation_config=config)
        new = output[:, inputs["input_ids"].shape[1] :].cpu()
        eos_ids = set(config.eos_token_id)
        decoded = self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        options = self._score_options(queries) if any(q.score_options for q in queries) else {}
        elapsed = (time.perf_counter() - start) / len(queries)
        answers = []
        for i, row in enumerate(new.tolist()):
            stop = next((j for j, t in enumerate(row) if t in eos_ids), None)
            answers.append(
                Answer(
                    text=decoded[i],
                    finish_reason="stop" if stop is not None else "length",
                    option_logprobs=options.get(i),
                    option_method="sequence" if i in options else None,
                    latency_s=elapsed,
                    generated_tokens=(stop + 1) if stop is not None else len(row),
                )
            )
        return answers

    def _score_options(self, queries: list[Query]) -> dict[int, dict[str, float]]:
        """Teacher-forced log-probabilities of each label option (see module docstring)."""
        import torch

        rows: list[tuple[int, str]] = []
        images, texts, contexts = [], [], []
        tok = self.processor.tokenizer
        # the prefix is compared on text tokens before the processor expands the image: the
        # image comes first, so the option's tokens are the last ones either way
        for qi, q in enumerate(queries):
            if not (q.score_options and q.prompt.options):
                continue
            context = self.chat_text(q.prompt.text) + q.prompt.answer_prefix
            context_ids = tok(context, add_special_tokens=False)["input_ids"]
            for option in q.prompt.options:
                rows.append((qi, option))
                images.append(q.image)
                texts.append(context + option + q.prompt.answer_suffix)
                contexts.append(context_ids)
        if not rows:
            return {}
        inputs = self._inputs(images, texts)
        ids = inputs["input_ids"].cpu()
        spans = []
        for r in range(len(rows)):
            full = tok(texts[r], add_special_tokens=False)["input_ids"]
            ctx = contexts[r]
            shared = 0
            while shared < min(len(full), len(ctx)) and full[shared] == ctx[shared]:
                shared += 1
            spans.append(max(1, len(full) - shared))
        keep = max(spans) + 1
        with torch.inference_mode():
            logits = self.model(**inputs, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        total = ids.shape[1]
        offset = total - logits.shape[1]  # 0 if a model version returned every position
        out: dict[int, dict[str, float]] = {}
        for r, (qi, option) in enumerate(rows):
            n = spans[r]
            targets = ids[r, total - n :]
            # logits at absolute position t predict token t+1 (rows are left-padded, so every
            # row ends at position total-1)
            positions = torch.arange(total - n - 1, total - 1) - offset
            value = logp[r, positions, targets].sum().item()
            out.setdefault(qi, {})[option] = float(value)
        return out

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
