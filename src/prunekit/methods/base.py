"""The ``Method`` protocol: pruning that happens during training, in anyone's loop.

    method = prunekit.methods.get("gmp")(final_sparsity=0.9, start_step=0, end_step=1000)
    method.attach(model, optimizer)          # before building LR schedulers
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + method.penalty()
        optimizer.zero_grad(); loss.backward(); optimizer.step(); method.step()
    mask = method.finalize()                 # plain model, exact zeros, dense state_dict keys

Each method declares its parameters once, as a dataclass ``Params`` (fields made with
:func:`prunekit.params.param`: checks, docs, examples). ``Method.from_params(p, **runtime)``
builds the method from it; experiment pipelines subclass it (adding only their own fields such
as ``finetune_epochs``) and ``prunekit train-sparse`` makes its flags from it. Adding a method
is its module (with ``@METHODS.register``) plus its import line in ``methods/__init__.py``.

``attach`` adds the method's own trainable parameters (thresholds, block scales) to the
user's optimizer as a new param group with its own learning rate and no weight decay; the
weight used in the forward pass is computed by a forward pre-hook, so state_dict keys stay the
dense model's. ``step`` takes no argument: the method counts its own steps and keeps the count
in its state_dict. Inside ``prunekit.training.fit``, :class:`MethodCallback` does the wiring.

Under torchrun (:mod:`prunekit.distributed`) every subclass's ``finalize`` is wrapped (in
``Method.__init_subclass__``) so that the mask it returns is rank 0's on every rank, and so
are the finalised weights: thresholds are computed from weights the ranks keep identical by
averaging gradients, so this is a safety net against the last-bit differences that would
otherwise let two ranks cut a weight sitting exactly at a threshold differently.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from .. import distributed
from ..core.mask import Mask
from ..registry import Registry
from ..training.callbacks import Callback, TrainState

METHODS: Registry = Registry("method")


def _rank0_result(finalize):
    """Wrap a ``finalize`` so that its mask and the model's weights are rank 0's on every rank
    (a no-op in one process)."""
    @functools.wraps(finalize)
    def wrapped(self, *args, **kwargs):
        mask = finalize(self, *args, **kwargs)
        if distributed.active() and self.model is not None:
            if mask is not None:
                distributed.broadcast_(mask.values())
            distributed.broadcast_(list(self.model.parameters()) + list(self.model.buffers()))
            if mask is not None:
                mask.apply(self.model)
        return mask

    wrapped._rank0_wrapped = True
    return wrapped


class Method:
    """Base class with the default behaviour of every hook (no penalty, nothing to attach)."""

    @dataclass(kw_only=True)
    class Params:
        """The method's parameters (none here); subclasses declare their own ``Params``."""

    @classmethod
    def from_params(cls, params: Any, **runtime: Any) -> "Method":
        """Build from a ``Params`` instance (or a pipeline's subclass of it: only this method's
        fields are read). ``runtime`` adds constructor arguments that are not parameters of an
        experiment (``trail_dir``, ``input_shape``, ``seed``, ...)."""
        values = {f.name: getattr(params, f.name) for f in dataclasses.fields(cls.Params) if f.init}
        return cls(**values, **runtime)

    @classmethod
    def requested_sparsity(cls, params: Any) -> Optional[float]:
        """The weight sparsity ``params`` asks for (None: the method finds its own)."""
        return None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("finalize")
        if own is not None and not getattr(own, "_rank0_wrapped", False):
            cls.finalize = _rank0_result(own)

    def __init__(self) -> None:
        self.model: Optional[nn.Module] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.steps = 0
        # state loaded before attach(); subclasses apply it with _restore() once attached
        self._pending: Optional[Dict[str, Any]] = None

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> "Method":
        """Bind to ``model`` and ``optimizer``. Subclasses call ``super().attach`` first."""
        self.model, self.optimizer = model, optimizer
        return self

    def penalty(self) -> torch.Tensor:
        """The term to add to the task loss this step (0 when the method has none)."""
        device = next(self.model.parameters()).device if self.model is not None else "cpu"
        return torch.zeros((), device=device)

    def step(self) -> None:
        """Call after ``optimizer.step()``; counts the step."""
        self.steps += 1

    def finalize(self) -> Mask:
        """Hard-prune, remove every hook, and return the Mask of the plain model."""
        raise NotImplementedError

    def metrics(self) -> Dict[str, Any]:
        """Numbers worth logging each epoch (e.g. achieved sparsity)."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the state; before ``attach`` (a plain loop may load first) it is kept and
        applied by the subclass's ``attach`` through ``_restore``."""
        self.steps = int(state.get("steps", 0))
        if self.model is None:
            self._pending = dict(state)
            return
        self._restore(state)

    def _restore(self, state: Dict[str, Any]) -> None:
        """Apply a state_dict to an attached method (subclasses restore their own tensors)."""
        self._pending = None
        self.steps = int(state.get("steps", 0))

    def _require_attached(self) -> None:
        if self.model is None or self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached: call method.attach(model, optimizer) first")


class MethodCallback(Callback):
    """Runs a :class:`Method` inside ``prunekit.training.fit``."""

    def __init__(self, method: Method):
        self.method = method

    def on_fit_start(self, state: TrainState) -> None:
        if self.method.model is None:
            self.method.attach(state.model, state.optimizer)

    def penalty(self, state: TrainState) -> Optional[torch.Tensor]:
        return self.method.penalty()

    def on_step_end(self, state: TrainState) -> None:
        self.method.step()

    def on_epoch_end(self, state: TrainState, metrics: Dict[str, Any]) -> None:
        metrics.update(self.method.metrics())

    def state_dict(self) -> Dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.method.load_state_dict(state)


def get(name: str):
    """The Method class registered under ``name`` (the registry's entry; ``build`` makes one)."""
    return METHODS.get(name)


def build(name: str, **params: Any) -> Method:
    """A new Method ``name`` with these parameters: ``build("gmp", final_sparsity=0.9, ...)``
    is ``get("gmp")(final_sparsity=0.9, ...)``."""
    return METHODS.get(name)(**params)


def names():
    return METHODS.names()
