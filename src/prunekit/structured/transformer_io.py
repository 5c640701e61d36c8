"""Reloading shrunk Hugging Face and sentence-transformers models.

Saving needs nothing new: ``model.save_pretrained(folder)`` (or a SentenceTransformer's
``save``) writes the shrunk weights, and the config carries what ``shrink_transformer``
removed (``pruned_heads`` / ``pruned_intermediate``: {layer: [original indices]}). But
``from_pretrained`` builds every layer at the config's full ``num_attention_heads`` /
``intermediate_size`` and then refuses the smaller weights. So the loaders here build the
dense skeleton from the config, re-apply the recorded removals with ``shrink_transformer``
(which gives the same shapes) and then load the saved weights strictly.

A shrunk torchvision ViT (or any shrunk model saved as a ``state_dict``) is rebuilt the same
way by hand: build the original architecture, ``shrink_transformer`` it with the same
request, ``load_state_dict``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .transformer_shrink import shrink_transformer

__all__ = ["recorded_removals", "load_pretrained_shrunk", "load_sentence_transformer_shrunk"]


def recorded_removals(config) -> Tuple[Dict[str, List[int]], Dict[str, List[int]]]:
    """(heads, ffn) removed from an HF model, as {"encoder.layer.N": [original indices]}."""
    def by_name(record):
        return {f"encoder.layer.{int(k)}": [int(i) for i in v] for k, v in (record or {}).items()}

    return by_name(getattr(config, "pruned_heads", None)), by_name(getattr(config, "pruned_intermediate", None))


def _saved_weights(folder: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():  # sharded
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: Dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_file(str(folder / name)))
        return state
    single = folder / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{folder}: no model.safetensors (save the shrunk model with save_pretrained)")
    return load_file(str(single))


def load_pretrained_shrunk(folder, model_class: Optional[type] = None) -> nn.Module:
    """A shrunk HF model saved with ``save_pretrained``: dense skeleton from the config
    (``model_class(config)``, default ``AutoModel``), the recorded heads and FFN channels
    removed, the saved weights loaded (strict). Returned in eval mode."""
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder))
    heads, ffn = recorded_removals(config)
    config.pruned_heads, config.pruned_intermediate = {}, {}  # shrink_transformer records them again
    model = model_class(config) if model_class is not None else AutoModel.from_config(config)
    model.eval()
    if heads or ffn:
        ids = torch.zeros(1, 4, dtype=torch.long)  # any tokens: only traced, never compared
        shrink_transformer(model, {"input_ids": ids}, heads=heads, ffn=ffn, inplace=True)
    model.load_state_dict(_saved_weights(folder), strict=True)
    return model


def load_sentence_transformer_shrunk(folder, device: str = "cpu") -> nn.Module:
    """A shrunk SentenceTransformer saved with ``save``: loaded as usual with its smaller
    weights set aside, then each Transformer module's model replaced by
    :func:`load_pretrained_shrunk` of that module's folder."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the skeleton's size-mismatch report is expected
    try:
        st = SentenceTransformer(str(folder), device=device, model_kwargs={"ignore_mismatched_sizes": True})
    finally:
        hf_logging.set_verbosity(verbosity)
    for entry in json.loads((folder / "modules.json").read_text()):
        module = st[int(entry["idx"])]
        inner = getattr(module, "model", None)
        if isinstance(inner, nn.Module) and hasattr(inner, "config"):
            module.model = load_pretrained_shrunk(folder / entry["path"], model_class=type(inner)).to(device)
    return st.eval()
