"""Where the attention heads and FFN channels of a transformer live.

Two layouts are recognised by their structure (no import of transformers or torchvision):

- Hugging Face BERT-style layers (``BertModel``, and the ``BertModel`` inside a
  sentence-transformers model): ``attention.self.{query,key,value}``,
  ``attention.output.dense``, ``intermediate.dense``, ``output.dense``; head bookkeeping in
  ``attention.self.num_attention_heads`` / ``all_head_size``.
- torchvision ``VisionTransformer`` encoder blocks: ``self_attention`` (an
  ``nn.MultiheadAttention``, or the :class:`HeadAttention` it becomes once shrunk) and
  ``mlp`` = ``[Linear, act, Dropout, Linear, Dropout]``.

``transformer_layers(model)`` lists them in model order; a request names a layer by that
position (an int) or by its module name (``"encoder.layer.0"``,
``"encoder.layers.encoder_layer_0"``; inside a wrapper the wrapper's prefix may be left
out). Head ``h`` owns channels ``h*d .. h*d+d-1`` of the q/k/v outputs and of the output
projection's input (``d`` = head size).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from torch import nn

from .head_attention import HeadAttention

__all__ = ["TransformerLayer", "transformer_layers", "find_layer"]

LayerKey = Union[int, str]


def _is_linear(m) -> bool:
    return isinstance(m, nn.Linear)


@dataclass
class TransformerLayer:
    """One encoder layer: its name, its module and which layout (``"hf"`` or ``"torchvision"``)."""

    name: str
    block: nn.Module
    layout: str

    @property
    def attention(self) -> nn.Module:
        """The module holding the head count."""
        return self.block.attention.self if self.layout == "hf" else self.block.self_attention

    @property
    def num_heads(self) -> int:
        a = self.attention
        return a.num_attention_heads if self.layout == "hf" else a.num_heads

    @property
    def head_dim(self) -> int:
        a = self.attention
        return a.attention_head_size if self.layout == "hf" else a.head_dim

    @property
    def packed(self) -> bool:
        """True for a torchvision block whose attention is still an ``nn.MultiheadAttention``."""
        return isinstance(self.attention, nn.MultiheadAttention)

    def projections(self) -> Tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """(query, key, value, output) Linears; a packed MHA is split first (:meth:`split`)."""
        if self.layout == "hf":
            s = self.block.attention.self
            return s.query, s.key, s.value, self.block.attention.output.dense
        self.split()
        a = self.attention
        return a.q_proj, a.k_proj, a.v_proj, a.out_proj

    def ffn(self) -> Tuple[nn.Linear, nn.Linear]:
        """(expanding Linear, contracting Linear) of the feed-forward block."""
        if self.layout == "hf":
            return self.block.intermediate.dense, self.block.output.dense
        return self.block.mlp[0], self.block.mlp[3]

    @property
    def intermediate_size(self) -> int:
        return self.ffn()[0].out_features

    def split(self) -> None:
        """Replace a packed ``nn.MultiheadAttention`` by the equivalent :class:`HeadAttention`."""
        if self.packed:
            self.block.self_attention = HeadAttention.from_mha(self.block.self_attention)

    def set_num_heads(self, n: int) -> None:
        """Head bookkeeping after q/k/v lost heads (the head size never changes)."""
        a = self.attention
        if self.layout == "hf":
            a.num_attention_heads = n
            a.all_head_size = n * a.attention_head_size
        else:
            a.num_heads = n


def _layout(m: nn.Module) -> Optional[str]:
    att = getattr(m, "attention", None)
    s = getattr(att, "self", None) if att is not None else None
    if (s is not None and all(_is_linear(getattr(s, p, None)) for p in ("query", "key", "value"))
            and hasattr(s, "num_attention_heads") and _is_linear(getattr(getattr(att, "output", None), "dense", None))
            and _is_linear(getattr(getattr(m, "intermediate", None), "dense", None))
            and _is_linear(getattr(getattr(m, "output", None), "dense", None))):
        return "hf"
    mlp = getattr(m, "mlp", None)
    if (isinstance(getattr(m, "self_attention", None), (nn.MultiheadAttention, HeadAttention))
            and isinstance(mlp, nn.Sequential) and len(mlp) >= 4 and _is_linear(mlp[0]) and _is_linear(mlp[3])):
        return "torchvision"
    return None


def transformer_layers(model: nn.Module) -> List[TransformerLayer]:
    """The model's encoder layers, in module order (ValueError if it has none we know)."""
    layers = [TransformerLayer(n, m, lay) for n, m in model.named_modules() if (lay := _layout(m))]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no transformer layers found (supported: Hugging Face "
                         "BERT-style layers, torchvision VisionTransformer encoder blocks)")
    return layers


def find_layer(layers: List[TransformerLayer], key: LayerKey) -> int:
    """Position of the layer named by ``key`` (its index or module name); KeyError if none."""
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise KeyError(f"a layer is named by its index or module name, got {key!r}")
    if isinstance(key, int):
        if not 0 <= key < len(layers):
            raise KeyError(f"layer index {key} out of range: the model has {len(layers)} transformer layers")
        return key
    for i, layer in enumerate(layers):
        if layer.name == key:
            return i
    # A name inside a wrapper may drop the wrapper's prefix ("encoder.layer.0" for
    # "0.model.encoder.layer.0" in a sentence-transformers model) if that is unambiguous.
    tails = [i for i, layer in enumerate(layers) if layer.name.endswith("." + key)]
    if len(tails) == 1:
        return tails[0]
    raise KeyError(f"no transformer layer named {key!r}; layers: {[layer.name for layer in layers]}")
