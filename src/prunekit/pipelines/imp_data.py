"""What IMP trains on: ``(train, test)`` loaders from a dataset name or a pair, and a loader
whose epoch numbering continues across stages.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

from .. import data as datasets


class ContinuedLoader:
    """A training loader whose epoch numbering continues after ``offset`` epochs, so each IMP
    phase draws new batch orders instead of replaying the dense run's first epochs."""

    def __init__(self, loader: Iterable, offset: int):
        self.loader, self.offset = loader, int(offset)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        return iter(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.offset + epoch)


def resolve_data(data: Any, seed: int) -> Tuple[Iterable, Optional[Iterable]]:
    """``(train, test)`` from a pair of loaders or a dataset name (batch size 128)."""
    if isinstance(data, str):
        train, test, _ = datasets.loaders(data, batch_size=128, seed=seed)
        return train, test
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return data[0], data[1]
    raise ValueError(f"data must be a dataset name or a (train_loader, test_loader) pair, got {type(data).__name__}")
