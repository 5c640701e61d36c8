"""Export for fast CPU inference: CSR-sparse modules for unstructured pruning
(``sparse``), thin folders with a ``torch.export`` program for structured pruning
(``thin``), and the measurements behind ``prunekit bench`` (``bench_model``).

    import prunekit as pk
    fast = pk.export.sparse(pruned, example_input)       # SparseLinear where it measurably wins
    pk.export.decisions(fast)                            # per layer: csr or dense, and why
    pk.export.thin(shrunk, "out/thin", model_name="resnet20", model_kwargs={...},
                   structure=pk.structured.load_plan("runs/r20"))
    rows = pk.export.bench_model("runs/r20")             # latency, throughput, sizes per form

Imports only torch (torch-pruning is needed only when a shrink plan is re-applied).
"""
from .bench import bench_model, format_table
from .sparse import SparseConv2d, SparseLinear, break_even, decisions, sparse
from .thin import ThinExport, channel_spec, thin

__all__ = ["sparse", "SparseLinear", "SparseConv2d", "break_even", "decisions", "thin", "ThinExport",
           "channel_spec", "bench_model", "format_table"]
