"""One parser for every backend's answers: text -> task value -> pixel geometry, with a status.

Stages, tried in order (the first that yields a valid answer wins; ``stage`` records which):

1. ``strict``: the whole text (stripped) is one JSON object in exactly the task's answer form.
2. ``embedded``: the first JSON object found in the text (e.g. inside a Markdown fence or after
   a sentence) that decodes, in exactly the answer form.
3. ``repair``: a tolerant reading -- a decoded object in another form (aliased keys, nested
   coordinates, numbers as strings, label synonyms, swapped box corners), or text made JSON by
   repairs (single quotes, bare keys, trailing commas, tuples, missing closing brackets).
4. ``pattern``: no JSON at all, but the text names exactly one label option (``grade``), or
   holds the right number of coordinates (bracketed tuples first, then all numbers).

Statuses (:data:`PARSE_STATUSES`): ``ok`` (stages 1-2), ``repaired`` (stage 3, or coordinates clipped
to the image / polygon over K vertices), ``pattern`` (stage 4), ``invalid`` (no usable answer,
out-of-image or degenerate geometry), ``refused`` (no answer and the text matches a refusal
pattern of ``tasks.json``, or the server flagged a refusal), ``empty`` (blank text), ``error``
(no answer came: server down, timeout; set by the pipeline). ``invalid``, ``refused``, ``empty``
and ``error`` answers are scored as failures, never dropped.

Coordinates are read in the prompt's coordinate system and converted to pixels with
:func:`GliomaCompareLib.geometry.to_pixels`, then checked by the geometry validators.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from GliomaCompareLib import geometry as g
from GliomaCompareLib.data.statuses import USABLE_STATUSES
from GliomaCompareLib.vlm.tasks import Prompt, TaskSpec

__all__ = [
    "FAILED_STATUSES",
    "PARSE_STATUSES",
    "USABLE_STATUSES",
    "ParsedAnswer",
    "extract_value",
    "parse_answer",
    "repair_json",
]

PARSE_STATUSES: tuple[str, ...] = (
    "ok",
    "repaired",
    "pattern",
    "invalid",
    "refused",
    "empty",
    "error",
)
#: Statuses scored as failures.
FAILED_STATUSES: tuple[str, ...] = ("invalid", "refused", "empty", "error")

_NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_TUPLE_RE = re.compile(r"[\(\[]\s*(" + _NUMBER + r"(?:\s*,\s*" + _NUMBER + r")+)\s*[\)\]]")


class _NotAnswer(ValueError):
    """The object does not hold an answer of this task (message says why)."""


@dataclass(frozen=True)
class ParsedAnswer:
    """The parser's verdict on one answer text.

    Attributes:
        status: one of :data:`PARSE_STATUSES`.
        stage: ``strict``, ``embedded``, ``repair`` or ``pattern`` (None when nothing parsed).
        value: the answer in the prompt's coordinate system: a label string; ``(x, y)``;
            ``(x_min, y_min, x_max, y_max)``; or a tuple of ``(x, y)`` vertices. None on failure.
        geometry: the answer in pixel coordinates as a ``GliomaCompareLib.geometry`` ``Point``,
            ``Box`` or ``Polygon`` (None for grade and on failure).
        note: what was repaired, or why the answer is invalid.
    """

    status: str
    stage: str | None = None
    value: Any = None
    geometry: Any = None
    note: str = ""

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES

    @property
    def label(self) -> str | None:
        """The label of a usable grade answer, else None."""
        return self.value if self.usable and isinstance(self.value, str) else None


# --------------------------------------------------------------------------- JSON finding


def _json_objects(text: str):
    """Top-level JSON objects / arrays that decode in ``text``, in order (a value nested in an
    earlier decoded one is not yielded again)."""
    decoder = json.JSONDecoder()
    end = 0
    for match in re.finditer(r"[\{\[]", text):
        if match.start() < end:
            continue
        try:
            obj, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        yield obj


def repair_json(text: str) -> Any:
    """Best-effort reading of almost-JSON (the first ``{`` or ``[`` onward).

    Repairs: code fences, single quotes, bare keys, ``True/False/None``, tuples as lists,
    trailing commas, missing closing brackets / braces.

    Raises:
        ValueError: when the text still does not decode.
    """
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no '{' or '['")
    s = text[start:].replace("```", " ")
    s = re.sub(r"(?<![A-Za-z0-9])'([^'\n]*)'", r'"\1"', s)  # 'x' -> "x" (not apostrophes)
    s = re.sub(r"([\{,]\s*)([A-Za-z_][A-Za-z0-9_ \-]*?)\s*:", r'\1"\2":', s)  # bare keys
    s = re.sub(r"\bTrue\b", "true", s)
    s = re.sub(r"\bFalse\b", "false", s)
    s = re.sub(r"\bNone\b", "null", s)
    s = s.replace("(", "[").replace(")", "]")
    s = re.sub(r",\s*([\}\]])", r"\1", s)  # trailing commas
    # keep what a bracket walk can close; drop trailing prose after the last useful char
    stack: list[str] = []
    out: list[str] = []
    in_string = escaped = False
    for ch in s:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                break
            stack.pop()
        out.append(ch)
        if not stack:
            break
    repaired = "".join(out)
    if in_string:
        repaired += '"'
    repaired = re.sub(r",\s*$", "", repaired.rstrip())
    repaired += "".join(reversed(stack))
    repaired = re.sub(r",\s*([\}\]])", r"\1", repaired)
    try:
        return json.loads(repaired)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not repairable JSON ({exc.msg})") from None


# --------------------------------------------------------------------------- values


def _number(value: Any, strict: bool) -> float:
    if isinstance(value, bool):
        raise _NotAnswer(f"{value!r} is not a number")
    if isinstance(value, int | float) or (
        not strict and isinstance(value, str) and re.fullmatch(r"\s*" + _NUMBER + r"\s*", value)
    ):
        number = float(value)
    else:
        raise _NotAnswer(f"{value!r} is not a number")
    if not math.isfinite(number):
        raise _NotAnswer(f"{value!r} is not finite")
    return number


def _lower_keys(obj: Mapping) -> dict:
    return {str(k).strip().lower(): v for k, v in obj.items()}


def _label(spec: TaskSpec, obj: Any, strict: bool) -> str:
    a = spec.answer
    key = a.keys[0]
    if strict:
        if not isinstance(obj, dict) or set(obj) != {key}:
            raise _NotAnswer(f"expected exactly the key {key!r}")
        if obj[key] not in a.options:
            raise _NotAnswer(f"{obj[key]!r} is not one of {', '.join(a.options)}")
        return obj[key]
    if isinstance(obj, str):
        raw = obj
    elif isinstance(obj, dict):
        lowered = _lower_keys(obj)
        raw = None
        for name in (key, *a.key_aliases.get(key, ())):
            if name.lower() in lowered:
                raw = lowered[name.lower()]
                break
        if raw is None:
            strings = [v for v in obj.values() if isinstance(v, str)]
            if len(strings) != 1:
                raise _NotAnswer(f"no {key!r} key")
            raw = strings[0]
    else:
        raise _NotAnswer("not an object")
    if not isinstance(raw, str):
        raise _NotAnswer(f"{raw!r} is not a label")
    found = _labels_in(spec, raw, whole=True)
    if len(found) != 1:
        raise _NotAnswer(f"{raw!r} is not one of {', '.join(a.options)}")
    return found.pop()


def _labels_in(spec: TaskSpec, text: str, whole: bool = False) -> set[str]:
    """Options named in ``text`` (by their name or a synonym, as whole words)."""
    lowered = " ".join(text.lower().replace("_", " ").split())
    found = set()
    for option in spec.answer.options:
        phrases = (option.lower(), *spec.answer.synonyms.get(option, ()))
        for phrase in phrases:
            if (whole and lowered.strip(" .!\"'") == phrase) or (
                not whole
                and re.search(r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])", lowered)
            ):
                found.add(option)
    return found


def _pick(obj: dict, names: Sequence[str], used: set[str]) -> Any:
    lowered = _lower_keys(obj)
    for name in names:
        name = name.lower()
        if name in lowered and name not in used:
            used.add(name)
            return lowered[name]
    raise _NotAnswer(f"no {names[0]!r} key")


def _pair(value: Any, strict: bool) -> tuple[float, float]:
    if isinstance(value, dict) and not strict:
        lowered = _lower_keys(value)
        if "x" in lowered and "y" in lowered:
            return _number(lowered["x"], strict), _number(lowered["y"], strict)
    if isinstance(value, list | tuple) and len(value) == 2:
        return _number(value[0], strict), _number(value[1], strict)
    raise _NotAnswer(f"{value!r} is not an [x, y] pair")


def _strict_coords(spec: TaskSpec, obj: Any) -> tuple:
    """Coordinates of exactly the answer form: the task's keys and nothing else."""
    a = spec.answer
    if not isinstance(obj, dict) or set(obj) != set(a.keys):
        raise _NotAnswer(f"expected exactly the keys {', '.join(a.keys)}")
    if a.kind == "polygon":
        points = obj[a.keys[0]]
        if not isinstance(points, list):
            raise _NotAnswer(f"{a.keys[0]!r} is not a list")
        return tuple(_pair(p, True) for p in points)
    return tuple(_number(obj[k], True) for k in a.keys)


def _dict_coords(spec: TaskSpec, obj: dict) -> tuple:
    """Lenient: aliased keys, or the one container (``bbox``, ``points`` ...) holding them."""
    a = spec.answer
    lowered = _lower_keys(obj)
    if a.kind != "polygon":
        used: set[str] = set()
        try:
            return tuple(
                _number(_pick(obj, (k, *a.key_aliases.get(k, ())), used), False) for k in a.keys
            )
        except _NotAnswer:
            pass
    for name in (*a.keys, *a.container_aliases):
        if name.lower() in lowered and isinstance(lowered[name.lower()], list | dict):
            return _coords(spec, lowered[name.lower()], False)
    lists = [v for v in obj.values() if isinstance(v, list | dict)]
    if len(lists) == 1:
        return _coords(spec, lists[0], False)
    raise _NotAnswer(f"no {', '.join(a.keys)} keys")


def _list_coords(spec: TaskSpec, obj: list) -> tuple:
    """Lenient: a bare list -- ``[x, y]``; ``[x0, y0, x1, y1]`` or two corners; vertices as
    pairs or as a flat list of an even count of numbers."""
    kind = spec.answer.kind
    if kind == "point":
        return _pair(obj, False)
    if kind == "box":
        if len(obj) == 4 and not any(isinstance(v, list | dict) for v in obj):
            return tuple(_number(v, False) for v in obj)
        if len(obj) == 2:
            (x0, y0), (x1, y1) = _pair(obj[0], False), _pair(obj[1], False)
            return (x0, y0, x1, y1)
        raise _NotAnswer(f"{obj!r} is not a box")
    if obj and all(isinstance(v, list | tuple | dict) for v in obj):
        return tuple(_pair(p, False) for p in obj)
    numbers = [_number(v, False) for v in obj]
    if len(numbers) % 2:
        raise _NotAnswer("odd number of polygon coordinates")
    return tuple(zip(numbers[0::2], numbers[1::2], strict=True))


def _coords(spec: TaskSpec, obj: Any, strict: bool) -> tuple:
    """The coordinates of a decoded JSON value, exactly (``strict``) or leniently."""
    if strict:
        return _strict_coords(spec, obj)
    if isinstance(obj, dict):
        return _dict_coords(spec, obj)
    if isinstance(obj, list):
        return _list_coords(spec, obj)
    raise _NotAnswer("not an object or list")


def extract_value(spec: TaskSpec, obj: Any, *, strict: bool) -> Any:
    """The task's value from a decoded JSON value.

    Args:
        spec: the task.
        obj: the decoded JSON.
        strict: accept only exactly the answer form (else aliases, containers, strings ...).

    Returns:
        a label, ``(x, y)``, ``(x_min, y_min, x_max, y_max)`` or a tuple of ``(x, y)``.

    Raises:
        ValueError: saying why ``obj`` is not an answer.
    """
    if spec.answer.kind == "label":
        return _label(spec, obj, strict)
    return _coords(spec, obj, strict)


def _pattern(spec: TaskSpec, text: str) -> Any:
    a = spec.answer
    if a.kind == "label":
        found = _labels_in(spec, text)
        if len(found) != 1:
            named = f"names {' and '.join(sorted(found))}" if found else "names no option"
            raise _NotAnswer(f"text {named}")
        return found.pop()
    tuples = [[float(n) for n in _NUMBER_RE.findall(m.group(1))] for m in _TUPLE_RE.finditer(text)]
    pairs = [t for t in tuples if len(t) == 2]
    if a.kind == "point":
        if len(pairs) == 1:
            return tuple(pairs[0])
    elif a.kind == "box":
        quads = [t for t in tuples if len(t) == 4]
        if len(quads) == 1:
            return tuple(quads[0])
        if not quads and len(pairs) == 2:
            return (*pairs[0], *pairs[1])
    elif len(pairs) >= a.min_vertices:
        return tuple(tuple(p) for p in pairs)
    numbers = [float(n) for n in _NUMBER_RE.findall(text)]
    if a.kind == "polygon":
        if len(numbers) >= 2 * a.min_vertices and len(numbers) % 2 == 0 and not tuples:
            return tuple(zip(numbers[0::2], numbers[1::2], strict=True))
    elif len(numbers) == a.arity:
        return tuple(numbers)
    raise _NotAnswer(f"no {a.arity or 'even number of'} coordinates found in the text")


# --------------------------------------------------------------------------- geometry


def _flat(value: Any) -> list[float]:
    """The answer's coordinates in the order of the geometry's flat coordinate list."""
    out: list[float] = []
    for v in value:
        if isinstance(v, list | tuple):
            out.extend(float(c) for c in v)
        else:
            out.append(float(v))
    return out


def _beyond_note(spec: TaskSpec, value: Any, prompt: Prompt, beyond) -> str:
    """Why coordinates beyond the image make the answer invalid, naming each coordinate as
    the answer wrote it (its key and its value in the prompt's coordinate system)."""
    keys, raw = spec.answer.keys, _flat(value)
    parts = []
    for over in beyond:
        if spec.answer.kind == "polygon":
            name = f"{keys[0]}[{over.index // 2}].{'xy'[over.index % 2]}"
        else:
            name = keys[over.index]
        shown = f"{raw[over.index]:g}"
        if prompt.coordinate_system != "pixel":
            shown += f" ({over.value:g} px)"
        parts.append(f"{name} = {shown} lies {round(over.beyond, 1):g} px")
    size = f"{prompt.width}x{prompt.height}"
    return (
        f"geometry out_of_bounds: {', '.join(parts)} beyond the {size} image, "
        f"more than the tolerance of {g.OUTSIDE_TOLERANCE:.0%} of the side"
    )


def _to_geometry(spec: TaskSpec, value: Any, prompt: Prompt) -> tuple[Any, str, str]:
    """Pixel geometry of ``value``: (geometry or None, "ok" | "repaired" | "invalid", note).

    Image bounds, the same rule for every kind: a coordinate beyond the image's extent by more
    than :data:`~GliomaCompareLib.geometry.OUTSIDE_TOLERANCE` of the side (2%; see
    :func:`~GliomaCompareLib.geometry.beyond_image`) makes the answer invalid, the note naming
    the coordinate (``x_max = 3000`` on a 64-pixel image is not a position on it, and clipping
    it to the border would count an absurd answer as usable); a smaller overshoot is clipped to
    the image (status ``repaired``, note ``geometry clipped``); a geometry left covering no
    pixel is invalid. Inverted boxes, self-intersecting or degenerate polygons are invalid
    (never fixed). A polygon with more than K vertices is kept whole, with status ``repaired``
    and a note.
    """
    width, height, system = prompt.width, prompt.height, prompt.coordinate_system
    kind = spec.answer.kind
    if kind == "point":
        geom = g.to_pixels(g.Point(*value), system, width, height)
    elif kind == "box":
        geom = g.to_pixels(g.Box(*value), system, width, height)
    else:
        geom = g.to_pixels(g.Polygon(tuple(value)), system, width, height)
    beyond = g.beyond_image(geom, width, height, fraction=g.OUTSIDE_TOLERANCE)
    if beyond:
        return None, "invalid", _beyond_note(spec, value, prompt, beyond)
    if kind == "point":
        geom, status = g.validate_point(geom, width, height, clip=True)
    elif kind == "box":
        geom, status = g.validate_box(geom, width, height, clip=True)
    else:
        geom, status = g.validate_polygon(geom, width, height, clip=True)
        limit = prompt.max_vertices or spec.answer.max_vertices
        if geom is not None and len(value) > limit:
            note = f"{len(value)} vertices > K={limit}; kept all"
            if status != "ok":
                note += f"; geometry {status}"
            return geom, "repaired", note
    if geom is None:
        return None, "invalid", f"geometry {status}"
    if status == "ok":
        return geom, "ok", ""
    return geom, "repaired", f"geometry {status}"


_RANK = {"ok": 0, "repaired": 1, "pattern": 2}


def _finish(spec: TaskSpec, prompt: Prompt, value: Any, stage: str, status: str, note: str):
    if spec.answer.kind == "label":
        return ParsedAnswer(status, stage, value, None, note)
    geom, geo_status, geo_note = _to_geometry(spec, value, prompt)
    if geo_status == "invalid":
        return ParsedAnswer("invalid", stage, value, None, geo_note)
    if _RANK.get(geo_status, 0) > _RANK[status]:
        status = geo_status
    return ParsedAnswer(status, stage, value, geom, "; ".join(n for n in (note, geo_note) if n))


def parse_answer(
    spec: TaskSpec,
    text: str | None,
    prompt: Prompt,
    *,
    refused: bool = False,
) -> ParsedAnswer:
    """Parse one answer text for ``spec`` asked with ``prompt`` (see module docstring).

    Args:
        spec: the task.
        text: the model's answer text (None when no answer came).
        prompt: the rendered prompt (image size, coordinate system, K).
        refused: the server flagged the answer as a refusal (OpenAI ``message.refusal``).

    Returns:
        the :class:`ParsedAnswer`; never raises for bad answers.
    """
    if text is None or not text.strip():
        return ParsedAnswer("refused" if refused else "empty", note="no text")
    stripped = text.strip()
    reasons: list[str] = []
    # 1. strict
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError:
        obj = _NotAnswer
    if obj is not _NotAnswer:
        try:
            return _finish(spec, prompt, extract_value(spec, obj, strict=True), "strict", "ok", "")
        except _NotAnswer as exc:
            reasons.append(str(exc))
    # 2. embedded: first decodable JSON object in the text
    candidates = list(_json_objects(stripped))
    for candidate in candidates:
        if obj is not _NotAnswer and candidate == obj:
            continue
        try:
            value = extract_value(spec, candidate, strict=True)
        except _NotAnswer as exc:
            reasons.append(str(exc))
            continue
        return _finish(spec, prompt, value, "embedded", "ok", "")
    # 3. repair: lenient reading of decoded JSON, then of repaired text
    decoded = ([] if obj is _NotAnswer else [obj]) + candidates
    for candidate in decoded:
        try:
            value = extract_value(spec, candidate, strict=False)
        except _NotAnswer as exc:
            reasons.append(str(exc))
            continue
        return _finish(spec, prompt, value, "repair", "repaired", "lenient read")
    try:
        repaired = repair_json(stripped)
        value = extract_value(spec, repaired, strict=False)
        return _finish(spec, prompt, value, "repair", "repaired", "JSON repaired")
    except (ValueError, _NotAnswer) as exc:
        reasons.append(str(exc))
    # a refusal is not mined for numbers
    if refused or spec.is_refusal(stripped):
        return ParsedAnswer("refused", note="refusal")
    # 4. pattern
    try:
        value = _pattern(spec, stripped)
        return _finish(spec, prompt, value, "pattern", "pattern", "from text")
    except _NotAnswer as exc:
        reasons.append(str(exc))
    return ParsedAnswer("invalid", note="; ".join(dict.fromkeys(reasons))[:300])
