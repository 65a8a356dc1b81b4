"""Python packages the module needs inside 3D Slicer, checked and installed on first use.

Nothing is installed when the module loads. Loading cases needs only ``nibabel``; running the
arms needs torch (installed through the PyTorch extension's ``PyTorchUtils``, which picks the
build for the GPU driver) and the rest of the library's dependencies (through
``slicer.packaging.pip_ensure`` where this Slicer has it, else ``slicer.util.pip_install`` after
a confirmation). The lists mirror ``pyproject.toml`` (a test keeps them in step).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LOAD_REQUIREMENTS", "RUN_REQUIREMENTS", "TORCH_REQUIREMENT", "ensure", "missing"]

#: Needed to open BraTS folders and load cases.
LOAD_REQUIREMENTS = ("nibabel>=5.2",)
#: Needed (besides torch) by the CLI arms run in the background with PythonSlicer.
RUN_REQUIREMENTS = (
    "pyyaml>=6",
    "monai>=1.4",
    "transformers>=4.46",
    "tokenizers>=0.20",
    "peft>=0.13",
    "accelerate>=1.0",
    "safetensors>=0.4",
    "scipy>=1.11",
    "scikit-image>=0.22",
    "nilearn>=0.10",
    "pillow>=10",
    "tqdm>=4.66",
    "matplotlib>=3.8",
)
TORCH_REQUIREMENT = ">=2.4"


def missing(requirements: Iterable[str]) -> list[str]:
    """The requirements not satisfied in this Python (absent, or too old)."""
    import re
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # no 'packaging' in this Python: check presence only
        Requirement = None

    out = []
    for text in requirements:
        req = Requirement(text) if Requirement else None
        name = req.name if req else re.split(r"[<>=!~ ;\[]", text, maxsplit=1)[0]
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(text)
            continue
        if (
            req is not None
            and req.specifier
            and not req.specifier.contains(version, prereleases=True)
        ):
            out.append(text)
    return out


def _ensure_torch(confirm: bool) -> bool:
    try:
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS PyTorch)
    except ImportError as exc:
        raise RuntimeError(
            "The PyTorch extension is not installed: install 'PyTorch' from the Extensions "
            "Manager, restart Slicer, and try again."
        ) from exc
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return True
    return (
        logic.installTorch(askConfirmation=confirm, torchVersionRequirement=TORCH_REQUIREMENT)
        is not None
    )


def ensure(kind: str = "load", confirm: bool = True) -> bool:
    """Make sure the packages for ``kind`` (``"load"`` or ``"run"``) are installed in Slicer's
    Python, asking the user first; return False when the user declines.

    Raises:
        RuntimeError: when the PyTorch extension is missing or installation failed.
    """
    import slicer

    reqs = list(LOAD_REQUIREMENTS) + (list(RUN_REQUIREMENTS) if kind == "run" else [])
    if kind == "run" and not _ensure_torch(confirm):
        return False
    need = missing(reqs)
    if not need:
        return True
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(need, requester="GliomaCompare")
    else:
        if confirm and not slicer.util.confirmOkCancelDisplay(
            "GliomaCompare needs these Python packages, which will be downloaded and installed "
            "into Slicer's Python:\n\n" + "\n".join(need),
            windowTitle="GliomaCompare: install packages",
        ):
            return False
        slicer.util.pip_install(" ".join(need))  # older Slicer takes one string
    still = missing(need)
    if still:
        raise RuntimeError("Could not install: " + ", ".join(still))
    return True
