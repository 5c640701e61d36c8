"""The Mask: which weights of which tensors are kept, and how it is enforced in training.

A :class:`Mask` is a ``{parameter name: bool tensor}`` mapping with validation. Enforcement
(:class:`MaskEnforcer`) uses an optimizer *step pre-hook* that multiplies the pruned tensors'
gradients by the mask, which keeps pruned weights and their momentum / Adam state at exactly
zero through element-wise optimizers. There are no forward hooks and no ``weight_orig``: the
pruned model is a plain model whose ``state_dict`` has the dense model's keys.
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..io import atomic_torch_save
from . import fused_step
from .arrays import keep_only_
from .targets import prunable_parameters

# Optimizer state entries that hold one value per weight and must not resurrect pruned ones.
_PER_WEIGHT_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "sum")


class Mask(Mapping[str, torch.Tensor]):
    """Boolean keep-masks for named parameters (True = kept).

    ``Mask(masks)`` validates that every value is a bool tensor; ``Mask(masks, model)`` also
    checks names and shapes against the model and binds its parameters (so ``enforce`` needs
    no model argument).
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], model: Optional[nn.Module] = None):
        checked: Dict[str, torch.Tensor] = {}
        for name, m in masks.items():
            if not isinstance(m, torch.Tensor):
                raise ValueError(f"mask for {name!r} is a {type(m).__name__}, expected a bool tensor")
            if m.dtype != torch.bool:
                if m.dtype.is_floating_point or m.dtype in (torch.int64, torch.int32, torch.uint8, torch.int8):
                    bad = ((m != 0) & (m != 1)).any()
                    if bool(bad):
                        raise ValueError(f"mask for {name!r} has values other than 0 and 1")
                    m = m.bool()
                else:
                    raise ValueError(f"mask for {name!r} has dtype {m.dtype}, expected torch.bool")
            checked[name] = m
        self._masks = checked
        self._params: Optional[Dict[str, nn.Parameter]] = None
        if model is not None:
            self.bind(model)

    # Mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, sparsity={self.sparsity():.4f})"

    # Binding to a model
    def bind(self, model: nn.Module) -> "Mask":
        """Check names and shapes against ``model`` and remember its parameters.

        A tied Parameter may be named by any of its names; the mask is re-keyed by its
        canonical (first) name, and naming one Parameter twice is an error.
        """
        by_name = dict(model.named_parameters(remove_duplicate=False))
        canonical = {id(p): n for n, p in model.named_parameters()}
        bound, masks = {}, {}
        for name, m in self._masks.items():
            if name not in by_name:
                raise ValueError(
                    f"mask names parameter {name!r}, which the model does not have "
                    f"(it has e.g. {', '.join(list(by_name)[:5])})"
                )
            param = by_name[name]
            key = canonical[id(param)]
            if key in bound:
                raise ValueError(f"mask names the tied parameter {key!r} twice (also as {name!r}): "
                                 "give one mask per shared Parameter")
            if tuple(param.shape) != tuple(m.shape):
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(m.shape)}, the parameter {tuple(param.shape)}"
                )
            bound[key] = param
            masks[key] = m.to(param.device) if m.device != param.device else m
        self._masks = masks
        self._params = bound
        return self

    def parameters(self, model: Optional[nn.Module] = None) -> Dict[str, nn.Parameter]:
        if model is not None:
            self.bind(model)
        if self._params is None:
            raise ValueError("this Mask is not bound to a model: pass model=... or call mask.bind(model)")
        return self._params

    # Counting
    def kept(self) -> int:
        return sum(int(torch.count_nonzero(m)) for m in self._masks.values())

    def total(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def density(self) -> float:
        total = self.total()
        return self.kept() / total if total else 1.0

    def sparsity(self) -> float:
        """Fraction of the masked (prunable) weights that are pruned."""
        return 1.0 - self.density()

    def layer_report(self) -> List[dict]:
        """One row per tensor: name, shape, params, kept, density."""
        rows = []
        for name, m in self._masks.items():
            kept = int(torch.count_nonzero(m))
            rows.append({"name": name, "shape": tuple(m.shape), "params": m.numel(), "kept": kept,
                         "density": kept / m.numel() if m.numel() else 1.0})
        return rows

    # Applying
    @torch.no_grad()
    def apply(self, model: Optional[nn.Module] = None) -> None:
        """Zero the pruned weights in place (and mark them as carrying a mask, see
        :func:`carried_keep`)."""
        for name, p in self.parameters(model).items():
            keep_only_(p, self._masks[name])
            mark_masked(p)

    def __and__(self, other: "Mask") -> "Mask":
        if set(self) != set(other):
            raise ValueError("masks cover different tensors")
        out = Mask({k: self[k] & other[k] for k in self})
        out._params = self._params
        return out

    def is_subset_of(self, other: "Mask") -> bool:
        """True when every weight kept here is also kept by ``other`` (masks only shrink)."""
        return set(self) == set(other) and all(bool((self[k] & ~other[k]).sum() == 0) for k in self)

    # Persistence
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._masks.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the mask atomically (temp file + rename)."""
        atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Optional[nn.Module] = None) -> "Mask":
        try:
            data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a corrupt file
            raise ValueError(f"cannot read mask file {os.fspath(path)!r}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{os.fspath(path)!r} does not hold a mask (a dict of bool tensors)")
        return cls(data, model)

    @classmethod
    def from_model(cls, model: nn.Module, names: Optional[List[str]] = None) -> "Mask":
        """The mask of nonzero entries of the given (default: prunable) parameters."""
        params = dict(model.named_parameters(remove_duplicate=False))
        names = names if names is not None else list(prunable_parameters(model))
        return cls({n: params[n].detach() != 0 for n in names}, model)


# The contract on zeros already in a model. A fresh prune of a dense model scores every weight:
# an exact zero (a zero-initialised head) is a weight like any other. Only a Parameter that a
# prunekit mask was applied to (prune, enforce, a Method's finalize) "carries a mask", and then
# its exact zeros are the weights pruned before. The mark is a Python attribute on the
# Parameter: it survives load_state_dict (an in-place copy) but not deepcopy or a new model,
# where passing ``mask=`` says the same explicitly.
_MASKED_MARK = "_prunekit_masked"


def mark_masked(param: torch.Tensor) -> None:
    """Record that a prunekit mask was applied to ``param``."""
    setattr(param, _MASKED_MARK, True)


def carries_mask(param: torch.Tensor) -> bool:
    return bool(getattr(param, _MASKED_MARK, False))


def carried_keep(param: torch.Tensor) -> torch.Tensor:
    """The weights of ``param`` still alive: its nonzeros when it carries a prunekit mask,
    else all of them (zeros of a dense model are not "pruned")."""
    if carries_mask(param):
        return param.detach() != 0
    return torch.ones(param.shape, dtype=torch.bool, device=param.device)


# Optimizers whose update of a weight depends only on that weight's own gradient and state:
# with its gradient masked, a pruned weight (0) and its state (0) stay exactly 0 through
# momentum, Nesterov, weight decay (coupled or decoupled), Adam moments and AMSGrad.
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta,
)


def _mask_grads(params: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]) -> None:
    """``grad *= factor`` for each parameter with a gradient (one ``_foreach_mul_``)."""
    if not params:
        return
    grads = [p.grad for p in params]
    try:
        torch._foreach_mul_(grads, factors)
    except TypeError:  # a tensor without a gradient this step (an unused layer)
        present = [(g, f) for g, f in zip(grads, factors) if g is not None]
        if present:
            torch._foreach_mul_([g for g, _ in present], [f for _, f in present])


class MaskEnforcer:
    """Keeps pruned weights and their optimizer state at exactly zero while training.

    Created by :func:`enforce`; ``remove()`` detaches it. Per ``optimizer.step()`` it does one
    thing: a step *pre*-hook multiplies the gradients of the pruned tensors by the mask, one
    ``torch._foreach_mul_`` over all of them with factors built once (0/1 in the parameters'
    dtype and device). For the optimizers in :data:`ELEMENTWISE_OPTIMIZERS` that alone keeps
    every pruned weight w = 0 and its state exactly 0: each update is a function of the weight's
    own gradient and state, and with g = 0, w = 0, state = 0 it is 0, e.g. SGD with momentum m
    and weight decay wd: ``buf = m buf + (g + wd w) = 0``, ``w -= lr buf``; AdamW:
    ``w *= 1 - lr wd``, ``exp_avg = b1 exp_avg + (1 - b1) g = 0``, ``exp_avg_sq = 0``,
    ``w -= lr exp_avg / (sqrt(exp_avg_sq) + eps) = 0``. One pass over the gradients is the
    least any exact scheme costs: masking the weights after the step instead would leave the
    moments nonzero, and masking weights *and* moments after it is two or three passes.

    The other entry points of nonzero values are handled where they happen, not checked
    every step:

    - state that exists when the mask is enforced, or arrives through
      ``optimizer.load_state_dict`` (a resumed run), is zeroed then (a load_state_dict
      post-hook);
    - a ``step(closure)`` computes its gradients inside the step, so the closure is wrapped to
      mask them right after it runs;
    - any other optimizer (whose update may mix weights, e.g. LBFGS) also gets its weights and
      state re-zeroed after every step (a step post-hook).

    A step that ``GradScaler`` skips calls neither the optimizer nor its hooks, so it changes
    nothing (see :mod:`prunekit.training.amp`). Zeroing is in place; torch's
    ``load_state_dict`` keeps the tensors it is given when dtype and device match, so loading a
    live optimizer's ``state_dict()`` zeroes that optimizer's buffers too (load a copy).

    Cost per step: one Python list of the gradients and one multiply pass over them, measured
    in ``benchmarks/results/enforcement.md`` beside the bare pass itself.

    ``fused=True`` (SGD, Adam, AdamW; see :mod:`prunekit.core.fused_step`) removes that pass:
    the pre-hook updates the pruned tensors itself, mask included, in one pass each (torch's
    formulas, state in ``optimizer.state`` under torch's keys), and hides their gradients from
    the optimizer's own step, which updates the other parameters; a post-hook gives the
    gradients back, unmasked. A closure, a ``GradScaler`` step handing the optimizer its scale
    (``fused=True`` optimizers) or a tensor the kernel cannot take (not float32 on the CPU) take
    the unfused path for that step.
    """

    def __init__(self, mask: Mask, optimizer: torch.optim.Optimizer, model: Optional[nn.Module] = None,
                 fused: bool = False):
        params = mask.parameters(model)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in params.items() if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"the optimizer does not update the masked parameters {missing[:3]}...: "
                             "build the optimizer over model.parameters() of the pruned model")
        if fused:
            problem = fused_step.unsupported(optimizer)
            if problem:
                raise ValueError(problem)
        self.mask = mask
        self.optimizer = optimizer
        self.fused = bool(fused)
        self._hidden: List[tuple] = []  # (param, grad) hidden from the optimizer's step by the fused one
        # exact types: a subclass may change the update
        self.every_step = type(optimizer) not in ELEMENTWISE_OPTIMIZERS
        # Only tensors that actually lose weights need work.
        pruned = [n for n in params if not bool(mask[n].all())]
        self._params = [params[n] for n in pruned]
        # Detached views share the parameters' storage, so in-place zeroing needs no no_grad().
        self._weights = [params[n].detach() for n in pruned]
        self._factors = [mask[n].to(device=params[n].device, dtype=params[n].dtype) for n in pruned]
        # the fused step reads the mask as 0/1 bytes (a quarter of the float factors' traffic)
        self._fused_step = fused_step.FusedStep(
            optimizer, self._params, [mask[n].to(device=params[n].device, dtype=torch.uint8) for n in pruned]
        ) if fused else None
        for p in params.values():
            mark_masked(p)
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_load_state_dict_post_hook(self._after_load),
        ]
        if self.every_step or self.fused:
            self._handles.append(optimizer.register_step_post_hook(self._after_step))
        self.zero()

    def mask_gradients(self) -> None:
        """Multiply the gradients of the pruned tensors by the mask, now."""
        _mask_grads(self._params, self._factors)

    def _before_step(self, optimizer, args, kwargs):
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if closure is None:
            if self.fused and "grad_scale" not in kwargs and "found_inf" not in kwargs:
                done = self._fused_step()
                self._hidden = [(p, p.grad) for p in done]
                for p in done:  # the optimizer's own step skips parameters without a gradient
                    p.grad = None
                if done:  # the optimizer updates the rest: mask their gradients as unfused
                    if len(done) < len(self._params):
                        taken = {id(p) for p in done}
                        rest = [i for i, p in enumerate(self._params) if id(p) not in taken]
                        _mask_grads([self._params[i] for i in rest], [self._factors[i] for i in rest])
                    return None
            self.mask_gradients()
            return None

        def masked_closure():
            loss = closure()
            self.mask_gradients()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": masked_closure}
        return (args[0], masked_closure, *args[2:]), kwargs

    def _after_step(self, optimizer, args, kwargs) -> None:
        for p, grad in self._hidden:
            p.grad = grad
        self._hidden = []
        if self.every_step:
            self.zero()

    def _after_load(self, optimizer) -> None:
        self.zero()

    def zero(self) -> None:
        """Zero the pruned weights and every per-weight state buffer of them, now."""
        state = self.optimizer.state
        tensors, factors = list(self._weights), list(self._factors)
        for p, f in zip(self._params, self._factors):
            entry = state.get(p)
            if not entry:
                continue
            for key in _PER_WEIGHT_STATE:
                buf = entry.get(key)
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                    tensors.append(buf.detach())
                    factors.append(f)
        if tensors:
            torch._foreach_mul_(tensors, factors)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def enforce(mask: Mask, optimizer: torch.optim.Optimizer, model: Optional[nn.Module] = None,
            fused: bool = False) -> MaskEnforcer:
    """Keep ``mask`` enforced while ``optimizer`` trains: through every ``optimizer.step()``
    pruned weights and their momentum / Adam state stay exactly zero (see
    :class:`MaskEnforcer`). Returns a handle with ``remove()``. The weights and any existing
    optimizer state are masked immediately. ``fused=True``: the pruned tensors' update, mask
    included, in one pass (SGD, Adam, AdamW; prunekit's C++ kernel, built on first use).
    """
    return MaskEnforcer(mask, optimizer, model, fused=fused)


def density_of(tensor: torch.Tensor) -> float:
    n = tensor.numel()
    return float(torch.count_nonzero(tensor)) / n if n else 1.0


