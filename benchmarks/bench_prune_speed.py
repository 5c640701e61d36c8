"""Time of exact global pruning on a 25M-weight model (magnitude and LAMP scores).

The model is five 2236x2236 linear layers (25.0M prunable weights), pruned to 90%. Targets
(issue 17): magnitude <= 0.3 s, LAMP <= 1.0 s at 2 threads. torch.nn.utils.prune's
global_unstructured (L1) and the floors every exact prune pays (one selection over all 25M
scores; one read + write pass over the weights) are timed side by side.

Every call prunes a fresh copy of the weights, made outside the clock, so the repeats are
interleaved here by hand (prunekit.timing.time_interleaved has no untimed set-up per call):
in each repeat every row runs once, in turn, and a load spike hits all rows alike.

    python benchmarks/bench_prune_speed.py [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit as pk
from prunekit.timing import CLOCKS
from _common import command_line, machine, machine_facts, write_section

TARGETS = {"prunekit magnitude (global)": 0.3, "prunekit LAMP (global)": 1.0}


def interleaved(rows, model, repeats):
    """``{name: [seconds per repeat]}``; ``rows`` maps a name to ``fn(fresh_model)``."""
    clock = CLOCKS["wall"]
    times = {name: [] for name in rows}
    for _ in range(repeats + 1):                 # the first round warms up, untimed
        for name, fn in rows.items():
            m = copy.deepcopy(model)
            t0 = clock()
            fn(m)
            times[name].append(clock() - t0)
    return {name: ts[1:] for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2236, 2236, bias=False) for _ in range(5)])
    n = sum(p.numel() for p in model.parameters())
    s = args.sparsity
    all_scores = torch.cat([l.weight.detach().abs().reshape(-1) for l in model])
    k = round((1 - s) * n)
    rows = {
        "prunekit magnitude (global)": lambda m: pk.prune(m, s, score="magnitude"),
        "prunekit LAMP (global)": lambda m: pk.prune(m, s, score="lamp"),
        "prunekit magnitude (erk)": lambda m: pk.prune(m, s, allocation="erk"),
        "torch.nn.utils.prune global L1": lambda m: torch_prune.global_unstructured(
            [(l, "weight") for l in m], pruning_method=torch_prune.L1Unstructured, amount=s),
        "floor: torch.kthvalue over the 25M scores": lambda m: torch.kthvalue(all_scores, n - k + 1),
        "floor: numpy partition over the 25M scores": lambda m: np.partition(all_scores.numpy(), n - k),
        "floor: one pass abs(w) over the weights (torch)": lambda m: [l.weight.detach().abs() for l in m],
        "floor: one pass abs(w) over the weights (numpy)": lambda m: [np.abs(l.weight.detach().numpy()) for l in m],
    }
    load_before = os.getloadavg()[0]
    times = interleaved(rows, model, args.repeats)
    load_after = os.getloadavg()[0]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    table = []
    for name, med in medians.items():
        ts = sorted(times[name])
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target} s: {'met' if med <= target else 'not met'}"
        table.append(f"| {name} | {med:.3f} | {ts[0]:.3f} - {ts[-1]:.3f} | {verdict} |")
    md = "\n".join([
        "## Exact global pruning time on a 25M-weight model",
        "",
        f"`{command_line()}` on {machine()}; {machine_facts()['cpu']}. {n:,} prunable weights "
        f"(5 x Linear 2236x2236), sparsity {s}, median of {args.repeats} interleaved repeats (each on a "
        f"fresh copy of the weights), 1-minute load average {load_before:.1f} before and {load_after:.1f} "
        "after (2 cores, shared with other jobs). Targets (issue 17): magnitude <= 0.3 s, LAMP <= 1.0 s.",
        "",
        "| row | median seconds | range | target |",
        "|---|---|---|---|",
        *table,
        "",
        "Exact and deterministic as before (ties to the earlier tensor, then the lower index): the "
        "global threshold comes from a band of values narrowed by a strided sample, never from the 25M "
        "scores concatenated; LAMP sorts only about twice each layer's kept share (its score of a weight "
        "needs only the weights above it); on the CPU the passes run in numpy "
        "(`prunekit.core.arrays`: torch's 2-thread operations each wait for their second thread on a "
        "loaded machine). The floor rows are what any exact prune pays: the old path's one selection "
        "over all scores, and one read + write pass over the weights.",
    ])
    write_section("prune_speed", md, {"weights": n, "sparsity": s, "threads": args.threads,
                                      "repeats": args.repeats, "load": [load_before, load_after],
                                      "machine": machine_facts(), "targets": TARGETS,
                                      "seconds": medians, "times": times})


if __name__ == "__main__":
    main()
