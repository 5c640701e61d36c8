"""Thin export of a structured (shrunk) model: a folder anyone can load without prunekit.

A shrunk model (``prunekit.structured.shrink``) is a registry architecture with fewer channels,
so its ``state_dict`` alone does not say how to build it. ``thin(model, out_dir)`` writes:

- ``model.pt2``: a ``torch.export`` program of the model in eval mode with a dynamic batch
  dimension; ``torch.export.load("model.pt2").module()`` runs it with plain PyTorch (no
  prunekit, no TorchScript, which is deprecated);
- ``state_dict.pt``: the plain ``state_dict`` (``torch.load(..., weights_only=True)``);
- ``channels.json``: the architecture per layer (type, in/out channels or features, kernel,
  stride, padding, groups, bias; BatchNorm sizes), enough to rebuild it by hand;
- with ``model_name`` (and ``structure``, the contents of a ``structure.json``): ``model.pt``
  in the ``prunekit.model/1`` format plus ``structure.json``, which
  ``prunekit.artifacts.load_model(out_dir)`` (and so ``prunekit eval``) rebuilds.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..io import atomic_path, atomic_torch_save, atomic_write_text
from .. import models
from ..artifacts import save_model
from ..structured.plan import apply_structure, save_plan

__all__ = ["thin", "ThinExport", "channel_spec"]


@dataclass
class ThinExport:
    """What ``thin`` produced: the eval-mode model, its ``torch.export`` program, the per-layer
    channel spec and the files written (empty when no ``out_dir`` was given)."""

    module: nn.Module
    program: Any
    channels: Dict[str, dict]
    files: Dict[str, Path] = field(default_factory=dict)


def channel_spec(model: nn.Module) -> Dict[str, dict]:
    """``{module name: sizes}`` of every Conv / Linear / BatchNorm layer, in forward order of
    definition: what a reader needs to rebuild the thin architecture without prunekit."""
    spec: Dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            spec[name] = {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                          "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                          "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                          "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
        elif isinstance(m, nn.Linear):
            spec[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            spec[name] = {"type": type(m).__name__, "num_features": m.num_features}
    return spec


def _example(model: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
    if example_input is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError("thin() needs example_input (the model has no .input_shape)")
        example_input = torch.randn(1, *shape)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example_input = example_input.to(device)
    # Batch 1 would be specialised (0/1 specialisation of torch.export): trace with batch 2.
    if example_input.shape[0] == 1:
        example_input = torch.cat([example_input, example_input])
    return example_input


def export_program(model: nn.Module, example_input: torch.Tensor):
    """``torch.export.export`` of ``model`` (eval mode) with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    return torch.export.export(model.eval(), (example_input,), dynamic_shapes=({0: batch},))


def thin(model: nn.Module, out_dir=None, example_input: Optional[torch.Tensor] = None, *,
         model_name: Optional[str] = None, model_kwargs: Optional[dict] = None,
         structure: Optional[dict] = None, dataset: Optional[str] = None,
         metrics: Optional[dict] = None) -> ThinExport:
    """Export a shrunk model (see the module docstring for the files); returns a ``ThinExport``.

    ``model`` is copied and put in eval mode; ``example_input`` (default: a random batch of
    ``model.input_shape``) is only used to trace the program. ``model.pt`` is written when
    ``model_name`` is given: the registry name and kwargs of the *original* architecture and the
    ``structure`` (a ``structure.json`` dict with the shrink ``plan``) that rebuilds the thin one.
    """
    module = copy.deepcopy(model).eval()
    x = _example(module, example_input)
    program = export_program(module, x)
    channels = channel_spec(module)
    result = ThinExport(module=module, program=program, channels=channels)
    if out_dir is None:
        return result
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = result.files
    files["model.pt2"] = out / "model.pt2"
    with atomic_path(files["model.pt2"], suffix=".pt2") as tmp:  # torch.export.save wants .pt2
        torch.export.save(program, tmp)
    files["state_dict.pt"] = out / "state_dict.pt"
    atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, files["state_dict.pt"])
    files["channels.json"] = out / "channels.json"
    atomic_write_text(files["channels.json"], json.dumps(channels, indent=1))
    if model_name is not None:
        structure = dict(structure or {"plan": {}})
        # Check now that the structure really rebuilds this architecture: a wrong plan would
        # only fail later, at load time, far from its cause.
        rebuilt = apply_structure(models.get(model_name, **dict(model_kwargs or {})), structure)
        want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
        if want != got:
            raise ValueError(f"structure does not rebuild this model from {model_name} {model_kwargs}: "
                             "pass the structure.json contents of the shrink that produced it")
        info = {k: v for k, v in structure.items() if k not in ("plan", "format")}
        files["structure.json"] = save_plan(out, structure["plan"], **info)
        files["model.pt"] = save_model(out / "model.pt", module, model_name=model_name, model_kwargs=model_kwargs,
                                       dataset=dataset, metrics=metrics, recipe={"export": "thin"})
    return result
