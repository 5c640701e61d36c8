"""Mixed precision for ``fit``: autocast, ``GradScaler`` and which steps it skipped.

- ``fp32``: nothing changes (no autocast, no scaler);
- ``bf16``: the forward pass and the loss run under ``torch.autocast(device, bfloat16)``;
  bf16 has fp32's exponent range, so no loss scaling is needed;
- ``fp16``: autocast to float16 plus ``torch.amp.GradScaler(device)``: the loss is scaled
  before ``backward``, the gradients are unscaled before the optimizer sees them, and a step
  whose gradients hold an inf/NaN is *skipped* (the optimizer's ``step`` is not called) and
  the scale lowered.

Why masks stay exact: the weights, gradients and optimizer state stay fp32 (autocast only
casts inside the forward pass), ``MaskEnforcer``'s gradient mask runs in the optimizer's
step pre-hook, i.e. after ``unscale_``, and a skipped step calls neither the optimizer nor
its hooks, so no momentum / Adam moment is created or moved for a pruned weight. The
method's ``step`` is still called on a skipped step (its step count, like the lr schedule,
counts iterations); ``TrainState.skipped`` says the update did not happen and
``TrainState.skipped_steps`` counts them (a history column when non-zero).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import torch

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """Autocast + optional GradScaler for one ``fit`` call on one device."""

    def __init__(self, precision: str, device: torch.device):
        if precision not in _DTYPES:
            raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(_DTYPES)}")
        self.precision = precision
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES[precision]
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(self.device_type) if precision == "fp16" else None)
        self._stepped = False
        self._hooked: Optional[torch.optim.Optimizer] = None
        self._handle = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """One optimizer step (through the scaler under fp16); False when it was skipped."""
        if self.scaler is None:
            optimizer.step()
            return True
        # A step post-hook tells whether the optimizer really stepped, without a device sync.
        # Registered on the first fp16 step (and again only if the optimizer changes).
        if self._hooked is not optimizer:
            self.close()
            self._handle = optimizer.register_step_post_hook(self._mark_stepped)
            self._hooked = optimizer
        self._stepped = False
        self.scaler.step(optimizer)
        self.scaler.update()
        return self._stepped

    def _mark_stepped(self, optimizer, args, kwargs) -> None:
        self._stepped = True

    def close(self) -> None:
        """Remove the step hook from the optimizer (``fit`` calls this when it ends)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._hooked = None, None

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
