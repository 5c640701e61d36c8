"""Imports every built-in pipeline and baseline module, which registers them.

``prunekit.pipelines`` imports this module, so the registries are complete whichever
pipeline module is imported first (registration never depends on import order).
A new pipeline module gets one line here.
"""
from . import dense  # noqa: F401  (pipeline dense; baseline dense)
from . import oneshot  # noqa: F401  (pipeline oneshot; baseline random_same_allocation)
from . import imp_pipelines  # noqa: F401  (pipelines imp, gmp; baselines lottery, random_reinit)
from . import structured_pipelines  # noqa: F401  (pipelines structured, slimming, sss)
from . import scratch  # noqa: F401  (baselines scratch_e, scratch_b, structured_lottery, uniform_channels)
from . import threshold_pipelines  # noqa: F401  (pipelines ste_fixed, sparsity_loss, ltp, dense_equivalent; baseline dense_equivalent)
from . import structured_budget  # noqa: F401  (pipeline structured_budget: every channel method at a FLOPs target)
from . import torch_prune  # noqa: F401  (pipeline torch_prune: torch.nn.utils.prune global / per-layer L1 + fine-tuning)
