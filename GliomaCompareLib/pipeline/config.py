"""Run configuration: YAML files and presets in ``Resources/presets``.

A config is a YAML mapping. ``extends: NAME`` (a preset name or a path relative to the file)
deep-merges the file over another config, so a small file can change a few settings of a preset.
``--set key.sub=value`` overrides single values on the command line (the value is parsed as YAML).
Every choice the study left open (slice rule, prompts, coordinate convention, LoRA settings, CNN
recipe) lives in the config and is printed in the report and the manifest.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from GliomaCompareLib.resources import resource_path

__all__ = [
    "KNOWN_SECTIONS",
    "apply_overrides",
    "available_presets",
    "deep_merge",
    "load_run_config",
]

#: Top-level keys a run config may have; anything else is a typo and is refused.
KNOWN_SECTIONS = (
    "name",
    "description",
    "extends",
    "seed",
    "device",
    "data",
    "split",
    "cnn",
    "vlm",
    "finetune",
    "consistency",
    "metrics",
    "report",
)


def available_presets() -> dict[str, Path]:
    """Preset name -> file, from ``Resources/presets/*.yaml``."""
    return {p.stem: p for p in sorted(resource_path("presets").glob("*.yaml"))}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (mappings merge; anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    text = str(name_or_path)
    candidates = [Path(text)]
    if relative_to is not None:
        candidates.insert(0, relative_to / text)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    presets = available_presets()
    if text in presets:
        return presets[text]
    raise FileNotFoundError(
        f"Run config {text!r} is neither a file nor a preset "
        f"(presets: {', '.join(presets) or 'none'})"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable YAML run config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping, got {type(data).__name__}")
    return data


def _load(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ValueError(f"Run config 'extends' loop: {chain}")
    data = _read_yaml(path)
    unknown = sorted(set(data) - set(KNOWN_SECTIONS))
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level keys {unknown} (known: {', '.join(KNOWN_SECTIONS)})"
        )
    parent = data.pop("extends", None)
    if parent:
        base = _load(_resolve(parent, path.parent), (*seen, path))
        data = deep_merge(base, data)
    return data


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML).

    Raises:
        ValueError: for an override without ``=`` or with an unknown top-level key.
    """
    import yaml

    out = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in KNOWN_SECTIONS:
            raise ValueError(f"--set {item!r}: unknown top-level key {parts[0]!r}")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_run_config(
    name_or_path: str | Path, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], Path]:
    """Load a run config (file or preset name), resolve ``extends``, apply overrides.

    Returns:
        (config mapping, the file it came from).
    """
    path = _resolve(name_or_path)
    config = _load(path, ())
    config = apply_overrides(config, overrides)
    config.setdefault("name", path.stem)
    return config, path
