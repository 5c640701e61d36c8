"""The Mask: which weights of which tensors are kept, and how it is enforced in training.

A :class:`Mask` is a ``{parameter name: bool tensor}`` mapping with validation. Enforcement
uses an optimizer *step post-hook* that multiplies the pruned weights (and their momentum /
Adam state) by zero after every step. There are no forward hooks and no ``weight_orig``: the
pruned model is a plain model whose ``state_dict`` has the dense model's keys.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, Iterator, List, Mapping, Optional

import torch
from torch import nn

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
        """Check names and shapes against ``model`` and remember its parameters."""
        params = dict(model.named_parameters())
        bound = {}
        for name, m in self._masks.items():
            if name not in params:
                raise ValueError(
                    f"mask names parameter {name!r}, which the model does not have "
                    f"(it has e.g. {', '.join(list(params)[:5])})"
                )
            if tuple(params[name].shape) != tuple(m.shape):
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(m.shape)}, the parameter {tuple(params[name].shape)}"
                )
            bound[name] = params[name]
            if m.device != params[name].device:
                self._masks[name] = m.to(params[name].device)
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
        """Zero the pruned weights in place."""
        for name, p in self.parameters(model).items():
            p.mul_(self._masks[name].to(p.dtype))

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
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

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
        from .targets import prunable_parameters

        params = dict(model.named_parameters())
        names = names if names is not None else list(prunable_parameters(model))
        return cls({n: params[n].detach() != 0 for n in names}, model)


class MaskEnforcer:
    """Keeps pruned weights and their optimizer state at exactly zero after each step.

    Created by :func:`enforce`; ``remove()`` detaches it. The hook does one fused
    ``_foreach_mul_`` over the pruned weights (and one over each kind of per-weight state),
    so its cost is a few elementwise passes over the prunable tensors per step.
    """

    def __init__(self, mask: Mask, optimizer: torch.optim.Optimizer, model: Optional[nn.Module] = None):
        params = mask.parameters(model)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in params.items() if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"the optimizer does not update the masked parameters {missing[:3]}...: "
                             "build the optimizer over model.parameters() of the pruned model")
        self.mask = mask
        self.optimizer = optimizer
        # Only tensors that actually lose weights need work each step.
        self._params = [p for n, p in params.items() if not bool(mask[n].all())]
        self._factors = [mask[n].to(device=p.device, dtype=p.dtype) for n, p in params.items() if not bool(mask[n].all())]
        self._handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.zero())
        mask.apply()
        self.zero()

    @torch.no_grad()
    def zero(self) -> None:
        if not self._params:
            return
        torch._foreach_mul_(self._params, self._factors)
        state = self.optimizer.state
        for key in _PER_WEIGHT_STATE:
            tensors, factors = [], []
            for p, f in zip(self._params, self._factors):
                buf = state.get(p, {}).get(key) if p in state else None
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                    tensors.append(buf)
                    factors.append(f)
            if tensors:
                torch._foreach_mul_(tensors, factors)

    def remove(self) -> None:
        self._handle.remove()


def enforce(mask: Mask, optimizer: torch.optim.Optimizer, model: Optional[nn.Module] = None) -> MaskEnforcer:
    """Keep ``mask`` enforced while ``optimizer`` trains: after every ``optimizer.step()``
    pruned weights and their momentum / Adam state are re-zeroed. Returns a handle with
    ``remove()``. The weights are masked immediately as well.
    """
    return MaskEnforcer(mask, optimizer, model)


def density_of(tensor: torch.Tensor) -> float:
    n = tensor.numel()
    return float(torch.count_nonzero(tensor)) / n if n else 1.0


