"""Measured inference cost of a pruned model in each of its executable forms.

``bench_model(path)`` loads a prunekit model file or folder and measures, side by side:

- ``dense``: the original architecture with dense weights (a fresh registry model of the
  file's name/kwargs: what the model cost before pruning; dense kernels do not depend on the
  weight values);
- ``masked`` (files with a mask; ``saved`` for other files): the pruned weights, zeros
  included, run by dense kernels;
- ``torch-prune`` (files with a mask): the same through ``torch.nn.utils.prune``
  (``weight_orig * weight_mask`` recomputed by a hook at every forward);
- ``sparse``: ``prunekit.export.sparse`` of the pruned model, decided at each batch size;
- ``thin`` and ``thin-pt2`` (shrunk models): the physically smaller model's inference form
  (BatchNorm folded, the faster memory format measured at the largest batch size), eager and
  as its ``torch.export`` program (``prunekit.export.thin``). For a shrunk model ``dense`` is
  the dense model's inference form too (``structured.prepare_for_inference``), so the speedup
  compares like with like.

``bench_forms`` is the measuring core, reusable on in-memory models. Every figure is the median
of ``repeats`` forwards under ``torch.inference_mode``, with the forms timed in turn inside each
repeat (interleaved), so drifting load on a shared machine affects them alike; ``speedup`` is
the median over repeats of dense time / form time within the same repeat (a paired ratio). ``flops_ratio`` is the theoretical one (dense FLOPs / the
form's effective FLOPs, ``core.accounting``: a masked layer counts density x dense FLOPs).
``file_bytes`` is the size of the form saved as it would be shipped (``torch.save`` of its
state_dict; the ``.pt2`` file for the exported program); ``weight_bytes`` the bytes of its
parameters and buffers (CSR values and indices included). ``peak_bytes`` is the peak of the
memory that torch's CPU allocator handed out during one forward at that batch size
(activations and temporaries, not the weights), tracked by ``torch.profiler`` with
``profile_memory=True`` -- not the process RSS.
"""
from __future__ import annotations

import copy
import functools
import io
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.profiler import ProfilerActivity, profile

from .. import models
from ..artifacts import load_model
from ..core.accounting import flops_per_module, report
from ..structured.inference import prepare_for_inference
from .sparse import decisions, sparse
from .thin import thin

from ..timing import paired_ratio, time_interleaved

__all__ = ["bench_model", "bench_forms", "format_table", "peak_memory", "weight_bytes", "saved_bytes",
           "sparse_flops_ratio"]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers; CSR tensors count values, column and row indices."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.layout == torch.sparse_csr:
            parts = (t.values(), t.col_indices(), t.crow_indices())
        elif t.is_sparse:
            parts = (t._values(), t._indices())
        else:
            parts = (t,)
        total += sum(p.numel() * p.element_size() for p in parts)
    return total


def saved_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())``."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def peak_memory(model: nn.Module, x: torch.Tensor) -> Optional[int]:
    """Peak bytes held by torch's CPU allocator during one forward (allocations minus frees,
    in time order, as recorded by ``torch.profiler``); None if the profiler fails."""
    try:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    except Exception:  # pragma: no cover - the profiler is optional instrumentation
        return None
    current = best = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        best = max(best, current)
    return int(best)


def bench_forms(forms_at: Dict[int, Dict[str, nn.Module]], input_shape: Sequence[int], *, repeats: int = 10,
                dense: str = "dense", flops_ratio: Optional[Dict[str, float]] = None,
                file_bytes: Optional[Dict[str, int]] = None, memory: bool = True, clock: str = "wall") -> List[dict]:
    """Time the forms ``{batch size: {form name: module}}`` on random ``(b, *input_shape)``
    batches, interleaved; one row per (form, batch size). ``dense`` names the reference form
    of the speedups; ``flops_ratio`` / ``file_bytes`` map form names to figures computed by
    the caller (``file_bytes`` defaults to ``saved_bytes`` of the form). ``clock``: ``wall`` or
    ``thread`` (the calling thread's CPU time: with one torch thread, what other processes on a
    shared machine do not inflate; ``prunekit.timing.CLOCKS``)."""
    rows = []
    for b, forms in forms_at.items():
        for m in forms.values():
            try:
                m.eval()
            except NotImplementedError:  # a torch.export program module: already traced in eval mode
                pass
        param = next((p for m in forms.values() for p in m.parameters()), None)
        x = torch.randn(b, *input_shape, device=param.device if param is not None else "cpu")
        with torch.inference_mode():  # the forms take turns inside every repeat
            times = time_interleaved({name: functools.partial(m, x) for name, m in forms.items()},
                                     repeats=repeats, warmup=2, clock=clock)
        for name, model in forms.items():
            # Speedup: median of the per-repeat ratios of side-by-side runs (a load spike on the
            # shared machine hits both runs of a repeat, so it cancels in the ratio).
            rows.append({
                "form": name, "batch_size": b, "latency_ms": 1e3 * times[name].median,
                "throughput": b / times[name].median,
                "speedup": paired_ratio(times[dense], times[name]) if dense in times else None,
                "flops_ratio": (flops_ratio or {}).get(name),
                "file_bytes": (file_bytes or {}).get(name, saved_bytes(model)),
                "weight_bytes": weight_bytes(model),
                "peak_bytes": peak_memory(model, x) if memory else None,
            })
    return rows


def sparse_flops_ratio(model: nn.Module, exported: nn.Module, input_shape: Sequence[int],
                       dense_flops: Optional[int] = None, counted=None) -> float:
    """``dense_flops`` (default: ``model``'s own FLOPs) over the FLOPs of ``exported``
    (``sparse(model)``), in which only the CSR layers skip their zeros. ``counted``:
    ``flops_per_module(model, input_shape)`` when the caller has it already."""
    per, total = counted if counted is not None else flops_per_module(model, input_shape)
    saved = sum(per.get(d["layer"], 0) * d["sparsity"] for d in decisions(exported) if d["form"] == "csr")
    return (dense_flops or total) / max(total - saved, 1)


def _torch_prune_copy(model: nn.Module, mask: Dict[str, torch.Tensor]) -> nn.Module:
    """The masked model through ``torch.nn.utils.prune.custom_from_mask`` (hook + weight_orig)."""
    out = copy.deepcopy(model)
    for name, m in mask.items():
        module_name, _, param = name.rpartition(".")
        torch_prune.custom_from_mask(out.get_submodule(module_name), param, m.to(torch.bool))
    return out


def bench_model(path, *, batch_sizes: Sequence[int] = (1, 32, 256), repeats: int = 10,
                input_shape: Optional[Sequence[int]] = None, memory: bool = True,
                sparse_repeats: int = 3) -> List[dict]:
    """Measure every form of the model in ``path`` (a model file or a shrunk run folder); see
    the module docstring. Returns one row per (form, batch size): ``form, batch_size,
    latency_ms, throughput (images/s), speedup, flops_ratio, file_bytes, weight_bytes,
    peak_bytes``."""
    for b in batch_sizes:
        if int(b) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {b}")
    model, data = load_model(path)
    model.eval()
    spec = data["model"]
    shape = tuple(input_shape or getattr(model, "input_shape", None) or ())
    if not shape:
        raise ValueError(f"{path}: the model has no .input_shape; pass input_shape")
    dense = models.get(spec["name"], **spec["kwargs"]).eval()
    shrunk = {k: tuple(v.shape) for k, v in dense.state_dict().items()} != \
             {k: tuple(v.shape) for k, v in model.state_dict().items()}
    dense_flops = flops_per_module(dense, shape)[1]
    ratios: Dict[str, float] = {"dense": 1.0}
    files: Dict[str, int] = {}
    common: Dict[str, nn.Module] = {"dense": dense}
    mask = data.get("mask")
    if shrunk:
        thin_flops = flops_per_module(model, shape)[1]
        x_format = torch.randn(max(int(b) for b in batch_sizes), *shape)
        with tempfile.TemporaryDirectory() as tmp:
            exported = thin(model, tmp, x_format)
            files["thin-pt2"] = os.path.getsize(Path(tmp) / "model.pt2")
            program = torch.export.load(Path(tmp) / "model.pt2").module()
        common["dense"] = prepare_for_inference(dense, x_format).module
        common["thin"] = exported.module
        common["thin-pt2"] = program
        ratios["thin"] = ratios["thin-pt2"] = dense_flops / thin_flops
    else:
        rep = report(model, input_shape=shape)
        own = "masked" if mask else "saved"  # a file without a mask: its weights as saved
        common[own] = model
        ratios[own] = dense_flops / max(rep.effective_flops or dense_flops, 1)
        if mask:
            common["torch-prune"] = _torch_prune_copy(model, mask)
            ratios["torch-prune"] = ratios["masked"]
            files["torch-prune"] = saved_bytes(common["torch-prune"])
    forms_at: Dict[int, Dict[str, nn.Module]] = {}
    sparse_ratio: Dict[int, float] = {}
    counted = flops_per_module(model, shape)   # per-module FLOPs do not depend on the batch size
    for b in batch_sizes:
        forms = dict(common)
        forms["sparse"] = sparse(model, batch_size=int(b), repeats=sparse_repeats,
                                 example_input=torch.randn(1, *shape))
        sparse_ratio[int(b)] = sparse_flops_ratio(model, forms["sparse"], shape, dense_flops, counted)
        forms_at[int(b)] = forms
    rows: List[dict] = []
    for b, forms in forms_at.items():
        ratios["sparse"] = sparse_ratio[b]
        rows += bench_forms({b: forms}, shape, repeats=repeats, flops_ratio=dict(ratios), file_bytes=files,
                            memory=memory)
    return rows


def _size(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_table(rows: List[dict]) -> str:
    """The rows of ``bench_model`` / ``bench_forms`` as an aligned text table."""
    head = (f"{'form':<12} {'batch':>5} {'latency ms':>11} {'images/s':>10} {'speedup':>8} {'FLOPs ratio':>11} "
            f"{'file':>9} {'weights':>9} {'peak mem':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-"
        ratio = f"{r['flops_ratio']:.2f}x" if r.get("flops_ratio") is not None else "-"
        lines.append(f"{r['form']:<12} {r['batch_size']:>5} {r['latency_ms']:>11.3f} {r['throughput']:>10.0f} "
                     f"{speed:>8} {ratio:>11} {_size(r.get('file_bytes')):>9} {_size(r.get('weight_bytes')):>9} "
                     f"{_size(r.get('peak_bytes')):>9}")
    return "\n".join(lines)
