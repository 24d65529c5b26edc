"""Command options: one dataclass per command, whose fields carry their help and their checks.

Every `langadapt` command is an options class plus one function that takes it. The command-line
flags and the YAML keys are generated from the fields, so a value is checked the same way
whichever door it came in by (`--flag`, a recipe file, `langadapt run`, or Python):

    @dataclass
    class ExtendOptions(Options):
        \"\"\"Resize a model's embeddings ... (the command's --help description)\"\"\"
        base: str = option(None, help="the base model", metavar="MODEL", required=True)
        init: str = option("mean", help="how new rows start", choices=("mean", "random"))

        def __post_init__(self):
            super().__post_init__()          # types converted, choices and required fields checked
            if ...: raise OptionError("init", "needs a corpus")

- `option(default, help=..., choices=..., metavar=..., positional=..., required=..., repeat=...)`
  declares a field. Types come from the annotation: str, int, float, bool, list[str], or
  `X | None`.
- A field whose type is itself an `Options` class, declared with `embed(Class)`, is flattened:
  its fields are flags and keys of the outer command (e.g. every command that reads text embeds
  `corpus.ReadingOptions`).
- `add_arguments(parser, cls)`, `from_args(cls, namespace)`, `from_mapping(cls, data, where)` and
  `to_argv(opts)` turn a class into flags, flags into an object, a YAML mapping into an object and
  an object back into the flags that make it (for printing commands people can copy).

Errors are `OptionError(field, message)`, a `LangadaptError` that knows its field, so a caller can
say where the value came from (`recipe.yaml: model.init must be one of ...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from langadapt.errors import LangadaptError

BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class OptionError(LangadaptError):
    """A bad value of one option: `field` names it, the message says what was expected."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message if message.startswith(("'", field_name)) else f"{field_name} {message}")
        self.field = field_name


def option(default: Any = None, *, help: str, choices: tuple | None = None, metavar: str | None = None,
           positional: bool = False, required: bool = False, repeat: bool = False,
           factory: Any = MISSING) -> Any:
    """A dataclass field of an options class with its help text and checks (see the module docstring).

    `repeat`: a list given by repeating the flag (`--tokenizer A --tokenizer B`) instead of
    `--flag A B`. `factory`: a default factory (lists)."""
    metadata = {"help": help, "choices": choices, "metavar": metavar, "positional": positional,
                "required": required, "repeat": repeat}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def embed(cls: type) -> Any:
    """A field holding another options class whose fields are flattened into the outer one."""
    return field(default_factory=cls, metadata={"embed": True})


@dataclass
class Options:
    """Base of every command's options: converts types and checks choices and required fields.

    Subclasses add their own checks in `__post_init__` after calling `super().__post_init__()`.
    `recipe_file = True` gives the command a `--config RECIPE.yaml` whose keys the flags override."""

    recipe_file: ClassVar[bool] = False
    # {"--flag": (help, "module:function")}: flags that print what the function returns and exit (like --version)
    listings: ClassVar[dict[str, tuple[str, str]]] = {}

    def __post_init__(self) -> None:
        fields = [(f, kind) for f, kind in _own_fields(type(self)) if not f.metadata.get("embed")]
        for f, kind in fields:  # types first, then choices, then required: the most telling error wins
            setattr(self, f.name, convert(f.name, getattr(self, f.name), kind))
        for f, _ in fields:
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            for v in (value if isinstance(value, list) else [value]) if choices and value is not None else []:
                if v not in choices:
                    raise OptionError(f.name, f"must be one of {', '.join(map(str, choices))}, got {v!r}")
        for f, _ in fields:
            if f.metadata.get("required") and getattr(self, f.name) in (None, "", []):
                raise OptionError(f.name, "is required")


# ----------------------------------------------------------------------------- fields and types

def _own_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved annotation) of `cls`, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def flat_fields(cls: type) -> list[tuple[str | None, dataclasses.Field, Any]]:
    """(embedding field name or None, field, type) of every leaf option of `cls`, embedded ones inlined."""
    out = []
    for f, kind in _own_fields(cls):
        if f.metadata.get("embed"):
            out += [(f.name, sub, sub_kind) for _, sub, sub_kind in flat_fields(kind)]
        else:
            out.append((None, f, kind))
    return out


def key_names(cls: type) -> list[str]:
    """Every key (flattened field name) of an options class, in order."""
    return [f.name for _, f, _ in flat_fields(cls)]


def _base_type(kind: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) of an annotation."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(kind))
    return kind, False


def type_name(kind: Any) -> str:
    base, _ = _base_type(kind)
    return "list" if typing.get_origin(base) is list else getattr(base, "__name__", str(base))


def convert(name: str, value: Any, kind: Any) -> Any:
    """`value` converted to the annotation `kind` (strings from the command line included), or an OptionError."""
    base, optional = _base_type(kind)
    if value is None:
        return None
    if typing.get_origin(base) is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        (item_kind,) = typing.get_args(base) or (str,)
        return [convert(name, v, item_kind) for v in items]
    if base is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in BOOL_WORDS:
            return BOOL_WORDS[str(value).lower()]
    elif base is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, float) and value.is_integer():
            return int(value)
        elif isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise OptionError(name, f"'{name}' must be {type_name(kind)}, got {value!r}")


# ----------------------------------------------------------------------------- mappings (YAML)

def from_mapping(cls: type, data: dict, where: str = "", *, section: str = ""):
    """An instance of `cls` from a flat mapping of keys (YAML), errors prefixed with `where` and the
    key's `section` (e.g. `recipe.yaml: model.init must be one of ...`)."""
    if not isinstance(data, dict):
        raise LangadaptError(f"{where}: {section or 'the top level'} must be a mapping of keys to values")
    known = key_names(cls)
    for key in data:
        if str(key).replace("-", "_") not in known:
            raise unknown_key_error(str(key), known, where, section)
    try:
        return build(cls, {str(k).replace("-", "_"): v for k, v in data.items()})
    except OptionError as e:
        raise LangadaptError(f"{_prefix(where, section)}{e}") from e


def unknown_key_error(key: str, known: list[str], where: str = "", section: str = "") -> LangadaptError:
    """'unknown key' with the nearest known key suggested."""
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(known)}"
    return LangadaptError(f"{_prefix(where, section)}unknown key '{key}'{hint}")


def _prefix(where: str, section: str) -> str:
    """`recipe.yaml: sft: ` - where a value came from, for the start of an error message."""
    return "".join(f"{part}: " for part in (where, section) if part)


def build(cls: type, values: dict):
    """`cls(**values)` with embedded options assembled from the flat `values` (an OptionError names a bad one)."""
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict] = {}
    for owner, f, _ in flat_fields(cls):
        if f.name in values:
            if owner is None:
                kwargs[f.name] = values[f.name]
            else:
                nested.setdefault(owner, {})[f.name] = values[f.name]
    for f, kind in _own_fields(cls):
        if f.metadata.get("embed"):
            kwargs[f.name] = kind(**nested.get(f.name, {}))
    return cls(**kwargs)


def to_mapping(opts: Options) -> dict:
    """The flat key -> value mapping of an options object (the inverse of `from_mapping`)."""
    out = {}
    for f, _ in _own_fields(type(opts)):
        value = getattr(opts, f.name)
        out.update(to_mapping(value) if f.metadata.get("embed") else {f.name: value})
    return out


# ----------------------------------------------------------------------------- the command line

def default_of(f: dataclasses.Field) -> Any:
    """The default value of a field (its factory called)."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag (or positional argument) for every option of `cls`; absent from the Namespace unless given."""
    if cls.recipe_file:
        parser.add_argument("--config", metavar="RECIPE.yaml", default=None,
                            help="a YAML mapping of the keys below (the flags given win)")
    for name, (text, target) in cls.listings.items():
        parser.add_argument(name, action=_Listing, target=target, help=text)
    for _, f, kind in flat_fields(cls):
        meta = f.metadata
        required = bool(meta.get("required")) and not cls.recipe_file  # else the value may come from --config
        default = default_of(f)
        base, _ = _base_type(kind)
        is_list = typing.get_origin(base) is list
        text = meta["help"]
        if default not in (None, "", [], False) and not meta.get("required"):
            text += f" [default: {' '.join(map(str, default)) if is_list else default}]"
        text = text.replace("%", "%%")
        metavar = meta.get("metavar") or ("{" + ",".join(map(str, meta["choices"])) + "}" if meta.get("choices") else
                                           "true|false" if base is bool else "VALUE" if is_list else
                                           {"int": "N", "float": "X"}.get(type_name(kind), "TEXT"))
        if meta.get("positional"):
            parser.add_argument(f.name, metavar=metavar, help=text, nargs="+" if is_list else None,
                                default=argparse.SUPPRESS)
        elif base is bool:
            parser.add_argument(flag(f.name), dest=f.name, metavar=metavar, nargs="?", const="true",
                                default=argparse.SUPPRESS, help=text)
        elif is_list and meta.get("repeat"):
            parser.add_argument(flag(f.name), dest=f.name, metavar=metavar, action="append",
                                default=argparse.SUPPRESS, help=text, required=required)
        else:
            parser.add_argument(flag(f.name), dest=f.name, metavar=metavar, nargs="+" if is_list else None,
                                default=argparse.SUPPRESS, help=text, required=required)


class _Listing(argparse.Action):
    """`--list-x`: asks for the listing `target` ("module:function") instead of running the command
    (the CLI prints it; see `Options.listings`)."""

    def __init__(self, option_strings, dest, target: str, help: str):
        super().__init__(option_strings, dest="_listing", nargs=0, default=None, help=help)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        namespace._listing = self.target


def from_args(cls: type, namespace: argparse.Namespace):
    """The options object of a parsed command line: the flags given, over the keys of `--config` if any."""
    config = getattr(namespace, "config", None) if cls.recipe_file else None
    values = {}
    if config:
        known = key_names(cls)
        for key, value in read_yaml_mapping(config, "recipe").items():
            if str(key).replace("-", "_") not in known:
                raise unknown_key_error(str(key), known, str(config))
            values[str(key).replace("-", "_")] = value
    given = {name: getattr(namespace, name) for name in key_names(cls) if hasattr(namespace, name)}
    values.update(given)
    try:
        return build(cls, values)
    except OptionError as e:
        if config and e.field not in given:  # the bad value came from the file
            raise LangadaptError(f"{config}: {e}") from e
        raise LangadaptError(_flagged(str(e), cls)) from e


def read_yaml_mapping(path: str | Path, what: str = "recipe") -> dict:
    """The top-level mapping of a YAML file, with one-line errors for a missing file, invalid YAML
    or another top level."""
    path = Path(path)
    if not path.is_file():
        raise LangadaptError(f"{what} {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise LangadaptError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise LangadaptError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _flagged(message: str, cls: type) -> str:
    """A field error phrased for the command line: `--max-seq-len must be ...`."""
    for name in key_names(cls):
        if message.startswith((name + " ", f"'{name}'")):
            return message.replace(name, flag(name), 1).replace(f"'{flag(name)}'", flag(name), 1)
    return message


def to_argv(opts: Options) -> list[str]:
    """The positional arguments and flags that rebuild `opts` (flags only where a value differs from its default)."""
    cls = type(opts)
    values = to_mapping(opts)
    positional, flags = [], []
    for _, f, kind in flat_fields(cls):
        value, default = values[f.name], default_of(f)
        if f.metadata.get("positional"):
            positional += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            continue
        if value == default or value is None:
            continue
        base, _ = _base_type(kind)
        if base is bool:
            flags += [flag(f.name)] if value else [flag(f.name), "false"]
        elif isinstance(value, list) and f.metadata.get("repeat"):
            for v in value:
                flags += [flag(f.name), str(v)]
        elif isinstance(value, list):
            flags += [flag(f.name), *map(str, value)]
        else:
            flags += [flag(f.name), str(value)]
    return positional + flags


def describe(cls: type) -> str:
    """A command's description: its options class's docstring."""
    return inspect.cleandoc(cls.__doc__ or "")
