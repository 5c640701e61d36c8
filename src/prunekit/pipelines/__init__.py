"""Multi-stage procedures built on the core and the trainer (fine-tune, IMP, scratch, ...)."""
from .finetune import EnforceMask, finetune

__all__ = ["EnforceMask", "finetune"]
