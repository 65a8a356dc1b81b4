"""Command-line helpers shared by the ``gliomacompare`` subcommands.

- argparse ``type=`` callables (:func:`positive_int`, :func:`comma_list` ...);
- :class:`CommandError`, the error a command reports as one line (exit status 2);
- :class:`CommandParser`, the parser class of ``gliomacompare`` and its sub-commands: old option
  spellings stay accepted as hidden, deprecated aliases (:func:`add_alias`);
- the options every command spells the same way (:func:`add_device_option`,
  :func:`add_quiet_option`, :func:`device`);
- options generated from config dataclasses (:func:`add_dataclass_arguments`,
  :func:`dataclass_from_args`) and the reverse, :func:`to_cli_args`.

Each type callable raises :class:`argparse.ArgumentTypeError`, which argparse turns into a one-line usage
error naming the option.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEVICE_HELP",
    "CommandError",
    "CommandParser",
    "add_alias",
    "add_dataclass_arguments",
    "add_device_option",
    "add_quiet_option",
    "comma_list",
    "count_or_none",
    "dataclass_from_args",
    "device",
    "given",
    "non_negative_int",
    "positive_float_or_none",
    "positive_int",
    "split_fractions",
    "to_cli_args",
]


class CommandError(Exception):
    """An error to report to the user as one line, without a traceback (exit status 2).

    It lives here, not in :mod:`GliomaCompareLib.cli`, so that it is one class also when the
    cli module runs as ``__main__`` (``python -m GliomaCompareLib.cli``)."""


# --------------------------------------------------------------------------- one vocabulary


class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose deprecated option spellings (:func:`add_alias`)
    work but are left out of ``--help`` and the usage line, and print a warning when used.

    Sub-parsers made by ``add_subparsers().add_parser`` are of the same class."""

    def _alias_map(self) -> dict[str, str]:
        return self.__dict__.setdefault("_gc_aliases", {})

    @contextlib.contextmanager
    def _aliases_hidden(self):
        aliases = self._alias_map()
        saved = [
            (a, a.option_strings) for a in self._actions if set(a.option_strings) & set(aliases)
        ]
        for action, strings in saved:
            action.option_strings = [s for s in strings if s not in aliases]
        try:
            yield
        finally:
            for action, strings in saved:
                action.option_strings = strings

    def format_usage(self) -> str:
        with self._aliases_hidden():
            return super().format_usage()

    def format_help(self) -> str:
        with self._aliases_hidden():
            return super().format_help()

    def parse_known_args(self, args=None, namespace=None):
        aliases = self._alias_map()
        if aliases:
            for token in sys.argv[1:] if args is None else args:
                if token == "--":
                    break
                old = str(token).split("=", 1)[0]
                if old in aliases:
                    print(
                        f"{self.prog}: warning: {old} is deprecated and will be removed; "
                        f"use {aliases[old]}",
                        file=sys.stderr,
                    )
        return super().parse_known_args(args, namespace)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept the option string ``old`` as a deprecated spelling of the option ``new``.

    ``old`` becomes one more option string of ``new``'s action (same destination, type, choices
    and ``required``); a :class:`CommandParser` hides it from the help and warns when it is used.

    Raises:
        ValueError: when ``new`` is not an option of ``parser`` or ``old`` already is one.
    """
    action = parser._option_string_actions.get(new)
    if action is None:
        raise ValueError(f"{parser.prog}: no option {new} to alias {old} to")
    if old in parser._option_string_actions:
        raise ValueError(f"{parser.prog}: {old} is already an option")
    action.option_strings = [*action.option_strings, old]
    parser._option_string_actions[old] = action
    parser.__dict__.setdefault("_gc_aliases", {})[old] = new


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

#: The help of ``--device``, the same in every command.
DEVICE_HELP = "auto (CUDA when available) | cpu | cuda | cuda:N"


def device(text: str) -> str:
    """A device name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased)."""
    name = text.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    return name


def add_device_option(
    parser: argparse.ArgumentParser, default: str | None = "auto", shown: str | None = None
) -> None:
    """``--device auto|cpu|cuda|cuda:N``, validated by :func:`device` (``shown``: what the help
    says the default is, when it is not ``default`` itself)."""
    shown = f" (default {shown or default})" if shown or default else ""
    parser.add_argument(
        "--device", type=device, default=default, metavar="DEVICE", help=DEVICE_HELP + shown
    )


def add_quiet_option(parser: argparse.ArgumentParser, what: str = "no progress output") -> None:
    """``-q/--quiet``: no progress output and only errors logged (``what`` says what else)."""
    parser.add_argument("-q", "--quiet", action="store_true", help=what)


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


def comma_list(text: str) -> tuple[str, ...]:
    """``a, b,c`` -> ``("a", "b", "c")`` (empty items dropped)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def count_or_none(text: str) -> int | None:
    """A whole number >= 0; ``0`` means "none" (None)."""
    return non_negative_int(text) or None


def positive_float_or_none(text: str) -> float | None:
    """A number; ``0`` or less means "none" (None)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return value if value > 0 else None


# --------------------------------------------------------------------------- dataclass <-> CLI
#
# Each setting is declared once, as a dataclass field; its command-line option is generated from
# it (as Hugging Face's HfArgumentParser does). What a field's ``metadata`` may hold:
#
#   help     the option's help text (the default is appended from the field itself, unless
#            ``show_default`` is False)
#   flags    the option strings (default ``--field-name``)
#   type     argparse ``type=`` callable (default from the annotation: int, float, str;
#            ``tuple[str, ...]`` -> :func:`comma_list`; ``X | None`` -> X)
#   choices, nargs, const   passed to argparse
#   group    title of the argument group the option goes in
#   cli      False: no option for this field
#   to_cli   value -> option text, for :func:`to_cli_args` (default ``str``; tuples joined by ",")
#   fields   for a field holding a dataclass: {sub-field: metadata} of the sub-fields given an
#            option of their own (their metadata is merged over the sub-field's own)
#   build    for such a field: ``build(**given sub-fields)`` makes its value (default: the
#            field's default with those sub-fields replaced)
#
# Options the user does not give are left out of the namespace (``argparse.SUPPRESS``), so the
# dataclass's own default applies: no default is written twice.


def _dest(name: str, sub: str | None = None) -> str:
    return name if sub is None else f"{name}__{sub}"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; ``tuple[str, ...]`` -> tuple; others unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _base_type(args[0])
    return origin or hint


def _shown(value: Any, meta: Mapping) -> str:
    if "to_cli" in meta:
        return str(meta["to_cli"](value))
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def _flags(name: str, meta: Mapping, rename: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The option strings of field ``name``: ``rename``'s, else ``metadata["flags"]``, else
    ``--name``."""
    flags = (rename or {}).get(name) or meta.get("flags") or f"--{name.replace('_', '-')}"
    return (flags,) if isinstance(flags, str) else tuple(flags)


def _add_option(
    parser, dest: str, name: str, hint: Any, default: Any, meta: Mapping, rename
) -> None:
    flags = _flags(name, meta, rename)
    if any(action.dest == dest for action in parser._actions):
        raise ValueError(f"option {flags[0]}: another option already stores into {dest!r}")
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
    base = _base_type(hint)
    help_text = meta.get("help", "")
    if base is bool:
        kwargs["action"] = "store_false" if default is True else "store_true"
    else:
        kwargs["type"] = meta.get("type") or (comma_list if base is tuple else base)
        for key in ("choices", "nargs", "const"):
            if key in meta:
                kwargs[key] = meta[key]
        if "choices" not in meta:
            kwargs["metavar"] = flags[-1].lstrip("-").replace("-", "_").upper()
        if default not in (dataclasses.MISSING, None, ()) and meta.get("show_default", True):
            help_text = f"{help_text} (default {_shown(default, meta)})".strip()
        elif default is dataclasses.MISSING:
            kwargs["required"] = True
    kwargs["help"] = help_text or None
    parser.add_argument(*flags, **kwargs)


def _groups(parser) -> dict[str, Any]:
    return {g.title: g for g in parser._action_groups}


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    meta: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add one option per field of the dataclass ``cls`` (see the notes above).

    Args:
        parser: the parser (or sub-parser) to add to.
        cls: a dataclass.
        exclude: fields given no option (besides those with ``metadata["cli"] is False``).
        rename: field -> option string(s), instead of the metadata's ``flags`` (for a
            command that names an option differently).
        meta: field -> metadata entries that replace the field's own for this command (e.g.
            ``{"device": {"type": device, "choices": None}}``; None removes an entry).
    """
    rename = dict(rename or {})
    overrides = dict(meta or {})
    hints = typing.get_type_hints(cls)
    groups = _groups(parser)
    for f in dataclasses.fields(cls):
        merged = {**f.metadata, **overrides.get(f.name, {})}
        meta = {k: v for k, v in merged.items() if v is not None}
        if f.name in exclude or meta.get("cli", True) is False:
            continue
        target = parser
        if meta.get("group"):
            target = groups.get(meta["group"]) or parser.add_argument_group(meta["group"])
            groups[meta["group"]] = target
        if "fields" in meta:
            _add_nested(target, f, hints[f.name], meta["fields"], rename)
        else:
            _add_option(target, f.name, f.name, hints[f.name], _default(f), meta, rename)


def _add_nested(parser, f: dataclasses.Field, cls: type, subfields: Mapping, rename) -> None:
    default = _default(f)
    hints = typing.get_type_hints(cls)
    inner = {s.name: s for s in dataclasses.fields(cls)}
    for sub, override in subfields.items():
        meta = {**inner[sub].metadata, **override}
        value = (
            getattr(default, sub) if default is not dataclasses.MISSING else _default(inner[sub])
        )
        _add_option(parser, _dest(f.name, sub), sub, hints[sub], value, meta, rename)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass ``cls`` from the options given on the command line (fields whose option was
    not given keep their defaults), with ``overrides`` applied last."""
    given = vars(args)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "fields" in meta:
            subs = {s: given[_dest(f.name, s)] for s in meta["fields"] if _dest(f.name, s) in given}
            if subs and "build" in meta:
                values[f.name] = meta["build"](**subs)
            elif subs:
                values[f.name] = dataclasses.replace(_default(f), **subs)
        elif f.name in given:
            values[f.name] = given[f.name]
    values.update(overrides)
    return cls(**values)


def given(args: argparse.Namespace, name: str) -> bool:
    """Whether the option of field ``name`` was given (see :func:`add_dataclass_arguments`)."""
    return name in vars(args)


def _option_args(flag: str, value: Any, default: Any, hint: Any, meta: Mapping) -> list[str]:
    if value == default:
        return []
    if _base_type(hint) is bool:
        return [flag] if value != default else []
    return [flag, _shown(value, meta)]


def to_cli_args(obj: Any, *, exclude: Sequence[str] = ()) -> list[str]:
    """The options that make :func:`dataclass_from_args` rebuild ``obj`` (its settings that
    differ from the defaults), e.g. for the Slicer module's background process.

    Raises:
        ValueError: for a setting that differs from its default but has no option.
    """
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude:
            continue
        value, default = getattr(obj, f.name), _default(f)
        if "fields" in meta:
            inner_hints = typing.get_type_hints(type(value))
            inner = {s.name: s for s in dataclasses.fields(value)}
            for sub, override in meta["fields"].items():
                sub_meta = {**inner[sub].metadata, **override}
                flag = _flags(sub, sub_meta)[0]
                out += _option_args(
                    flag, getattr(value, sub), getattr(default, sub), inner_hints[sub], sub_meta
                )
            continue
        if meta.get("cli", True) is False:
            if value != default:
                raise ValueError(f"{cls.__name__}.{f.name} has no command-line option")
            continue
        flag = _flags(f.name, meta)[0]
        out += _option_args(flag, value, default, hints[f.name], meta)
    return out
