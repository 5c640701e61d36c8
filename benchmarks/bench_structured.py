"""Structured pruning on CIFAR-10: a reduced reproduction of seed 001 (Liu et al. 2019, "Rethinking
the Value of Network Pruning") Table 1 and the network-slimming table, plus measured CPU speedups.

1. L1-filter (Li et al.) predefined targets on a width-0.5 ResNet-56 (option A): unpruned vs
   fine-tuned vs Scratch-E vs Scratch-B, and torch-pruning's own magnitude pruner
   (tp.pruner.MagnitudePruner, L1 importance, same layers, ratio bisected to the same FLOPs),
   fine-tuned the same way; mean +- std over seeds.
2. Network slimming (L1 on BN gammas; s = 1e-4 as in the paper and s = 8e-3, the same total L1
   push in our short budget) on a width-0.5 VGG-11 at 40% and 60% of the channels: fine-tuned vs
   Scratch-E vs Scratch-B.
3. Wall-clock inference speedup vs FLOPs reduction of shrunk models (ResNet-20 option B, uniform
   L1-filter ratios at 1/2 and 1/4 of the FLOPs; the predefined configurations), CPU batch 1
   and 64: ``structured.compare`` (BN folded in both models, faster memory format each,
   interleaved medians; bench_thin.py has the full comparison).

Budget (stated in the output): a seeded class-stratified subset of the CIFAR-10 training set
(default 10k images), E dense epochs (default 15, SGD 0.1, momentum 0.9, wd 5e-4, cosine,
batch 128, crop+flip), fine-tuning E/4 epochs at lr 0.01 (cosine); Scratch-E trains E epochs,
Scratch-B E * FLOPs ratio epochs. Every finished training is cached in
results/structured_runs.json (dense models in results/ckpt/structured), so an interrupted run
resumes. Make the data first (outside the repo):

    python3 /work/shared/data/cifar10/make_cifar10.py /tmp/cifar10
    python benchmarks/bench_structured.py --data-dir /tmp/cifar10 --threads 2

Smoke test (seconds): --dataset synthetic --train-subset 256 --epochs 1 --seeds 0 --width 0.25
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time

import torch
from torch import nn

import prunekit as pk
from prunekit.core.accounting import flops_per_module, kept_fraction
from prunekit.io import atomic_write_json
from prunekit.methods.base import MethodCallback
from prunekit.methods.slimming import Slimming
from prunekit.pipelines.scratch import scratch_b_epochs
from prunekit.structured import by_ratios, compare, predefined_ratios, shrink, uniform_for_flops
from prunekit.structured.configs import block_inner_ratios
from prunekit.structured.shrink import prunable_layers
from prunekit.training import evaluate, fit
from _common import RESULTS, command_line, machine, mean_std, write_section

SHAPE = (3, 32, 32)


def train_kwargs(args, epochs, lr=0.1):
    return dict(epochs=epochs, lr=lr, momentum=0.9, weight_decay=5e-4, schedule="cosine", progress=False)


def flops(model):
    return flops_per_module(model, SHAPE)[1]


def params(model):
    return sum(p.numel() for p in model.parameters())


def config_ratios(config: str, model) -> dict:
    """A predefined configuration (resnet56-a, ...) or ``inner-P``: ratio P on the first conv of
    every block (the A/B rule with one ratio and nothing skipped), for ResNet-20/32/44."""
    if config.startswith("inner-"):
        return block_inner_ratios(model, float(config[len("inner-"):]))
    return predefined_ratios(config, model)


def tp_magnitude_at_flops(model, target_flops, layers):
    """torch-pruning's MagnitudePruner (L1) on the same layers, ratio bisected to ``target_flops``."""
    import torch_pruning as tp

    x = torch.randn(1, *SHAPE)
    keep = {dict(model.named_modules())[n] for n in layers}
    ignored = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in keep]
    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        ig = [dict(m.named_modules())[n] for n, mod in model.named_modules() if mod in ignored]
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=mid, ignored_layers=ig)
        pruner.step()
        if flops(m) > target_flops:
            lo = mid
        else:
            hi, best = mid, m
    return best


class Bench:
    def __init__(self, args):
        self.args = args
        # Two invocations may run at once (e.g. --only slimming beside --only table1): give each
        # its own --cache file; --merge folds the others in when rendering.
        self.cache_path = RESULTS / args.cache
        self.cache = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        for other in args.merge:
            for key, value in json.loads((RESULTS / other).read_text()).items():
                self.cache.setdefault(key, value)

    def save(self):
        atomic_write_json(self.cache_path, self.cache, indent=1)

    def loaders(self, seed):
        a = self.args
        return pk.data.loaders(a.dataset, batch_size=128, data_dir=a.data_dir, seed=seed, train_subset=a.train_subset,
                               download=False)

    def train(self, key, model, seed, epochs, lr=0.1, callbacks=(), ckpt=None):
        """Train (or skip: cached) and record top-1, params, FLOPs, epochs."""
        if key in self.cache and ckpt is None:
            return self.cache[key]
        train, test, _ = self.loaders(seed)
        t0 = time.time()
        hist = fit(model, train, test, seed=seed, callbacks=list(callbacks), checkpoint_dir=ckpt,
                   **train_kwargs(self.args, epochs, lr))
        row = {"top1": hist[-1]["test_top1"] if len(hist) else evaluate(model, test)["top1"], "params": params(model),
               "flops": flops(model), "epochs": epochs, "seconds": time.time() - t0}
        self.cache.setdefault(key, row)
        self.save()
        print(key, {k: round(v, 2) if isinstance(v, float) else v for k, v in self.cache[key].items()}, flush=True)
        return self.cache[key]

    def fresh(self, name, seed, **kw):
        torch.manual_seed(seed)
        return pk.models.get(name, width=self.args.width, in_channels=SHAPE[0], **kw)

    def dense(self, name, seed, **kw):
        model = self.fresh(name, seed, **kw)
        self.train(f"{name}|dense|{seed}", model, seed, self.args.epochs,
                   ckpt=RESULTS / "ckpt" / "structured" / f"{name}-w{self.args.width}-s{seed}-e{self.args.epochs}")
        return model

    def table1(self, seed):
        a = self.args
        E, ft = a.epochs, max(1, a.epochs // 4)
        dense = self.dense(a.resnet, seed)
        x = torch.randn(1, *SHAPE)
        for config in a.configs:
            plan = by_ratios(dense, config_ratios(config, dense))
            small = shrink(dense, x, plan)
            # set before the trainings, whose save() then stores it (set last, it was never saved)
            self.cache.setdefault(f"{config}|ratio", flops(dense) / flops(small))
            self.train(f"{config}|finetuned|{seed}", copy.deepcopy(small), seed, ft, lr=0.01)
            self.train(f"{config}|scratch_e|{seed}", shrink(self.fresh(a.resnet, 1000 + seed), x, plan), seed, E)
            self.train(f"{config}|scratch_b|{seed}", shrink(self.fresh(a.resnet, 1000 + seed), x, plan), seed,
                       scratch_b_epochs(E, flops(dense), flops(small)))
            key = f"{config}|tp_magnitude|{seed}"
            if key not in self.cache:
                tp_model = tp_magnitude_at_flops(dense, flops(small), prunable_layers(dense))
                self.train(key, tp_model, seed, ft, lr=0.01)

    def slimming(self, seed, s):
        a = self.args
        E, ft = a.epochs, max(1, a.epochs // 4)
        key = f"{a.slim_model}|slimming_dense_s{s:g}|{seed}"
        model = self.fresh(a.slim_model, seed)
        method = Slimming(s=s, fraction=0.0)
        # The sparsity-trained large model: checkpointed so the fractions below reuse it.
        suffix = "" if s == 1e-4 else f"-l1{s:g}"  # the paper's s keeps the checkpoint name it always had
        self.train(key, model, seed, E, callbacks=[MethodCallback(method)],
                   ckpt=RESULTS / "ckpt" / "structured" / f"{a.slim_model}-slim-w{a.width}-s{seed}-e{E}{suffix}")
        x = torch.randn(1, *SHAPE)
        for fraction in a.fractions:
            from prunekit.structured import global_fraction

            plan = global_fraction(model, fraction, score="bn_scale")
            small = shrink(model, x, plan)
            tag = slim_tag(fraction, s)
            self.cache.setdefault(f"{tag}|channels", {name: int(m.out_channels) for name, m in small.named_modules()
                                                      if isinstance(m, torch.nn.Conv2d)})
            # the plan depends on the seed's gammas: one FLOPs ratio per seed (saved with the next training)
            self.cache[f"{tag}|ratio|{seed}"] = flops(model) / flops(small)
            self.train(f"{tag}|finetuned|{seed}", copy.deepcopy(small), seed, ft, lr=0.01)
            self.train(f"{tag}|scratch_e|{seed}", shrink(self.fresh(a.slim_model, 1000 + seed), x, plan), seed, E)
            self.train(f"{tag}|scratch_b|{seed}", shrink(self.fresh(a.slim_model, 1000 + seed), x, plan), seed,
                       scratch_b_epochs(E, flops(model), flops(small)))
            self.save()

    def latency(self):
        rows = []
        load_start = os.getloadavg()[0]
        x = torch.randn(1, *SHAPE)
        # the standard width (the ResNet-20 reference) and the width trained above
        for width in dict.fromkeys((1.0, self.args.width)):
            torch.manual_seed(0)
            r20 = pk.models.get("resnet20", width=width, in_channels=SHAPE[0], shortcut="B").eval()
            for fr in (0.5, 0.25):
                small = shrink(r20, x, uniform_for_flops(r20, x, fr))
                rows.append({"model": f"resnet20-B w{width:g} uniform L1 to {fr:.0%} FLOPs",
                             **compare(r20, small, SHAPE, repeats=self.args.repeats)})
        for config in self.args.configs:
            big = self.fresh(self.args.resnet, 0).eval()
            small = shrink(big, x, by_ratios(big, config_ratios(config, big)))
            rows.append({"model": f"{config} w{self.args.width}", **compare(big, small, SHAPE, repeats=self.args.repeats)})
        self.cache["latency"] = rows
        self.cache["latency_load"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
        self.save()
        return rows


def slim_tag(fraction: float, s: float) -> str:
    return f"slim{int(round(fraction * 100))}_s{s:g}"


def render(b: Bench):
    a, c = b.args, b.cache
    get = lambda key: [c.get(f"{key}|{s}", {}).get("top1") for s in a.seeds]  # noqa: E731
    E = a.epochs
    lines = ["## Structured pruning on CIFAR-10: fine-tuned vs Scratch-E vs Scratch-B (seed 001)", "",
             f"`{command_line()}` on {machine()}. Data: {a.dataset}, {a.train_subset} training images; width {a.width}; "
             f"dense E = {E} epochs (SGD 0.1, cosine, wd 5e-4, batch 128); fine-tune {max(1, E // 4)} epochs at lr 0.01; "
             f"Scratch-B = E x FLOPs ratio. Test top-1 %, mean +- std over seeds {list(a.seeds)}.", "",
             f"### L1-filter targets ({a.resnet}, option A; unpruned {mean_std(get(a.resnet + '|dense'))}%)", "",
             "| pruned model | FLOPs cut | fine-tuned | Scratch-E | Scratch-B | torch-pruning MagnitudePruner (same FLOPs, fine-tuned) |",
             "|---|---|---|---|---|---|"]
    for config in a.configs:
        ratio = c.get(f"{config}|ratio")
        lines.append(f"| {config} | {ratio:.2f}x | " if ratio else f"| {config} | n/a | ")
        lines[-1] += " | ".join(mean_std(get(f"{config}|{k}")) for k in ("finetuned", "scratch_e", "scratch_b",
                                                                          "tp_magnitude")) + " |"
    lines += ["", f"### Network slimming ({a.slim_model}, L1 on BN gammas with strength s, then one global |gamma| "
                  "threshold)", "",
              "| s | sparsity-trained large model | channels pruned | FLOPs cut (mean over seeds) | smallest layer kept (first seed) | fine-tuned "
              "| Scratch-E | Scratch-B |", "|---|---|---|---|---|---|---|---|"]
    for s in a.slim_s:
        for fraction in a.fractions:
            tag = slim_tag(fraction, s)
            ratios = [c[f"{tag}|ratio|{sd}"] for sd in a.seeds if f"{tag}|ratio|{sd}" in c]
            ratio = statistics.mean(ratios) if ratios else c.get(f"{tag}|ratio")
            channels = c.get(f"{tag}|channels")
            narrowest = (lambda kv: f"{kv[1]} ({kv[0]})")(min(channels.items(), key=lambda kv: kv[1])) if channels else "n/a"
            lines.append(f"| {s:g} | {mean_std(get(f'{a.slim_model}|slimming_dense_s{s:g}'))} | {fraction:.0%} | "
                         + (f"{ratio:.2f}x" if ratio else "n/a") + f" | {narrowest} | "
                         + " | ".join(mean_std(get(f"{tag}|{k}")) for k in ("finetuned", "scratch_e", "scratch_b")) + " |")
    lr_sum = E * math.ceil(a.train_subset / 128) * 0.1 / 2  # cosine from 0.1: mean lr 0.05
    lines += ["", "s = 1e-4 is the paper's strength for 160 epochs of 391 steps (lr 0.1, /10 at epochs 80 and 120). "
                  "The L1 term moves a gamma by lr_t * s per step, at most s * sum_t lr_t = 1e-4 * 3,300 = 0.33 over "
                  f"that schedule, but only 1e-4 * {lr_sum:.0f} = {1e-4 * lr_sum:.3f} over our {E} epochs: the gammas "
                  "never separate, and one global threshold then takes (nearly) whole layers out (see 'smallest layer "
                  f"kept'). s = 8e-3 gives our budget about the paper's total push (8e-3 * {lr_sum:.0f} = "
                  f"{8e-3 * lr_sum:.2f})."]
    lines += ["", "### Measured CPU inference speedup of shrunk models", "",
              f"`prunekit.structured.compare`: both models BN-folded, each in its faster memory format (measured in "
              f"the same run), timed interleaved; median of {a.repeats} repeats after warm-up, "
              f"{torch.get_num_threads()} thread(s)"
              + (f", load average {c['latency_load'][0]} / {c['latency_load'][1]} before / after (2 shared cores)"
                 if c.get("latency_load") else "")
              + "; speedup = median of the per-repeat ratios; realised = speedup / "
              "FLOPs ratio (target >= 0.8 at batch 64, issue #17; results/thin.md has the full comparison with "
              "torch-pruning's cut and the exported program). Formats chosen (dense / shrunk): "
              + "; ".join(f"{r['model']}: {r['timed'].split('model (original / shrunk) ')[-1]}"
                          for r in c.get("latency", []) if "timed" in r) + ".", "",
              "| model | FLOPs ratio | params ratio | speedup b=1 | speedup b=64 | realised b=64 |", "|---|---|---|---|---|---|"]
    for r in c.get("latency", []):
        # "x fewer" = dense / shrunk; compare()'s *_ratio is the fraction kept (older cached rows: dense / shrunk)
        fewer_f, fewer_p = 1 / kept_fraction(r["flops_ratio"]), 1 / kept_fraction(r["params_ratio"])
        lines.append(f"| {r['model']} | {fewer_f:.2f}x | {fewer_p:.2f}x | {r['speedup_b1']:.2f}x | "
                     f"{r['speedup_b64']:.2f}x | {r['speedup_b64'] / fewer_f:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=15, help="dense epochs E")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--resnet", default="resnet56")
    ap.add_argument("--configs", nargs="+", default=["resnet56-a", "resnet56-b"],
                    help="predefined configurations, or inner-P (ratio P on every block's first conv)")
    ap.add_argument("--slim-model", default="vgg11")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.4, 0.6])
    ap.add_argument("--slim-s", nargs="+", type=float, default=[1e-4, 8e-3],
                    help="L1 strengths on BN gammas (1e-4: the paper's, for 160 epochs)")
    ap.add_argument("--repeats", type=int, default=20, help="timed forwards per latency figure")
    ap.add_argument("--only", nargs="+", default=["table1", "slimming", "latency"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 when sharing the CPU)")
    ap.add_argument("--cache", default="structured_runs.json", help="results/<file> caching finished trainings")
    ap.add_argument("--merge", nargs="*", default=[], help="other cache files (in results/) to render with this one")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    bench = Bench(args)
    global SHAPE
    info = bench.loaders(args.seeds[0])[2]
    SHAPE = (info.in_channels, *info.image_size)  # (3, 32, 32) for CIFAR; the smoke test's synthetic data differ
    for seed in args.seeds:
        if "table1" in args.only:
            bench.table1(seed)
        if "slimming" in args.only:
            for s in args.slim_s:
                bench.slimming(seed, s)
    if "latency" in args.only:
        bench.latency()
    write_section("structured", render(bench), bench.cache)


if __name__ == "__main__":
    main()
