"""The prunekit model file format: a plain ``state_dict`` plus what is needed to rebuild the
architecture (``prunekit.artifacts`` describes the fields and rebuilds models from it).

It sits in the training layer, next to the checkpoint writer it uses, so that every layer
above -- ``structured.load_shrunk`` included -- can read and write model files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

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
