"""What the "Patient in the scene" selectors show: the loaded BraTS case's own nodes, or, for a
patient loaded some other way (DICOM), volumes guessed from their names.

No Qt: the widget writes the returned nodes into the parameter node.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "CHANNEL_PARAMETERS",
    "REFERENCE_PARAMETER",
    "guess_channels",
    "selection_of_loaded_case",
]

#: The parameter node's selector of each channel, and of the reference segmentation.
CHANNEL_PARAMETERS = {
    "flair": "flairVolume",
    "t1": "t1Volume",
    "t1ce": "t1ceVolume",
    "t2": "t2Volume",
}
REFERENCE_PARAMETER = "referenceSegmentation"

# Name patterns per channel, tried in this order (contrast-enhanced T1 before plain T1, FLAIR
# before T2): BraTS 2020 and 2023 keys and the usual words of DICOM series descriptions.
_PATTERNS = (
    ("flair", r"flair|t2f|t2[-_ ]?fl"),
    ("t1ce", r"t1ce|t1c\b|t1gd|t1[-_ ]?\+c|\bpost|gad|contrast"),
    ("t2", r"t2w|t2(?![a-z0-9])"),
    ("t1", r"t1n|t1w|t1(?![a-z0-9])|mprage"),
)


def selection_of_loaded_case(loaded) -> dict[str, object]:
    """Parameter name -> node for a case the module loaded (its four volumes, its ground truth
    when there is one), so the selectors show what the arms run on."""
    out = {CHANNEL_PARAMETERS[c]: n for c, n in loaded.volumes.items() if c in CHANNEL_PARAMETERS}
    if loaded.ground_truth is not None:
        out[REFERENCE_PARAMETER] = loaded.ground_truth
    return out


def guess_channels(nodes: Sequence) -> dict[str, object]:
    """Channel -> volume node guessed from the nodes' names (case-insensitive), each node used
    once; channels without a match are left out."""
    free = list(nodes)
    out = {}
    for channel, pattern in _PATTERNS:
        regex = re.compile(pattern, re.IGNORECASE)
        match = next((n for n in free if regex.search(n.GetName() or "")), None)
        if match is not None:
            out[channel] = match
            free.remove(match)
    return out
