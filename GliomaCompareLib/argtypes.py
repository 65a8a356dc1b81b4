"""Argument types shared by the ``gliomacompare`` subcommands (argparse ``type=`` callables).

Each raises :class:`argparse.ArgumentTypeError`, which argparse turns into a one-line usage
error naming the option.
"""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_int", "split_fractions"]


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def split_fractions(text: str) -> tuple[float, float, float]:
    """``TRAIN,VAL,TEST`` fractions, e.g. ``0.6,0.2,0.2`` (their sum is checked by the split)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected three fractions TRAIN,VAL,TEST, e.g. 0.6,0.2,0.2"
        )
    return values  # type: ignore[return-value]
