"""Compatibility: the protocol and types moved to :mod:`~GliomaCompareLib.vlm.types`, the factory
to :mod:`~GliomaCompareLib.vlm.backends`; import them from there (or from ``GliomaCompareLib.vlm``).
"""

from GliomaCompareLib.vlm.backends import make_backend
from GliomaCompareLib.vlm.types import (
    BACKEND_NAMES,
    DEFAULT_MODEL_ID,
    Answer,
    DecodingConfig,
    Query,
    VLMBackend,
    build_messages,
    image_sha256,
    png_bytes,
)

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_MODEL_ID",
    "Answer",
    "DecodingConfig",
    "Query",
    "VLMBackend",
    "build_messages",
    "image_sha256",
    "make_backend",
    "png_bytes",
]
