"""One config system: dataclasses <-> YAML <-> command-line flags.

Every command's hyper-parameters live in one dataclass whose fields carry a docstring each
(CleanRL style). Those docstrings become ``--help``; the same dataclass reads and writes YAML.
Nested dataclasses map to dotted flags (``--sft.steps 200``) and nested YAML mappings.

Precedence: dataclass defaults < YAML file (``--config FILE``) < flags given on the command line.
Validation lives in each dataclass's ``__post_init__`` and raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right under each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/flag value to the field type, with an error naming ``where``."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: null is not allowed (expected {_type_name(tp)})")
    if optional and isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    tp = inner
    origin = get_origin(tp)
    try:
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: expected a mapping, got {value!r}")
            return from_dict(tp, value, where=where)
        if origin is Literal:
            choices = get_args(tp)
            for c in choices:
                if value == c or str(value) == str(c):
                    return c
            raise ValueError(f"{where}: {value!r} is not one of {list(choices)}")
        if origin in (list, tuple):
            (elem,) = get_args(tp)[:1] or (str,)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, list | tuple):
                raise ValueError(f"{where}: expected a list, got {value!r}")
            out = [_convert(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(out) if origin is tuple else out
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"{where}: expected an integer, got {value!r}")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(f"{where}: expected a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"{where}: must be a finite number, got {value!r}")
            return number
        if tp is str:
            return str(value)
        if tp is Path:
            return Path(value)
        if tp is Any:
            return value
    except (TypeError, ValueError) as err:
        if str(err).startswith(where):
            raise
        if dataclasses.is_dataclass(tp):  # a nested config's own validation message
            raise ValueError(f"{where}: {err}") from None
        raise ValueError(f"{where}: cannot read {value!r} as {_type_name(tp)}") from None
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping; unknown keys are errors."""
    hints = _resolved_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for k, v in data.items():
        # A partial mapping for a nested section starts from the parent's default for it, so
        # ``--sft.n-head 2`` keeps the other values the parent chose for its ``sft`` section.
        default = fields[k].default_factory  # type: ignore[misc]
        if isinstance(v, dict) and default is not dataclasses.MISSING:
            base = default()
            if dataclasses.is_dataclass(base):
                v = _deep_merge(to_dict(base), v)
        kwargs[k] = _convert(v, hints[k], f"{where}.{k}")
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a config dataclass from a YAML file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of field: value")
    return from_dict(cls, data, where=str(path))


def _walk(cls: type, prefix: str = ""):
    """Yield (dotted_name, type, default, doc) for every leaf field, nested ones included."""
    hints = _resolved_types(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        inner, _ = _strip_optional(tp)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(inner):
            yield from _walk(inner, prefix=f"{name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        yield name, tp, default, docs.get(f.name, "")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config FILE`` and one flag per (nested) field, help from the field docstrings."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML file with any of the fields below; flags given here override it",
    )
    parser.add_argument(
        "--save-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the resolved configuration to FILE as YAML and continue",
    )
    for name, tp, default, doc in _walk(cls):
        flag = "--" + name.replace("_", "-")
        inner, _ = _strip_optional(tp)
        shown = "required" if default is dataclasses.MISSING else f"default: {default!r}"
        kwargs: dict[str, Any] = {"dest": "cfg:" + name, "default": argparse.SUPPRESS}
        if inner is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, help=f"{doc} ({shown})", **kwargs
            )
            continue
        if get_origin(inner) is Literal:
            kwargs["choices"] = [str(c) for c in get_args(inner)]
        if get_origin(inner) in (list, tuple):
            kwargs["nargs"] = "*"
        parser.add_argument(
            flag, metavar=name.split(".")[-1].upper(), help=f"{doc} ({shown})", **kwargs
        )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Resolve defaults < YAML < flags into a validated ``cls`` instance."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        data = to_dict(load_yaml(cls, args.config))
    field_types = {name: tp for name, tp, _, _ in _walk(cls)}
    for key, value in vars(args).items():
        if not key.startswith("cfg:"):
            continue
        # a flag's value is read here, so that its error names the flag, not the YAML file
        value = _convert(value, field_types[key[4:]], "--" + key[4:].replace("_", "-"))
        if isinstance(value, Path):
            value = str(value)
        parts = key[4:].split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    cfg = from_dict(cls, data, where="arguments" if args.config is None else str(args.config))
    if getattr(args, "save_config", None) is not None:
        save_yaml(cfg, args.save_config)
    return cfg


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that re-runs validation (``__post_init__``)."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
