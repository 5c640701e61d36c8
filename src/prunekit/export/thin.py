"""Thin export of a structured (shrunk) model: a folder anyone can load without prunekit.

A shrunk model (``prunekit.structured.shrink``) is a registry architecture with fewer channels,
so its ``state_dict`` alone does not say how to build it. ``thin(model, out_dir)`` writes:

- ``model.pt2``: a ``torch.export`` program of the model's *inference form* with a dynamic
  batch dimension; ``torch.export.load("model.pt2").module()`` runs it with plain PyTorch (no
  prunekit, no TorchScript, which is deprecated). The inference form
  (``structured.prepare_for_inference``) is the eval-mode model with BatchNorm folded into the
  convolutions (``fold_bn``) and its weights in the faster memory format (``memory_format``:
  ``"auto"`` measures contiguous vs channels_last on ``example_input``, so give a batch of the
  size you will run); the outputs are the eval-mode model's to float rounding;
- ``model_aoti.pt2`` (``aoti=True``): the same program compiled ahead of time by
  AOTInductor (``torch._inductor.aoti_compile_and_package``). It runs without the Python
  interpreter between operators, which is what makes the exported program at least as fast as
  the eager model at batch 1 (``.module()`` of ``model.pt2`` runs one Python call per
  operator, slower than eager there). ``aoti_freeze=True`` turns on inductor's freezing:
  weights pre-packed for oneDNN at the traced batch size and ReLU / residual adds fused into
  the convolutions, 1.3-1.8x faster than eager at batch 8-64 on ResNets but slower than eager
  at batch 1 on the benchmark machine (``benchmarks/results/thin.md``), hence off by default. Load it with ``torch._inductor.aoti_load_package``
  (plain PyTorch). Compiling needs a C++ compiler and takes about a minute on 2 cores; the
  kernels use the torch thread count of the compiling process;
- ``state_dict.pt``: the plain ``state_dict`` of the (unfolded, trainable) model
  (``torch.load(..., weights_only=True)``);
- ``channels.json``: the architecture per layer (type, in/out channels or features, kernel,
  stride, padding, groups, bias; BatchNorm sizes), enough to rebuild it by hand;
- with ``model_name`` (and ``structure``, the contents of a ``structure.json``): ``model.pt``
  in the ``prunekit.model/1`` format plus ``structure.json``, which
  ``prunekit.artifacts.load_model(out_dir)`` (and so ``prunekit eval``) rebuilds.
"""
from __future__ import annotations

import contextlib
import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..io import atomic_path, atomic_torch_save, atomic_write_text
from .. import models
from ..artifacts import save_model
from ..structured.inference import Prepared, prepare_for_inference
from ..structured.plan import apply_structure, save_plan

__all__ = ["thin", "ThinExport", "channel_spec"]


@dataclass
class ThinExport:
    """What ``thin`` produced: the inference form of the model (eval mode, BN folded, memory
    format applied: what the program was traced from), its ``torch.export`` program, the
    per-layer channel spec (of the unfolded model), the files written (empty when no
    ``out_dir`` was given), what ``prepare_for_inference`` did (``prepared``: folded pairs,
    memory format and its measured seconds) and, with ``aoti=True``, the loaded
    AOTInductor model (``compiled``; its package is ``files["model_aoti.pt2"]`` or
    ``compiled_path``)."""

    module: nn.Module
    program: Any
    channels: Dict[str, dict]
    files: Dict[str, Path] = field(default_factory=dict)
    prepared: Optional[Prepared] = None
    compiled: Any = None
    compiled_path: Optional[str] = None


def channel_spec(model: nn.Module) -> Dict[str, dict]:
    """``{module name: sizes}`` of every Conv / Linear / BatchNorm layer, in forward order of
    definition: what a reader needs to rebuild the thin architecture without prunekit."""
    spec: Dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            spec[name] = {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                          "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                          "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                          "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
        elif isinstance(m, nn.Linear):
            spec[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            spec[name] = {"type": type(m).__name__, "num_features": m.num_features}
    return spec


def _example(model: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
    if example_input is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError("thin() needs example_input (the model has no .input_shape)")
        example_input = torch.randn(1, *shape)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example_input = example_input.to(device)
    # Batch 1 would be specialised (0/1 specialisation of torch.export): trace with batch 2.
    if example_input.shape[0] == 1:
        example_input = torch.cat([example_input, example_input])
    return example_input


def export_program(model: nn.Module, example_input: torch.Tensor):
    """``torch.export.export`` of ``model`` (eval mode) with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    return torch.export.export(model.eval(), (example_input,), dynamic_shapes=({0: batch},))


def compile_program(program, package_path=None, freeze: bool = False) -> str:
    """AOTInductor package of ``program``; returns its path. ``freeze``: inductor's freezing
    (weights constant, pre-packed for oneDNN for the traced batch size, ReLU / residual adds
    fused into the convolutions). Raises ValueError when compiling fails (no C++ compiler, an
    operator AOTInductor cannot lower)."""
    try:
        # torch._inductor is imported lazily by torch itself on first attribute access. Inductor
        # freezes only when gradients are off at compile time (and freezing is on).
        with torch.no_grad() if freeze else contextlib.nullcontext():
            return torch._inductor.aoti_compile_and_package(program, package_path=package_path,
                                                            inductor_configs={"freezing": freeze})
    except Exception as err:  # inductor raises many types (CalledProcessError, BackendCompilerFailed, ...)
        raise ValueError(f"aoti=True needs AOTInductor to compile the program (a C++ compiler on PATH): "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def thin(model: nn.Module, out_dir=None, example_input: Optional[torch.Tensor] = None, *,
         model_name: Optional[str] = None, model_kwargs: Optional[dict] = None,
         structure: Optional[dict] = None, dataset: Optional[str] = None,
         metrics: Optional[dict] = None, fold_bn: bool = True, memory_format: str = "auto",
         aoti: bool = False, aoti_freeze: bool = False) -> ThinExport:
    """Export a shrunk model (see the module docstring for the files); returns a ``ThinExport``.

    ``model`` is copied and put in eval mode; ``example_input`` (default: a random batch of 1
    of ``model.input_shape``) traces the program and, with ``memory_format="auto"``, is the
    batch the memory format is measured on (``"contiguous"`` / ``"channels_last"`` skip the
    measurement). ``fold_bn=False`` keeps the BatchNorms in the program. ``aoti`` also
    compiles it with AOTInductor (``model_aoti.pt2``; ``aoti_freeze``: with freezing).
    ``model.pt`` is written when ``model_name`` is given: the registry name and kwargs of the
    *original* architecture and the ``structure`` (a ``structure.json`` dict with the shrink
    ``plan``) that rebuilds the thin one.
    """
    module = copy.deepcopy(model).eval()
    if example_input is None:
        shape = getattr(module, "input_shape", None)
        if shape is None:
            raise ValueError("thin() needs example_input (the model has no .input_shape)")
        example_input = torch.randn(1, *shape)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and model_name is not None:
        structure = dict(structure or {"plan": {}})
        # Check now that the structure really rebuilds this architecture: a wrong plan would
        # only fail later, at load time, far from its cause.
        rebuilt = apply_structure(models.get(model_name, **dict(model_kwargs or {})), structure)
        want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
        if want != got:
            raise ValueError(f"structure does not rebuild this model from {model_name} {model_kwargs}: "
                             "pass the structure.json contents of the shrink that produced it")
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    prepared = prepare_for_inference(module, example_input.to(device), fold=fold_bn, memory_format=memory_format)
    program = export_program(prepared.module, _example(module, example_input))
    result = ThinExport(module=prepared.module, program=program, channels=channel_spec(module), prepared=prepared)
    files = result.files
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files["model.pt2"] = out / "model.pt2"
        with atomic_path(files["model.pt2"], suffix=".pt2") as tmp, warnings.catch_warnings():
            # A channels_last weight is not "complete" (contiguous) in torch's archive writer, which
            # then saves its whole storage plus its strides, exactly (the warning is about weights
            # on another device than the CPU).
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            torch.export.save(program, tmp)  # torch.export.save wants the .pt2 suffix
        files["state_dict.pt"] = out / "state_dict.pt"
        atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, files["state_dict.pt"])
        files["channels.json"] = out / "channels.json"
        atomic_write_text(files["channels.json"], json.dumps(result.channels, indent=1))
        if model_name is not None:
            info = {k: v for k, v in structure.items() if k not in ("plan", "format")}
            files["structure.json"] = save_plan(out, structure["plan"], **info)
            files["model.pt"] = save_model(out / "model.pt", module, model_name=model_name,
                                           model_kwargs=model_kwargs, dataset=dataset, metrics=metrics,
                                           recipe={"export": "thin"})
    if aoti:
        if out is not None:
            files["model_aoti.pt2"] = out / "model_aoti.pt2"
            with atomic_path(files["model_aoti.pt2"], suffix=".pt2") as tmp:
                compile_program(program, str(tmp), freeze=aoti_freeze)
            result.compiled_path = str(files["model_aoti.pt2"])
        else:
            result.compiled_path = compile_program(program, freeze=aoti_freeze)
        result.compiled = torch._inductor.aoti_load_package(result.compiled_path)
    return result
