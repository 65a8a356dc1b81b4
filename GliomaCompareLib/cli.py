"""The ``gliomacompare`` command.

Each group of sub-commands lives in a small ``commands`` module next to the code it drives and
registers itself through ``register(subparsers)``; those modules import nothing heavy at the top,
so ``gliomacompare --help`` is fast (STYLE.md #8).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from GliomaCompareLib import __version__
from GliomaCompareLib.argtypes import CommandError

__all__ = ["CommandError", "build_parser", "main"]

#: Modules whose ``register(subparsers)`` adds sub-commands, in help order.
COMMAND_MODULES = (
    "GliomaCompareLib.data.commands",
    "GliomaCompareLib.metrics.commands",
    "GliomaCompareLib.cnn.commands",
    "GliomaCompareLib.vlm.commands",
    "GliomaCompareLib.vlm.finetune_commands",
    "GliomaCompareLib.report.commands",
    "GliomaCompareLib.pipeline.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gliomacompare",
        description=(
            "Compare 3D CNNs with vision-language models at grading (LGG vs HGG) and "
            "localising gliomas on BraTS MRI (Liu, Yoo & Khalvati, arXiv 2509.10683)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gliomacompare {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a missing package disables its commands, not the others
            logging.getLogger(__name__).warning("%s: commands unavailable (%s)", name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CommandError, FileNotFoundError, ValueError) as exc:
        print(f"gliomacompare {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gliomacompare {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
