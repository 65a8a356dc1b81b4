"""Reading a finished (or partly finished) run folder for the report, without recomputing.

Only files of the run folder are read: ``manifest.json``, ``metrics/<table>.csv`` (columns from
:data:`GliomaCompareLib.runlayout.TABLES`), ``cases/<case_id>/gallery.npz`` and, for
stage timings the manifest lacks, ``stages/<stage>/done*.json``. A missing or unreadable file is
recorded (:attr:`RunData.problems`, :class:`TableData` ``status``), never fatal: the report shows
it as "not run" or "could not be read".
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from GliomaCompareLib.runlayout import (
    CASE_GALLERY_FILE,
    CASES_DIR,
    MANIFEST_FILE,
    METRICS_DIR,
    TABLES,
    read_table,
)

__all__ = [
    "TINY_LABEL",
    "RunData",
    "TableData",
    "is_tiny",
    "load_run",
]

log = logging.getLogger(__name__)

#: What every output of the tiny random-weight VLM says in its ``model`` column; the same text
#: as :data:`GliomaCompareLib.vlm.tiny.TINY_MODEL_LABEL` (checked by the tests).
TINY_LABEL = "tiny random-weight model"


def is_tiny(model: Any) -> bool:
    """Whether a model label (or any text naming a model) is the tiny random-weight VLM."""
    return isinstance(model, str) and TINY_LABEL in model.lower()


@dataclass(frozen=True)
class TableData:
    """One ``metrics/<name>.csv`` as read.

    Attributes:
        name: table name (a key of ``TABLES``).
        path: the CSV file.
        status: ``"ok"``, ``"missing"`` (no file: that part was not run) or ``"unreadable"``.
        rows: the rows (``read_table``: numbers as floats, empty cells None); empty unless ok.
        detail: why it is missing or unreadable.
    """

    name: str
    path: Path
    status: str
    rows: tuple[dict[str, Any], ...] = ()
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, eq=False)
class RunData:
    """What the report knows about a run.

    Attributes:
        run_dir: the run folder.
        manifest: ``manifest.json`` as a dict, or None when missing or unreadable.
        tables: table name -> :class:`TableData` for every table of ``TABLES``.
        case_dirs: case id -> ``cases/<case_id>/`` for every case folder present.
        problems: things the reader should know (missing or damaged files), one line each.
    """

    run_dir: Path
    manifest: dict[str, Any] | None
    tables: dict[str, TableData]
    case_dirs: dict[str, Path] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def rows(self, name: str) -> list[dict[str, Any]]:
        """The rows of table ``name`` (empty when it is missing or unreadable)."""
        table = self.tables.get(name)
        return list(table.rows) if table is not None else []

    @property
    def config(self) -> dict[str, Any]:
        """The run config from the manifest (empty without a manifest)."""
        config = (self.manifest or {}).get("config")
        return config if isinstance(config, dict) else {}

    def model_labels(self) -> dict[str, list[str]]:
        """method -> the distinct ``model`` values of every table row of that method."""
        return {k: list(v) for k, v in self._model_labels.items()}

    @cached_property
    def _model_labels(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for table in self.tables.values():
            for row in table.rows:
                for key in ("method", "method_a", "method_b"):
                    method = row.get(key)
                    model = row.get("model")
                    if method and model and model not in out.setdefault(method, []):
                        out[method].append(model)
        return out

    @property
    def tiny(self) -> bool:
        """Whether any output of this run came from the tiny random-weight VLM."""
        if any(is_tiny(m) for models in self.model_labels().values() for m in models):
            return True
        return any(is_tiny(text) for text in _strings((self.manifest or {}).get("models")))

    @property
    def synthetic(self) -> bool:
        """Whether the cohort was synthetic (the manifest's ``config.data.synthetic``)."""
        data = self.config.get("data")
        return bool(isinstance(data, dict) and data.get("synthetic"))

    def gallery_path(self, case_id: str) -> Path:
        return self.run_dir / CASES_DIR / case_id / CASE_GALLERY_FILE

    def stage_timings(self) -> dict[str, float]:
        """Stage name -> seconds, from the manifest's ``stages`` or the stage markers."""
        out: dict[str, float] = {}
        stages = (self.manifest or {}).get("stages")
        if isinstance(stages, dict):
            for name, info in stages.items():
                seconds = _seconds(info)
                if seconds is not None:
                    out[str(name)] = seconds
        folder = self.run_dir / "stages"
        if folder.is_dir():
            for stage_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                if stage_dir.name in out:
                    continue
                total, found = 0.0, False
                for marker in sorted(stage_dir.glob("done*.json")):
                    try:
                        seconds = _seconds(json.loads(marker.read_text()))
                    except (OSError, ValueError):
                        continue
                    if seconds is not None:
                        total, found = total + seconds, True
                if found:
                    out[stage_dir.name] = total
        return out


def _seconds(info: Any) -> float | None:
    if isinstance(info, (int, float)) and not isinstance(info, bool):
        return float(info) if math.isfinite(info) else None
    if isinstance(info, dict):
        for key in ("seconds", "elapsed_s", "wall_s", "time_s"):
            value = info.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
    return None


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _strings(value)


#: The manifest fields the report reads as containers, with the type each must have; a field of
#: another type (a hand-edited or damaged manifest) is named in the problems and left out.
MANIFEST_FIELD_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "git": (dict, "an object"),
    "config": (dict, "an object"),
    "seeds": (dict, "an object"),
    "models": ((dict, list), "an object or a list"),
    "device": (dict, "an object"),
    "versions": (dict, "an object"),
    "stages": (dict, "an object"),
    "command": (list, "a list"),
}


def _read_manifest(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(f"{path.name} not found: the 'what was run' section is empty")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} could not be read ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    for key, kind in MANIFEST_FIELD_TYPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, kind[0]):
            problems.append(
                f"{path.name}: field {key!r} is {type(value).__name__}, not {kind[1]}; not shown"
            )
            log.warning("%s: field %r is %s, not %s", path, key, type(value).__name__, kind[1])
            del data[key]
    return data


def _read_tables(metrics: Path, problems: list[str]) -> dict[str, TableData]:
    tables = {}
    for name in TABLES:
        path = metrics / f"{name}.csv"
        if not path.is_file():
            tables[name] = TableData(name, path, "missing", detail=f"metrics/{name}.csv not found")
            continue
        try:
            rows = read_table(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            detail = f"metrics/{name}.csv could not be read: {exc}"
            problems.append(detail)
            log.warning("%s", detail)
            tables[name] = TableData(name, path, "unreadable", detail=detail)
            continue
        unknown = [c for c in (rows[0] if rows else {}) if c not in TABLES[name] and c]
        if unknown:
            problems.append(f"metrics/{name}.csv has columns the report does not know: {unknown}")
        tables[name] = TableData(name, path, "ok", tuple(rows))
    return tables


def load_run(run_dir: str | Path) -> RunData:
    """Read everything the report needs from ``run_dir``.

    Raises:
        FileNotFoundError: when ``run_dir`` is not a folder, or holds neither ``manifest.json``
            nor ``metrics/`` (not a run folder).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    metrics = run_dir / METRICS_DIR
    if not (run_dir / MANIFEST_FILE).exists() and not metrics.is_dir():
        raise FileNotFoundError(
            f"{run_dir}: not a run folder (it has neither {MANIFEST_FILE} nor metrics/); "
            "run `gliomacompare run CONFIG --out RUN` first"
        )
    problems: list[str] = []
    manifest = _read_manifest(run_dir / MANIFEST_FILE, problems)
    tables = _read_tables(metrics, problems)
    cases = run_dir / CASES_DIR
    case_dirs = {p.name: p for p in sorted(cases.iterdir()) if p.is_dir()} if cases.is_dir() else {}
    return RunData(run_dir, manifest, tables, case_dirs, tuple(problems))
