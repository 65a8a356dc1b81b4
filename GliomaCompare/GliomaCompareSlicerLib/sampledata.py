"""The module's entry in Slicer's Sample Data module: a synthetic BraTS case, made on this
computer (nothing is downloaded), under the category "GliomaCompare".

Slicer's ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` (5.10+) takes a
``customDownloader``: the Sample Data button calls it with the source instead of downloading.
Ours opens the GliomaCompare module and starts the same background job as its "Sample case"
button (``gliomacompare synth``), which loads the case when it is done. No Qt import here;
``slicer`` and ``SampleData`` are imported only when registering or clicked (in the application).
"""

from __future__ import annotations

from collections.abc import Callable

from GliomaCompareSlicerLib import paths

__all__ = ["CATEGORY", "SAMPLE_NAME", "make_sample_case", "register", "source_arguments"]

#: The Sample Data section the case is listed in, and its button text.
CATEGORY = "GliomaCompare"
SAMPLE_NAME = "GliomaCompare synthetic glioma (made locally)"


def source_arguments(on_click: Callable, thumbnail: str | None = None) -> dict:
    """Keyword arguments of ``registerCustomSampleDataSource`` for the sample case: no URIs or
    files (nothing to download); ``on_click(source)`` is the custom downloader; ``nodeNames`` is
    an empty list (Slicer looks for thumbnails by node name when no thumbnail is given)."""
    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": None,
        "fileNames": None,
        "nodeNames": [],
        "thumbnailFileName": thumbnail,
        "customDownloader": on_click,
    }


def make_sample_case(source=None) -> None:
    """The Sample Data button's action: show the GliomaCompare module and start its "Sample
    case" job (the case loads when the job finishes)."""
    import slicer

    slicer.util.selectModule("GliomaCompare")
    widget = slicer.modules.GliomaCompareWidget
    if widget.impl is not None:  # None on an unsupported Slicer (the panel says why)
        widget.impl.sample_case()


def register(logic_class=None) -> None:
    """Register the sample case with Slicer's Sample Data module (called once Slicer started;
    ``logic_class`` defaults to ``SampleData.SampleDataLogic``). Registering twice is harmless:
    Slicer skips a source that is already registered."""
    if logic_class is None:
        import SampleData

        logic_class = SampleData.SampleDataLogic
    icon = paths.icon_file()
    logic_class.registerCustomSampleDataSource(
        **source_arguments(make_sample_case, str(icon) if icon is not None else None)
    )
