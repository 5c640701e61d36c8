"""Multi-stage procedures built on the core and the trainer (fine-tune, IMP, scratch, ...)."""
from .finetune import EnforceMask, finetune
from .registry import BASELINES, PIPELINES, FinishedRun, PipelineResult, RunContext  # noqa: F401
from .imp import PruneResult, imp, train_ticket  # noqa: F401  (the function shadows the module name)
from .gradual import gmp  # noqa: F401
from . import imp_pipelines  # noqa: F401,E402  (registers pipelines imp, gmp; baselines lottery, random_reinit)
from . import structured_pipelines  # noqa: F401,E402  (registers pipelines structured, slimming)
from . import scratch  # noqa: F401,E402  (registers baselines scratch_e, scratch_b, structured_lottery, uniform_channels)

__all__ = ["EnforceMask", "finetune"]
from .dense_equivalent import dense_equivalent  # noqa: F401,E402  (the function shadows the module name)
from . import threshold_pipelines  # noqa: F401,E402  (registers ste_fixed, sparsity_loss, ltp, dense_equivalent)
