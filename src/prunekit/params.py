"""Typed parameters, declared once: dataclass fields with their checks, docs and examples.

A *params dataclass* lists what a method or pipeline accepts::

    @dataclass(kw_only=True)
    class Params:
        sparsity: float = param(check=sparsity, example=0.9, doc="fraction of weights removed")
        bound: str = param("binary_search", choices=("binary_search", "gaussian", "topk"))

From that one declaration come: the YAML spec loader's validation
(:mod:`prunekit.experiments.schema` reads the ``choices`` / ``check`` metadata and reports the
key path), command-line flags (:func:`add_arguments` / :func:`from_namespace`, after open_lth's
``Hparams -> argparse``), and the checks of a method's constructor (:func:`check_arguments`).

Rules, because params are hashed into run ids: never change a default or a field's name once
runs exist; add new fields only with a default that reproduces the old behaviour (defaults
are left out of the hash). A field without a default is *required*; give it an ``example``
(the contract tests build every params class from its defaults and examples).

The one sanctioned way to move a default (issue #15: defaults that follow the papers) is
``param(new, legacy=old)``: ``legacy`` is what a spec that omits the field meant before, and
it, not the new default, is what the hash leaves out. So every existing run id keeps its
meaning (a spec hashing to it had the old value), a spec relying on the new default hashes
the value explicitly and gets a new id (no stale run is ever reused for it), and an old spec
is reproduced by writing the old value out (stored ``spec.yaml`` files list every field, so
they already do). Never add ``legacy`` to a field that has no runs with another value.

This module is the bottom layer: it imports only the standard library.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import MISSING, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

NO_EXAMPLE = MISSING


def param(default: Any = MISSING, *, choices: Optional[Callable[[], Iterable[str]] | Iterable[str]] = None,
          check: Optional[Callable[[Any], Any]] = None, doc: str = "", hashed: bool = True,
          example: Any = NO_EXAMPLE, flag: Optional[str] = None, legacy: Any = MISSING) -> Any:
    """A dataclass field with validation metadata.

    - ``choices``: the accepted values (or a function returning them, so registries are read
      when the value is checked, not at import);
    - ``check(value)``: raises ``ValueError`` saying what is accepted (the validators below);
    - ``doc``: one line of help (the ``--help`` text of its flag);
    - ``hashed=False``: a display-only field, left out of the run id;
    - ``example``: a valid value of a required field (used by tests and ``--help``);
    - ``flag``: the command-line flag when the derived one does not fit (a bool defaulting to
      True gets ``--no-<name>``; ``flag="--relative-tau"`` names that switch instead);
    - ``legacy``: the field's default before it was moved (see the module docstring): the
      value the run-id hash leaves out. Without it, the default is.

    Mutable defaults (lists, dicts) are copied per instance.
    """
    meta = {"choices": choices, "check": check, "doc": doc, "hash": hashed, "example": example, "flag": flag,
            "legacy": legacy}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- validators
# Each takes the value, returns nothing, and raises ValueError with what is accepted (the
# caller adds the parameter's name or key path). None passes: it means "not set".


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def positive(value: Any) -> None:
    """A number > 0."""
    if value is not None and not (_is_number(value) and value > 0):
        raise ValueError(f"must be > 0, got {value!r}")


def nonnegative(value: Any) -> None:
    """A number >= 0."""
    if value is not None and not (_is_number(value) and value >= 0):
        raise ValueError(f"must be >= 0, got {value!r}")


def sparsity(value: Any) -> None:
    """A sparsity: the fraction of the prunable weights removed, in [0, 1) (1 removes all)."""
    if value is not None and not (_is_number(value) and 0.0 <= value < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1) (e.g. 0.9 removes 90% of the prunable weights), "
                         f"got {value!r}")


def fraction_removed(value: Any) -> None:
    """A share of something removed (channels, ...), in [0, 1): removing all of it cuts the network."""
    if value is not None and not (_is_number(value) and 0.0 <= value < 1.0):
        raise ValueError(f"must be a fraction removed, in [0, 1), got {value!r}")


def fraction_kept(value: Any) -> None:
    """A share kept (a budget of parameters or FLOPs), in (0, 1]: 0.15 keeps 15%."""
    if value is not None and not (_is_number(value) and 0.0 < value <= 1.0):
        raise ValueError(f"must be a fraction kept, in (0, 1] (e.g. 0.15 keeps 15%), got {value!r}")


def open_unit(value: Any) -> None:
    """A number strictly between 0 and 1 (a tolerance, a probability)."""
    if value is not None and not (_is_number(value) and 0.0 < value < 1.0):
        raise ValueError(f"must be a number in (0, 1), got {value!r}")


def int_at_least(minimum: int) -> Callable[[Any], None]:
    """A check: an integer >= ``minimum`` (bools are not integers here)."""
    def check(value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"must be an integer >= {minimum}, got {value!r}")

    check.__name__ = f"int_at_least_{minimum}"
    return check


def each(check: Callable[[Any], None]) -> Callable[[Any], None]:
    """A check applying ``check`` to every item of a list (e.g. a list of sparsities)."""
    def check_all(values: Any) -> None:
        for v in values or ():
            check(v)

    check_all.__name__ = f"each_{getattr(check, '__name__', 'check')}"
    return check_all


# ----------------------------------------------------------------------- checking values


def allowed_choices(f: dataclasses.Field) -> Optional[List[Any]]:
    """The accepted values of field ``f`` (None: any value of its type)."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Run field ``f``'s ``choices`` and ``check`` on ``value`` (None passes); raise
    ``ValueError`` saying what is accepted. The YAML loader and the constructors both use it."""
    if value is None:
        return
    allowed = allowed_choices(f)
    if allowed is not None and value not in allowed:
        raise ValueError(f"unknown value {value!r}; choose one of: {', '.join(map(str, allowed))}")
    check = f.metadata.get("check")
    if check is not None:
        check(value)


def check(validator: Callable[[Any], None], value: Any, name: str) -> Any:
    """Run one validator on ``value``; a failure names it: ``ValueError("<name>: <message>")``."""
    try:
        validator(value)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return value


def check_arguments(params_class: type, owner: str, **values: Any) -> None:
    """Check keyword arguments against the fields of ``params_class`` of the same names.

    Raises ``ValueError("<owner>: <name>: <what is accepted>")``, e.g.
    ``ste_fixed: sparsity: sparsity must be a number in [0, 1) ..., got 1.5``.
    """
    by_name = {f.name: f for f in dataclasses.fields(params_class)}
    for name, value in values.items():
        try:
            check_value(by_name[name], value)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{owner}: {name}: {err}") from None


def validate(params: Any, owner: str = "") -> Any:
    """Check every field of a params instance; returns it. Errors name the field."""
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    check_arguments(type(params), owner or type(params).__name__, **values)
    return params


def is_required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def default_of(f: dataclasses.Field) -> Any:
    """Field ``f``'s default (MISSING when it is required)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def hash_baseline(f: dataclasses.Field) -> Any:
    """The value of field ``f`` that run ids leave out: its ``legacy`` default when it has one
    (the default was moved, see the module docstring), else its default (MISSING: required)."""
    legacy = f.metadata.get("legacy", MISSING)
    return legacy if legacy is not MISSING else default_of(f)


def example(params_class: type, **overrides: Any) -> Any:
    """An instance built from the defaults plus the ``example`` of every required field."""
    values = {}
    for f in dataclasses.fields(params_class):
        if f.init and is_required(f) and f.name not in overrides:
            if f.metadata.get("example", NO_EXAMPLE) is NO_EXAMPLE:
                raise TypeError(f"{params_class.__qualname__}.{f.name} is required but has no example")
            values[f.name] = f.metadata["example"]
    return params_class(**values, **overrides)


# ------------------------------------------------------------------------------ argparse


def _plain_type(tp: Any) -> Tuple[Any, bool]:
    """``(element type, is a list)`` of a field type: Optional[X] -> X, List[X] -> (X, True)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _plain_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, List):
        (arg,) = typing.get_args(tp) or (str,)
        return arg, True
    return tp, False


def flag_of(f: dataclasses.Field, prefix: str = "") -> Tuple[str, str, bool]:
    """``(flag, dest, negated)`` of field ``f``: ``budget_flops`` -> ``--budget-flops``; a
    bool defaulting to True -> ``--no-<name>`` (``negated``: the flag stores ``not value``)."""
    negated = f.default is True
    flag = f.metadata.get("flag") or "--" + ("no-" if negated else "") + prefix + f.name.replace("_", "-")
    return flag, flag.lstrip("-").replace("-", "_"), negated


def _yes_no(text: str) -> bool:
    """An Optional[bool] flag's value: true/false, yes/no, 1/0."""
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_ARG_TYPES = {int: int, float: float, str: str, bool: _yes_no}


def field_types(params_class: type) -> Dict[str, Any]:
    return typing.get_type_hints(params_class)


def add_field_argument(parser_or_group: Any, f: dataclasses.Field, tp: Any, prefix: str = "",
                       default: Any = MISSING, help_default: Optional[str] = None, doc: Optional[str] = None) -> None:
    """Add the flag of one field. ``default``: the namespace default (the field's own unless
    given); ``help_default``: the default as written in the help text; ``doc``: the help
    (the field's ``doc`` unless given)."""
    flag, dest, negated = flag_of(f, prefix)
    doc = (f.metadata.get("doc", "") if doc is None else doc).replace("%", "%%")  # argparse formats help with %
    if tp is bool:  # a switch: --name turns a False default on, --no-name a True one off
        state = "on by default; this flag turns it off" if negated else "off by default"
        parser_or_group.add_argument(flag, dest=dest, action="store_true", help=f"{doc} ({state})")
        return
    elem, is_list = _plain_type(tp)
    value = default_of(f) if default is MISSING else default
    shown = help_default if help_default is not None else ("required" if value is MISSING else repr(value))
    kwargs: Dict[str, Any] = {"dest": dest, "type": _ARG_TYPES.get(elem, str),
                              "default": None if value is MISSING else value,
                              "help": f"{doc} (default: {shown})" if doc else f"(default: {shown})"}
    if is_list:
        kwargs["nargs"] = "*"
    allowed = allowed_choices(f)
    if allowed is not None:
        kwargs["choices"] = allowed
    parser_or_group.add_argument(flag, **kwargs)


def add_arguments(parser_or_group: Any, params_class: type, prefix: str = "",
                  skip: Iterable[str] = ()) -> None:
    """Add one flag per field of ``params_class`` (types, choices, help from ``doc``, defaults
    shown); a required field's flag defaults to None and :func:`from_namespace` insists on it."""
    types = field_types(params_class)
    for f in dataclasses.fields(params_class):
        if f.init and f.name not in skip:
            add_field_argument(parser_or_group, f, types[f.name], prefix)


def value_from_namespace(f: dataclasses.Field, args: argparse.Namespace, prefix: str = "") -> Any:
    """Field ``f``'s value in parsed ``args`` (MISSING when its flag was not given and the
    namespace holds None)."""
    _, dest, negated = flag_of(f, prefix)
    value = getattr(args, dest, None)
    if negated:
        return not value
    return MISSING if value is None else value


def from_namespace(params_class: type, args: argparse.Namespace, prefix: str = "", owner: str = "",
                   **overrides: Any) -> Any:
    """Build and validate ``params_class`` from parsed flags (``overrides`` win; a flag left
    at None takes the field's default). A missing required field raises
    ``ValueError("... needs --flag")``; a bad value names the flag and what is accepted."""
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(params_class):
        if not f.init:
            continue
        value = overrides[f.name] if f.name in overrides else value_from_namespace(f, args, prefix)
        flag = flag_of(f, prefix)[0]
        if value is MISSING:
            if is_required(f):
                raise ValueError(f"{owner or params_class.__qualname__} needs {flag}")
            continue
        try:
            check_value(f, value)
        except ValueError as err:
            raise ValueError(f"{flag}: {err}") from None
        values[f.name] = value
    return params_class(**values)
