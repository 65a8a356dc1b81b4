"""The module's cache folders, listed and deleted ("Clear cached models / answers").

Two folders, both the module's own and both rebuilt on demand:

- the work folder of live runs (``CompareLogic.work_root``, default ``<temp>/GliomaCompare``):
  every CNN / VLM run on a loaded case, with the VLM's answer cache, the sample case and the demo;
- GliomaCompare's user cache (``$GLIOMACOMPARE_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or
  ``~/.cache`` + ``/gliomacompare``): the synthetic anatomy built for sample cases and demos.

Models you downloaded (the Hugging Face cache) and run folders you chose are never touched. No Qt:
the GUI asks for the confirmation and passes its answer in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["cache_folders", "clear_caches", "describe", "folder_size", "user_cache_dir"]


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """GliomaCompare's user cache folder (as the library finds it); None when disabled
    (``GLIOMACOMPARE_CACHE_DIR`` set to an empty string). With ``GLIOMACOMPARE_CACHE_DIR`` set,
    only what the library keeps in it (``synthetic/``): the folder itself may hold other things."""
    env = os.environ if environ is None else environ
    if "GLIOMACOMPARE_CACHE_DIR" in env:
        text = env["GLIOMACOMPARE_CACHE_DIR"]
        return Path(text) / "synthetic" if text.strip() else None
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gliomacompare"


def cache_folders(work_root: str | Path, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The module's cache folders that exist: the live-run work folder and the user cache."""
    found = [Path(work_root), user_cache_dir(environ)]
    return [p for p in found if p is not None and p.is_dir()]


def folder_size(folder: Path) -> int:
    """Bytes in the files under ``folder`` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                with contextlib.suppress(OSError):  # a file removed meanwhile
                    total += path.stat().st_size
    return total


def describe(folders: Sequence[Path]) -> str:
    """One line per folder with its size, for the confirmation."""
    return "\n".join(f"{p} ({folder_size(p) / 1e6:.1f} MB)" for p in folders)


def _refused(folder: Path) -> str | None:
    """Why ``folder`` must not be deleted by this action, or None."""
    resolved = folder.resolve()
    home = Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or home.is_relative_to(resolved):
        return f"{folder}: a root, home or parent of home folder is never deleted"
    return None


def clear_caches(folders: Sequence[Path], confirm: Callable[[str], bool]) -> list[Path]:
    """Delete ``folders`` (see :func:`cache_folders`) after ``confirm(question)`` said yes.

    Returns:
        The folders deleted (none when the user declined).

    Raises:
        ValueError: for a root, home or parent-of-home folder (nothing is deleted then).
        OSError: when a folder cannot be deleted (e.g. a file in use on Windows).
    """
    folders = [Path(p) for p in folders if Path(p).is_dir()]
    for folder in folders:
        why = _refused(folder)
        if why:
            raise ValueError(why)
    if not folders:
        return []
    question = (
        "Delete GliomaCompare's cached answers, live runs, sample case and synthetic anatomy?\n"
        f"{describe(folders)}\n"
        "Downloaded models and run folders you chose are not touched."
    )
    if not confirm(question):
        return []
    for folder in folders:
        shutil.rmtree(folder)
    return folders
