"""Calling a model on an example input, and reading what comes back, the one way prunekit does it.

An example input is a tensor (``model(x)``), a tuple/list of positional arguments
(``model(*x)``) or a dict of keyword arguments (``model(**x)``, e.g. a tokenizer's output).
Outputs may be a tensor, a tuple, a dict or a Hugging Face ``ModelOutput``, nested.
(Calibration loaders follow another convention, ``(inputs, labels)`` batches: ``calibration.run_batch``.)
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

import torch
from torch import nn

__all__ = ["call_model", "output_tensors", "attention_mask"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)``. Dicts inside a tuple are
    passed as copies: sentence-transformers models add their outputs to the features dict they
    get, which would change the example for the next call."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*(dict(v) if isinstance(v, Mapping) else v for v in inputs))
    return model(inputs)


def output_tensors(output: Any, floating_only: bool = False) -> List[torch.Tensor]:
    """Every tensor of a (nested) model output, in order (only floating ones if asked)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() or not floating_only else []
    if isinstance(output, Mapping):  # dict, ModelOutput, BatchEncoding
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in output_tensors(v, floating_only)]
    return []


def attention_mask(batch: Any) -> Optional[torch.Tensor]:
    """The ``attention_mask`` of a tokenised batch (a dict, or a dict inside a tuple such as
    sentence-transformers' ``(features,)``), if there is one: 1 for tokens, 0 for padding."""
    for item in (batch, *batch) if isinstance(batch, (tuple, list)) else (batch,):
        if isinstance(item, Mapping) and isinstance(item.get("attention_mask"), torch.Tensor):
            return item["attention_mask"]
    return None
