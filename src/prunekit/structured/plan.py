"""Saving and re-applying a shrink plan, so a shrunk model can be rebuilt.

A shrunk model is not one of the registry's architectures, so its ``model.pt`` alone cannot
be rebuilt by ``prunekit.models.get``. The structured pipelines therefore write
``structure.json`` next to it: ``{"plan": {layer: [removed channel indices]},
"removed_blocks": [residual block names replaced by their shortcut (SSS)], ...sizes}``.
Applying the plan to a freshly built model of the same name/kwargs gives the same
architecture (and, with the original initialisation, the "lottery" weights of the kept
channels); ``load_shrunk(folder)`` does that and loads the saved weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..io import atomic_write_json
from .. import models
from ..training.model_file import read_model_file
from .blocks import remove_blocks  # noqa: F401  (kept importable from here)
from .channel_selection import select_inputs
from .shrink import shrink

STRUCTURE = "structure.json"


def example_input(model: nn.Module, input_shape=None) -> torch.Tensor:
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("an input shape is needed to trace the model (it has no .input_shape)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.randn(1, *shape, device=device)


def save_plan(folder, plan: Dict[str, List[int]], **info: Any) -> Path:
    """Write ``folder/structure.json`` atomically (temp file + rename)."""
    folder = Path(folder)
    data = {"format": "prunekit.structure/1", "plan": {k: [int(i) for i in v] for k, v in plan.items()}, **info}
    return atomic_write_json(folder / STRUCTURE, data, indent=1)


def load_plan(folder) -> Dict[str, Any]:
    """The contents of ``folder/structure.json`` (``plan`` and the recorded sizes)."""
    path = Path(folder) / STRUCTURE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run did not come from a structured pipeline "
                                "(slimming, structured)")
    return json.loads(path.read_text())


def apply_plan(model: nn.Module, plan: Dict[str, List[int]], input_shape=None,
               removed_blocks: Sequence[str] = (), removed_inputs: Optional[Dict[str, List[int]]] = None) -> nn.Module:
    """Rebuild a shrunk architecture in place: remove ``removed_blocks``, then ``shrink``
    with ``plan``, then the channel selections ``removed_inputs`` ({conv: input channels
    dropped}, network slimming on pre-activation models), on a fresh or trained model of the
    original name/kwargs."""
    remove_blocks(model, removed_blocks)
    if plan:
        model = shrink(model, example_input(model, input_shape), plan, inplace=True)
    if removed_inputs:
        select_inputs(model, removed_inputs)
    return model


def apply_structure(model: nn.Module, structure: Dict[str, Any], input_shape=None) -> nn.Module:
    """``apply_plan`` with the contents of a ``structure.json``."""
    return apply_plan(model, structure["plan"], input_shape, structure.get("removed_blocks", ()),
                      structure.get("removed_inputs"))


def load_shrunk(folder) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a structured run's shrunk model from ``folder/model.pt`` and its plan."""
    data = read_model_file(Path(folder) / "model.pt")
    model = models.get(data["model"]["name"], **data["model"]["kwargs"])
    model = apply_structure(model, load_plan(folder))
    model.load_state_dict(data["state_dict"], strict=True)
    return model, data
