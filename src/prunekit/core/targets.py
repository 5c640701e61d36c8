"""Which tensors are prunable.

By default the weights of the linear maps of a model:

- the ``.weight`` of every Conv1d/2d/3d (grouped and depthwise included) and Linear layer
  (subclasses too, e.g. ``nn.MultiheadAttention``'s ``out_proj``);
- ``nn.MultiheadAttention``'s input projections: ``in_proj_weight``, or ``q_proj_weight``,
  ``k_proj_weight`` and ``v_proj_weight`` when kdim / vdim differ from embed_dim, together
  with its ``out_proj.weight``;
- Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2), a Linear whose weight is
  stored transposed as (in, out). It is recognised only when transformers is already
  imported (a model holding one has imported it); prunekit never imports transformers.

Biases, normalisation layers and embeddings are left alone (SPEC.md section 1). Embeddings
are opt-in: add ``nn.Embedding`` to ``types``, e.g. ``types=(*pk.core.default_types(), nn.Embedding)``.
Users narrow or widen the set by module type and by name pattern (fnmatch on the parameter
name, e.g. ``"fc*"`` or ``"features.0.weight"``).

A tensor is found by Parameter *identity*: a Parameter shared by several modules (BERT's
decoder tied to the word embeddings, GPT-2's ``lm_head``, two Linears given one Parameter)
is ONE prunable tensor, named by its first name in ``model.named_parameters()`` (the
canonical name, the one ``state_dict`` round-trips use); its other names are its aliases. It
is prunable when any of its users is of a prunable type.
"""
from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type

from torch import nn

DEFAULT_TYPES: Tuple[Type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)

# MHA's separate projections, used instead of in_proj_weight when kdim / vdim != embed_dim.
_MHA_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def hf_conv1d_type() -> Optional[Type[nn.Module]]:
    """transformers' ``Conv1D`` class if transformers is already imported, else None.

    Why not import it: transformers is optional and slow to import, and a model that holds
    a Conv1D has necessarily imported ``transformers.pytorch_utils`` already.
    """
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def default_types() -> Tuple[Type[nn.Module], ...]:
    """:data:`DEFAULT_TYPES` plus transformers' Conv1D when transformers is loaded."""
    conv1d = hf_conv1d_type()
    return DEFAULT_TYPES + ((conv1d,) if conv1d is not None else ())


def stores_transposed(module: nn.Module) -> bool:
    """True for layers whose weight is stored (in, out) instead of (out, in): HF Conv1D."""
    conv1d = hf_conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


@dataclass
class Target:
    """One prunable tensor: canonical name, the Parameter, all its names, and its logical
    shape (out, in, ...) — the stored shape except for HF Conv1D, stored (in, out)."""

    name: str
    param: nn.Parameter
    aliases: Tuple[str, ...]
    shape: Tuple[int, ...]


def _as_patterns(patterns: Optional[Iterable[str] | str]) -> Sequence[str]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    module_name = name.rsplit(".", 1)[0]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(module_name, p) for p in patterns)


def _weights_of(module_name: str, module: nn.Module) -> List[Tuple[str, object]]:
    """``[(parameter name, value)]`` of the prunable weights a module of a prunable type owns."""
    prefix = f"{module_name}." if module_name else ""
    if isinstance(module, nn.MultiheadAttention):
        attrs = ("in_proj_weight",) if module._qkv_same_embed_dim else _MHA_SEPARATE
        found = [(prefix + a, getattr(module, a, None)) for a in attrs]
        return found + [(f"{prefix}out_proj.weight", module.out_proj.weight)]
    return [(prefix + "weight", getattr(module, "weight", None))]


def parameter_names(model: nn.Module) -> Dict[int, Tuple[str, ...]]:
    """``{id(Parameter): (canonical name, *aliases)}`` for every parameter of ``model``."""
    names: Dict[int, List[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {k: tuple(v) for k, v in names.items()}


def prunable_targets(
    model: nn.Module,
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
    types: Optional[Sequence[Type[nn.Module]]] = None,
) -> List[Target]:
    """The prunable tensors of ``model`` as :class:`Target` rows, in ``named_parameters`` order.

    ``include``: only tensors one of whose names (or module names) matches one of these
    fnmatch patterns; ``exclude``: drop those any of whose names matches; ``types``: module
    classes whose weights are prunable (default :func:`default_types`). Raises ``ValueError``
    when nothing is left, since pruning "nothing" is always a mistake the user wants to hear
    about.
    """
    types = tuple(types) if types is not None else default_types()
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise ValueError(f"types must be nn.Module subclasses, got {t!r}")
    include_p, exclude_p = _as_patterns(include), _as_patterns(exclude)
    names = parameter_names(model)
    transposed: Dict[int, bool] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, types):
            continue
        for _, weight in _weights_of(module_name, module):
            if isinstance(weight, nn.Parameter) and id(weight) not in transposed:
                transposed[id(weight)] = stores_transposed(module)
    found: List[Target] = []
    for name, p in model.named_parameters():
        if id(p) not in transposed:
            continue
        all_names = names[id(p)]
        if include_p and not any(_matches(n, include_p) for n in all_names):
            continue
        if exclude_p and any(_matches(n, exclude_p) for n in all_names):
            continue
        shape = tuple(p.shape)
        found.append(Target(name, p, all_names, shape[::-1] if transposed[id(p)] else shape))
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


def prunable_parameters(
    model: nn.Module,
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
    types: Optional[Sequence[Type[nn.Module]]] = None,
) -> Dict[str, nn.Parameter]:
    """``{canonical name: Parameter}`` of the prunable tensors (see :func:`prunable_targets`);
    a tied Parameter appears once."""
    return {t.name: t.param for t in prunable_targets(model, include=include, exclude=exclude, types=types)}


def aliases_of(model: nn.Module) -> Dict[str, Tuple[str, ...]]:
    """``{canonical name: (other names)}`` of the parameters that have more than one name."""
    return {names[0]: names[1:] for names in parameter_names(model).values() if len(names) > 1}
