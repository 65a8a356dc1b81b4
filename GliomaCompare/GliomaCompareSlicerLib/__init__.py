"""The Slicer side of GliomaCompare, without Qt except ``widget``.

- ``paths``: where ``GliomaCompareLib``, ``Resources/`` and PythonSlicer are (both layouts).
- ``mrml``: numpy / library objects <-> MRML nodes (volumes, segmentations, markups, tables).
- ``logic``: :class:`~GliomaCompareSlicerLib.logic.CompareLogic`, what the module does.
- ``process``: background runs of the ``gliomacompare`` CLI (runner Protocol, jobs, progress).
- ``cases``: the case list, sorting, tolerant readers of run outputs (pure Python).
- ``dependencies``: packages installed on first use inside Slicer.
- ``widget``: the Qt glue (only inside the Slicer application).
- ``testing``: tiny synthetic data for the self-test and pytest.

Modules are imported explicitly (``from GliomaCompareSlicerLib import mrml``) so that importing
the package needs neither slicer nor qt.
"""

__all__ = ["cases", "dependencies", "logic", "mrml", "paths", "process", "testing", "widget"]
