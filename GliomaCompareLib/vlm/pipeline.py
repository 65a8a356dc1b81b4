"""Compatibility: the VLM arm's inference is :mod:`GliomaCompareLib.vlm.inference` ("pipeline"
names only the whole comparison run); import from there or from ``GliomaCompareLib.vlm``."""

from GliomaCompareLib.vlm.inference import VLMConfig, run_vlm  # noqa: F401
