"""The VLM arm's tasks (grade, point, box, polygon): prompt templates and answer definitions.

Everything task-related is data in ``Resources/prompts/`` (``tasks.json`` plus one editable
template per task). Each task has ONE answer definition, from which this module derives

- the answer format quoted in the prompt (:meth:`TaskSpec.answer_format`),
- the JSON schema sent to OpenAI-compatible servers as ``response_format``
  (:meth:`TaskSpec.json_schema`),
- the exact JSON text of a correct answer, used as fine-tuning target
  (:meth:`TaskSpec.format_answer`),

and which :mod:`GliomaCompareLib.vlm.parsing` reads back. Coordinates in prompts and answers are
in one of the ``coordinate_systems`` of ``tasks.json``: ``pixel`` (column ``x`` and row ``y``,
origin at the top-left pixel, pixel centres at integers), ``normalized`` (0..1) or ``per_mille``
(0..1000); images follow the radiological convention of :mod:`GliomaCompareLib.data.slices`.

The *template hash* of a task covers its template text, answer definition, image description,
coordinate-system texts and refusal patterns: any edit changes it, and it is stored with every
answer and every fine-tuned adapter. The *prompt hash* of a rendered prompt also covers the
image size and options, and is part of the answer-cache key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from GliomaCompareLib import geometry as g
from GliomaCompareLib.geometry import COORDINATE_SYSTEMS
from GliomaCompareLib.resources import resource_path

__all__ = [
    "PROMPT_VARIANTS",
    "TASK_NAMES",
    "AnswerSpec",
    "Prompt",
    "TaskSpec",
    "load_tasks",
    "parse_task_list",
    "prompts_dir",
    "task_list",
]

#: The four tasks, in report order.
TASK_NAMES: tuple[str, ...] = ("grade", "point", "box", "polygon")

#: Image descriptions a prompts folder may hold: ``study`` says the slice contains a glioma (the
#: study's protocol, true of slices chosen from the reference labels); ``neutral`` does not.
PROMPT_VARIANTS: tuple[str, ...] = ("study", "neutral")
_KINDS = {"grade": "label", "point": "point", "box": "box", "polygon": "polygon"}
_PLACEHOLDERS = (
    "image",
    "width",
    "height",
    "max_x",
    "max_y",
    "coordinates",
    "format",
    "options",
    "max_vertices",
    "min_vertices",
)


def prompts_dir(folder: str | Path | None = None) -> Path:
    """The prompts folder: ``folder`` when given, else ``Resources/prompts``."""
    return Path(folder) if folder is not None else resource_path("prompts")


def _hash(obj: Any) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class AnswerSpec:
    """The answer definition of one task (``tasks.json`` -> ``tasks.<name>.answer``).

    Attributes:
        kind: ``label`` (grade), ``point``, ``box`` or ``polygon``.
        keys: JSON keys of the answer object: ``("grade",)``; ``("x", "y")``;
            ``("x_min", "y_min", "x_max", "y_max")``; ``("points",)``.
        options: allowed labels (``label`` kind), e.g. ``("HGG", "LGG")``.
        positive: the positive class among ``options`` (HGG).
        synonyms: option -> lower-case phrases that mean it (used by repair and pattern stages).
        key_aliases: key -> other key names accepted by the repair stage.
        container_aliases: keys under which a model may nest the coordinates
            (``{"box": [..]}``), accepted by the repair stage.
        min_vertices, max_vertices: polygon vertex limits (``max_vertices`` is the default K;
            a run may override it).
    """

    kind: str
    keys: tuple[str, ...]
    options: tuple[str, ...] = ()
    positive: str | None = None
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    key_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    container_aliases: tuple[str, ...] = ()
    min_vertices: int = 3
    max_vertices: int = 8

    @property
    def arity(self) -> int:
        """Numbers in one answer: 2 (point), 4 (box), 2 per vertex (polygon), 0 (label)."""
        return {"label": 0, "point": 2, "box": 4, "polygon": 2}[self.kind]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "keys": list(self.keys),
            "options": list(self.options),
            "positive": self.positive,
            "synonyms": {k: list(v) for k, v in self.synonyms.items()},
            "key_aliases": {k: list(v) for k, v in self.key_aliases.items()},
            "container_aliases": list(self.container_aliases),
            "min_vertices": self.min_vertices,
            "max_vertices": self.max_vertices,
        }

    @classmethod
    def from_dict(cls, name: str, raw: Mapping, source: Path) -> AnswerSpec:
        kind = raw.get("kind")
        if kind != _KINDS.get(name):
            raise ValueError(f"{source}: task {name!r} needs answer kind {_KINDS.get(name)!r}")
        if kind == "label":
            keys: tuple[str, ...] = (str(raw["key"]),)
            options = tuple(str(o) for o in raw.get("options", ()))
            if len(options) < 2:
                raise ValueError(f"{source}: task {name!r} needs at least two options")
            positive = raw.get("positive", options[0])
            if positive not in options:
                raise ValueError(f"{source}: task {name!r}: positive {positive!r} not in options")
        elif kind == "polygon":
            keys, options, positive = (str(raw.get("key", "points")),), (), None
        else:
            keys = tuple(str(k) for k in raw["keys"])
            if len(keys) != (2 if kind == "point" else 4):
                raise ValueError(f"{source}: task {name!r}: wrong number of keys {keys}")
            options, positive = (), None
        aliases = raw.get("key_aliases", {})
        if isinstance(aliases, list):  # a label's aliases are for its single key
            aliases = {keys[0]: aliases}
        spec = cls(
            kind=kind,
            keys=keys,
            options=options,
            positive=positive,
            synonyms={
                k: tuple(s.lower() for s in v) for k, v in dict(raw.get("synonyms", {})).items()
            },
            key_aliases={k: tuple(v) for k, v in dict(aliases).items()},
            container_aliases=tuple(raw.get("container_aliases", ())),
            min_vertices=int(raw.get("min_vertices", 3)),
            max_vertices=int(raw.get("max_vertices", 8)),
        )
        if spec.kind == "polygon" and not 3 <= spec.min_vertices <= spec.max_vertices:
            raise ValueError(f"{source}: polygon needs 3 <= min_vertices <= max_vertices")
        return spec


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt for one image size, ready for a backend.

    Attributes:
        task: task name.
        text: the user message text (the image goes before it).
        json_schema: JSON schema of the answer (for ``response_format``).
        response_name: schema name for ``response_format``.
        template_hash: hash of the task's template and definitions (see module docstring).
        prompt_hash: hash of ``text`` and ``json_schema``.
        width, height: image size in pixels the prompt states.
        coordinate_system: coordinate system of the answer.
        max_vertices: K for polygons (None otherwise).
        options: label options (grade) or ``()``.
        answer_prefix: JSON text before the label in a correct answer (grade), e.g.
            ``{"grade": "``; empty for other tasks.
        answer_suffix: JSON text after the label (``"}``).
    """

    task: str
    text: str
    json_schema: dict
    response_name: str
    template_hash: str
    prompt_hash: str
    width: int
    height: int
    coordinate_system: str
    max_vertices: int | None = None
    options: tuple[str, ...] = ()
    answer_prefix: str = ""
    answer_suffix: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """One task: template text and answer definition (see module docstring).

    Attributes:
        name: ``grade``, ``point``, ``box`` or ``polygon``.
        template: the template text (``str.format`` placeholders, see ``tasks.json``).
        template_file: where it was read from.
        answer: the answer definition.
        image_description: text for ``{image}``.
        coordinate_texts: coordinate system -> text for ``{coordinates}``.
        integer_coordinates: coordinate system -> whether coordinates are integers.
        refusal_patterns: regular expressions that mark a refusal.
    """

    name: str
    template: str
    template_file: Path
    answer: AnswerSpec
    image_description: str
    coordinate_texts: Mapping[str, str]
    integer_coordinates: Mapping[str, bool]
    refusal_patterns: tuple[str, ...] = ()

    @property
    def template_hash(self) -> str:
        """Hash of everything that shapes this task's prompts and parsing (16 hex digits)."""
        return _hash(
            {
                "task": self.name,
                "template": self.template,
                "answer": self.answer.to_dict(),
                "image": self.image_description,
                "coordinates": dict(self.coordinate_texts),
                "integers": dict(self.integer_coordinates),
                "refusals": list(self.refusal_patterns),
            }
        )

    # ------------------------------------------------------------------ derived from the answer
    def _check_system(self, coordinate_system: str) -> None:
        if coordinate_system not in self.coordinate_texts:
            raise ValueError(
                f"Unknown coordinate system {coordinate_system!r}; "
                f"use one of {', '.join(self.coordinate_texts)}"
            )

    def coordinate_range(
        self, coordinate_system: str, width: int, height: int
    ) -> tuple[float, float]:
        """Largest x and y a valid answer may give in ``coordinate_system``."""
        self._check_system(coordinate_system)
        if coordinate_system == "pixel":
            return float(width - 1), float(height - 1)
        if coordinate_system == "normalized":
            return 1.0, 1.0
        return 1000.0, 1000.0

    def answer_format(self) -> str:
        """The answer form quoted in the prompt, e.g. ``{"x": <x>, "y": <y>}``."""
        a = self.answer
        if a.kind == "label":
            return json.dumps({a.keys[0]: f"<{' or '.join(a.options)}>"})
        if a.kind == "polygon":
            return f'{{"{a.keys[0]}": [[<x>, <y>], [<x>, <y>], [<x>, <y>], ...]}}'
        return "{" + ", ".join(f'"{k}": <{k}>' for k in a.keys) + "}"

    def json_schema(
        self,
        width: int,
        height: int,
        coordinate_system: str = "pixel",
        max_vertices: int | None = None,
    ) -> dict:
        """JSON schema of a valid answer for an image of ``width`` x ``height`` pixels."""
        a = self.answer
        if a.kind == "label":
            props = {a.keys[0]: {"type": "string", "enum": list(a.options)}}
        else:
            max_x, max_y = self.coordinate_range(coordinate_system, width, height)
            number = "integer" if self.integer_coordinates.get(coordinate_system) else "number"

            def coord(top):
                return {"type": number, "minimum": 0, "maximum": top}

            if a.kind == "polygon":
                k = int(max_vertices or a.max_vertices)
                vertex = {
                    "type": "array",
                    "prefixItems": [coord(max_x), coord(max_y)],
                    "items": False,
                    "minItems": 2,
                    "maxItems": 2,
                }
                props = {
                    a.keys[0]: {
                        "type": "array",
                        "items": vertex,
                        "minItems": a.min_vertices,
                        "maxItems": k,
                    }
                }
            else:
                props = {key: coord(max_x if key.startswith("x") else max_y) for key in a.keys}
        return {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }

    def render(
        self,
        width: int,
        height: int,
        coordinate_system: str = "pixel",
        max_vertices: int | None = None,
    ) -> Prompt:
        """Render the template for an image of ``width`` x ``height`` pixels.

        Raises:
            ValueError: naming the template file for an unknown placeholder or coordinate
                system, or a polygon K below the minimum.
        """
        self._check_system(coordinate_system)
        a = self.answer
        k = int(max_vertices or a.max_vertices) if a.kind == "polygon" else None
        if k is not None and k < a.min_vertices:
            raise ValueError(f"Polygon vertex limit {k} is below the minimum {a.min_vertices}")
        values: dict[str, Any] = {
            "width": int(width),
            "height": int(height),
            "max_x": int(width) - 1,
            "max_y": int(height) - 1,
            "options": " or ".join(a.options),
            "max_vertices": k if k is not None else "",
            "min_vertices": a.min_vertices,
            "format": self.answer_format(),
        }
        try:
            values["image"] = self.image_description.format(**values)
            values["coordinates"] = self.coordinate_texts[coordinate_system].format(**values)
            text = self.template.format(**values).strip()
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"{self.template_file}: template error ({exc!r}); placeholders are "
                f"{', '.join('{' + p + '}' for p in _PLACEHOLDERS)}, literal braces as {{{{ }}}}"
            ) from None
        schema = self.json_schema(width, height, coordinate_system, k)
        prefix = suffix = ""
        if a.kind == "label":
            marker = "\x00"
            full = json.dumps({a.keys[0]: marker})
            prefix, suffix = full.split(json.dumps(marker)[1:-1])
        return Prompt(
            task=self.name,
            text=text,
            json_schema=schema,
            response_name=f"gliomacompare_{self.name}",
            template_hash=self.template_hash,
            prompt_hash=_hash({"text": text, "schema": schema}),
            width=int(width),
            height=int(height),
            coordinate_system=coordinate_system,
            max_vertices=k,
            options=a.options,
            answer_prefix=prefix,
            answer_suffix=suffix,
        )

    def format_answer(self, value: Any, *, digits: int | None = None) -> str:
        """The exact JSON text of an answer, in the form the prompt asks for.

        Args:
            value: the label (``"HGG"``), ``(x, y)``, ``(x_min, y_min, x_max, y_max)`` or a
                sequence of ``(x, y)`` vertices, already in the prompt's coordinate system.
            digits: decimals kept for coordinates (None: integers are written as integers,
                other numbers with 3 decimals).

        Raises:
            ValueError: when ``value`` does not fit the task.
        """
        a = self.answer

        def num(v):
            v = float(v)
            if digits == 0 or (digits is None and v.is_integer()):
                return round(v)
            return round(v, 3 if digits is None else digits)

        if a.kind == "label":
            if value not in a.options:
                raise ValueError(f"Task {self.name}: {value!r} is not one of {a.options}")
            return json.dumps({a.keys[0]: value})
        if a.kind == "polygon":
            points = [[num(x), num(y)] for x, y in value]
            if len(points) < a.min_vertices:
                raise ValueError(f"Task polygon: needs >= {a.min_vertices} vertices")
            return json.dumps({a.keys[0]: points})
        values = list(value)
        if len(values) != len(a.keys):
            raise ValueError(f"Task {self.name}: expected {len(a.keys)} numbers, got {values}")
        return json.dumps({k: num(v) for k, v in zip(a.keys, values, strict=True)})

    def target_answer(self, prompt: Prompt, *, mask=None, grade: str | None = None) -> str:
        """The correct answer to ``prompt``, as the exact JSON text the parser reads back with
        status ``ok`` (fine-tuning targets; computed by :mod:`GliomaCompareLib.geometry`).

        - ``grade``: ``grade``.
        - ``point``: the centroid of ``mask`` (the "true centre" the scoring measures from).
        - ``box``: the tight bounding box of ``mask``.
        - ``polygon``: :func:`~GliomaCompareLib.geometry.mask_polygon` of ``mask`` with at most
          ``prompt.max_vertices`` vertices (an outer polygon containing the mask).

        Coordinates are converted to ``prompt.coordinate_system``; where that system promises
        integers (pixels, thousandths) they are rounded and kept inside its range, others get 3
        decimals.

        Args:
            prompt: the rendered prompt (image size, coordinate system, K).
            mask: bool ``(H, W)`` tumour mask of the slice (localisation tasks).
            grade: ``HGG`` / ``LGG`` (grade task).

        Raises:
            ValueError: a missing or empty mask, a mask of the wrong size, or an unknown grade.
        """
        import numpy as np

        if self.answer.kind == "label":
            return self.format_answer(grade)
        if mask is None or not np.asarray(mask).any():
            raise ValueError(f"Task {self.name}: the target needs a non-empty tumour mask")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (prompt.height, prompt.width):
            raise ValueError(
                f"Task {self.name}: mask shape {mask.shape} != prompt image "
                f"{(prompt.height, prompt.width)}"
            )
        if self.answer.kind == "point":
            geom = g.mask_centroid(mask)
        elif self.answer.kind == "box":
            geom = g.mask_box(mask)
        else:
            geom = g.mask_polygon(
                mask, max_vertices=prompt.max_vertices or self.answer.max_vertices
            )
        geom = g.from_pixels(geom, prompt.coordinate_system, prompt.width, prompt.height)
        if isinstance(geom, g.Point):
            values = np.array([[geom.x, geom.y]])
        elif isinstance(geom, g.Box):
            values = np.array([[geom.x0, geom.y0], [geom.x1, geom.y1]])
        else:
            values = geom.as_array()
        if self.integer_coordinates.get(prompt.coordinate_system, False):
            # the prompt promises integers (pixels, thousandths): round, stay inside the image
            max_x, max_y = self.coordinate_range(
                prompt.coordinate_system, prompt.width, prompt.height
            )
            values = np.rint(values)
            values[:, 0] = np.clip(values[:, 0], 0, max_x)
            values[:, 1] = np.clip(values[:, 1], 0, max_y)
            digits = 0
        else:
            digits = 3
        if self.answer.kind == "polygon":
            return self.format_answer([tuple(v) for v in values], digits=digits)
        return self.format_answer(values.ravel().tolist(), digits=digits)

    def is_refusal(self, text: str) -> bool:
        """Whether ``text`` matches one of the refusal patterns (case-insensitive)."""
        return any(re.search(p, text, flags=re.IGNORECASE) for p in self.refusal_patterns)


def load_tasks(folder: str | Path | None = None, variant: str = "study") -> dict[str, TaskSpec]:
    """Read ``tasks.json`` and the templates from ``folder`` (default ``Resources/prompts``).

    ``variant`` picks the image description: ``study`` (``image_description``, which says the
    slice contains a glioma, as the study's prompts did) or ``neutral``
    (``image_description_neutral``, which does not: for label-free slices).

    Returns:
        task name -> :class:`TaskSpec`, in :data:`TASK_NAMES` order.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file for malformed content or a missing task.
    """
    base = prompts_dir(folder)
    source = base / "tasks.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: prompt definitions not found")
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from exc
    try:
        systems = raw["coordinate_systems"]
        coordinate_texts = {k: str(v["text"]) for k, v in systems.items()}
        integers = {k: bool(v.get("integers", False)) for k, v in systems.items()}
        unknown = set(coordinate_texts) - set(COORDINATE_SYSTEMS)
        if unknown:
            raise ValueError(f"unknown coordinate systems {sorted(unknown)}")
        refusals = tuple(raw.get("refusal_patterns", ()))
        for pattern in refusals:
            re.compile(pattern)
        tasks = {}
        for name in TASK_NAMES:
            if name not in raw["tasks"]:
                raise ValueError(f"task {name!r} is not defined")
            entry = raw["tasks"][name]
            template_file = base / entry["template"]
            if not template_file.is_file():
                raise FileNotFoundError(f"{template_file}: template of task {name!r} not found")
            tasks[name] = TaskSpec(
                name=name,
                template=template_file.read_text(encoding="utf-8"),
                template_file=template_file,
                answer=AnswerSpec.from_dict(name, entry["answer"], source),
                image_description=_image_description(raw, variant),
                coordinate_texts=coordinate_texts,
                integer_coordinates=integers,
                refusal_patterns=refusals,
            )
    except (KeyError, TypeError, re.error) as exc:
        raise ValueError(f"{source}: malformed ({exc!r})") from exc
    except ValueError as exc:
        if str(source) in str(exc):
            raise
        raise ValueError(f"{source}: {exc}") from exc
    return tasks


def _image_description(raw: dict, variant: str) -> str:
    if variant not in PROMPT_VARIANTS:
        raise ValueError(f"prompt variant {variant!r}: use {', '.join(PROMPT_VARIANTS)}")
    if variant == "study":
        return str(raw.get("image_description", "an axial MRI slice"))
    key = f"image_description_{variant}"
    if key not in raw:
        raise ValueError(f"no {key!r} for the {variant!r} prompt variant")
    return str(raw[key])


def parse_task_list(text: str | None) -> tuple[str, ...]:
    """``"grade,box"`` -> ``("grade", "box")`` in report order; None or ``"all"`` -> all four.

    Raises:
        ValueError: naming an unknown task.
    """
    if text is None or text.strip().lower() in ("", "all"):
        return TASK_NAMES
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TASK_NAMES]
    if bad:
        raise ValueError(f"Unknown task(s) {', '.join(bad)}; use {', '.join(TASK_NAMES)}")
    return tuple(t for t in TASK_NAMES if t in names)


def task_list(text: str) -> tuple[str, ...]:
    """:func:`parse_task_list` as an argparse ``type=`` (a usage error naming the option)."""
    try:
        return parse_task_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
