"""Model files: a plain ``state_dict`` plus what is needed to rebuild the architecture.

A prunekit model file is a dict loadable with ``torch.load(path, weights_only=True)``:
``{"format": "prunekit.model/1", "model": {"name", "kwargs"}, "dataset", "state_dict",
"mask" (optional, {name: bool tensor}), "metrics", "recipe", "history"}``. Anyone can read
it without prunekit; ``load_model`` rebuilds the model through the model registry.

The format itself (``save_model``, ``read_model_file``) lives in ``prunekit.training.model_file``
so that lower layers (``structured.load_shrunk``) can read model files; it is re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from . import models
from .structured.plan import apply_structure, load_plan
from .training.checkpoint import CheckpointError
from .training.model_file import FORMAT, read_model_file, save_model

__all__ = ["FORMAT", "save_model", "read_model_file", "load_model"]


def load_model(path, device: str | torch.device = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model stored in ``path``; returns ``(model, file contents)``.

    ``path`` is a model file or a folder holding ``model.pt``. A shrunk (structured) model is
    not a registry architecture: when its weights do not fit the registry model and a
    ``structure.json`` lies beside the file, the shrink plan in it is applied first (what
    ``prunekit.structured.load_shrunk`` does), so shrunk folders load like any model file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    data = read_model_file(path)
    spec = data["model"]
    model = models.get(spec["name"], **spec["kwargs"])
    if (path.parent / "structure.json").exists() and not _shapes_fit(model, data["state_dict"]):
        model = apply_structure(model, load_plan(path.parent))
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit model {spec['name']} {spec['kwargs']}: {err}") from err
    return model.to(device), data


def _shapes_fit(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state_dict.keys() and all(own[k].shape == v.shape for k, v in state_dict.items())
