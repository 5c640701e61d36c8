"""Time of exact global pruning on a 25M-weight model (magnitude and LAMP scores).

The model is five 2236x2236 linear layers (25.0M prunable weights). Each timing is the
median of ``--repeats`` runs on a fresh copy of the weights; torch.nn.utils.prune's
global_unstructured (L1) is timed side by side. Targets: magnitude < 1 s, LAMP < 3 s.

    python benchmarks/bench_prune_speed.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit as pk
from _common import command_line, machine, median, write_section


def timed(fn, model, repeats):
    times = []
    for _ in range(repeats):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        fn(m)
        times.append(time.perf_counter() - t0)
    return median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2236, 2236, bias=False) for _ in range(5)])
    n = sum(p.numel() for p in model.parameters())
    s = args.sparsity
    results = {
        "prunekit magnitude (global)": timed(lambda m: pk.prune(m, s, score="magnitude"), model, args.repeats),
        "prunekit LAMP (global)": timed(lambda m: pk.prune(m, s, score="lamp"), model, args.repeats),
        "prunekit magnitude (erk)": timed(lambda m: pk.prune(m, s, allocation="erk"), model, args.repeats),
        "torch.nn.utils.prune global L1": timed(
            lambda m: torch_prune.global_unstructured([(l, "weight") for l in m], pruning_method=torch_prune.L1Unstructured, amount=s),
            model, args.repeats),
    }
    rows = [f"| {k} | {v:.3f} |" for k, v in results.items()]
    md = "\n".join([
        "## Exact global pruning time on a 25M-weight model",
        "",
        f"`{command_line()}` on {machine()}. {n:,} prunable weights (5 x Linear 2236x2236), sparsity {s}, "
        f"median of {args.repeats}. Targets: magnitude < 1 s, LAMP < 3 s.",
        "",
        "| method | seconds |",
        "|---|---|",
        *rows,
    ])
    write_section("prune_speed", md, {"weights": n, "seconds": results})


if __name__ == "__main__":
    main()
