"""Training-step overhead of keeping a mask enforced, side by side with torch.nn.utils.prune.

Three set-ups of the same model train on the same batch, interleaved in blocks so that
machine noise hits all of them alike: dense (no pruning), prunekit (``pk.enforce``: an
optimizer step post-hook), and torch.nn.utils.prune (a forward pre-hook recomputing
``weight = weight_orig * weight_mask``). Reported: median step time of each and the ratio to
dense. Target: prunekit <= 1.03x dense.

    python benchmarks/bench_enforcement.py [--blocks 15 --steps 40]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit as pk
from _common import command_line, machine, median, write_section


def build(name, mode, sparsity=0.9):
    torch.manual_seed(0)
    model = pk.models.get(name)
    opt_params = lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if mode == "dense":
        return model, opt_params(model)
    if mode == "prunekit":
        mask = pk.prune(model, sparsity)
        opt = opt_params(model)
        pk.enforce(mask, opt)
        return model, opt
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    return model, opt_params(model)


def step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(name, batch, blocks, steps):
    torch.manual_seed(1)
    x = torch.randn(batch, *pk.models.get(name).input_shape)
    y = torch.randint(0, 10, (batch,))
    setups = {mode: build(name, mode) for mode in ("dense", "prunekit", "torch.nn.utils.prune")}
    for model, opt in setups.values():   # warm-up
        for _ in range(10):
            step(model, opt, x, y)
    times = {mode: [] for mode in setups}
    for _ in range(blocks):
        for mode, (model, opt) in setups.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step(model, opt, x, y)
            times[mode].append((time.perf_counter() - t0) / steps)
    return {mode: median(ts) for mode, ts in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, data = [], {}
    for name in ("lenet_300_100", "lenet5"):
        for batch in (128,):
            med = measure(name, batch, args.blocks, args.steps)
            dense = med["dense"]
            data[f"{name}/b{batch}"] = med
            rows.append(f"| {name} | {batch} | {dense * 1e3:.3f} | {med['prunekit'] * 1e3:.3f} "
                        f"({med['prunekit'] / dense:.3f}x) | {med['torch.nn.utils.prune'] * 1e3:.3f} "
                        f"({med['torch.nn.utils.prune'] / dense:.3f}x) |")
    md = "\n".join([
        "## Mask enforcement: training-step overhead",
        "",
        f"`{command_line()}` on {machine()}. SGD with momentum and weight decay, 90% global magnitude "
        f"sparsity, one batch repeated; median over {args.blocks} interleaved blocks of {args.steps} steps. "
        "Target: prunekit <= 1.03x dense.",
        "",
        "| model | batch | dense ms/step | prunekit ms/step | torch.nn.utils.prune ms/step |",
        "|---|---|---|---|---|",
        *rows,
    ])
    write_section("enforcement", md, data)


if __name__ == "__main__":
    main()
