"""Training-step overhead of keeping a mask enforced, side by side with torch.nn.utils.prune.

For each model (LeNet-300-100 on 28x28 inputs; ResNet-20 on CIFAR-shaped 3x32x32 inputs) and
optimizer (SGD with momentum 0.9 and weight decay 5e-4; AdamW with weight decay 0.01), six
set-ups of the same model train on the same batch, timed in turn by
``prunekit.timing.time_interleaved`` so that machine noise hits all of them alike:

- dense: no pruning;
- prunekit: 90% global magnitude pruning, ``pk.enforce`` (one ``_foreach_mul_`` of the pruned
  tensors' gradients by their 0/1 mask in an optimizer step pre-hook);
- prunekit fused: ``pk.enforce(..., fused=True)``: the pruned tensors updated, mask included,
  in one pass each by prunekit's C++ step (``prunekit.core.fused_step``);
- torch.nn.utils.prune: the same sparsity, a forward pre-hook recomputing
  ``weight = weight_orig * weight_mask`` every forward;
- pass: the *dense* loop plus a bare ``_foreach_mul_`` of the same tensors' gradients by 1,
  inline between ``backward`` and ``step``: the memory pass alone. Any exact scheme touches
  every pruned weight's gradient (or its weight and moments) once per step on top of the
  optimizer's own update, so this is the least enforcement can cost *beside* torch's
  optimizer; "prunekit fused" replaces that update for the pruned tensors, so it can go below;
- inline: the pruned model with the real 0/1 mask multiplied inline (no hook): exact
  enforcement without prunekit's machinery. It differs from "pass" by what exact zeros in the
  optimizer state cost torch's own kernels: ``torch.sqrt`` on CPU is many times slower on
  exact zeros than on other values (measured in the same run, see ``sqrt_probe``), and AdamW
  takes the square root of ``exp_avg_sq``, which is 0 for every pruned weight. AdamW with
  ``fused=True`` (one CPU kernel per tensor, its own vectorised square root) is timed as a
  third LeNet-300-100 optimizer to show what is left without that kernel.

Reported: median ms per step of each, and the median over repeats of (set-up time / dense
time) within the same repeat. One torch thread; by default the calling thread's CPU time
(``--clock thread``), which other processes on a shared machine do not inflate (their cache
traffic still can). After timing, the prunekit set-up is checked to have kept its pruned
weights and their optimizer moments at exactly 0. Target: prunekit <= 1.02x dense.

    python benchmarks/bench_enforcement.py [--repeats 41 --threads 1]
"""
from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit as pk
from prunekit.timing import paired_ratio, time_interleaved
from _common import command_line, machine, machine_facts, write_section

SPARSITY = 0.9
TARGET = 1.02
OPTIMIZERS = {
    "sgd": ("SGD (momentum 0.9, weight decay 5e-4)",
            lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)),
    # torch's fused CPU kernel for SGD: the dense reference at its fastest
    "sgd_fused": ("SGD (momentum 0.9, weight decay 5e-4, fused=True)",
                  lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)),
    "adamw": ("AdamW (weight decay 0.01)",
              lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)),
    # torch's fused CPU kernel: no separate sqrt pass over exp_avg_sq (see the module docstring)
    "adamw_fused": ("AdamW (weight decay 0.01, fused=True)",
                    lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)),
}
MODES = ("dense", "prunekit", "prunekit fused", "torch.nn.utils.prune", "pass", "inline")


class Setup:
    """One model + optimizer trained on one fixed batch; ``step()`` is one training step."""

    def __init__(self, model_name, width, optimizer, mode, batch):
        torch.manual_seed(0)
        self.model = pk.models.get(model_name, width=width)
        self.mask, self.factors = None, None
        if mode == "torch.nn.utils.prune":
            targets = [(m, "weight") for m in self.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=SPARSITY)
        elif mode == "pass":  # dense model, same tensors multiplied by 1: the pass's cost alone
            names = list(pk.prune(copy.deepcopy(self.model), SPARSITY))
            self.params = [self.model.get_parameter(n) for n in names]
            self.factors = [torch.ones_like(p) for p in self.params]
        elif mode != "dense":
            self.mask = pk.prune(self.model, SPARSITY)
        self.opt = OPTIMIZERS[optimizer][1](self.model.parameters())
        if mode == "prunekit":
            pk.enforce(self.mask, self.opt)
        elif mode == "prunekit fused":
            pk.enforce(self.mask, self.opt, fused=True)
        elif mode == "inline":
            self.params = [self.model.get_parameter(n) for n in self.mask]
            self.factors = [self.mask[n].to(p.dtype) for n, p in zip(self.mask, self.params)]
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, *self.model.input_shape, generator=g)
        self.y = torch.randint(0, 10, (batch,), generator=g)

    def step(self):
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.factors is not None:
            torch._foreach_mul_([p.grad for p in self.params], self.factors)
        self.opt.step()

    def steps(self, n):
        def run():
            for _ in range(n):
                self.step()
        return run

    def check_exact(self):
        for name, keep in self.mask.items():
            p = self.model.get_parameter(name)
            tensors = [p.detach()] + [v for v in self.opt.state[p].values()
                                      if torch.is_tensor(v) and v.shape == p.shape]
            if any(bool((t[~keep] != 0).any()) for t in tensors):
                raise AssertionError(f"prunekit let a pruned weight or moment of {name} become nonzero")


def measure(model_name, width, optimizer, batch, steps, repeats, clock):
    setups = {mode: Setup(model_name, width, optimizer, mode, batch) for mode in MODES}
    load_before = os.getloadavg()[0]
    t = time_interleaved({m: s.steps(steps) for m, s in setups.items()}, repeats=repeats, warmup=2,
                         num_threads=torch.get_num_threads(), clock=clock)
    setups["prunekit"].check_exact()
    setups["prunekit fused"].check_exact()
    row = {"model": model_name, "width": width, "optimizer": optimizer, "batch": batch,
           "steps_per_repeat": steps, "repeats": repeats,
           "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    for mode in MODES:
        row[mode] = {"ms_per_step": t[mode].median / steps * 1e3, "iqr_ms": t[mode].iqr / steps * 1e3,
                     "ratio_to_dense": paired_ratio(t[mode], t["dense"])}
    return row


def sqrt_probe(numel, repeats, clock):
    """Microseconds of ``torch.sqrt`` over ``numel`` float32 zeros vs positive values (the
    square root AdamW takes of ``exp_avg_sq``, which is 0 for every pruned weight)."""
    zeros, values = torch.zeros(numel), torch.rand(numel, generator=torch.Generator().manual_seed(2)) + 1e-3
    out = torch.empty(numel)
    t = time_interleaved({"zeros": lambda: torch.sqrt(zeros, out=out), "values": lambda: torch.sqrt(values, out=out)},
                         repeats=repeats, warmup=2, number=20, num_threads=torch.get_num_threads(), clock=clock)
    return {"numel": numel, "zeros_us": t["zeros"].median * 1e6, "values_us": t["values"].median * 1e6}


def fmt(cell, dense=False):
    return f"{cell['ms_per_step']:.3f}" if dense else f"{cell['ms_per_step']:.3f} ({cell['ratio_to_dense']:.3f}x)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=41, help="interleaved repeats per row (median over them)")
    ap.add_argument("--lenet-steps", type=int, default=20, help="LeNet-300-100 steps per timed repeat")
    ap.add_argument("--resnet-steps", type=int, default=1, help="ResNet-20 steps per timed repeat")
    ap.add_argument("--resnet-width", type=float, default=1.0, help="ResNet-20 width multiplier")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--clock", choices=("thread", "wall"), default="thread",
                    help="thread: CPU time of the timing thread (steady on a shared machine); wall: wall time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grid = [("lenet_300_100", 1.0, args.lenet_steps, ("sgd", "sgd_fused", "adamw", "adamw_fused")),
            ("resnet20", args.resnet_width, args.resnet_steps, ("sgd", "adamw"))]
    rows = []
    for model_name, width, steps, optimizers in grid:
        for optimizer in optimizers:
            rows.append(measure(model_name, width, optimizer, args.batch, steps, args.repeats, args.clock))
            print(rows[-1], flush=True)
    # LeNet-300-100's pruned weights at 90%: what AdamW's sqrt meets as zeros every step
    sqrt = sqrt_probe(int(SPARSITY * (784 * 300 + 300 * 100 + 100 * 10)), args.repeats, args.clock)
    lines = []
    for r in rows:
        met = "yes" if r["prunekit fused"]["ratio_to_dense"] <= TARGET else "no"
        name = "LeNet-300-100" if r["model"] == "lenet_300_100" else (
            "ResNet-20" + (f" (width {r['width']:g})" if r["width"] != 1.0 else ""))
        lines.append(f"| {name} | {OPTIMIZERS[r['optimizer']][0]} | {fmt(r['dense'], True)} | {fmt(r['prunekit'])} "
                     f"| {fmt(r['prunekit fused'])} | {fmt(r['torch.nn.utils.prune'])} | {fmt(r['pass'])} | {fmt(r['inline'])} | {met} | "
                     f"{r['load_1min'][0]:.1f} / {r['load_1min'][1]:.1f} |")
    facts = machine_facts()
    md = "\n".join([
        "## Mask enforcement: training-step overhead",
        "",
        f"`{command_line()}` on {machine()} ({facts['cpu']}). 90% global magnitude sparsity, batch "
        f"{args.batch} repeated (LeNet-300-100: 1x28x28; ResNet-20: CIFAR-shaped 3x32x32), one torch thread, "
        f"{args.clock} clock; ms per step = median over {args.repeats} interleaved repeats of "
        f"{args.lenet_steps} (LeNet) / {args.resnet_steps} (ResNet) steps; the ratio is the median over repeats "
        "of (set-up time / dense time) in the same repeat. **Target: prunekit <= 1.02x dense.** "
        "prunekit: `pk.enforce`, one `_foreach_mul_` of the pruned tensors' gradients by their 0/1 mask in an "
        "optimizer step pre-hook (that alone keeps pruned weights and their momentum / Adam moments at exactly 0 "
        "for element-wise optimizers; checked after timing). prunekit fused: `pk.enforce(..., fused=True)`: the "
        "pruned tensors' update, mask included, in one pass each by prunekit's C++ step (torch's SGD / AdamW "
        "formulas; the optimizer's own step updates the other parameters; pruned weights and moments checked "
        "exactly 0 after timing too): it removes the extra pass, so it can undercut the floors below, which "
        "assume torch's optimizer as it is. torch.nn.utils.prune: `weight = weight_orig * "
        "weight_mask` in a forward pre-hook. **Floors:** *pass* = the dense loop plus a bare `_foreach_mul_` of "
        "the same gradients by 1, inline between `backward` and `step`: one memory pass over the prunable "
        "gradients, which any exact scheme pays (masking the weights after the step instead would leave the "
        "moments nonzero; masking weights and moments is 2-3 passes); *inline* = the pruned model with the real "
        "0/1 mask multiplied inline (no hook): exact enforcement without prunekit's machinery. *inline* exceeds "
        "*pass* by what exact zeros in the optimizer state cost torch's own kernels: AdamW takes `sqrt` of "
        f"`exp_avg_sq`, 0 at every pruned weight, and `torch.sqrt` over {sqrt['numel']} float32 zeros took "
        f"{sqrt['zeros_us']:.0f} us vs {sqrt['values_us']:.0f} us over positive values in this run (torch "
        f"{torch.__version__} CPU kernel; torch.nn.utils.prune pays it too, as its `weight_orig` gets zero "
        "gradients at pruned entries). `AdamW(fused=True)` computes the update in one kernel of its own and does not pay it. Load: 1-minute load average before / after the row, on a 2-core machine "
        "shared with other jobs.",
        "",
        "| model | optimizer | dense ms/step | prunekit ms/step | prunekit fused ms/step | torch.nn.utils.prune ms/step "
        "| floor *pass*: dense + bare `_foreach_mul_` | floor *inline*: exact mask, no hook | prunekit fused <= 1.02x | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *lines,
    ])
    write_section("enforcement", md, {"target": TARGET, "sparsity": SPARSITY, "clock": args.clock,
                                      "threads": args.threads, "machine": facts, "sqrt_probe": sqrt, "rows": rows})


if __name__ == "__main__":
    main()
