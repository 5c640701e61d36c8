"""Knowledge distillation from a teacher's logits (Hinton et al. 2015), as a ``loss_fn`` for
``fit``: ``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    kd = Distillation(dense_model, small_model, temperature=4.0, alpha=0.5)
    fit(small_model, train, test, loss_fn=kd, ...)
    kd.close()

``fit`` calls ``loss_fn(outputs, labels)``; the student's inputs are captured by a forward
pre-hook, the teacher runs on them in eval mode without gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Distillation:
    def __init__(self, teacher: nn.Module, student: nn.Module, temperature: float = 4.0, alpha: float = 0.5):
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation needs temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
        self.teacher, self.temperature, self.alpha = teacher.eval(), float(temperature), float(alpha)
        self._x = None
        self._handle = student.register_forward_pre_hook(self._capture)

    def _capture(self, module, args):
        self._x = args[0]

    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(outputs, labels)
        if self.alpha == 0.0 or self._x is None:
            return ce
        with torch.no_grad():
            t = self.teacher(self._x)
        T = self.temperature
        kd = F.kl_div(F.log_softmax(outputs / T, dim=1), F.log_softmax(t / T, dim=1), log_target=True,
                      reduction="batchmean") * T * T
        return self.alpha * kd + (1 - self.alpha) * ce

    def close(self) -> None:
        self._handle.remove()
