"""Structured pruning: channel scores, channel selection and ``shrink()``, the physical removal
of channels (torch-pruning's dependency graph does the surgery). SPEC section 5, seed 001.

    import prunekit as pk
    model = pk.models.get("resnet56")
    x = torch.randn(1, 3, 32, 32)
    plan = pk.structured.by_ratios(model, pk.structured.predefined_ratios("resnet56-b", model))
    small = pk.structured.shrink(model, x, plan)        # fewer channels, runs faster
    pk.structured.compare(model, small, (3, 32, 32))    # latency at batch 1 and 64, FLOPs ratio
    fast = pk.structured.prepare_for_inference(small, x).module   # BN folded, faster memory format

Channel scores (``CHANNEL_SCORES``): l1_filter, bn_scale, random. Selections: per-layer
ratios (``by_ratios``, the predefined ``PREDEFINED`` configurations, ``uniform_ratios``), one
global threshold (``global_fraction``, network slimming), ``uniform_for_flops``, He et al.'s
FLOPs targets VGG-16-5x / ResNet-50-2x (``flops_target_ratios``); data-driven
ThiNet / LASSO with least-squares refit of the next layer (``prune_with_reconstruction``).

Transformers (Hugging Face BERT / sentence-transformers, torchvision ViT): whole attention
heads and FFN channels removed by ``shrink_transformer(model, x, heads={layer: [h]},
ffn={layer: [c]})``; ``mask_transformer`` zeroes the same weights in the dense model.
Head / FFN-channel importance (``head_importance``, ``ffn_importance``: weight norms or
calibration activations); ``select_for_flops`` / ``shrink_for_flops`` pick them for a FLOPs
budget and report requested vs achieved.

At a budget: ``prune_to_budget(model, x, flops_ratio=0.5, method=...)`` takes every channel
method (``channel_methods()``) to a FLOPs or parameter target within one channel step, with
per-layer floors, streamed reconstruction and a bounded memory (structured/budget.py).
"""
from .budget import RECONSTRUCTIONS, BudgetResult, calibration_images, channel_methods, find_consumer, layer_floor, prune_to_budget
from .configs import PREDEFINED, kept_counts, predefined_ratios
from .inference import choose_memory_format, fold_batchnorm, foldable_pairs, prepare_for_inference, to_memory_format
from .latency import compare, latency
from .plan import apply_plan, load_plan, load_shrunk, save_plan
from .reconstruct import prune_with_reconstruction, reconstruction_error, select_channels
from .scores import CHANNEL_SCORES
from .select import by_ratios, flops_target_ratios, global_fraction, per_layer, uniform_for_flops, uniform_ratios
from .shrink import out_channels, prunable_layers, shrink, zero_channels
from .head_attention import HeadAttention
from .transformer_layers import transformer_layers
from .transformer_shrink import mask_transformer, shrink_transformer
from .transformer_scores import FFN_SCORES, HEAD_SCORES, ffn_importance, head_importance
from .transformer_io import load_pretrained_shrunk, load_sentence_transformer_shrunk, recorded_removals
from .transformer_budget import TransformerPlan, select_for_flops, shrink_for_flops, unit_costs

__all__ = ["shrink", "zero_channels", "prunable_layers", "out_channels", "CHANNEL_SCORES", "PREDEFINED",
           "predefined_ratios", "kept_counts", "by_ratios", "per_layer", "global_fraction", "uniform_ratios",
           "uniform_for_flops", "flops_target_ratios", "latency", "compare",
           # inference form: BN folded, memory format measured
           "fold_batchnorm", "foldable_pairs", "choose_memory_format", "to_memory_format", "prepare_for_inference",
           "apply_plan", "load_plan", "load_shrunk", "save_plan",
           "prune_with_reconstruction", "reconstruction_error", "select_channels",
           # transformers: heads and FFN channels
           "shrink_transformer", "mask_transformer", "transformer_layers", "HeadAttention",
           "head_importance", "ffn_importance", "HEAD_SCORES", "FFN_SCORES", "select_for_flops",
           "shrink_for_flops", "TransformerPlan", "unit_costs", "load_pretrained_shrunk",
           "load_sentence_transformer_shrunk", "recorded_removals",
           # channel methods at a budget
           "prune_to_budget", "BudgetResult", "RECONSTRUCTIONS", "calibration_images", "channel_methods",
           "find_consumer", "layer_floor"]
