"""Where the module finds ``GliomaCompareLib``, ``Resources/`` and the Python that runs the CLI.

Two layouts are supported (no slicer / qt import here):

- installed extension: ``qt-scripted-modules/`` holds ``GliomaCompare.py``,
  ``GliomaCompareSlicerLib/``, ``GliomaCompareLib/`` and ``Resources/`` side by side;
- from source (Slicer "additional module paths" -> ``<repo>/GliomaCompare``): the module file
  is in ``<repo>/GliomaCompare/`` and ``GliomaCompareLib/`` and ``Resources/`` are one level up.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = [
    "MINIMUM_PYTHON",
    "MINIMUM_SLICER",
    "MODULE_DIR",
    "cli_command",
    "cli_environment",
    "ensure_library_importable",
    "icon_file",
    "library_root",
    "python_executable",
    "resources_root",
    "ui_file",
    "unsupported_reason",
]

#: The oldest 3D Slicer the module supports (5.10, Nov 2025, the first with Python 3.12).
MINIMUM_SLICER = (5, 10)
#: The Python it needs (the library uses 3.10+ syntax at run time; Slicer 5.10+ ship 3.12).
MINIMUM_PYTHON = (3, 12)

#: The folder holding ``GliomaCompare.py`` (``<repo>/GliomaCompare`` or ``qt-scripted-modules``).
MODULE_DIR = Path(__file__).resolve().parent.parent


def _candidates() -> list[Path]:
    return [MODULE_DIR, MODULE_DIR.parent]


def library_root() -> Path:
    """The folder that contains the ``GliomaCompareLib`` package.

    Raises:
        FileNotFoundError: listing where it looked.
    """
    for folder in _candidates():
        if (folder / "GliomaCompareLib" / "__init__.py").is_file():
            return folder
    looked = ", ".join(str(c) for c in _candidates())
    raise FileNotFoundError(
        f"GliomaCompareLib was not found next to the module (looked in {looked})"
    )


def ensure_library_importable() -> Path:
    """Put :func:`library_root` on ``sys.path`` (first) if ``GliomaCompareLib`` is not importable
    from there yet; return that root."""
    root = library_root()
    text = str(root)
    if text not in sys.path:
        sys.path.insert(0, text)
    return root


def resources_root() -> Path:
    """The ``Resources`` folder holding ``UI/GliomaCompare.ui`` (and the library's resources).

    Raises:
        FileNotFoundError: listing where it looked.
    """
    for folder in _candidates():
        if (folder / "Resources" / "UI" / "GliomaCompare.ui").is_file():
            return folder / "Resources"
    looked = ", ".join(str(c / "Resources") for c in _candidates())
    raise FileNotFoundError(f"Resources/UI/GliomaCompare.ui was not found (looked in {looked})")


def ui_file() -> Path:
    """The module's Qt Designer file."""
    return resources_root() / "UI" / "GliomaCompare.ui"


def icon_file() -> Path | None:
    """The module icon, or None when it is missing."""
    try:
        path = resources_root() / "Icons" / "GliomaCompare.png"
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


def python_executable() -> str:
    """The Python that runs ``gliomacompare`` in a background process.

    Inside 3D Slicer this is ``PythonSlicer`` (Slicer's Python with Slicer's environment), found
    next to ``sys.executable`` or on ``PATH``; elsewhere (slicer-core, tests) ``sys.executable``.
    """
    names = ["PythonSlicer.exe", "PythonSlicer"] if os.name == "nt" else ["PythonSlicer"]
    here = Path(sys.executable).parent
    for name in names:
        if (here / name).is_file():
            return str(here / name)
    found = shutil.which("PythonSlicer")
    return found or sys.executable


def cli_command(*args: str, python: str | None = None) -> list[str]:
    """``[python, "-m", "GliomaCompareLib.cli", *args]``."""
    return [python or python_executable(), "-m", "GliomaCompareLib.cli", *[str(a) for a in args]]


def cli_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the CLI process: ``base`` (default ``os.environ``) with the library root
    first on ``PYTHONPATH``, unbuffered output, and the module's ``Resources`` exported as
    ``GLIOMACOMPARE_RESOURCES`` when found."""
    env = dict(os.environ if base is None else base)
    root = str(library_root())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    env["PYTHONUNBUFFERED"] = "1"
    try:
        resources = resources_root()
        if (resources / "conventions").is_dir():
            env.setdefault("GLIOMACOMPARE_RESOURCES", str(resources))
    except FileNotFoundError:
        pass
    return env


def unsupported_reason(
    slicer_version: tuple[int, int] | None, python_version: tuple[int, ...] | None = None
) -> str | None:
    """None on a supported Slicer; else one plain sentence saying what the module needs.

    Args:
        slicer_version: (major, minor) of the running Slicer (None: not known, not checked).
        python_version: default ``sys.version_info``.
    """
    python = tuple(python_version or sys.version_info[:2])[:2]
    need = (
        f"GliomaCompare needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later "
        f"(Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]})"
    )
    if slicer_version is not None and tuple(slicer_version)[:2] < MINIMUM_SLICER:
        have = ".".join(str(v) for v in tuple(slicer_version)[:2])
        return f"{need}; this is Slicer {have}. Install a current Slicer from download.slicer.org."
    if python < MINIMUM_PYTHON:
        have = ".".join(str(v) for v in python)
        return f"{need}; this Slicer runs Python {have}. Install a current Slicer."
    return None
