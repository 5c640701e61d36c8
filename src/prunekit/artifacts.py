"""Model files: a plain ``state_dict`` plus what is needed to rebuild the architecture.

A prunekit model file is a dict loadable with ``torch.load(path, weights_only=True)``:
``{"format": "prunekit.model/1", "model": {"name", "kwargs"}, "dataset", "state_dict",
"mask" (optional, {name: bool tensor}), "metrics", "recipe", "history"}``. Anyone can read
it without prunekit; ``load_model`` rebuilds the model through the model registry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

FORMAT = "prunekit.model/1"


def save_model(path, model: nn.Module, *, model_name: str, model_kwargs: Optional[dict] = None,
               dataset: Optional[str] = None, mask=None, metrics: Optional[dict] = None,
               recipe: Optional[dict] = None, history: Optional[list] = None) -> Path:
    """Write ``model`` and its description atomically to ``path``."""
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "model": {"name": model_name, "kwargs": dict(model_kwargs or {})},
        "dataset": dataset,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "mask": {k: v.detach().cpu() for k, v in mask.items()} if mask is not None else None,
        "metrics": dict(metrics or {}),
        "recipe": dict(recipe or {}),
        "history": list(history or []),
    }
    return save_checkpoint(path, payload)


def read_model_file(path) -> Dict[str, Any]:
    """Load and check a model file; a foreign or corrupt file raises ``CheckpointError``."""
    data = load_checkpoint(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a prunekit model file (expected format {FORMAT!r}); create one with "
            "`prunekit train` or prunekit.artifacts.save_model")
    return data


def load_model(path, device: str | torch.device = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model stored in ``path``; returns ``(model, file contents)``.

    ``path`` is a model file or a folder holding ``model.pt``. A shrunk (structured) model is
    not a registry architecture: when its weights do not fit the registry model and a
    ``structure.json`` lies beside the file, the shrink plan in it is applied first (what
    ``prunekit.structured.load_shrunk`` does), so shrunk folders load like any model file."""
    from . import models

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    data = read_model_file(path)
    spec = data["model"]
    model = models.get(spec["name"], **spec["kwargs"])
    if (path.parent / "structure.json").exists() and not _shapes_fit(model, data["state_dict"]):
        from .structured.plan import apply_structure, load_plan

        model = apply_structure(model, load_plan(path.parent))
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit model {spec['name']} {spec['kwargs']}: {err}") from err
    return model.to(device), data


def _shapes_fit(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state_dict.keys() and all(own[k].shape == v.shape for k, v in state_dict.items())
