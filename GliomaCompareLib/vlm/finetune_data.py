"""Fine-tuning data for the VLM: slices, prompts and target answers, and the label-masking collator.

One :class:`FinetuneExample` is one selected slice of one patient asked one task. It holds the
image exactly as inference renders it (the data layer's :func:`~GliomaCompareLib.data.slices.
case_slices` with the run's slice rule and FLAIR window), the prompt exactly as inference renders
it (:meth:`~GliomaCompareLib.vlm.tasks.TaskSpec.render` with the run's coordinate system and
polygon K) and the target answer: the VLM arm's
:meth:`~GliomaCompareLib.vlm.tasks.TaskSpec.target_answer` -- the exact JSON of the value
computed from the ground truth by :mod:`GliomaCompareLib.geometry`, in the coordinate system the
prompt states:

- ``grade``: the patient's grade from ``name_mapping.csv`` (patients of unknown grade are left
  out of this task).
- ``point``: the centroid of the whole tumour (WT) on the slice, the "true centre" the VLM arm
  measures distances from (``point_target="centroid"``, default); or the tumour's deepest pixel
  (:func:`~GliomaCompareLib.geometry.inside_point`, ``"inside"``), which always lies in the
  tumour, also when the centroid of a concave tumour does not.
- ``box``: :func:`~GliomaCompareLib.geometry.mask_box` of WT.
- ``polygon``: :func:`~GliomaCompareLib.geometry.mask_polygon` of WT with at most K vertices.

Every target is read back with the VLM arm's parser: a target that would not parse with status
``ok`` leaves its slice out, with the reason recorded.

WT on each slice is the region the VLM arm scores answers against, taken with the same
:meth:`~GliomaCompareLib.data.slices.SliceGeometry.extract`. When no slice of a case meets the
slice rule, its largest tumour slice is used, as the VLM arm does.

:class:`FinetuneCollator` turns examples into model inputs: the chat text of the prompt (as the
``transformers`` backend sends it) followed by the answer and the end-of-turn token, with
``labels`` equal to ``input_ids`` except ``-100`` on the prompt, on padding and on the image
tokens, so that the loss covers only the answer tokens and what the chat template puts after
them (the end-of-turn token). It is the same for every model family: the processor expands the
image placeholder (one Mllama ``<|image|>``, whose id equals the text vocabulary size; many
LLaVA ``<image>``, Gemma 3 ``<image_soft_token>`` ...), the prompt part is found by encoding the
prompt alone with the same image, and the family's image token ids
(:meth:`~GliomaCompareLib.vlm.families.Family.image_token_ids`) and any id beyond the language
model's vocabulary are never targets.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from GliomaCompareLib import geometry as g
from GliomaCompareLib.data.case import load_case
from GliomaCompareLib.data.slices import SliceRule, WindowSpec, case_slices
from GliomaCompareLib.vlm.families import family_of_model
from GliomaCompareLib.vlm.parsing import parse_answer
from GliomaCompareLib.vlm.tasks import TASK_NAMES, Prompt, TaskSpec, load_tasks
from GliomaCompareLib.vlm.types import build_messages

__all__ = [
    "IGNORE_INDEX",
    "POINT_TARGETS",
    "ExampleSet",
    "ExampleSettings",
    "FinetuneCollator",
    "FinetuneExample",
    "build_examples",
    "load_example_set",
    "save_example_set",
    "target_answer",
]

log = logging.getLogger(__name__)

#: Label value ignored by the loss (PyTorch's ``cross_entropy`` default).
IGNORE_INDEX = -100
#: How the ``point`` target is chosen (see module docstring).
POINT_TARGETS: tuple[str, ...] = ("centroid", "inside")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class ExampleSettings:
    """What shapes the examples (everything here is part of the example-cache key).

    Attributes:
        slice_rule: which slices (the VLM arm's rule; ``slices_per_case`` already applied).
        window: FLAIR windowing.
        coordinate_system: ``pixel``, ``normalized`` or ``per_mille`` (as the prompts state).
        max_vertices: polygon K (None: the prompts' default).
        point_target: one of :data:`POINT_TARGETS`.
        prompts_dir: prompts folder (None: ``Resources/prompts``).
        keep_masks: keep each slice's WT mask (needed to score validation answers).
    """

    slice_rule: SliceRule = field(default_factory=SliceRule)
    window: WindowSpec = field(default_factory=WindowSpec)
    coordinate_system: str = "pixel"
    max_vertices: int | None = None
    point_target: str = "centroid"
    prompts_dir: str | None = None
    keep_masks: bool = False

    def __post_init__(self):
        if self.point_target not in POINT_TARGETS:
            raise ValueError(
                f"point_target {self.point_target!r}: use one of {', '.join(POINT_TARGETS)}"
            )
        if self.max_vertices is not None and self.max_vertices < 4:
            raise ValueError(
                f"max_vertices {self.max_vertices}: polygon targets need K >= 4 "
                "(a bounding polygon of fewer vertices cannot always contain the tumour)"
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["slice_rule"] = self.slice_rule.to_dict()
        data["window"] = self.window.to_dict()
        return data


@dataclass(frozen=True, eq=False)
class FinetuneExample:
    """One training or validation item: a slice, a task, its prompt and its target answer.

    Attributes:
        case_id: the patient.
        slice_index: axial slice index.
        task: ``grade``, ``point``, ``box`` or ``polygon``.
        grade: the patient's grade (``HGG`` / ``LGG`` / None).
        pixels: uint8 ``(H, W)`` grey image (stored once when the three channels are equal)
            or ``(H, W, 3)`` RGB; :attr:`rgb` gives what the model sees.
        prompt: the rendered prompt (what inference sends).
        target: the answer text (exact JSON the parser reads with status ``ok``).
        value: the answer value in the prompt's coordinate system (label, tuple of numbers,
            or tuple of vertices).
        pixel_spacing: ``(mm per column, mm per row)``.
        mask: bool ``(H, W)`` WT on the slice (only with ``keep_masks``; else None).
    """

    case_id: str
    slice_index: int
    task: str
    grade: str | None
    pixels: np.ndarray
    prompt: Prompt
    target: str
    value: Any
    pixel_spacing: tuple[float, float]
    mask: np.ndarray | None = None

    @property
    def rgb(self) -> np.ndarray:
        """uint8 ``(H, W, 3)``: the image the VLM is shown."""
        if self.pixels.ndim == 2:
            return np.repeat(self.pixels[..., None], 3, axis=-1)
        return self.pixels

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.case_id, self.slice_index, self.task)


@dataclass(frozen=True, eq=False)
class ExampleSet:
    """Examples of some patients, and what was left out.

    Attributes:
        examples: by case, slice, task (task in :data:`TASK_NAMES` order).
        case_ids: the cases asked for.
        skipped: case id (or ``case_id:slice:task``) -> why it was left out.
        notes: case id -> remark (e.g. the largest-slice fallback).
        settings: how the examples were made.
        tasks: the tasks.
    """

    examples: tuple[FinetuneExample, ...]
    case_ids: tuple[str, ...]
    skipped: dict[str, str]
    notes: dict[str, str]
    settings: ExampleSettings
    tasks: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.examples)

    def counts(self) -> dict[str, dict[str, int]]:
        """task -> {"examples", "cases", "HGG", "LGG"} (slice counts by grade)."""
        out: dict[str, dict[str, int]] = {}
        for task in self.tasks:
            items = [e for e in self.examples if e.task == task]
            out[task] = {
                "examples": len(items),
                "cases": len({e.case_id for e in items}),
                "HGG": sum(e.grade == "HGG" for e in items),
                "LGG": sum(e.grade == "LGG" for e in items),
            }
        return out

    def fingerprint(self) -> str:
        """16-hex hash of the examples' images, prompts and targets (identical data, same hash)."""
        digest = hashlib.sha256()
        for e in self.examples:
            digest.update(f"{e.case_id}|{e.slice_index}|{e.task}|{e.prompt.prompt_hash}|".encode())
            digest.update(e.target.encode())
            digest.update(np.ascontiguousarray(e.pixels).tobytes())
        return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- targets


def target_answer(
    spec: TaskSpec,
    prompt: Prompt,
    *,
    grade: str | None = None,
    mask: np.ndarray | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    point_target: str = "centroid",
) -> tuple[Any, str]:
    """The target answer of one slice for one task (see module docstring).

    The text is :meth:`~GliomaCompareLib.vlm.tasks.TaskSpec.target_answer` (the VLM arm's
    definition of the correct answer), except for ``point_target="inside"``; it is then read
    back with :func:`~GliomaCompareLib.vlm.parsing.parse_answer`, which must say ``ok``.

    Args:
        spec: the task.
        prompt: the prompt rendered for this slice (image size, coordinate system, K).
        grade: the patient's grade (``grade`` task).
        mask: bool ``(H, W)`` whole-tumour mask on the slice (localisation tasks), in the
            orientation of the image the model sees.
        pixel_spacing: ``(mm per column, mm per row)`` (used by ``point_target="inside"``).
        point_target: one of :data:`POINT_TARGETS`.

    Returns:
        ``(value, text)``: the value as the parser reads it (label, tuple of numbers, tuple of
        vertices; in the prompt's coordinate system) and the exact JSON text.

    Raises:
        ValueError: when the slice has no target (unknown grade, no tumour, a mask of another
            size) or the target would not parse with status ``ok``.
    """

    if point_target not in POINT_TARGETS:
        raise ValueError(f"point_target {point_target!r}: use one of {', '.join(POINT_TARGETS)}")
    if spec.answer.kind == "label" and grade not in spec.answer.options:
        raise ValueError(f"grade {grade!r} is not one of {', '.join(spec.answer.options)}")
    if spec.answer.kind == "point" and point_target == "inside":
        if mask is None or not np.any(mask):
            raise ValueError(f"Task {spec.name}: the target needs a non-empty tumour mask")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (prompt.height, prompt.width):
            raise ValueError(
                f"Task {spec.name}: mask shape {mask.shape} != prompt image "
                f"{(prompt.height, prompt.width)}"
            )
        point = g.from_pixels(
            g.inside_point(mask, pixel_spacing),
            prompt.coordinate_system,
            prompt.width,
            prompt.height,
        )
        digits = 0 if prompt.coordinate_system == "pixel" else 3
        text = spec.format_answer((point.x, point.y), digits=digits)
    else:
        text = spec.target_answer(prompt, mask=mask, grade=grade)
    parsed = parse_answer(spec, text, prompt)
    if parsed.status != "ok":
        raise ValueError(f"target {text} reads back as {parsed.status} ({parsed.note})")
    return parsed.value, text


# --------------------------------------------------------------------------- building


def _grey(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 3 and rgb.shape[2] == 3 and (rgb == rgb[..., :1]).all():
        return np.ascontiguousarray(rgb[..., 0])
    return np.ascontiguousarray(rgb)


def _case_examples(
    record, convention, tasks: tuple[str, ...], settings: ExampleSettings
) -> tuple[list[FinetuneExample], dict[str, str], str]:
    """Examples of one case: (examples, skipped slices -> reason, note). Raises for the case."""

    specs = load_tasks(settings.prompts_dir)
    case = load_case(record, convention)
    rule = settings.slice_rule
    local = [t for t in tasks if t != "grade"]
    if case.label is None and local:
        raise ValueError(f"{record.case_id}: no label map, so no {', '.join(local)} targets")
    if case.label is None and rule.mode != "brain":
        raise ValueError(
            f"{record.case_id}: no label map, so slice rule {rule.mode!r} cannot apply"
        )
    slices = case_slices(case, rule, settings.window)
    note = ""
    if not slices and case.label is not None:
        slices = case_slices(
            case, SliceRule(mode="largest", max_slices=1, region=rule.region), settings.window
        )
        note = f"no slice met the rule {rule.to_dict()}; the largest tumour slice was used"
    if not slices:
        raise ValueError(f"{record.case_id}: no slice to train on")
    wt = case.regions()["WT"] if case.label is not None else None
    prompts: dict[tuple[str, int, int], Prompt] = {}
    examples: list[FinetuneExample] = []
    skipped: dict[str, str] = {}
    if "grade" in tasks and record.grade not in specs["grade"].answer.options:
        skipped[f"{record.case_id}:grade"] = f"{record.case_id}: grade unknown, so no grade target"
        tasks = tuple(t for t in tasks if t != "grade")
    for image in slices:
        height, width = image.rgb.shape[:2]
        mask = image.geometry.extract(wt) if wt is not None else None
        spacing = image.geometry.pixel_spacing
        pixels = _grey(image.rgb)
        for task in tasks:
            key = (task, width, height)
            if key not in prompts:
                prompts[key] = specs[task].render(
                    width, height, settings.coordinate_system, settings.max_vertices
                )
            prompt = prompts[key]
            try:
                value, text = target_answer(
                    specs[task],
                    prompt,
                    grade=record.grade,
                    mask=mask,
                    pixel_spacing=spacing,
                    point_target=settings.point_target,
                )
            except ValueError as exc:
                skipped[f"{record.case_id}:{image.index}:{task}"] = str(exc)
                continue
            examples.append(
                FinetuneExample(
                    case_id=record.case_id,
                    slice_index=int(image.index),
                    task=task,
                    grade=record.grade,
                    pixels=pixels,
                    prompt=prompt,
                    target=text,
                    value=value,
                    pixel_spacing=(float(spacing[0]), float(spacing[1])),
                    mask=mask if settings.keep_masks and mask is not None else None,
                )
            )
    return examples, skipped, note


def _safe_case_examples(record, convention, tasks, settings):
    try:
        return _case_examples(record, convention, tasks, settings), None
    except Exception as exc:  # one bad case never stops the others
        message = str(exc)
        if record.case_id not in message:
            message = f"{record.case_id}: {message}"
        return None, message


def build_examples(
    cohort,
    case_ids: Sequence[str],
    tasks: Sequence[str],
    settings: ExampleSettings | None = None,
    *,
    jobs: int = 1,
) -> ExampleSet:
    """Build the examples of ``case_ids`` (see module docstring).

    A case that is missing, unusable or unreadable is left out and named in ``skipped``; the
    others go on.

    Args:
        cohort: a :class:`~GliomaCompareLib.data.Cohort`.
        case_ids: the patients (e.g. a split's ``train`` list).
        tasks: some of ``grade, point, box, polygon``.
        settings: slice rule, window, coordinate system ... (default :class:`ExampleSettings`).
        jobs: processes loading cases (the examples do not depend on it).

    Returns:
        :class:`ExampleSet`.
    """
    settings = settings or ExampleSettings()
    tasks = tuple(t for t in TASK_NAMES if t in tasks)
    load_tasks(settings.prompts_dir)  # a bad prompts folder fails here, once, naming the file
    records = {r.case_id: r for r in cohort.cases}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    todo = []
    for case_id in case_ids:
        record = records.get(case_id)
        if record is None:
            skipped[case_id] = f"{case_id}: listed, but not found in the data folder"
        elif not record.usable:
            skipped[case_id] = f"{case_id}: not usable: " + "; ".join(record.problems)
        elif "grade" in tasks and len(tasks) == 1 and record.grade not in ("HGG", "LGG"):
            skipped[case_id] = f"{case_id}: grade unknown, so no grade target"
        else:
            todo.append(record)
    by_case: dict[str, list[FinetuneExample]] = {}
    args = [(r, cohort.convention, tasks, settings) for r in todo]
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
            results = list(pool.map(_safe_case_examples, *zip(*args, strict=True)))
    else:
        results = [_safe_case_examples(*a) for a in args]
    for record, (result, error) in zip(todo, results, strict=True):
        if error is not None:
            skipped[record.case_id] = error
            log.warning("fine-tuning data: skipping %s", error)
            continue
        examples, slice_skips, note = result
        by_case[record.case_id] = examples
        skipped.update(slice_skips)
        if note:
            notes[record.case_id] = note
    order = {t: i for i, t in enumerate(TASK_NAMES)}
    examples = sorted(
        (e for items in by_case.values() for e in items),
        key=lambda e: (e.case_id, e.slice_index, order[e.task]),
    )
    return ExampleSet(
        examples=tuple(examples),
        case_ids=tuple(case_ids),
        skipped=skipped,
        notes=notes,
        settings=settings,
        tasks=tasks,
    )


# --------------------------------------------------------------------------- cache on disk


def save_example_set(path: str | Path, examples: ExampleSet, key: str) -> Path:
    """Write ``examples`` to one ``.npz`` file (atomically), tagged with ``key``.

    Prompts are not stored: :func:`load_example_set` renders them again from the prompts
    folder and refuses the file when a template hash differs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    items = []
    for i, e in enumerate(examples.examples):
        arrays[f"pixels_{i}"] = e.pixels
        if e.mask is not None:
            arrays[f"mask_{i}"] = np.packbits(e.mask)
        items.append(
            {
                "case_id": e.case_id,
                "slice_index": e.slice_index,
                "task": e.task,
                "grade": e.grade,
                "target": e.target,
                "value": e.value,
                "pixel_spacing": list(e.pixel_spacing),
                "template_hash": e.prompt.template_hash,
                "prompt_hash": e.prompt.prompt_hash,
                "mask_shape": list(e.mask.shape) if e.mask is not None else None,
            }
        )
    meta = {
        "version": _CACHE_VERSION,
        "key": key,
        "tasks": list(examples.tasks),
        "case_ids": list(examples.case_ids),
        "skipped": examples.skipped,
        "notes": examples.notes,
        "settings": examples.settings.to_dict(),
        "items": items,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def _tupled(value):
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def load_example_set(path: str | Path, key: str, settings: ExampleSettings) -> ExampleSet | None:
    """Read a file written by :func:`save_example_set`; None when it is missing, unreadable,
    made with another ``key``, or with prompt templates that have changed since."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            if meta.get("version") != _CACHE_VERSION or meta.get("key") != key:
                return None
            specs = load_tasks(settings.prompts_dir)
            prompts: dict[tuple[str, int, int], Prompt] = {}
            examples = []
            for i, item in enumerate(meta["items"]):
                pixels = data[f"pixels_{i}"]
                height, width = pixels.shape[:2]
                task = item["task"]
                if (task, width, height) not in prompts:
                    prompts[(task, width, height)] = specs[task].render(
                        width, height, settings.coordinate_system, settings.max_vertices
                    )
                prompt = prompts[(task, width, height)]
                if prompt.prompt_hash != item["prompt_hash"]:
                    return None
                mask = None
                if item["mask_shape"] is not None:
                    shape = tuple(item["mask_shape"])
                    bits = np.unpackbits(data[f"mask_{i}"])[: shape[0] * shape[1]]
                    mask = bits.reshape(shape).astype(bool)
                examples.append(
                    FinetuneExample(
                        case_id=item["case_id"],
                        slice_index=int(item["slice_index"]),
                        task=task,
                        grade=item["grade"],
                        pixels=pixels,
                        prompt=prompt,
                        target=item["target"],
                        value=_tupled(item["value"]),
                        pixel_spacing=tuple(item["pixel_spacing"]),
                        mask=mask,
                    )
                )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable example cache (%s); building the examples again", path, exc)
        return None
    return ExampleSet(
        examples=tuple(examples),
        case_ids=tuple(meta["case_ids"]),
        skipped=dict(meta["skipped"]),
        notes=dict(meta["notes"]),
        settings=settings,
        tasks=tuple(meta["tasks"]),
    )


# --------------------------------------------------------------------------- collator


class FinetuneCollator:
    """Examples -> model inputs with masked ``labels`` (see module docstring).

    The text of an example is the processor's chat template applied to
    :func:`~GliomaCompareLib.vlm.types.build_messages` ``(prompt, answer)``; its first part,
    the template applied to the prompt alone with the generation prompt, is exactly what the
    ``transformers`` backend sends at inference, and its token ids are checked to be a prefix of
    the example's ids. Padding is on the right (training positions then start at 0 in every
    row, as in unpadded inference).

    Args:
        processor: the model's processor (tokenizer + image processor + chat template).
        image_token_id: id of the image token (masked; default: the processor's
            ``image_token_id``), None when the model has none.
        vocab_size: the language model's output vocabulary; ids at or above it are masked.
        image_token_ids: more image token ids to mask.
    """

    def __init__(
        self,
        processor,
        *,
        image_token_id: int | None = None,
        vocab_size: int | None = None,
        image_token_ids: Sequence[int] = (),
    ):
        self.processor = processor
        if image_token_id is None:
            image_token_id = getattr(processor, "image_token_id", None)
        self.image_token_id = image_token_id
        #: every image token id masked in the labels
        self.image_token_ids = tuple(
            dict.fromkeys(i for i in (image_token_id, *image_token_ids) if isinstance(i, int))
        )
        self.vocab_size = vocab_size
        self._prompt_ids: dict[tuple, list[int]] = {}
        self._warned = False

    @classmethod
    def for_model(cls, model, processor) -> FinetuneCollator:
        """A collator with the image token ids (the model family's, see
        :meth:`~GliomaCompareLib.vlm.families.Family.image_token_ids`) and the vocabulary size
        read from ``model``'s config.

        Raises:
            ValueError: a model of no supported family.
        """
        config = getattr(model, "config", None)
        ids = family_of_model(model).image_token_ids(config, processor)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab = getattr(text_config, "vocab_size", None)
        return cls(
            processor,
            image_token_id=ids[0] if ids else None,
            vocab_size=vocab,
            image_token_ids=ids[1:],
        )

    def chat_text(self, prompt_text: str, answer_text: str | None = None) -> str:
        """The chat-formatted text (generation prompt added when no answer is given), as the
        ``transformers`` backend builds it."""
        return self.processor.apply_chat_template(
            build_messages(prompt_text, answer_text),
            add_generation_prompt=answer_text is None,
            tokenize=False,
        )

    def _process(self, images: list[np.ndarray], texts: list[str]):
        from PIL import Image

        tok = self.processor.tokenizer
        side = tok.padding_side
        tok.padding_side = "right"
        try:
            return self.processor(
                images=[[Image.fromarray(np.ascontiguousarray(im))] for im in images],
                text=texts,
                padding=True,
                add_special_tokens=False,
                return_tensors="pt",
            )
        finally:
            tok.padding_side = side

    def prompt_ids(self, example: FinetuneExample) -> list[int]:
        """Token ids of the example's prompt as inference sends it (cached per prompt and
        image size)."""
        key = (example.prompt.prompt_hash, example.pixels.shape[:2])
        if key not in self._prompt_ids:
            text = self.chat_text(example.prompt.text)
            encoded = self._process([example.rgb], [text])
            self._prompt_ids[key] = encoded["input_ids"][0].tolist()
        return self._prompt_ids[key]

    def __call__(self, examples: Sequence[FinetuneExample]):
        """Encode a batch.

        Returns:
            The processor's ``BatchFeature`` (``input_ids``, ``attention_mask``, image inputs)
            plus ``labels`` ``(B, L)`` (int64, :data:`IGNORE_INDEX` outside the answers).

        Raises:
            ValueError: when the chat template does not put the answer after the prompt, or an
                example has no answer token left to learn.
        """
        if not examples:
            raise ValueError("empty batch")
        texts = []
        for e in examples:
            prompt_text = self.chat_text(e.prompt.text)
            full = self.chat_text(e.prompt.text, e.target)
            if not full.startswith(prompt_text):
                raise ValueError(
                    "the chat template does not render the answer after the inference prompt "
                    f"(case {e.case_id}, slice {e.slice_index}, task {e.task}); fine-tuning "
                    "would not match what inference sends"
                )
            texts.append(full)
        batch = self._process([e.rgb for e in examples], texts)
        ids = batch["input_ids"]
        labels = ids.clone()
        for row, e in enumerate(examples):
            prompt = self.prompt_ids(e)
            full = ids[row].tolist()
            n = len(prompt)
            if full[:n] != prompt:
                shared = 0
                while shared < min(n, len(full)) and full[shared] == prompt[shared]:
                    shared += 1
                if not self._warned:
                    log.warning(
                        "prompt tokens merge with the answer's first token (%s); masking the "
                        "%d shared tokens",
                        e.task,
                        shared,
                    )
                    self._warned = True
                n = shared
            labels[row, :n] = IGNORE_INDEX
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        for image_id in self.image_token_ids:
            labels[ids == image_id] = IGNORE_INDEX
        if self.vocab_size is not None:
            labels[ids >= self.vocab_size] = IGNORE_INDEX
        empty = (labels != IGNORE_INDEX).sum(dim=1) == 0
        if bool(empty.any()):
            e = examples[int(empty.nonzero()[0, 0])]
            raise ValueError(
                f"case {e.case_id}, slice {e.slice_index}, task {e.task}: no answer token to learn"
            )
        batch["labels"] = labels
        return batch
