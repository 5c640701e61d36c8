"""Training-time overhead of the threshold methods vs dense training, measured side by side.

Per-epoch seconds recorded during the accuracy grid (bench_thresholds.py) depend on what else
the machine was doing at the time. Here every method trains the same model on the same
batches in one process, interleaved: each round times ``--steps`` training steps of dense,
then of every method, in turn; the ratio to dense is taken inside each round and the median
over rounds is reported, so load changes hit all of them alike.

A step is what ``fit`` does: forward, task loss + the method's penalty, backward, SGD step
(momentum 0.9, wd 5e-4), the method's ``step()``.

    python benchmarks/bench_threshold_overhead.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.methods.ltp import LTP
from prunekit.methods.sparsity_loss import SparsityLoss
from prunekit.methods.ste_fixed import STEFixed
from _common import command_line, machine, write_section

METHODS = {
    "dense": lambda: None,
    "fixed-BS (ste_fixed, binary search)": lambda: STEFixed(0.85, bound="binary_search"),
    "fixed-GA (ste_fixed, Gaussian)": lambda: STEFixed(0.85, bound="gaussian"),
    "fixed top-k (ste_fixed)": lambda: STEFixed(0.85, bound="topk"),
    "budget-avg (sparsity_loss)": lambda: SparsityLoss(budget=0.15, weights="avg"),
    "budget-wavg (sparsity_loss)": lambda: SparsityLoss(budget=0.15, weights="wavg"),
    "unconstrained (sparsity_loss)": lambda: SparsityLoss(variant="unconstrained", lam=1.0),
    "LTP": lambda: LTP(lam=1.0),
}


class Trainer:
    """One model + optimizer + method, advanced a few steps at a time."""

    def __init__(self, model_name, width, info, make_method, seed=0):
        torch.manual_seed(seed)
        self.model = pk.models.get(model_name, width=width, num_classes=info.num_classes,
                                   in_channels=info.in_channels)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.method = make_method()
        if self.method is not None:
            self.method.attach(self.model, self.opt)

    def steps(self, batches) -> float:
        self.model.train()
        start = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(self.model(x), y)
            if self.method is not None:
                loss = loss + self.method.penalty()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.method is not None:
                self.method.step()
        return (time.perf_counter() - start) / len(batches)


def measure(args, model_name, width):
    train, _, info = pk.data.loaders(args.data, batch_size=128, seed=0, train_subset=args.train_subset)
    batches = []
    for x, y in train:
        batches.append((x, y))
        if len(batches) == args.steps:
            break
    trainers = {name: Trainer(model_name, width, info, make) for name, make in METHODS.items()}
    for t in trainers.values():  # warm-up: first steps allocate buffers and method state
        t.steps(batches[:2])
    per_step = {name: [] for name in trainers}
    ratios = {name: [] for name in trainers}
    for _ in range(args.rounds):
        times = {name: t.steps(batches) for name, t in trainers.items()}
        for name, s in times.items():
            per_step[name].append(s)
            ratios[name].append(s / times["dense"])
    return {name: {"ms_per_step": 1e3 * statistics.median(per_step[name]),
                   "ratio": statistics.median(ratios[name]),
                   "ratio_min": min(ratios[name]), "ratio_max": max(ratios[name])} for name in trainers}


def render(args, results):
    lines = ["## Threshold methods: training-time overhead vs dense (side by side)", "",
             f"`{command_line()}` on {machine()}. {args.data}, batch 128, {args.rounds} interleaved rounds of "
             f"{args.steps} training steps per method (forward, loss + penalty, backward, SGD step, method step); "
             "ratio = method / dense inside each round, median (min-max) over rounds.", ""]
    for model_label, rows in results.items():
        lines += [f"### {model_label}", "", "| method | ms / step | ratio to dense |", "|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['ms_per_step']:.2f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion_mnist")
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    ap.add_argument("--resnet-width", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=20, help="training steps per method per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="threshold_overhead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for model_name in args.models:
        width = args.resnet_width if model_name.startswith("resnet") else 1.0
        results[f"{model_name} (width {width})"] = measure(args, model_name, width)
    write_section(args.name, render(args, results), results)


if __name__ == "__main__":
    main()
