"""Status names that several layers share, defined once, below all of them.

The VLM's answer parser (:mod:`GliomaCompareLib.vlm.parsing`) gives each answer a status; the
metrics, the run and the report count the answers whose value is used. They all import
:data:`USABLE_STATUSES` from here, so the set cannot drift between them.
"""

from __future__ import annotations

__all__ = ["USABLE_STATUSES"]

#: Answer statuses whose value is used for scoring (parsed as given, repaired JSON, or found by
#: the pattern fallback); every other answer status is scored as a failure.
USABLE_STATUSES: tuple[str, ...] = ("ok", "repaired", "pattern")
