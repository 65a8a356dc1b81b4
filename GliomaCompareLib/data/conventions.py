"""Label and file-naming conventions of BraTS releases, read from ``Resources/conventions``.

A convention says how case folders and files are named, the fixed channel order, which label
values exist and which labels make up the regions WT / TC / ET. Code never hard-codes BraTS
label values; it asks the convention (STYLE.md #6).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from GliomaCompareLib.resources import resource_path

__all__ = ["REGIONS", "Convention", "available_conventions", "load_convention"]

#: Evaluation regions in their conventional order.
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


@dataclass(frozen=True)
class Convention:
    """One BraTS naming and labelling convention.

    Attributes:
        name: short name, e.g. ``"brats2020"``.
        description: one line for humans.
        case_dir_glob: glob matching case folders, e.g. ``"BraTS20_*"``.
        file_pattern: file stem pattern with ``{case_id}`` and ``{key}``.
        extensions: accepted file extensions in order of preference.
        channels: canonical channel order of the 4-channel image (``flair, t1, t1ce, t2``).
        modality_keys: canonical channel name -> file key (``"t1ce"`` -> ``"t1c"`` in 2023).
        label_key: file key of the label map (``"seg"``).
        label_file_aliases: case id -> other label file stems (BraTS 2020 case 355).
        labels: label value -> name, description, colour (RGB in [0, 1]).
        regions: region name -> label values (``{"WT": (1, 2, 4), ...}``).
        region_colors: region name -> colour.
        name_mapping_file, id_column, grade_column: where grades are read from.
        grade_values: value in the grade column -> ``"HGG"`` / ``"LGG"``.
        source: the JSON file this was read from.
    """

    name: str
    description: str
    case_dir_glob: str
    file_pattern: str
    extensions: tuple[str, ...]
    channels: tuple[str, ...]
    modality_keys: dict[str, str]
    label_key: str
    label_file_aliases: dict[str, tuple[str, ...]]
    labels: dict[int, dict]
    regions: dict[str, tuple[int, ...]]
    region_colors: dict[str, tuple[float, float, float]]
    name_mapping_file: str
    id_column: str
    grade_column: str
    grade_values: dict[str, str]
    aliases: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    @property
    def allowed_labels(self) -> tuple[int, ...]:
        """Label values a label map may contain (background included)."""
        return tuple(sorted(self.labels))

    @property
    def tumour_labels(self) -> tuple[int, ...]:
        """Non-background label values."""
        return tuple(v for v in sorted(self.labels) if v != 0)

    def label_name(self, value: int) -> str:
        return self.labels[int(value)]["name"]

    def file_stem(self, case_id: str, key: str) -> str:
        return self.file_pattern.format(case_id=case_id, key=key)

    def to_dict(self) -> dict:
        """A JSON-able summary, for manifests and reports."""
        return {
            "name": self.name,
            "channels": list(self.channels),
            "modality_keys": dict(self.modality_keys),
            "labels": {str(k): v["name"] for k, v in self.labels.items()},
            "regions": {k: list(v) for k, v in self.regions.items()},
            "source": self.source,
        }

    @classmethod
    def from_file(cls, path: str | Path) -> Convention:
        """Read a convention JSON file.

        Raises:
            ValueError: naming the file and the missing or inconsistent entry.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read label convention {path}: {exc}") from exc
        try:
            labels = {int(k): dict(v) for k, v in raw["labels"].items()}
            regions = {k: tuple(int(x) for x in v["labels"]) for k, v in raw["regions"].items()}
            region_colors = {
                k: tuple(float(c) for c in v.get("color", (0.5, 0.5, 0.5)))
                for k, v in raw["regions"].items()
            }
            nm = raw["name_mapping"]
            conv = cls(
                name=raw["name"],
                description=raw.get("description", ""),
                case_dir_glob=raw["case_dir_glob"],
                file_pattern=raw["file_pattern"],
                extensions=tuple(raw["extensions"]),
                channels=tuple(raw["channels"]),
                modality_keys=dict(raw["modality_keys"]),
                label_key=raw["label_key"],
                label_file_aliases={
                    k: tuple(v) for k, v in raw.get("label_file_aliases", {}).items()
                },
                labels=labels,
                regions=regions,
                region_colors=region_colors,
                name_mapping_file=nm["file"],
                id_column=nm["id_column"],
                grade_column=nm["grade_column"],
                grade_values=dict(nm["grades"]),
                aliases=tuple(raw.get("aliases", ())),
                source=str(path),
            )
        except KeyError as exc:
            raise ValueError(f"Label convention {path} lacks the entry {exc}") from exc
        missing = [c for c in conv.channels if c not in conv.modality_keys]
        if missing:
            raise ValueError(f"Label convention {path}: no file key for channels {missing}")
        for region, values in conv.regions.items():
            unknown = [v for v in values if v not in conv.labels]
            if unknown:
                raise ValueError(
                    f"Label convention {path}: region {region} uses undeclared labels {unknown}"
                )
        if 0 not in conv.labels:
            raise ValueError(f"Label convention {path}: label 0 (background) must be declared")
        return conv


def available_conventions() -> dict[str, Path]:
    """Map every convention name and alias to its file under ``Resources/conventions``."""
    out: dict[str, Path] = {}
    for path in sorted(resource_path("conventions").glob("*.json")):
        raw = json.loads(path.read_text())
        for name in [raw.get("name", path.stem), *raw.get("aliases", [])]:
            out[name.lower()] = path
    return out


@lru_cache(maxsize=16)
def _load(path: str) -> Convention:
    return Convention.from_file(path)


def load_convention(name_or_path: str | Path | Convention = "brats2020") -> Convention:
    """Return a convention by name (``brats2020``, ``brats2023`` or an alias) or JSON path.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if isinstance(name_or_path, Convention):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".json") or Path(text).is_file():
        return _load(str(Path(text).resolve()))
    known = available_conventions()
    if text.lower() not in known:
        raise ValueError(
            f"Unknown label convention {text!r}; known: {', '.join(sorted(known))} "
            "(or pass the path of a convention JSON file)"
        )
    return _load(str(known[text.lower()]))
