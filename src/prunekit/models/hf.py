"""Hugging Face models from a local folder: ``pk.models.get("hf:PATH")``.

``PATH`` is a folder written by ``save_pretrained`` (transformers) or ``SentenceTransformer.save``
(it has ``modules.json``). transformers folders are loaded with the class named in
``config.json``'s ``architectures`` (so ``BertForMaskedLM`` keeps its head; ``AutoModel``
otherwise), sentence-transformers folders as a ``SentenceTransformer``; always from local
files only. ``save(model, folder)`` writes a folder the same libraries load back
(``AutoModel.from_pretrained`` / ``SentenceTransformer``), tokenizer included.

Token inputs: ``example_input(model, batch_size, seq_len)`` is the tokenizer's output for a
dummy text of exactly ``seq_len`` tokens when the model has a tokenizer, else random
``input_ids`` (and an all-ones ``attention_mask``) of that length. transformers models take it
as keyword arguments (a dict); a SentenceTransformer takes one features dict, so its example
is the 1-tuple ``(features,)`` (positional), the convention of ``core.flops.count_flops`` and
``export.sparse``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import torch
from torch import nn

from .optional import require

PREFIX = "hf:"
#: Files that mean a folder holds a tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model")
_TEXT = "the quick brown fox jumps over the lazy dog "


def _folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"hf:{path}: folder {folder} does not exist (give a folder written by "
                                "save_pretrained or SentenceTransformer.save)")
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise ValueError(f"hf:{path}: {folder} has neither config.json (transformers) nor modules.json "
                         "(sentence-transformers); give a folder written by save_pretrained or SentenceTransformer.save")
    return folder


def is_sentence_transformer(model: nn.Module) -> bool:
    return type(model).__module__.startswith("sentence_transformers")


def is_hf(model: nn.Module) -> bool:
    """A transformers or sentence-transformers model (checked without importing either)."""
    return is_sentence_transformer(model) or type(model).__module__.startswith("transformers")


def build(path: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
          width: float = 1.0, **kwargs: Any) -> nn.Module:
    """Load the model in folder ``path`` (see the module docstring), in eval mode on the CPU."""
    if num_classes is not None or in_channels is not None or width != 1.0 or kwargs:
        raise ValueError(f"hf:{path}: a pretrained folder takes no model arguments (got num_classes, "
                         "in_channels, width or others); change the folder's config instead")
    folder = _folder(path)
    if (folder / "modules.json").is_file():
        st = require("sentence-transformers", "SentenceTransformer")
        model = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    else:
        transformers = require("transformers", "PreTrainedModel")
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
        cls = getattr(transformers, architectures[0], None) if architectures else None
        model = (cls or transformers.AutoModel).from_pretrained(str(folder), local_files_only=True)
    model.prunekit_source = str(folder)  # where its tokenizer is, for save() and example_input()
    return model.eval()


def tokenizer(model: nn.Module) -> Any:
    """The model's tokenizer, None when its folder has none."""
    if is_sentence_transformer(model):
        return getattr(model, "tokenizer", None)
    source = getattr(model, "prunekit_source", None)
    if source is None or not any((Path(source) / f).is_file() for f in _TOKENIZER_FILES):
        return None
    transformers = require("transformers")
    return transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)


def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None and is_sentence_transformer(model):
        config = getattr(getattr(model[0], "auto_model", None), "config", None)
    return config


def _vocab_size(model: nn.Module) -> int:
    return int(getattr(_config(model), "vocab_size", 1000) or 1000)


def example_input(model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> Any:
    """``batch_size`` sequences of exactly ``seq_len`` tokens, in the form the model is called
    with (see the module docstring); ``seq_len`` is capped at the model's
    ``max_position_embeddings`` (longer inputs would not run)."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be positive integers, got {seq_len}, {batch_size}")
    seq_len = min(seq_len, int(getattr(_config(model), "max_position_embeddings", seq_len) or seq_len))
    tok = tokenizer(model)
    if tok is not None:
        features = dict(tok([_TEXT * seq_len] * batch_size, padding="max_length", truncation=True,
                            max_length=seq_len, return_tensors="pt"))
    else:
        # Token 0 is often padding: draw from 1.. so every position is a real token.
        ids = torch.randint(1, max(2, _vocab_size(model)), (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
        features = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    features = {k: v.to(device) for k, v in features.items()}
    return (features,) if is_sentence_transformer(model) else features


def text_batches(model: nn.Module, texts: List[str], batch_size: int = 16, max_length: int = 128) -> List[Any]:
    """Calibration batches of ``texts`` for ``model``, tokenized by its folder's tokenizer
    (padded per batch, truncated at ``max_length``), in the form the model is called with:
    dicts of keyword arguments, or 1-tuples for sentence-transformers."""
    tok = tokenizer(model)
    if tok is None:
        raise ValueError("calibration text needs the model folder's tokenizer, and this model has none")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("the calibration text has no non-empty line")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = []
    for start in range(0, len(texts), batch_size):
        features = dict(tok(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt"))
        features = {k: v.to(device) for k, v in features.items()}
        batches.append((features,) if is_sentence_transformer(model) else features)
    return batches


def save(model: nn.Module, folder) -> Path:
    """Write ``model`` where ``AutoModel.from_pretrained`` / ``SentenceTransformer`` load it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_sentence_transformer(model):
        model.save(str(folder))
        return folder
    model.save_pretrained(str(folder))
    tok = tokenizer(model)
    if tok is not None:
        tok.save_pretrained(str(folder))
    return folder
