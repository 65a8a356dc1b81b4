"""The run manifest: what was run, with which versions, seeds, models and device."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from GliomaCompareLib import __version__
from GliomaCompareLib.versions import library_versions

__all__ = ["build_manifest", "device_info", "git_revision"]


def git_revision(path: Path | None = None) -> dict[str, Any]:
    """The git commit of the GliomaCompare source tree and whether it had local changes."""
    root = path or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"commit": rev, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(requested: str = "auto") -> dict[str, Any]:
    """The compute device a run uses (``auto`` picks CUDA when available)."""
    import torch

    cuda = torch.cuda.is_available()
    wants_cuda = requested == "cuda" or requested.startswith("cuda:")
    if wants_cuda and not cuda:
        raise ValueError(f"device {requested!r} was requested but CUDA is not available here")
    # "cuda:N" is recorded as asked (it was recorded as "cpu")
    use = requested if wants_cuda else ("cuda" if requested == "auto" and cuda else "cpu")
    info: dict[str, Any] = {
        "requested": requested,
        "device": use,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if use.startswith("cuda"):
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def build_manifest(
    config: Mapping[str, Any],
    config_path: str | Path,
    *,
    device: Mapping[str, Any],
    models: Mapping[str, Any] | None = None,
    stages: Mapping[str, Any] | None = None,
    shard: str = "0/1",
) -> dict[str, Any]:
    """Everything needed to say what produced a run's numbers."""
    return {
        "tool": "gliomacompare",
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "config_path": str(config_path),
        "config": dict(config),
        "seeds": {"seed": config.get("seed"), "split": (config.get("split") or {}).get("seed")},
        "git": git_revision(),
        "versions": library_versions(),
        "platform": {"system": platform.platform(), "python": sys.executable},
        "device": dict(device),
        "models": dict(models or {}),
        "stages": dict(stages or {}),
        "shard": shard,
    }
