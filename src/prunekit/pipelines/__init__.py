"""Multi-stage procedures built on the core and the trainer (fine-tune, IMP, scratch, ...).

Importing this package registers every built-in pipeline and baseline (:mod:`.builtin`).
"""
from .finetune import EnforceMask, finetune
from .registry import BASELINES, PIPELINES  # noqa: F401
from .results import FinishedRun, PipelineResult, RunContext  # noqa: F401
from .imp import PruneResult, imp, train_ticket  # noqa: F401  (the function shadows the module name)
from .gradual import gmp  # noqa: F401
from .dense_equivalent import dense_equivalent  # noqa: F401  (the function shadows the module name)
from . import builtin  # noqa: F401  (registers the built-in pipelines and baselines)

__all__ = ["EnforceMask", "finetune"]
