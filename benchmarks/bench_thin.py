"""Thin (channel-pruned) models on CPU: how much of the FLOPs cut the clock realises, and is the
exported program at least as fast as eager (issue #17, item 2).

For each network x cut (ResNet-20 and ResNet-56 with option-B shortcuts, VGG-16; uniform
L1-filter shrink to 1/2 and 1/4 of the FLOPs, ``prunekit.structured.uniform_for_flops``):

(a) Realised ratio = measured speedup / FLOPs ratio, at batch 64 (target >= 0.8) and batch 1.
    Side by side in one interleaved run per batch: the dense model, prunekit's thin model and
    torch-pruning's own cut of the same dense model at the same FLOPs
    (``tp.pruner.MagnitudePruner``, L1, ratio bisected), plus the kernel-friendly cuts: every
    width a multiple of 16 (``uniform_for_flops(..., multiple_of=16)``; torch-pruning's
    ``round_to=16``) where such a cut lands within 10% of the same FLOPs. Each model is
    timed as given (eager, BatchNorm, contiguous) and in its inference form (BN folded into the
    convolutions, ``prunekit.structured.prepare_for_inference``) in both memory formats; the
    inference figure of a model is its faster format (chosen by that measurement), and the
    speedup pairs dense and thin in the same treatment (dense folded vs thin folded).
(b) Where the time goes (the first network's cuts, batch 64): every convolution of the
    dense and the thin inference forms timed alone on its real input, per stage: FLOPs ratio,
    time ratio, GFLOP/s; what is left (ReLU, add, pooling, Python) is the rest of the forward.
(c) Kernel-friendly widths: one 3x3 convolution at batch 64 at the widths these cuts produce
    and their neighbours (multiples of 8 / 16 and not), GFLOP/s in each memory format.
(d) Exported program vs eager, batch 1, 8, 64: the thin model's eager inference form vs its
    ``torch.export`` program (``torch.export.load(model.pt2).module()``, BN folded, same memory
    format) vs that program compiled by AOTInductor (``model_aoti.pt2``; ``--no-aoti`` skips
    the ~1 minute compile per model), all from ``prunekit.export.thin``.

Timing: ``prunekit.timing.time_interleaved`` (forms in turn inside each repeat), medians, 1
torch thread; ``--clock thread`` (default) measures the CPU time of the timing thread, which
with one torch thread is the work itself and is not inflated by other processes on the shared
machine (they still share caches and memory bandwidth); every form here runs on that one
thread (the AOTInductor kernels are compiled for 1 thread). Weights are random (seeded): the
kernels' cost does not depend on their values. Wrap the run in
``flock /tmp/cpu_timing.lock`` on a shared machine.

    python benchmarks/bench_thin.py                # ~25 minutes on 2 shared cores (6 AOTI compiles)
    python benchmarks/bench_thin.py --quick        # a smoke run (results/thin_quick.md): ResNet-20 at 1/4, 3 repeats, no AOTI
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

import prunekit as pk
from prunekit.core.accounting import flops_per_module
from prunekit.export import thin
from prunekit.export.thin import compile_program
from prunekit.structured import prepare_for_inference, shrink, to_memory_format, uniform_for_flops
from prunekit.structured.inference import MEMORY_FORMATS
from prunekit.timing import paired_ratio, time_interleaved
from _common import command_line, machine, machine_facts, write_section

SHAPE = (3, 32, 32)
NETWORKS = {"resnet20": {"shortcut": "B"}, "resnet56": {"shortcut": "B"}, "vgg16": {}}
TARGET = 0.8


def flops(model):
    return flops_per_module(model, SHAPE)[1]


def widths(model) -> str:
    """Distinct output widths of the convolutions, in order of appearance."""
    seen = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels not in seen:
            seen.append(m.out_channels)
    return "/".join(map(str, seen))


def tp_cut(model, target_flops, round_to=None, iters=12):
    """torch-pruning's MagnitudePruner (L1, one ratio for every group but the classifier's),
    ratio bisected to the FLOPs closest to ``target_flops``."""
    x = torch.randn(1, *SHAPE)
    lo, hi, best, gap = 0.0, 0.95, None, float("inf")
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        head = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
        tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=mid,
                                  ignored_layers=head, round_to=round_to).step()
        f = flops(m)
        if abs(f - target_flops) < gap:
            best, gap = m, abs(f - target_flops)
        lo, hi = (mid, hi) if f > target_flops else (lo, mid)
    return best.eval()


def cuts(name, fraction, multiple=16, tolerance=0.1):
    """{dense, thin, torch-pruning, and the kernel-friendly cuts (widths multiples of
    ``multiple``) when their closest FLOPs are within ``tolerance`` of the thin model's} and
    {skipped cut: FLOPs kept} for those that are not."""
    torch.manual_seed(0)
    dense = pk.models.get(name, **NETWORKS[name]).eval()
    x1 = torch.randn(1, *SHAPE)
    small = shrink(dense, x1, uniform_for_flops(dense, x1, fraction)).eval()
    models = {"dense": dense, "thin": small, "torch-pruning": tp_cut(dense, flops(small))}
    friendly = {f"thin multiple_of={multiple}":
                shrink(dense, x1, uniform_for_flops(dense, x1, fraction, multiple_of=multiple)).eval(),
                f"torch-pruning round_to={multiple}": tp_cut(dense, flops(small), round_to=multiple)}
    skipped = {}
    for key, m in friendly.items():
        if abs(flops(m) / flops(small) - 1) <= tolerance:
            models[key] = m
        else:
            skipped[key] = flops(m) / flops(dense)
    return models, skipped


def realised(models, batch, repeats, clock):
    """One interleaved run: every model as given and in both inference formats."""
    variants = {}
    for key, m in models.items():
        variants[(key, "as given")] = m
        folded = prepare_for_inference(m, fold=True, memory_format="contiguous").module
        for fmt in MEMORY_FORMATS:
            variants[(key, fmt)] = to_memory_format(copy.deepcopy(folded), fmt)
    x = torch.randn(batch, *SHAPE)
    with torch.inference_mode():
        t = time_interleaved({k: functools.partial(m, x) for k, m in variants.items()}, repeats=repeats, warmup=2,
                             clock=clock)
    f0 = flops(models["dense"])
    best = {key: min(MEMORY_FORMATS, key=lambda fmt: t[(key, fmt)].median) for key in models}
    rows = []
    for key, m in models.items():
        ratio = f0 / flops(m)
        plain = paired_ratio(t[("dense", "as given")], t[(key, "as given")])
        inf = paired_ratio(t[("dense", best["dense"])], t[(key, best[key])])
        rows.append({"model": key, "batch": batch, "widths": widths(m), "flops_ratio": ratio,
                     "ms_as_given": 1e3 * t[(key, "as given")].median, "speedup_as_given": plain,
                     "realised_as_given": plain / ratio,
                     "ms_inference": 1e3 * t[(key, best[key])].median, "memory_format": best[key],
                     "ms_contiguous": 1e3 * t[(key, "contiguous")].median,
                     "ms_channels_last": 1e3 * t[(key, "channels_last")].median,
                     "speedup_inference": inf, "realised_inference": inf / ratio})
    return rows


def combine(rows):
    """One row per (network, cut, model, batch): the median of the rounds for every figure, the
    range of the realised ratios, the memory format chosen most often."""
    groups = {}
    for row in rows:
        groups.setdefault((row["network"], row["flops_kept"], row["model"], row["batch"]), []).append(row)
    out = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k != "round"}
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = statistics.median(g[k] for g in group)
        formats = [g["memory_format"] for g in group]
        row["memory_format"] = max(set(formats), key=formats.count)
        for k in ("realised_inference", "realised_as_given"):
            row[k + "_range"] = [min(g[k] for g in group), max(g[k] for g in group)]
        row["rounds"] = len(group)
        out.append(row)
    return out


def conv_inputs(model, x):
    """{conv name: its input} of one forward."""
    seen, hooks = {}, []

    def record(name):
        def hook(module, inputs, output):  # returns None: the output is left alone
            seen.setdefault(name, inputs[0])
        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(record(name)))
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def per_layer(models, batch, repeats, clock, fmt):
    """Every conv of the dense and thin inference forms timed alone on its real input."""
    x = torch.randn(batch, *SHAPE)
    fns, info, whole = {}, {}, {}
    for key in ("dense", "thin"):
        m = to_memory_format(prepare_for_inference(models[key], fold=True, memory_format="contiguous").module, fmt[key])
        whole[key] = functools.partial(m, x)
        convs = dict(m.named_modules())
        for name, inp in conv_inputs(m, x).items():
            conv = convs[name]
            fns[(key, name)] = functools.partial(conv, inp)
            hw = inp.shape[-1] // conv.stride[0]
            info[(key, name)] = {"flops": 2 * batch * conv.out_channels * conv.in_channels // conv.groups
                                 * conv.kernel_size[0] * conv.kernel_size[1] * hw * hw,
                                 "shape": f"{conv.in_channels}->{conv.out_channels} k{conv.kernel_size[0]} "
                                          f"s{conv.stride[0]} {inp.shape[-1]}x{inp.shape[-1]}"}
    fns.update({(key, "<whole forward>"): f for key, f in whole.items()})
    with torch.inference_mode():
        t = time_interleaved(fns, repeats=repeats, warmup=2, clock=clock)
    stages = {}
    for (key, name), timing in t.items():
        if name == "<whole forward>":
            continue
        stage = name.split(".")[0] if name.startswith("layer") else ("stem" if name == "conv1" else name.split(".")[0])
        s = stages.setdefault(stage, {"dense": {"ms": 0.0, "flops": 0, "n": 0}, "thin": {"ms": 0.0, "flops": 0, "n": 0}})
        s[key]["ms"] += 1e3 * timing.median
        s[key]["flops"] += info[(key, name)]["flops"]
        s[key]["n"] += 1
    total = {key: 1e3 * t[(key, "<whole forward>")].median for key in ("dense", "thin")}
    return stages, total


def width_micro(batch, repeats, clock):
    """GFLOP/s of one 3x3 stride-1 convolution (c -> c) at the widths of these cuts and their neighbours."""
    grid = [(32, (8, 11, 12, 16)), (16, (16, 22, 23, 24, 32)), (8, (32, 45, 46, 48, 64))]
    rows = []
    for hw, cs in grid:
        fns = {}
        for c in cs:
            for fmt, mf in MEMORY_FORMATS.items():
                torch.manual_seed(0)
                x = torch.randn(batch, c, hw, hw).contiguous(memory_format=mf)
                w = torch.randn(c, c, 3, 3).contiguous(memory_format=mf)
                fns[(c, fmt)] = functools.partial(F.conv2d, x, w, torch.randn(c), 1, 1)
        with torch.inference_mode():
            t = time_interleaved(fns, repeats=repeats, warmup=2, clock=clock)
        for c in cs:
            fl = 2 * batch * c * c * 9 * hw * hw
            rows.append({"hw": hw, "c": c, **{f"gflops_{fmt}": fl / t[(c, fmt)].median / 1e9 for fmt in MEMORY_FORMATS}})
    return rows


def exported_vs_eager(small, batches, repeats_at, clock, aoti, fmt_batch):
    """thin()'s eager inference form, its .pt2 program and (aoti) its AOTInductor package."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = thin(small, tmp, torch.randn(fmt_batch, *SHAPE), aoti=aoti)
        seconds = time.perf_counter() - t0
        program = torch.export.load(Path(tmp) / "model.pt2").module()
        sizes = {name: os.path.getsize(p) for name, p in result.files.items() if name.endswith(".pt2")}
        forms = {"eager, as given": small, "eager, inference form": result.module, "torch.export .module()": program}
        if aoti:
            forms["AOTInductor package"] = torch._inductor.aoti_load_package(str(result.files["model_aoti.pt2"]))
            frozen = str(Path(tmp) / "model_aoti_frozen.pt2")
            compile_program(result.program, frozen, freeze=True)
            sizes["model_aoti_frozen.pt2"] = os.path.getsize(frozen)
            seconds = time.perf_counter() - t0
            forms["AOTInductor package, frozen"] = torch._inductor.aoti_load_package(frozen)
        rows = []
        for b in batches:
            x = torch.randn(b, *SHAPE)
            with torch.inference_mode():
                want = small(x)
                err = {k: float((f(x) - want).abs().max()) for k, f in forms.items()}
                t = time_interleaved({k: functools.partial(f, x) for k, f in forms.items()}, repeats=repeats_at[b],
                                     warmup=2, clock=clock)
            ref = t["eager, inference form"]
            for k in forms:
                rows.append({"form": k, "batch": b, "ms": 1e3 * t[k].median, "vs_eager_inference": paired_ratio(ref, t[k]),
                             "max_abs_diff": err[k]})
    return rows, {"export_seconds": seconds, "memory_format": result.prepared.memory_format.memory_format,
                  "memory_format_seconds": result.prepared.memory_format.seconds, "folded": len(result.prepared.folded),
                  "file_bytes": sizes}


def fmt_x(v):
    return f"{v:.2f}x"


def span(row, key):
    """' [lo-hi]' over the rounds (batch 64), '' for a single measurement."""
    lo_hi = row.get(key + "_range")
    return f" [{lo_hi[0]:.2f}-{lo_hi[1]:.2f}]" if lo_hi and row.get("rounds", 1) > 1 and row["model"] != "dense" else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("thread", "wall"), default="thread")
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.25], help="FLOPs kept by each cut")
    ap.add_argument("--repeats", type=int, default=11, help="interleaved repeats at batch 64 (batch 1: 4x)")
    ap.add_argument("--rounds", type=int, default=3, help="passes of part (a) at batch 64 over every cut")
    ap.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor compile in part (d)")
    ap.add_argument("--quick", action="store_true", help="smoke run: resnet20 only, 3 repeats, no AOTI")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.networks, args.fractions, args.repeats, args.rounds, args.no_aoti = ["resnet20"], [0.25], 3, 2, True
    start = time.perf_counter()
    facts_start = machine_facts()
    data = {"command": command_line(), "machine": machine(), "facts_start": facts_start, "clock": args.clock,
            "realised": [], "exported": {}}
    r = args.repeats

    # (a) realised ratio, (d) exported vs eager
    all_models = {}
    for name in args.networks:
        for fraction in args.fractions:
            models, skipped = cuts(name, fraction)
            all_models[(name, fraction)] = models
            data["skipped"] = data.get("skipped", []) + [{"network": name, "flops_kept": fraction, "model": k,
                                                          "closest_flops_kept": v} for k, v in skipped.items()]
    # Batch 64 in --rounds passes over every cut, minutes apart: the load of the shared machine
    # drifts over minutes (which interleaving within one run cannot cancel), so the table gives
    # the median pass and the range.
    per_round = []
    for i in range(args.rounds):
        for (name, fraction), models in all_models.items():
            rows = realised(models, 64, r, args.clock)
            per_round += [{"network": name, "flops_kept": fraction, "round": i, **row} for row in rows]
            print(f"round {i} {name} {fraction}: " + ", ".join(f"{x['model']} {x['realised_inference']:.2f}"
                                                                for x in rows), flush=True)
    data["rounds"] = per_round
    data["realised"] = combine(per_round)
    for (name, fraction), models in all_models.items():
        data["realised"] += [{"network": name, "flops_kept": fraction, **row}
                             for row in realised(models, 1, 4 * r, args.clock)]
        rows, info = exported_vs_eager(models["thin"], (1, 8, 64), {1: 4 * r, 8: 2 * r, 64: r}, args.clock,
                                       not args.no_aoti, 64)
        data["exported"][f"{name}|{fraction}"] = {"rows": rows, **info}

    # (b) per layer, the first network's cuts; (c) widths
    data["per_layer"] = []
    for fraction in args.fractions:
        key = (args.networks[0], fraction)
        best = {row["model"]: row["memory_format"] for row in data["realised"]
                if (row["network"], row["flops_kept"]) == key and row["batch"] == 64}
        stages, total = per_layer(all_models[key], 64, r, args.clock, best)
        data["per_layer"].append({"network": key[0], "flops_kept": fraction, "stages": stages, "whole_ms": total,
                                  "memory_format": best})
    data["widths"] = width_micro(64, r, args.clock)
    data["seconds"] = time.perf_counter() - start
    data["facts_end"] = machine_facts()
    write_section("thin_quick" if args.quick else "thin", render(data, args), data)


def render(data, args):
    clock = ("CPU time of the timing thread (`--clock thread`)" if data["clock"] == "thread" else "wall clock")
    load = f"load average {data['facts_start']['load']} at the start, {data['facts_end']['load']} at the end"
    md = ["## Thin (channel-pruned) models on CPU: realised speedup and the exported program", "",
          f"`{data['command']}` on {data['machine']} ({data['facts_start']['cpu']}), wrapped in "
          f"`flock /tmp/cpu_timing.lock`; {load} (2 cores shared with other jobs). Medians of interleaved repeats "
          f"({args.repeats} at batch 64, {4 * args.repeats} at batch 1), {clock}, 1 torch thread; batch 64 was "
          f"measured in {args.rounds} passes over all cuts, minutes apart: the table gives the median pass and "
          "[the range] (the co-running load drifts over minutes, which interleaving cannot cancel). Random seeded weights "
          "(the kernels' cost does not depend on the values). Cuts: uniform L1-filter shrink to the FLOPs kept "
          "(`uniform_for_flops`); torch-pruning = `tp.pruner.MagnitudePruner` (L1) on the same dense model, ratio "
          "bisected to the same FLOPs; `multiple_of=16` / `round_to=16` = the same with every width a multiple of "
          "16 (kernel-friendly, see (c)), listed where that lands within 10% of the FLOPs (its own FLOPs ratio is "
          "used). FLOPs = `torch.utils.flop_counter` (convolutions and the classifier). Widths = the distinct "
          "convolution widths in order of appearance.", "",
          "### (a) Realised ratio = speedup / FLOPs ratio (target >= 0.8 at batch 64)", "",
          "*as given*: eager, BatchNorm kept, contiguous (the figure before this benchmark). *inference form*: BN "
          "folded into the convolutions (`prepare_for_inference`), in the faster memory format of that model at that "
          "batch (both formats timed in the same run); the speedup pairs dense and thin in that same treatment "
          "(dense folded vs thin folded, each in its faster format).", "",
          "| network | FLOPs kept | batch | model | widths | FLOPs ratio | as given: ms | speedup | realised | "
          "inference form: ms (format) | speedup | **realised** |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    models = list(dict.fromkeys(r["model"] for r in data["realised"]))
    ordered = sorted(data["realised"], key=lambda r: (list(NETWORKS).index(r["network"]), -r["flops_kept"],
                                                     -r["batch"], models.index(r["model"])))
    for row in ordered:
        mark = "" if row["model"] == "dense" or row["batch"] != 64 else (" (met)" if met(row) else " (NOT met)")
        md.append(f"| {row['network']} | {row['flops_kept']:.2f} | {row['batch']} | {row['model']} | {row['widths']} | "
                  f"{fmt_x(row['flops_ratio'])} | {row['ms_as_given']:.2f} | {fmt_x(row['speedup_as_given'])} | "
                  f"{row['realised_as_given']:.2f}{span(row, 'realised_as_given')} | "
                  f"{row['ms_inference']:.2f} ({row['memory_format']}) | {fmt_x(row['speedup_inference'])} | "
                  f"**{row['realised_inference']:.2f}**{span(row, 'realised_inference')}{mark} |")
    md += ["", summary(data), "", limit(data), ""]
    if data.get("skipped"):
        md += ["Kernel-friendly cuts not listed (their closest FLOPs are more than 10% off): "
               + "; ".join(f"{x['network']} at {x['flops_kept']:.2f}: {x['model']} keeps {x['closest_flops_kept']:.2f}"
                           for x in data["skipped"]) + ".", ""]
    for pl in data["per_layer"]:
        md += per_layer_table(pl)
    md += ["", "### (c) Kernel-friendly widths: one 3x3 convolution c -> c, batch 64, GFLOP/s", "",
           "| input | c | contiguous | channels_last |", "|---|---|---|---|"]
    for w in data["widths"]:
        md.append(f"| {w['hw']}x{w['hw']} | {w['c']} | {w['gflops_contiguous']:.0f} | {w['gflops_channels_last']:.0f} |")
    md += ["", "### (d) Exported program vs eager, thin models (`prunekit.export.thin`)", "",
           "*eager, inference form*: `ThinExport.module` (BN folded, the memory format `thin` measured at batch 64). "
           "*torch.export .module()*: `torch.export.load(\"model.pt2\").module()` of the same folded model. "
           "*AOTInductor package*: `torch._inductor.aoti_load_package(\"model_aoti.pt2\")` (`thin(..., aoti=True)`, "
           "compiled for 1 thread); *frozen*: the same with `aoti_freeze=True` (inductor's freezing: weights pre-packed "
           "for oneDNN at the traced batch, 64, ReLU / adds fused into the convolutions). Ratio = eager inference "
           "form time / form time in the same repeat (>= 1.00x: at least as fast as eager); max |diff| vs the "
           "original eval-mode model.", "",
           "| network | FLOPs kept | batch | form | ms | vs eager (inference form) | max abs diff |",
           "|---|---|---|---|---|---|---|"]
    for key, ex in data["exported"].items():
        name, fraction = key.split("|")
        for row in ex["rows"]:
            md.append(f"| {name} | {float(fraction):.2f} | {row['batch']} | {row['form']} | {row['ms']:.3f} | "
                      f"{fmt_x(row['vs_eager_inference'])} | {row['max_abs_diff']:.1e} |")
    md.append("")
    md.append("Export: " + "; ".join(f"{k.replace('|', ' at ')}: {ex['folded']} BN folded, {ex['memory_format']}, "
                                      f"{ex['export_seconds']:.0f} s" for k, ex in data["exported"].items()) + ".")
    md += ["", exported_summary(data), "", f"Total run time {data['seconds'] / 60:.0f} min."]
    return "\n".join(md)


def per_layer_table(pl):
    md = [f"### (b) Where the time goes: {pl['network']} at {pl['flops_kept']:.2f} of the FLOPs, batch 64", "",
          f"Each convolution of the inference forms (dense {pl['memory_format']['dense']}, thin "
          f"{pl['memory_format']['thin']}) timed alone on its real input, summed per stage; GFLOP/s = the stage's "
          "convolution FLOPs / its time. *rest* = whole forward - all convolutions (ReLU, residual adds, pooling, "
          "classifier, Python). If an export fused the rest away entirely, the whole forward would realise what "
          "the convolutions alone do (**bold**): the kernels' efficiency at the thin widths is the limit.", "",
          "| stage | convs | dense ms | thin ms | FLOPs ratio | time ratio | realised | dense GFLOP/s | thin GFLOP/s |",
          "|---|---|---|---|---|---|---|---|---|"]
    conv = {"dense": [0.0, 0], "thin": [0.0, 0]}
    for stage, s in pl["stages"].items():
        d, t = s["dense"], s["thin"]
        for key, v in (("dense", d), ("thin", t)):
            conv[key][0] += v["ms"]
            conv[key][1] += v["flops"]
        ratio, speed = d["flops"] / max(t["flops"], 1), d["ms"] / max(t["ms"], 1e-9)
        md.append(f"| {stage} | {d['n']} | {d['ms']:.2f} | {t['ms']:.2f} | {fmt_x(ratio)} | {fmt_x(speed)} | "
                  f"{speed / ratio:.2f} | {d['flops'] / d['ms'] / 1e6:.0f} | {t['flops'] / max(t['ms'], 1e-9) / 1e6:.0f} |")
    ratio, speed = conv["dense"][1] / conv["thin"][1], conv["dense"][0] / conv["thin"][0]
    md.append(f"| all convolutions | - | {conv['dense'][0]:.2f} | {conv['thin'][0]:.2f} | {fmt_x(ratio)} | "
              f"{fmt_x(speed)} | **{speed / ratio:.2f}** | {conv['dense'][1] / conv['dense'][0] / 1e6:.0f} | "
              f"{conv['thin'][1] / conv['thin'][0] / 1e6:.0f} |")
    rest = {k: pl["whole_ms"][k] - conv[k][0] for k in conv}
    md.append(f"| rest | - | {rest['dense']:.2f} | {rest['thin']:.2f} | - | "
              f"{fmt_x(rest['dense'] / max(rest['thin'], 1e-9))} | - | - | - |")
    md.append(f"| whole forward | - | {pl['whole_ms']['dense']:.2f} | {pl['whole_ms']['thin']:.2f} | - | "
              f"{fmt_x(pl['whole_ms']['dense'] / pl['whole_ms']['thin'])} | - | - | - |")
    return md + [""]


def limit(data):
    """The measured limit, from part (b): what the convolutions alone realise."""
    parts = []
    for pl in data["per_layer"]:
        conv = {k: (sum(st[k]["ms"] for st in pl["stages"].values()), sum(st[k]["flops"] for st in pl["stages"].values()))
                for k in ("dense", "thin")}
        bound = (conv["dense"][0] / conv["thin"][0]) / (conv["dense"][1] / conv["thin"][1])
        parts.append(f"{pl['network']} at {pl['flops_kept']:.2f}: the convolutions alone realise {bound:.2f} "
                     f"({conv['dense'][1] / conv['dense'][0] / 1e6:.0f} GFLOP/s dense vs "
                     f"{conv['thin'][1] / conv['thin'][0] / 1e6:.0f} thin)")
    gf = {(w["hw"], w["c"]): w["gflops_channels_last"] for w in data["widths"]}
    pairs = [(hw, a, b) for hw, a, b in ((32, 8, 16), (32, 11, 16), (16, 23, 32), (8, 46, 64)) if (hw, a) in gf and (hw, b) in gf]
    widths_ = ", ".join(f"{a} vs {b} channels at {hw}x{hw}: {gf[(hw, a)]:.0f} vs {gf[(hw, b)]:.0f}" for hw, a, b in pairs)
    return ("Measured limit (part b): " + "; ".join(parts) + ". Folding, the memory format and fusing the rest cannot "
            "lift a cut above what its convolutions realise: the CPU's convolution kernels lose efficiency at the thin "
            f"widths (part c, GFLOP/s channels_last: {widths_}), and torch-pruning's cut at the same FLOPs (the same "
            "widths) realises the same.")


def met(row):
    """The target, on the figure as printed (two decimals)."""
    return round(row["realised_inference"], 2) >= TARGET


def summary(data):
    at64 = {(r["network"], r["flops_kept"], r["model"]): r for r in data["realised"] if r["batch"] == 64}
    cuts_ = sorted({(n, f) for n, f, _ in at64}, key=lambda k: (list(NETWORKS).index(k[0]), -k[1]))
    hit = [c for c in cuts_ if met(at64[c + ("thin",)])]
    friendly = [c for c in cuts_ if c + ("thin multiple_of=16",) in at64 and met(at64[c + ("thin multiple_of=16",)])]
    lines = [f"Target >= {TARGET} at batch 64 (median pass, inference form): prunekit's uniform cut meets it on "
             f"{len(hit)} of {len(cuts_)} cuts, its kernel-friendly cut (`multiple_of=16`, where it lands at the "
             f"budget) on {len(friendly)}. Per cut, realised in the inference form [range over the passes] "
             "(as given in brackets):"]
    for n, f in cuts_:
        parts = [f"{m} {r['realised_inference']:.2f}{span(r, 'realised_inference')} ({r['realised_as_given']:.2f})"
                 for (n2, f2, m), r in at64.items() if (n2, f2) == (n, f) and m != "dense"]
        lines.append(f"- {n} at {f:.2f}: " + ", ".join(parts))
    return "\n".join(lines)


def exported_summary(data):
    worst = {}
    for key, ex in data["exported"].items():
        for row in ex["rows"]:
            if row["form"] in ("torch.export .module()", "AOTInductor package", "AOTInductor package, frozen"):
                worst.setdefault(row["form"], []).append((row["vs_eager_inference"], key, row["batch"]))
    parts = []
    for form, vals in worst.items():
        v, key, b = min(vals)
        parts.append(f"{form}: slowest {v:.2f}x of eager ({key.replace('|', ' at ')}, batch {b}); "
                     f"{'at least as fast as eager at every batch' if v >= 1.0 else 'NOT always as fast as eager'} "
                     f"(median of its ratios {statistics.median(x[0] for x in vals):.2f}x)")
    return "Exported vs eager: " + "; ".join(parts) + "."


if __name__ == "__main__":
    main()
