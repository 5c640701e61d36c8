"""Export for fast CPU inference: CSR-sparse modules for unstructured pruning
(``sparse``), thin folders with a ``torch.export`` program for structured pruning
(``thin``), 2:4 weights as torch's semi-structured sparse tensors on Ampere+ GPUs
(``semi_structured``), and the measurements behind ``prunekit bench`` (``bench_model``).

    import prunekit as pk
    fast = pk.export.sparse(pruned, example_input)       # SparseLinear where it measurably wins
    pk.export.decisions(fast)                            # per layer: csr or dense, and why
    pk.export.thin(shrunk, "out/thin", model_name="resnet20", model_kwargs={...},
                   structure=pk.structured.load_plan("runs/r20"))
    rows = pk.export.bench_model("runs/r20")             # latency, throughput, sizes per form

Layer: above ``artifacts`` (``bench_model`` loads model files with ``artifacts.load_model``;
``thin`` writes them), ``structured`` (shrink plans) and ``models``; below ``pipelines``.
"""
from .bench import bench_model, format_table
from .sparse import SparseConv2d, SparseLinear, break_even, decisions, sparse
from .semi_structured import to_semi_structured
from .thin import ThinExport, channel_spec, thin

__all__ = ["sparse", "SparseLinear", "SparseConv2d", "break_even", "decisions", "thin", "ThinExport",
           "channel_spec", "bench_model", "format_table", "to_semi_structured"]
