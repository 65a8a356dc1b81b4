"""Python packages the module needs inside 3D Slicer, checked and installed on first use.

Nothing is installed when the module loads, and nothing is imported to check it: versions come
from the installed packages' metadata (``importlib.metadata``), so checking torch does not load
torch into the GUI process. Each action asks only for what it imports at run time: loading
cases needs ``nibabel``; the CNN command torch and MONAI; the VLM command torch and the Hugging
Face stack (never scikit-image, nilearn or matplotlib, which only the report and the synthetic
cohort use). torch comes through the PyTorch extension's ``PyTorchUtils`` (it picks the build for
the GPU driver); the rest through ``pip_ensure`` (``slicer.pydeps`` / ``slicer.packaging``,
Slicer 5.11+) where it exists, else ``slicer.util.pip_install`` after a confirmation. A declined
installation is a normal "not installed" answer (False), not an error. The lists mirror
``pyproject.toml`` (a test keeps them in step).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CLI_REQUIREMENTS",
    "CNN_REQUIREMENTS",
    "DEMO_REQUIREMENTS",
    "KINDS",
    "LOAD_REQUIREMENTS",
    "RUN_REQUIREMENTS",
    "SYNTH_REQUIREMENTS",
    "TORCH_REQUIREMENT",
    "VLM_REQUIREMENTS",
    "ensure",
    "install",
    "missing",
    "requirements",
    "torch_missing",
]

#: Needed to open BraTS folders and load cases.
LOAD_REQUIREMENTS = ("nibabel>=5.2",)
#: Imported by every ``gliomacompare`` command run in the background (besides the above).
CLI_REQUIREMENTS = ("pyyaml>=6", "filelock>=3.12", "tqdm>=4.66", "scipy>=1.11", "pillow>=10")
#: ``gliomacompare predict-cnn`` (besides torch).
CNN_REQUIREMENTS = ("monai>=1.4", "safetensors>=0.4")
#: ``gliomacompare vlm`` (besides torch).
VLM_REQUIREMENTS = (
    "transformers>=4.46",
    "tokenizers>=0.20",
    "safetensors>=0.4",
    "peft>=0.13",
    "accelerate>=1.0",
)
#: Everything a background run may need (both arms).
RUN_REQUIREMENTS = tuple(dict.fromkeys(CLI_REQUIREMENTS + CNN_REQUIREMENTS + VLM_REQUIREMENTS))
#: ``gliomacompare synth`` (the sample case): the MNI152 anatomy ships with nilearn.
SYNTH_REQUIREMENTS = ("nilearn>=0.10",)
#: ``gliomacompare demo``: a synthetic cohort, both arms and the report (besides torch).
DEMO_REQUIREMENTS = tuple(
    dict.fromkeys(
        RUN_REQUIREMENTS
        + SYNTH_REQUIREMENTS
        + ("scikit-image>=0.22", "matplotlib>=3.8", "SimpleITK>=2.3")
    )
)
#: What each action needs; ``cnn`` and ``vlm`` need torch too (:data:`TORCH_REQUIREMENT`).
KINDS = {
    "load": LOAD_REQUIREMENTS,
    "cnn": LOAD_REQUIREMENTS + CLI_REQUIREMENTS + CNN_REQUIREMENTS,
    "vlm": LOAD_REQUIREMENTS + CLI_REQUIREMENTS + VLM_REQUIREMENTS,
    "sample": LOAD_REQUIREMENTS + CLI_REQUIREMENTS + SYNTH_REQUIREMENTS,
    "demo": LOAD_REQUIREMENTS + DEMO_REQUIREMENTS,
}
#: The actions whose command imports torch.
_NEEDS_TORCH = ("cnn", "vlm", "run", "demo")
TORCH_REQUIREMENT = ">=2.4"


def requirements(kind: str) -> tuple[str, ...]:
    """The requirements of an action (``load``, ``cnn`` or ``vlm``; ``run`` = both arms)."""
    if kind == "run":
        return LOAD_REQUIREMENTS + RUN_REQUIREMENTS
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)} or run")
    return KINDS[kind]


def missing(requirements: Iterable[str]) -> list[str]:
    """The requirements not satisfied in this Python (absent, or too old), read from package
    metadata without importing anything."""
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


def torch_missing() -> bool:
    """Whether torch is absent or older than :data:`TORCH_REQUIREMENT` (metadata only; torch is
    not imported)."""
    return bool(missing([f"torch{TORCH_REQUIREMENT}"]))


def _ensure_torch(confirm: bool) -> bool:
    if not torch_missing():
        return True
    try:
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS PyTorch)
    except ImportError as exc:
        raise RuntimeError(
            "The PyTorch extension is not installed: install 'PyTorch' from the Extensions "
            "Manager, restart Slicer, and try again."
        ) from exc
    logic = PyTorchUtils.PyTorchUtilsLogic()
    installed = logic.installTorch(
        askConfirmation=confirm, torchVersionRequirement=TORCH_REQUIREMENT
    )
    return installed is not None and not torch_missing()


def _slicer_pip_ensure() -> Callable | None:
    """Slicer's ``pip_ensure`` (``slicer.pydeps``, earlier ``slicer.packaging``), or None on
    Slicer versions without it."""
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(module, "pip_ensure", None)):
            return module.pip_ensure
    return None


def _pip_install_after_asking(need: Sequence[str], confirm: bool) -> None:
    """Older Slicer: ask, then ``slicer.util.pip_install``; declining raises like pip_ensure."""
    import slicer

    if confirm and not slicer.util.confirmOkCancelDisplay(
        "GliomaCompare needs these Python packages, which will be downloaded and installed "
        "into Slicer's Python:\n\n" + "\n".join(need),
        windowTitle="GliomaCompare: install packages",
    ):
        raise RuntimeError("User declined package installation")
    slicer.util.pip_install(" ".join(need))  # older Slicer takes one string


def install(need: Sequence[str], confirm: bool = True, installer: Callable | None = None) -> bool:
    """Install ``need`` (requirement strings); True when all are satisfied afterwards.

    Args:
        need: requirements to install.
        confirm: ask the user first.
        installer: ``installer(need, confirm)`` (default: Slicer's ``pip_ensure`` where it
            exists, else a confirmation and ``slicer.util.pip_install``); raising
            ``RuntimeError("... declined ...")`` means the user said no.

    Returns:
        False when the user declined, or the installer left something missing (Slicer's
        ``pip_ensure`` installs nothing in testing mode): "not installed", not an error.

    Raises:
        Whatever the installer raises when installing itself fails (e.g. pip's error).
    """
    if installer is None:
        pip_ensure = _slicer_pip_ensure()
        if pip_ensure is not None:
            from packaging.requirements import Requirement

            def installer(reqs, ask):
                pip_ensure(
                    [Requirement(r) for r in reqs], prompt_install=ask, requester="GliomaCompare"
                )
        else:
            installer = _pip_install_after_asking
    try:
        installer(list(need), confirm)
    except RuntimeError as exc:
        if "declined" in str(exc).lower():
            return False
        raise
    return not missing(need)


def ensure(kind: str = "load", confirm: bool = True) -> bool:
    """Make sure the packages for ``kind`` (``load``, ``cnn``, ``vlm``; ``run`` = both arms) are
    installed in Slicer's Python, asking the user first; False when they are not (declined).

    Raises:
        RuntimeError: when the PyTorch extension is missing.
    """
    reqs = requirements(kind)
    if kind in _NEEDS_TORCH and not _ensure_torch(confirm):
        return False
    need = missing(reqs)
    return not need or install(need, confirm)
