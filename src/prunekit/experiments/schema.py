"""Typed dataclasses <-> plain data (YAML), with errors that name the key path.

The generic half of the spec machinery: :func:`parse` builds a dataclass from a YAML mapping,
checking every key (unknown keys are rejected with the accepted ones listed) and every type
(bool, int, float, str, Optional/List/Dict of them, nested dataclasses, ``Any`` = plain
data); field metadata adds ``choices`` and ``check`` validation (see
``prunekit.params.param``). :func:`to_dict` turns a dataclass back into plain
data, in full, or in the *canonical* form that is hashed into run ids (no display-only
fields, nothing equal to its default).

A dataclass can take over its own (de)serialisation with ``_from_spec(value, path)`` and
``_to_spec(canonical)``, and add whole-object checks with ``_validate(path)``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from ..params import check_value, hash_baseline


class SpecError(ValueError):
    """A bad spec; ``path`` is the dotted key path of the offending value."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# ------------------------------------------------------------------- generic parsing


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 60 else text[:57] + '...'}"


def reject_unknown(value: Dict[str, Any], accepted: List[str], path: str, where: str = "") -> None:
    for key in value:
        if key not in accepted:
            full = join_path(path, str(key))
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            here = f"{path} ({where})" if where and path else (path or "the top level")
            raise SpecError(full, f"unknown key {str(key)!r}{hint}; accepted keys of {here}: "
                            f"{', '.join(accepted) or '(none)'}")


def parse(cls: type, value: Any, path: str = "", where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data (a YAML mapping), checking every key and type."""
    if hasattr(cls, "_from_spec"):
        return cls._from_spec(value, path)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SpecError(path, f"expected a mapping, got {describe(value)}")
    hints = typing.get_type_hints(cls)
    own = [f for f in fields(cls) if f.init]
    reject_unknown(value, [f.name for f in own], path, where)
    kwargs = {}
    for f in own:
        p = join_path(path, f.name)
        if f.name in value:
            v = _parse_value(hints[f.name], value[f.name], p)
            _check_field(f, v, p)
            kwargs[f.name] = v
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SpecError(p, "is required")
    try:
        obj = cls(**kwargs)
    except SpecError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise SpecError(path, str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)) from None
    if hasattr(obj, "_validate"):
        obj._validate(path)
    return obj


def _check_field(f: dataclasses.Field, value: Any, path: str) -> None:
    """The field's ``choices`` / ``check`` (:func:`prunekit.params.check_value`), reported at ``path``."""
    try:
        check_value(f, value)
    except (ValueError, TypeError) as err:
        raise SpecError(path, str(err)) from None


def _parse_value(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        _check_plain(value, path)
        return copy.deepcopy(value)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) != 1:
            raise TypeError(f"{path}: only Optional[X] unions are supported in specs")
        return _parse_value(args[0], value, path)
    if origin in (list, List):
        if not isinstance(value, list):
            raise SpecError(path, f"expected a list, got {describe(value)}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_parse_value(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise SpecError(path, f"expected a mapping, got {describe(value)}")
        args = typing.get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SpecError(path, f"keys must be strings, got {describe(k)}")
            out[k] = _parse_value(args[1], v, join_path(path, k))
        return out
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(path, f"expected true or false, got {describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"expected an integer, got {describe(value)}")
        return value
    if tp is float:
        # YAML 1.1 reads 5e-4 (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(path, f"expected a number, got {describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(path, f"expected a string, got {describe(value)}")
        return value
    raise TypeError(f"{path}: unsupported field type {tp!r} in a spec dataclass")


def _check_plain(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise SpecError(path, f"keys must be strings, got {describe(k)}")
            _check_plain(v, join_path(path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{path}[{i}]")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise SpecError(path, f"expected plain data, got {describe(value)}")


# ----------------------------------------------------------------------- dumping


def to_dict(obj: Any, canonical: bool = False, minimal: bool = False) -> Any:
    """Plain data of a spec. ``canonical``: the hashed form (no display-only fields, no
    default values, no empty sections). ``minimal``: like canonical but keeping display
    fields (what a person would write). Otherwise every field, resolved."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "_to_spec"):
            out = obj._to_spec(canonical or minimal, minimal=minimal and not canonical)
            if minimal and getattr(obj, "label", None):
                out["label"] = obj.label
            return out
        out = {}
        # A params class may name fields that cannot matter given the others (``_inert_fields``,
        # e.g. IMP's ft_floor unless the schedule is ft): the hash leaves them out, so a moved
        # default (``legacy=``) only moves the ids of the runs it changes.
        inert = obj._inert_fields() if canonical and hasattr(obj, "_inert_fields") else ()
        for f in fields(obj):
            value = getattr(obj, f.name)
            if canonical and (not f.metadata.get("hash", True) or f.name in inert):
                continue
            plain = to_dict(value, canonical, minimal)
            # Compare in the same form, so a display-only difference never counts.
            if (canonical or minimal) and _same(plain, _default_form(f, canonical, minimal)):
                continue
            out[f.name] = plain
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, canonical, minimal) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, canonical, minimal) for k, v in obj.items()}
    return obj


def _default_form(f: dataclasses.Field, canonical: bool, minimal: bool) -> Any:
    """The default of field ``f`` in the same plain form (a marker when it has none). The
    canonical (hashed) form compares with the field's ``legacy`` default when it has one, so
    a moved default never reuses the ids of runs made with the old one."""
    if canonical and not minimal and f.metadata.get("legacy", MISSING) is not MISSING:
        return to_dict(hash_baseline(f), canonical, minimal)
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return _NO_DEFAULT
    return to_dict(value, canonical, minimal)


def _same(a: Any, b: Any) -> bool:
    # Type matters for scalars: True is not 1 (floats are already floats after parsing).
    if isinstance(a, (bool, int, float)) or isinstance(b, (bool, int, float)):
        return type(a) is type(b) and a == b
    return a == b


_NO_DEFAULT = object()


def load_yaml(text_or_path: Union[str, Path]) -> Any:
    """``yaml.safe_load`` of a file (a Path, an existing file, or a name ending in .yaml/.yml)
    or else of YAML text."""
    is_path = isinstance(text_or_path, Path) or (
        "\n" not in text_or_path and (text_or_path.endswith((".yaml", ".yml")) or Path(text_or_path).is_file()))
    path = None
    if is_path:
        path = Path(text_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no spec file {path}")
        text = path.read_text()
    else:
        text = text_or_path
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(yaml_error_line(err, path)) from None


def yaml_error_line(err: Exception, path: Optional[Path] = None) -> str:
    """PyYAML's several-line message as one line: where (file, line, column) and what."""
    mark = getattr(err, "problem_mark", None)
    where = str(path) if path is not None else "YAML text"
    if mark is not None:
        where += f", line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(err, "problem", None) or (str(err).splitlines() or ["syntax error"])[0]
    context = getattr(err, "context", None)
    return f"{where}: not valid YAML: " + (f"{problem} ({context})" if context else problem)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
