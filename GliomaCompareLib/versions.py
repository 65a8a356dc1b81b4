"""The library versions a result was made with: one list, recorded the same way everywhere.

The run manifest, the CNN's ``model.json`` and the VLM's fine-tuning and inference records all
call :func:`library_versions`. Versions come from the installed distributions' metadata, so
nothing heavy (torch, transformers) is imported to read them.
"""

from __future__ import annotations

import sys
from importlib import metadata

from GliomaCompareLib import __version__

__all__ = ["LIBRARIES", "library_versions"]

#: Distributions whose versions every record holds (None where one is not installed).
LIBRARIES = (
    "torch",
    "monai",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "numpy",
    "scipy",
    "nibabel",
    "SimpleITK",
    "scikit-image",
    "nilearn",
    "safetensors",
    "pillow",
    "matplotlib",
    "PyYAML",
    "bitsandbytes",
)


def library_versions() -> dict[str, str | None]:
    """Versions of Python, GliomaCompare and each of :data:`LIBRARIES`.

    Returns:
        ``{"python": "3.12.3", "gliomacompare": "0.1.0", "torch": "2.5.1+cu124", ...}`` in
        that order; a library that is not installed maps to None. A library whose distribution
        metadata is missing but which is imported (vendored copies) reports its
        ``__version__``.
    """
    out: dict[str, str | None] = {"python": sys.version.split()[0], "gliomacompare": __version__}
    for name in LIBRARIES:
        out[name] = _version(name)
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        return str(version) if version is not None else None
