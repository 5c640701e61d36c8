"""Which tensors are prunable.

By default the ``.weight`` of every Conv1d/2d/3d (grouped and depthwise included) and Linear
layer; biases, normalisation layers and embeddings are left alone (SPEC.md section 1). Users
narrow or widen the set by module type and by name pattern (fnmatch on the parameter name,
e.g. ``"fc*"`` or ``"features.0.weight"``).
"""
from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, Optional, Sequence, Tuple, Type

from torch import nn

DEFAULT_TYPES: Tuple[Type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _as_patterns(patterns: Optional[Iterable[str] | str]) -> Sequence[str]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    module_name = name.rsplit(".", 1)[0]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(module_name, p) for p in patterns)


def prunable_parameters(
    model: nn.Module,
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
    types: Optional[Sequence[Type[nn.Module]]] = None,
) -> Dict[str, nn.Parameter]:
    """Return ``{parameter name: weight}`` of the prunable tensors of ``model``, in model order.

    ``include``: only parameters whose name (or module name) matches one of these fnmatch
    patterns; ``exclude``: drop those matching; ``types``: module classes whose ``.weight`` is
    prunable (default Conv1d/2d/3d and Linear). Raises ``ValueError`` when nothing is left,
    since pruning "nothing" is always a mistake the user wants to hear about.
    """
    types = tuple(types) if types is not None else DEFAULT_TYPES
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise ValueError(f"types must be nn.Module subclasses, got {t!r}")
    include_p, exclude_p = _as_patterns(include), _as_patterns(exclude)
    found: Dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, types):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        name = f"{module_name}.weight" if module_name else "weight"
        if include_p and not _matches(name, include_p):
            continue
        if exclude_p and _matches(name, exclude_p):
            continue
        found[name] = weight
    if not found:
        kinds = ", ".join(t.__name__ for t in types)
        detail = ""
        if include_p or exclude_p:
            detail = f" after include={list(include_p)} exclude={list(exclude_p)}"
        raise ValueError(
            f"the model has no prunable tensor{detail}: prunable are the weights of {kinds} "
            "modules (pass types=... or include=... to choose others)"
        )
    return found
