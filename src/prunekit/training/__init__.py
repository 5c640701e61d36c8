"""Training: ``fit()`` with callbacks, optimizers, per-iteration lr schedules, checkpoints.

    from prunekit.training import fit
    history = fit(model, train_loader, test_loader, epochs=30, schedule="cosine",
                  checkpoint_dir="runs/dense", seed=0)
    history.best("test_top1")

Modules: ``loop`` (fit), ``schedules`` (Schedule, make_schedule), ``optim``
(make_optimizer), ``checkpoint`` (atomic save, safe load), ``health`` (DivergedError, the
collapse warning), ``callbacks`` (Callback,
TrainState), ``metrics`` (evaluate, History).
"""
from prunekit.training.callbacks import Callback, TrainState
from prunekit.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from prunekit.training.health import CollapseWarning, DivergedError
from prunekit.training.loop import fit
from prunekit.training.metrics import History, evaluate
from prunekit.training.optim import OPTIMIZER_NAMES, make_optimizer
from prunekit.training.schedules import (SCHEDULE_NAMES, Schedule, make_schedule,
                                         schedule_from_recipe)

__all__ = [
    "fit", "DivergedError", "CollapseWarning", "evaluate", "Callback", "TrainState", "History",
    "make_optimizer", "OPTIMIZER_NAMES",
    "make_schedule", "Schedule", "SCHEDULE_NAMES", "schedule_from_recipe",
    "save_checkpoint", "load_checkpoint", "CheckpointError",
]
