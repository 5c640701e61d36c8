"""Stage persistence for IMP-like pipelines: each stage (``dense``, ``phase_01``, ...) lives in
its own subfolder holding ``model.pt`` (written last: it marks the stage finished),
``mask.pt``, ``metrics.json`` and fit's epoch checkpoints, so a rerun skips finished stages
and resumes the unfinished one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from torch import nn

from .. import distributed
from ..artifacts import read_model_file, save_model
from ..core.mask import Mask
from ..io import atomic_write_json


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temp file + rename), on rank 0 only."""
    if not distributed.is_main():  # under torchrun rank 0 writes for every rank
        return
    atomic_write_json(path, obj, indent=2, default=str)


class Stage:
    """One stage's subfolder: ``model.pt`` marks it finished; ``checkpoints/`` holds fit's."""

    def __init__(self, folder: Optional[Path], name: str):
        self.path = None if folder is None else folder / name

    @property
    def checkpoints(self) -> Optional[Path]:
        return None if self.path is None else self.path / "checkpoints"

    def done(self) -> bool:
        return self.path is not None and (self.path / "model.pt").is_file()

    def load(self, model: nn.Module) -> Dict[str, Any]:
        data = read_model_file(self.path / "model.pt")
        model.load_state_dict(data["state_dict"])
        return data

    def save(self, model: nn.Module, mask: Optional[Mask], row: Dict[str, Any], model_info: Mapping[str, Any],
             recipe: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None,
             history: Sequence[Mapping[str, Any]] = ()) -> None:
        if self.path is None:
            return
        if distributed.is_main():  # under torchrun: rank 0 writes, every rank waits for it
            self.path.mkdir(parents=True, exist_ok=True)
            if mask is not None:
                mask.save(self.path / "mask.pt")
            write_json(self.path / "metrics.json", row)
            metrics = {k: v for k, v in row.items() if isinstance(v, (int, float, str, bool)) or v is None}
            save_model(self.path / "model.pt", model, model_name=model_info.get("name") or type(model).__name__,
                       model_kwargs=model_info.get("kwargs"), dataset=model_info.get("dataset"), mask=mask,
                       metrics=metrics, recipe={**(recipe or {}), **(extra or {})},
                       history=[dict(r) for r in history])
        distributed.barrier()
