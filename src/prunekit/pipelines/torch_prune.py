"""The reference point every user already has: ``torch.nn.utils.prune`` + fine-tuning.

Pipeline ``torch_prune``: take the shared dense run (like ``oneshot``), prune it with PyTorch's
own utilities -- ``global_unstructured`` with ``L1Unstructured`` (``how: global_l1``: one
threshold on |w| over every prunable tensor) or ``l1_unstructured`` on each tensor
(``how: layer_l1``: the same fraction of every tensor) -- then fine-tune with PyTorch's
reparametrisation in place (``weight = weight_orig * weight_mask``, a forward pre-hook) and
``prune.remove`` it at the end. The tensors are prunekit's prunable tensors (the same set a
prunekit method prunes), so the two sides of a comparison differ only in how they prune.

PyTorch's ``amount`` is a fraction of the weights *not yet pruned*; from a dense model it is
the absolute sparsity prunekit's ``sparsity`` means. Ties at the threshold are PyTorch's
(``topk``), so the count is exact as well.

    method: {name: torch_prune, params: {sparsity: 0.98, how: global_l1, finetune_epochs: 2}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.utils.prune as torch_prune

from .. import params as valid
from ..core.mask import Mask
from ..core.targets import prunable_parameters
from ..params import nonnegative, param, positive
from ..training import SCHEDULE_NAMES
from .registry import register_pipeline
from .results import PipelineResult, RunContext

HOW = ("global_l1", "layer_l1")


@dataclass
class TorchPruneParams:
    sparsity: float = param(check=valid.sparsity, example=0.9, doc="fraction of the prunable weights removed")
    how: str = param("global_l1", choices=HOW,
                     doc="global_l1: prune.global_unstructured(L1Unstructured); layer_l1: prune.l1_unstructured per tensor")
    finetune_epochs: int = param(1, check=nonnegative, doc="epochs of fine-tuning after pruning")
    finetune_lr: float = param(0.01, check=positive, doc="base learning rate of the fine-tuning")
    finetune_schedule: str = param("cosine", choices=SCHEDULE_NAMES, doc="lr schedule of the fine-tuning")


def _targets(model):
    """``{tensor name: (module, attribute)}`` of prunekit's prunable tensors (PyTorch prunes
    by module and attribute name)."""
    out = {}
    for name in prunable_parameters(model):
        module_name, _, attr = name.rpartition(".")
        out[name] = (model.get_submodule(module_name), attr)
    return out


def torch_prune_model(model: torch.nn.Module, sparsity: float, how: str = "global_l1"):
    """Apply ``torch.nn.utils.prune`` to ``model`` in place (reparametrised: ``*_orig`` +
    ``*_mask``); returns ``{tensor name: (module, attribute)}`` for :func:`remove_reparametrisation`."""
    valid.check(valid.sparsity, sparsity, "sparsity")
    if how not in HOW:
        raise ValueError(f"how must be one of {', '.join(HOW)}, got {how!r}")
    targets = _targets(model)
    if how == "global_l1":
        torch_prune.global_unstructured(list(targets.values()), pruning_method=torch_prune.L1Unstructured,
                                        amount=sparsity)
    else:
        for module, attr in targets.values():
            torch_prune.l1_unstructured(module, attr, amount=sparsity)
    return targets


def torch_masks(targets):
    """PyTorch's ``*_mask`` buffers of the targets, by tensor name (True: kept)."""
    return {name: module.get_buffer(f"{attr}_mask").bool() for name, (module, attr) in targets.items()}


def remove_reparametrisation(model: torch.nn.Module, targets) -> Mask:
    """``prune.remove`` every target (the model keeps plain weights with exact zeros) and
    return PyTorch's masks as a prunekit :class:`Mask`."""
    keep = torch_masks(targets)
    for module, attr in targets.values():
        torch_prune.remove(module, attr)
    return Mask(keep, model)


@register_pipeline("torch_prune", TorchPruneParams, requires=("dense",))
def run_torch_prune(ctx: RunContext, p: TorchPruneParams) -> PipelineResult:
    """torch.nn.utils.prune (global or per-layer L1) on the shared dense model, then fine-tuning."""
    dense = ctx.dense_run()
    model, _ = dense.load()
    # Deterministic in the dense weights: a resumed run rebuilds the same reparametrisation, so
    # the fine-tuning checkpoint (weight_orig / weight_mask keys) loads into it.
    targets = torch_prune_model(model, p.sparsity, p.how)
    # prunekit's counting sees plain Parameters: record the dense model under PyTorch's masks
    snapshot, _ = dense.load()
    Mask(torch_masks(targets), snapshot).apply()
    pruned = ctx.record("pruned", snapshot)
    del snapshot
    if p.finetune_epochs > 0:
        ctx.fit(model, "finetune", epochs=p.finetune_epochs, lr=p.finetune_lr, schedule=p.finetune_schedule,
                schedule_kwargs={})
    mask = remove_reparametrisation(model, targets)
    return ctx.result(model, mask, metrics={"requested_sparsity": p.sparsity, "oneshot_top1": pruned["top1"]},
                      built_on=[dense])
