"""The masked optimizer step in one pass per tensor (``MaskEnforcer(fused=True)``).

Masking the gradients before ``optimizer.step()`` is one more pass over every pruned tensor on
top of the optimizer's own 4-6 (one per elementwise op of torch's SGD / Adam / AdamW on CPU):
5-6% of a LeNet-300-100 training step (``benchmarks/bench_enforcement.py``), more than the
2% a user should pay for keeping a mask. ``step(optimizer, params, factors)`` instead updates
the pruned tensors itself, mask included, with ``masked_step.cpp`` (one pass, torch's formulas
element by element: ``torch/optim/sgd.py``, ``adam.py``), and hides their gradients from the
optimizer's own step, which then updates the other parameters as usual. Their state lives
where torch keeps it (``optimizer.state[p]``: ``momentum_buffer``; ``step``, ``exp_avg``,
``exp_avg_sq``), so ``state_dict`` / ``load_state_dict`` and a later unfused step see no
difference.

Supported: ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, maximize),
``Adam`` and ``AdamW`` (weight decay, maximize; not ``amsgrad``), float32 CPU tensors, not
``differentiable`` / ``capturable``. Anything else (a parameter on a GPU, a group switched to
amsgrad later) takes the unfused path for that step: its gradients are masked in place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..native import NativeKernel

KERNEL = NativeKernel("prunekit_masked_step", Path(__file__).with_name("masked_step.cpp"),
                      "prunekit's masked optimizer step", "the gradients are masked in a pass of their own")

#: The optimizers the kernel reproduces (exact types: a subclass may change the update).
FUSED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def unsupported(optimizer: torch.optim.Optimizer) -> Optional[str]:
    """Why ``optimizer`` cannot take the fused step (a sentence), or None."""
    if type(optimizer) not in FUSED_OPTIMIZERS:
        return (f"fused=True supports torch.optim.SGD, Adam and AdamW, got {type(optimizer).__name__} "
                "(use fused=False)")
    for group in optimizer.param_groups:
        reason = _group_reason(optimizer, group)
        if reason:
            return f"fused=True cannot reproduce this optimizer: {reason} (use fused=False)"
    return None


def _group_reason(optimizer: torch.optim.Optimizer, group: dict) -> Optional[str]:
    if group.get("differentiable") or group.get("capturable"):
        return "differentiable / capturable groups"
    if isinstance(optimizer, torch.optim.Adam) and group.get("amsgrad"):
        return "amsgrad"
    return None


def _static_fit(p: torch.Tensor) -> bool:
    return p.dtype == torch.float32 and p.device.type == "cpu" and p.is_contiguous()


def _grad_fits(g: Optional[torch.Tensor]) -> bool:
    return g is not None and g.dtype == torch.float32 and g.layout == torch.strided and g.is_contiguous()


def _scalar_dtype() -> torch.dtype:
    """The dtype torch gives Adam's ``step`` counter (``torch.optim.optimizer._get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class FusedStep:
    """``FusedStep(optimizer, params, masks)()`` updates each of ``params`` (with a gradient) by
    ``optimizer``'s rule on ``grad * mask`` (``masks``: uint8 0/1 tensors like the parameters)
    in one pass, and returns those updated (the caller hides their gradients from the
    optimizer's own step). Parameters the kernel cannot take are left to the caller. The
    parameters are sorted into the optimizer's groups once (a step's Python work is ~20 us)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                 masks: Sequence[torch.Tensor]):
        self.optimizer = optimizer
        mask_of = {id(p): m.contiguous() for p, m in zip(params, masks) if _static_fit(p)}
        self._groups = []  # (group, [params], [masks]) in the optimizer's order
        for group in optimizer.param_groups:
            mine = [p for p in group["params"] if id(p) in mask_of]
            if mine:
                self._groups.append((group, mine, [mask_of[id(p)] for p in mine]))

    def __call__(self) -> List[torch.Tensor]:
        kernel = KERNEL.load()
        if kernel is None:
            return []
        done: List[torch.Tensor] = []
        for group, params, masks in self._groups:
            if _group_reason(self.optimizer, group):
                continue
            if not all(_grad_fits(p.grad) for p in params):  # e.g. an unused layer this step
                keep = [i for i, p in enumerate(params) if _grad_fits(p.grad)]
                params, masks = [params[i] for i in keep], [masks[i] for i in keep]
            if not params:
                continue
            with torch.no_grad():
                if isinstance(self.optimizer, torch.optim.SGD):
                    _sgd(kernel, self.optimizer, group, params, masks, float(group["lr"]))
                else:
                    _adam(kernel, self.optimizer, group, params, masks, float(group["lr"]))
            done += params
        return done


def _sgd(kernel, optimizer, group: dict, params: List[torch.Tensor], masks: List[torch.Tensor], lr: float) -> None:
    momentum = group["momentum"]
    first: Dict[bool, Tuple[list, list, list, list]] = {True: ([], [], [], []), False: ([], [], [], [])}
    for p, m in zip(params, masks):
        state = optimizer.state[p]
        buf = state.get("momentum_buffer")
        new = momentum != 0 and buf is None
        if new:  # torch: the first step's buffer is the gradient itself (the kernel writes it)
            buf = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.contiguous_format)
        elif momentum == 0:
            buf = torch.empty(0)
        lists = first[new]
        for lst, t in zip(lists, (p.detach(), p.grad, m, buf)):
            lst.append(t)
    for is_first, (ps, gs, ms, bs) in first.items():
        if ps:
            kernel.masked_sgd(ps, gs, ms, bs, is_first, lr, momentum, group["dampening"], group["weight_decay"],
                              group["nesterov"], group.get("maximize", False))


def _adam(kernel, optimizer, group: dict, params: List[torch.Tensor], masks: List[torch.Tensor], lr: float) -> None:
    ps, gs, ea, es, steps = [], [], [], [], []
    for p in params:
        state = optimizer.state[p]
        if len(state) == 0:  # torch's _init_group
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        ps.append(p.detach())
        gs.append(p.grad)
        ea.append(state["exp_avg"])
        es.append(state["exp_avg_sq"])
        steps.append(float(state["step"]))
    beta1, beta2 = group["betas"]
    decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay", False))
    kernel.masked_adam(ps, gs, masks, ea, es, steps, lr, float(beta1), float(beta2), group["eps"],
                       group["weight_decay"], decoupled, group.get("maximize", False))
