"""Command-line flags of the during-training methods, generated from their ``Params``.

Every registered method (``prunekit.methods.METHODS``) gets an argument group with one flag per
field of its ``Params`` (:func:`prunekit.params.add_field_argument`: type, choices, help from
the field's ``doc``, default shown). A field several methods declare is one flag of the
``shared`` group: when the methods' defaults differ (``--lam``: sparsity_loss 10, ltp 1) the
flag defaults to None and each method takes its own default. A field whose flag the command
already has (``--include``, ``--exclude``) uses that flag.

    add_method_arguments(parser)                  # after the command's own flags
    params = method_params(args, "ltp")           # LTP.Params from the flags, validated
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, List, Tuple

from ..methods import METHODS
from ..params import MISSING, add_field_argument, default_of, field_types, flag_of, from_namespace


def _fields_by_name() -> Dict[str, List[Tuple[str, dataclasses.Field, Any]]]:
    """Field name -> ``[(method, field, type)]`` over every registered method's Params."""
    out: Dict[str, List[Tuple[str, dataclasses.Field, Any]]] = {}
    for name in METHODS.names():
        params_class = METHODS.get(name).Params
        types = field_types(params_class)
        for f in dataclasses.fields(params_class):
            if f.init:
                out.setdefault(f.name, []).append((name, f, types[f.name]))
    return out


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of every registered method's Params to ``parser`` (see the module docstring)."""
    taken = {action.dest for action in parser._actions}  # the command's own flags (--include, ...)
    by_name = _fields_by_name()
    shared = parser.add_argument_group("shared", "parameters of several methods")
    groups = {name: parser.add_argument_group(name) for name in METHODS.names()}
    for field_name, owners in by_name.items():
        _, f, tp = owners[0]
        dest = flag_of(f)[1]
        if dest in taken:
            continue
        taken.add(dest)
        if len(owners) == 1:
            add_field_argument(groups[owners[0][0]], f, tp)
            continue
        defaults = {method: default_of(g) for method, g, _ in owners}
        if len({repr(d) for d in defaults.values()}) == 1:
            add_field_argument(shared, f, tp)
        else:  # each method keeps its own default: the flag is None unless given
            shown = ", ".join(f"{m} {'required' if d is MISSING else d}" for m, d in defaults.items())
            doc = "; ".join(f"{m}: {g.metadata.get('doc', '')}" for m, g, _ in owners)
            add_field_argument(shared, f, tp, default=None, help_default=shown, doc=doc)


def method_params(args: argparse.Namespace, name: str) -> Any:
    """Method ``name``'s Params from parsed flags (its defaults where a flag was not given).

    A missing required flag raises ``ValueError("--method <name> needs --flag")``; a bad value
    names the flag and what is accepted.
    """
    return from_namespace(METHODS.get(name).Params, args, owner=f"--method {name}")


def method_flag_defaults() -> Dict[str, Any]:
    """``dest -> default`` of every generated method flag."""
    parser = argparse.ArgumentParser(add_help=False)
    add_method_arguments(parser)
    return {action.dest: action.default for action in parser._actions}
