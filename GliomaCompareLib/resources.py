"""Locating the files in ``Resources/`` (conventions, prompts, presets).

``Resources/`` sits beside ``GliomaCompareLib/`` in the repository and in the installed Slicer
module, so it is found relative to this file. ``GLIOMACOMPARE_RESOURCES`` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resource_path", "resources_dir"]

_ENV = "GLIOMACOMPARE_RESOURCES"


def resources_dir() -> Path:
    """Return the ``Resources`` folder.

    Raises:
        FileNotFoundError: when no candidate folder exists; the message lists where it looked.
    """
    candidates = []
    if os.environ.get(_ENV):
        candidates.append(Path(os.environ[_ENV]))
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "Resources", here / "Resources"]
    for candidate in candidates:
        if (candidate / "conventions").is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"GliomaCompare's Resources folder was not found (looked in: {looked}); "
        f"set {_ENV} to the folder that holds conventions/, prompts/ and presets/."
    )


def resource_path(*parts: str) -> Path:
    """Return the path of a file under ``Resources/`` (it need not exist)."""
    return resources_dir().joinpath(*parts)
