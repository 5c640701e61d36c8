"""Export: does pruning make CPU inference faster once the model is exported?

(a) LeNet-300-100 magnitude-pruned globally at 95% and 98% (the trained Fashion-MNIST dense
    model of bench_accuracy, results/ckpt/lenet_300_100-s0/last.pt; without it the script stops
    unless --random-weights asks for a seeded random init, said in the output): dense vs masked (zeros, dense kernels) vs torch.nn.utils.prune vs
    prunekit.export.sparse, batch 1 and 256.
(b) a 4096-4096-4096-10 ReLU MLP, every layer magnitude-pruned to 90/95/98%, batch 1 and 256
    (issue #17's targets: >= 10x at 98% and batch 1; LeNet-300-100 at 98%, batch 256: >= 4x).
(c) moved: thin (channel-pruned) models have their own benchmark, bench_thin.py
    (results/thin.md: realised speedup with BN folded and the memory format measured, beside
    torch-pruning's cut, and the exported program vs eager).
(d) one layer, several kernels: dense vs CSR with int64 and int32 indices (addmm on x.T, and
    addmv for one row), CSR writing a column-major output (x used as it is), BSR 2x2 and COO:
    why SparseLinear uses int32 CSR, addmv for one row and addmm on x.T otherwise.

Beside each sparse figure, ``layers alone``: the sum over layers of the time ``sparse()``
measured for each layer in isolation at its input shape (dense, and the form it chose):
how much of the whole-model gap the layers themselves leave.

Every figure is the median of interleaved repeats (the forms run in turn inside each repeat),
at --threads torch threads (default 1), on whatever else shares the machine. Timing, not
accuracy: the weights' values do not change the kernels' cost, only the per-layer densities do.

    python benchmarks/bench_export.py                # ~5 minutes on 2 shared cores
    python benchmarks/bench_export.py --quick        # seconds: fewer repeats, smaller MLP

Part (a) needs the trained checkpoint (``python benchmarks/run_all.py --only accuracy`` makes
it); ``--random-weights`` lets it run on a seeded random init instead, said in the output.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import torch
from torch import nn

import prunekit as pk
from prunekit.core.accounting import flops_per_module
from prunekit.export import decisions, sparse
from prunekit.export.bench import _torch_prune_copy, bench_forms, sparse_flops_ratio
from prunekit.timing import time_interleaved
from _common import RESULTS, command_line, machine, write_section

LENET_CKPT = RESULTS / "ckpt" / "lenet_300_100-s0" / "last.pt"
#: The sparse model timed beside the dense one alone (no other form in between).
PAIRED = "sparse, paired"


def lenet_300_100(random_weights: bool = False):
    """The trained dense LeNet-300-100 and a description of its weights. Its layer densities
    after pruning (hence every timing) depend on the trained weights, so a missing checkpoint
    is an error; ``random_weights`` (--random-weights) allows a seeded random init instead."""
    torch.manual_seed(0)
    model = pk.models.get("lenet_300_100")
    if not LENET_CKPT.exists() and random_weights:
        return model.eval(), "seeded random init: no trained checkpoint, --random-weights"
    if not LENET_CKPT.exists():
        sys.exit(f"bench_export.py: missing {LENET_CKPT.relative_to(RESULTS.parent.parent)} (the dense LeNet-300-100 "
                 "of bench_accuracy.py, seed 0): make it with `python benchmarks/run_all.py --only accuracy`, or "
                 "pass --random-weights to time a seeded random init instead")
    state = torch.load(LENET_CKPT, weights_only=True)["model"]
    model.load_state_dict(state)
    return model.eval(), f"trained on Fashion-MNIST ({LENET_CKPT.relative_to(RESULTS.parent.parent)})"


def mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10)).eval()


def pruned_forms(model, mask_sparsity, allocation, batch_sizes, input_shape, sparse_repeats):
    """{b: {dense, masked, torch-prune, sparse}} and the FLOPs ratios (same keys)."""
    masked = copy.deepcopy(model)
    mask = pk.prune(masked, mask_sparsity, score="magnitude", allocation=allocation)
    tp = _torch_prune_copy(masked, {k: v for k, v in mask.items()})
    per, dense_flops = flops_per_module(model, input_shape)
    density = {n: float((m.weight != 0).float().mean()) for n, m in masked.named_modules() if n in per}
    eff = dense_flops - sum(per[n] * (1 - density[n]) for n in per)
    forms_at, ratios, layers = {}, {}, {}
    for b in batch_sizes:
        t0 = time.perf_counter()
        fast = sparse(masked, batch_size=b, repeats=sparse_repeats, example_input=torch.randn(1, *input_shape))
        layers[b] = {"export_s": time.perf_counter() - t0,
                     "layers": [{k: d.get(k) for k in ("layer", "sparsity", "form", "kernel", "input_columns",
                                                       "dense_s", "sparse_s", "candidates_s")}
                                for d in decisions(fast)]}
        forms_at[b] = {"dense": model, "masked": masked, "torch-prune": tp, "sparse": fast}
        ratios[b] = {"dense": 1.0, "masked": dense_flops / eff, "torch-prune": dense_flops / eff,
                     "sparse": sparse_flops_ratio(masked, fast, input_shape)}
    return forms_at, ratios, layers, density


def run_pruned(model, sparsity, allocation, batch_sizes, shape, repeats_at, sparse_repeats, memory=False,
               clock="wall"):
    forms_at, ratios, layers, density = pruned_forms(model, sparsity, allocation, batch_sizes, shape, sparse_repeats)
    rows = []
    for b in batch_sizes:
        rows += bench_forms({b: forms_at[b]}, shape, repeats=repeats_at[b], flops_ratio=ratios[b], memory=memory,
                            clock=clock)
        # dense and sparse alone, in turn: the other forms evict the caches between calls
        # (torch-prune recomputes its whole weight at every forward), which a deployed model
        # does not suffer; the targets are read from these rows.
        pair = {"dense": forms_at[b]["dense"], "sparse": forms_at[b]["sparse"]}
        for r in bench_forms({b: pair}, shape, repeats=repeats_at[b], flops_ratio=ratios[b], memory=memory,
                             clock=clock):
            if r["form"] == "sparse":
                rows.append({**r, "form": PAIRED})
    for r in rows:
        r["sparsity"] = sparsity
    return rows, layers, density


def _pick(d):
    if d["form"] != "csr":
        return f"{d['layer']} dense"
    extra = f", {d['input_columns']} inputs" if d.get("input_columns") else ""
    return f"{d['layer']} csr ({d.get('kernel') or 'mm'}{extra})"


def _alone_line(layers_at):
    """Per batch size: the layers timed alone by sparse(), dense sum vs chosen sum."""
    parts = []
    for b, v in layers_at.items():
        dense, chosen = layer_sums(v["layers"])
        if dense:
            parts.append(f"batch {b}: {1e3 * dense:.3f} ms dense, {1e3 * chosen:.3f} ms chosen = "
                         f"**{dense / chosen:.2f}x**")
    return "Layers alone (sum over the timed layers of sparse()'s per-layer medians): " + "; ".join(parts) + "."


def _target_line(rows, sparsity, batch, target, layers_at):
    hit = [r for r in rows if r["form"] == PAIRED and r["batch_size"] == batch and r["sparsity"] == sparsity]
    if not hit:
        return ""
    dense, chosen = layer_sums(layers_at[batch]["layers"])
    met = "met" if hit[0]["speedup"] >= target else "NOT met"
    return (f"Target >= {target}x at {sparsity:.0%} sparsity, batch {batch}: measured **{hit[0]['speedup']:.2f}x** "
            f"({met}; the layers alone: {dense / chosen:.2f}x).\n")


def table(rows, extra=()):
    cols = ["form", "batch", "median ms", "images/s", "speedup vs dense", "FLOPs ratio", "file MB"] + [e[0] for e in extra]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["form"], str(r["batch_size"]), f"{r['latency_ms']:.3f}", f"{r['throughput']:.0f}",
                 f"**{r['speedup']:.2f}x**" if r["form"] in ("sparse", PAIRED, "thin", "thin-pt2") else f"{r['speedup']:.2f}x",
                 f"{r['flops_ratio']:.2f}x" if r.get("flops_ratio") else "-", f"{r['file_bytes'] / 2**20:.2f}"]
        cells += [fmt(r) for _, fmt in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _int32(csr):
    return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape)


def kernel_micro(shapes, batch_sizes, repeats):
    """Speedup over dense ``F.linear`` of one layer's product in each kernel form (medians of
    interleaved repeats, thread CPU clock at one thread). Every form returns y = x W^T + b in
    some layout; ``addmv`` only exists for one row."""
    out = []
    for (n_in, n_out, s) in shapes:
        torch.manual_seed(0)
        w = torch.randn(n_out, n_in)
        w[torch.rand_like(w) < s] = 0
        bias = torch.randn(n_out)
        col = bias[:, None].contiguous()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            csr64, coo, bsr = w.to_sparse_csr(), w.to_sparse().coalesce(), w.to_sparse_bsr((2, 2))
        csr32 = _int32(csr64)
        for b in batch_sizes:
            x = torch.randn(b, n_in)

            def column_major():  # C = W x^T written column-major, i.e. y row-major: x read as it is
                y = torch.empty(b, n_out)
                torch.addmm(col, csr32, x.t(), out=y.t())
                return y

            fns = {
                "dense F.linear": lambda: nn.functional.linear(x, w, bias),
                "CSR int64 addmm": lambda: torch.addmm(col, csr64, x.t()).t(),
                "CSR int32 addmm": lambda: torch.addmm(col, csr32, x.t()).t(),
                "CSR int32 addmv": (lambda: torch.addmv(bias, csr32, x[0])) if b == 1 else None,
                "CSR int32 column-major out": column_major,
                f"BSR 2x2 (fill {csr64._nnz() / bsr.values().numel():.2f})": lambda: torch.addmm(col, bsr, x.t()).t(),
                "COO sparse.addmm": lambda: torch.sparse.addmm(col, coo, x.t()).t(),
            }
            fns = {k: f for k, f in fns.items() if f is not None}
            with torch.inference_mode():
                want = fns["dense F.linear"]()
                for name, f in fns.items():
                    assert torch.allclose(f().reshape(want.shape), want, atol=1e-4), name
                times = time_interleaved(fns, repeats=repeats, warmup=1,
                                         clock="thread" if torch.get_num_threads() == 1 else "wall")
            med = {k.split(" (fill")[0]: t.median for k, t in times.items()}
            fill = next(k for k in fns if k.startswith("BSR")).split("(fill ")[1].rstrip(")")
            out.append({"shape": f"{n_out}x{n_in}", "sparsity": s, "batch_size": b, "bsr_fill": float(fill),
                        **{k: med["dense F.linear"] / v for k, v in med.items()}})
    return out


def layer_sums(decided):
    """(sum of dense seconds, sum of the chosen forms' seconds) over the timed layers."""
    timed = [d for d in decided if d.get("dense_s") is not None]
    dense = sum(d["dense_s"] for d in timed)
    chosen = sum(d["sparse_s"] if d["form"] == "csr" else d["dense_s"] for d in timed)
    return dense, chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: few repeats, 1024-wide MLP")
    parser.add_argument("--width", type=int, default=4096, help="MLP width of part (b)")
    parser.add_argument("--random-weights", action="store_true",
                        help="part (a) on a seeded random init when the trained checkpoint is missing")
    parser.add_argument("--clock", choices=("auto", "thread", "wall"), default="auto",
                        help="timer of the forms: thread CPU time or wall time (auto: thread at 1 thread)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = args.clock if args.clock != "auto" else ("thread" if args.threads == 1 else "wall")
    q = args.quick
    width = 1024 if q else args.width
    data = {"command": command_line(), "machine": machine(), "clock": clock}
    md = ["## Export: sparse and thin models on CPU\n",
          f"`{command_line()}` on {machine()}. Clock: "
          + ("the thread's CPU time (one thread: other processes on the shared machine do not inflate it, "
             "as they do wall time)" if clock == "thread" else "wall time")
          + ". Medians of interleaved repeats (forms timed in turn in each "
          "repeat); speedup = median over repeats of (dense time / form time) in the same repeat; FLOPs ratio = dense FLOPs / the form's effective "
          "FLOPs (theoretical; a masked layer counts density x dense FLOPs, `sparse` only for its CSR layers). "
          "File = `torch.save(state_dict)` (the .pt2 file for `thin-pt2`). `sparse, paired`: the sparse model "
          "timed again beside the dense one alone (in the four-form rows, masked and torch-prune run between "
          "them and evict the caches: torch-prune recomputes its whole weight at every forward); the targets "
          "are read from the paired rows. 2 cores shared with other jobs: "
          "expect +-10% noise on single figures.\n"]
    start = time.perf_counter()
    load_before = os.getloadavg()

    # (a) LeNet-300-100
    model, source = lenet_300_100(args.random_weights)
    rows_a, layers_a = [], {}
    for s in (0.95, 0.98):
        rows, layers, density = run_pruned(model, s, "global", (1, 256), (1, 28, 28),
                                           {1: 40 if q else 400, 256: 10 if q else 100}, 3 if q else 7,
                                           clock=clock)
        rows_a += rows
        layers_a[s] = {"layers": layers, "density": density}
    data["lenet_300_100"] = {"source": source, "rows": rows_a, "decisions": layers_a}
    md.append(f"### (a) LeNet-300-100, global magnitude pruning ({source})\n")
    for s in (0.95, 0.98):
        dens = ", ".join(f"{k} {v:.3f}" for k, v in layers_a[s]["density"].items())
        picks = "; ".join(f"batch {b}: " + ", ".join(_pick(d) for d in v["layers"])
                          for b, v in layers_a[s]["layers"].items())
        md.append(f"**{s:.0%} sparsity** (layer densities {dens}; sparse() chose {picks})\n")
        md.append(table([r for r in rows_a if r["sparsity"] == s]) + "\n")
        md.append(_alone_line(layers_a[s]["layers"]) + "\n")
    md.append(_target_line(rows_a, 0.98, 256, 4, layers_a[0.98]["layers"]))

    # (b) wide MLP
    rows_b, layers_b = [], {}
    model = mlp(width)
    for s in (0.90, 0.95, 0.98):
        rows, layers, _ = run_pruned(model, s, "uniform", (1, 256), (width,),
                                     {1: 10 if q else 40, 256: 3 if q else 7}, 2 if q else 3, clock=clock)
        rows_b += rows
        layers_b[s] = layers
    data["mlp"] = {"width": width, "rows": rows_b, "decisions": layers_b}
    md.append(f"### (b) {width}-{width}-{width}-10 ReLU MLP, every layer magnitude-pruned to the same sparsity\n")
    md.append(table(rows_b, extra=[("sparsity", lambda r: f"{r['sparsity']:.0%}")]) + "\n")
    for s in (0.90, 0.95, 0.98):
        md.append(f"{s:.0%}: " + _alone_line(layers_b[s]) + "\n")
    md.append(_target_line(rows_b, 0.98, 1, 10, layers_b[0.98]))

    # (d) kernels
    shapes = [(784, 300, 0.9), (784, 300, 0.95), (784, 300, 0.98), (width, width, 0.98)]
    micro = kernel_micro(shapes, (1, 256), 5 if q else 30)
    data["kernels"] = micro
    md.append("### (d) One layer, each kernel: speedup over dense `F.linear` (median of interleaved repeats)\n")
    keys = list(dict.fromkeys(k for m in micro for k in m if k not in ("shape", "sparsity", "batch_size", "bsr_fill")))
    md.append("Thread CPU clock (one thread). `addmm` multiplies by `x.T` (MKL copies it row-major) and hands "
              "the product on transposed; `column-major out` writes the product straight into y's layout "
              "(x read as it is), which MKL computes column by column; BSR 2x2 stores every 2x2 block with a "
              "kept weight (fill = kept weights / stored values).\n")
    md.append("| layer | sparsity | batch | " + " | ".join(keys) + " | BSR fill |")
    md.append("|" + "---|" * (4 + len(keys)))
    for m in micro:
        md.append(f"| {m['shape']} | {m['sparsity']:.0%} | {m['batch_size']} | "
                  + " | ".join(f"{m[k]:.2f}x" if k in m else "-" for k in keys) + f" | {m['bsr_fill']:.2f} |")
    md.append("")
    data["seconds"] = time.perf_counter() - start
    data["load"] = [load_before, os.getloadavg()]
    md.append(f"Total run time {data['seconds']:.0f} s; load average {load_before[0]:.1f} before, "
              f"{data['load'][1][0]:.1f} after (2 cores shared with other jobs).")
    write_section("export_quick" if q else "export", "\n".join(md), data)


if __name__ == "__main__":
    main()
