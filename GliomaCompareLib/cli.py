"""The ``gliomacompare`` command.

Each group of sub-commands lives in a small ``commands`` module next to the code it drives and
registers itself through ``register(subparsers)``; those modules import nothing heavy at the top,
so ``gliomacompare --help`` is fast (STYLE.md #8).

One vocabulary: a concept has one option name in every command that has it. Old spellings are
accepted for one release as hidden aliases (not in ``--help``; a warning names the new one).

====================  =========================  ============================  ======================
concept               option                     commands                      old spelling (hidden)
====================  =========================  ============================  ======================
data folder read      ``-i/--data DIR``          train-cnn, predict-cnn, vlm,  -
                      (``DATA`` positional in    finetune-vlm
                      ``inspect``)
output written        ``-o/--out``               every command that writes     -
                      (``OUT`` positional in     (a folder; a file in
                      ``synth``)                 evaluate / report)
splits file           ``--splits FILE``          train-cnn, predict-cnn, vlm,  ``--split``
                                                 finetune-vlm
part of the split     ``--subset                 predict-cnn, vlm              ``--split-name``
                      train|val|test|all``
what is learnt /      ``--tasks A,B``            train-cnn (seg,cls), vlm,     ``--task``
asked                                            finetune-vlm (grade, point,
                                                 box, polygon; ``all``)
the model run         ``--model``                predict-cnn (CNN folder or    ``--base``
                                                 weights), vlm (the VLM),      (finetune-vlm)
                                                 finetune-vlm (base VLM)
replace outputs       ``--overwrite``            synth, train-cnn,             ``--redo``
that exist                                       predict-cnn                   (predict-cnn)
redo a stage of a     ``--force STAGE``          run, demo                     -
run (and those after)
compute device        ``--device auto|cpu|       train-cnn, predict-cnn, vlm,  -
                      cuda|cuda:N``              finetune-vlm, run, demo
no progress output    ``-q/--quiet``             every command                 -
more log output       ``-v/--verbose``           every command, before or      -
                                                 after its name
worker processes      ``--jobs N``               synth, inspect, evaluate,     -
                                                 vlm, finetune-vlm
label convention      ``--convention NAME``      inspect, evaluate, train-cnn, -
                                                 predict-cnn
====================  =========================  ============================  ======================

Errors a person can read: a :class:`CommandError`, ``ValueError`` or ``OSError`` (a missing,
read-only or full output, an output that is a folder ...) ends the command with one line naming
the path and the reason and exit status 2; a closed pipe (``gliomacompare inspect DATA --json |
head -1``) ends it quietly. A bare ``gliomacompare`` prints the command list (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from GliomaCompareLib import __version__
from GliomaCompareLib.argtypes import CommandError, CommandParser

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

#: Exit status of a command whose output pipe was closed (as a shell reports SIGPIPE).
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="gliomacompare",
        description=(
            "Compare 3D CNNs with vision-language models at grading (LGG vs HGG) and "
            "localising gliomas on BraTS MRI (Liu, Yoo & Khalvati, arXiv 2509.10683)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gliomacompare {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a missing package disables its commands, not the others
            logging.getLogger(__name__).warning("%s: commands unavailable (%s)", name, exc)
            continue
        module.register(sub)
    for command in sub.choices.values():
        # -v after the command too (its own destination: a sub-parser's default would
        # otherwise replace the count given before the command)
        command.add_argument(
            "-v", "--verbose", dest="command_verbose", action="count", default=0,
            help="more log output",
        )  # fmt: skip
    return parser


def _os_error_text(exc: OSError) -> str:
    """``PATH: reason`` for an OSError that names its file, else its own text."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    first, second = (
        os.fsdecode(n) if isinstance(n, bytes) else n for n in (exc.filename, exc.filename2)
    )
    if second is None:
        return f"{first}: {exc.strerror}"
    return f"{second}: {exc.strerror} (moving {first} there)"  # os.replace / rename / copy


def _encoding_error_text(exc: UnicodeEncodeError) -> str:
    """Which name could not be encoded, shown escaped (it cannot be shown as it is)."""
    text = exc.object if isinstance(exc.object, str) else ""
    start = max(text.rfind("\n", 0, exc.start) + 1, exc.start - 60)
    end = text.find("\n", exc.end)
    shown = text[start : min(end if end >= 0 else len(text), exc.end + 60)]
    return (
        f"a name that is not valid {exc.encoding} cannot be written: {shown!a} "
        "(rename the file or folder)"
    )


def _pipe_closed() -> int:
    """The reader of stdout went away: point stdout at devnull so the interpreter's final flush
    does not fail again, and exit without a traceback (portable; no SIGPIPE handler)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (e.g. captured)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # --help / --version / a usage error: flush while we can catch it
            sys.stdout.flush()
            raise
    except BrokenPipeError:  # `gliomacompare --help | head -1`
        return _pipe_closed()
    if args.command is None:  # a bare `gliomacompare`: the command list
        parser.print_help()
        return 2
    verbose = args.verbose + getattr(args, "command_verbose", 0)
    level = logging.ERROR if getattr(args, "quiet", False) and not verbose else logging.WARNING
    level -= 10 * min(verbose, 2)
    root = logging.getLogger()
    fresh = not root.handlers
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if fresh:  # the console's own level: a run's log file may lower the root logger's
        root.handlers[0].setLevel(level)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except BrokenPipeError:
        return _pipe_closed()
    except UnicodeEncodeError as exc:  # a file name that is not UTF-8, printed or written
        print(f"gliomacompare {args.command}: error: {_encoding_error_text(exc)}", file=sys.stderr)
        return 2
    except (CommandError, ValueError) as exc:
        print(f"gliomacompare {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gliomacompare {args.command}: error: {_os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gliomacompare {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
