"""Multi-stage procedures built on the core and the trainer (fine-tune, IMP, scratch, ...)."""
from .finetune import EnforceMask, finetune
from .registry import BASELINES, PIPELINES, FinishedRun, PipelineResult, RunContext  # noqa: F401

__all__ = ["EnforceMask", "finetune"]
