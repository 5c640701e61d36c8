"""Structured pruning at a FLOPs budget (issue #19): every prunekit channel method through the one
entry point ``prunekit.structured.prune_to_budget`` next to torch-pruning's MagnitudePruner, on
the same trained Fashion-MNIST CNN (5 conv + BN, 22.2M MACs), at 2x and 4.26x fewer MACs,
each fine-tuned the same way (E_ft epochs, SGD, cosine), over seeds; plus the measured CPU
speedup at batch 64.

Why a script and not one experiment spec through the sweep: the sweep builds models from
prunekit's registry and runs prunekit pipelines only, while this table needs torch-pruning's
own pruner in the same run on the same dense weights (and the CNN of the issue, which is not
a registry model).

Dense recipe: E dense epochs (default 2) SGD lr 0.05, momentum 0.9, wd 5e-4, cosine, batch 128.
Every finished training is cached in results/structured_budget_runs.json (dense checkpoints in
results/ckpt/structured_budget), so an interrupted run resumes.

    python benchmarks/bench_structured_budget.py --threads 1 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

import prunekit as pk
from prunekit.core.accounting import flops_per_module
from prunekit.io import atomic_write_json
from prunekit.pipelines.structured_budget import layerwise_finetune
from prunekit.structured import calibration_images, prune_to_budget
from prunekit.training import evaluate, fit
from prunekit.training.distill import Distillation
from _common import RESULTS, command_line, machine, mean_std, write_section

SHAPE = (1, 28, 28)
WIDTHS = (32, 32, 64, 64, 128)


class FashionCNN(nn.Module):
    """5 x (3x3 conv + BN + ReLU), max-pool after conv 2 and 4, flatten, one Linear."""

    def __init__(self, widths=WIDTHS, num_classes=10):
        super().__init__()
        self.input_shape = SHAPE
        layers, c = [], SHAPE[0]
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * 7 * 7, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def macs(model):
    return flops_per_module(model, SHAPE)[1]


def nparams(model):
    return sum(p.numel() for p in model.parameters())


class Bench:
    def __init__(self, args):
        self.args = args
        self.cache_path = RESULTS / "structured_budget_runs.json"
        self.cache = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    def save(self):
        # another invocation (another seed) may share the cache: keep its entries too
        on_disk = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        self.cache = {**on_disk, **self.cache}
        atomic_write_json(self.cache_path, self.cache, indent=1)

    def loaders(self, seed):
        return pk.data.loaders("fashion_mnist", batch_size=128, seed=seed, train_subset=self.args.train_subset,
                               download=False)

    def dense(self, seed):
        torch.manual_seed(seed)
        model = FashionCNN()
        train, test, _ = self.loaders(seed)
        key = f"dense|{seed}|e{self.args.epochs}"
        t0 = time.time()
        hist = fit(model, train, test, epochs=self.args.epochs, lr=0.05, momentum=0.9, weight_decay=5e-4,
                   schedule="cosine", seed=seed, progress=False,
                   checkpoint_dir=RESULTS / "ckpt" / "structured_budget" / f"s{seed}-e{self.args.epochs}")
        if key not in self.cache:
            self.cache[key] = {"top1": hist[-1]["test_top1"] if len(hist) else evaluate(model, test)["top1"],
                               "macs": macs(model) / 2, "params": nparams(model), "seconds": time.time() - t0}
            self.save()
        print(key, self.cache[key], flush=True)
        return model

    def finetune_loaders(self, seed):
        return pk.data.loaders("fashion_mnist", batch_size=128, seed=seed, train_subset=self.args.ft_subset,
                               download=False)

    def finetune(self, small, dense, seed, distill):
        train, test, _ = self.finetune_loaders(seed)
        kd = Distillation(dense, small, temperature=4.0, alpha=0.7) if distill else None
        try:
            fit(small, train, None, epochs=self.args.ft_epochs, lr=self.args.ft_lr, momentum=0.9,
                weight_decay=5e-4, schedule="cosine", seed=seed, progress=False, loss_fn=kd)
        finally:
            if kd is not None:
                kd.close()
        return evaluate(small, test)["top1"]

    def run(self, seed, method, speedup, dense):
        key = run_key(self.args, method, speedup, seed)
        if key in self.cache:
            return self.cache[key]
        a = self.args
        _, test, _ = self.loaders(seed)
        x = torch.zeros(1, *SHAPE)
        t0 = time.time()
        if method == "tp_magnitude":
            small, info = tp_magnitude_at_macs(dense, macs(dense) / speedup), {}
            distill = False
        else:
            name, kw = METHODS[method]
            kw = dict(kw)
            if name in pk.structured.RECONSTRUCTIONS.names():
                train, _, _ = self.loaders(seed)
                train.set_epoch(0)
                kw["images"] = calibration_images(train, per_class=a.calib_per_class, classes=10)
                kw["after_layer"] = self.layer_finetune(seed) if a.layer_ft_batches else None
            res = prune_to_budget(dense, x, flops_ratio=1.0 / speedup, method=name, seed=seed, **kw)
            small, info = res.model, {k: v for k, v in res.summary().items() if k != "widths"}
            info["widths"] = {k: v[1] for k, v in res.widths.items()}
            distill = a.distill
        prune_seconds = time.time() - t0
        oneshot = evaluate(small, test)["top1"]
        ft = self.finetune(small, dense, seed, distill)
        lat = pk.structured.compare(dense, small, SHAPE, batch_sizes=(64,), repeats=a.latency_repeats)
        row = {"oneshot": oneshot, "finetuned": ft, "macs_ratio": lat["flops_ratio"], "speedup_b64": lat["speedup_b64"],
               "params": nparams(small), "prune_seconds": prune_seconds, "seconds": time.time() - t0,
               "distill": distill, **info}
        self.cache[key] = row
        self.save()
        print(key, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "memory"},
              flush=True)
        return row

    def layer_finetune(self, seed):
        """ThiNet's layer-wise fine-tuning, shortened: a few SGD minibatches at lr 1e-3 after
        each pruned layer (the structured_budget pipeline's own callback)."""
        train, _, _ = self.finetune_loaders(seed)
        return layerwise_finetune(train, self.args.layer_ft_batches, lr=1e-3)


def dense_seed(args, seed):
    """The seed of the dense model a run prunes: its own, or the one shared model of --dense-seed
    (the issue's grid: one trained CNN, pruned and fine-tuned under 3 seeds)."""
    return seed if args.dense_seed is None else args.dense_seed


def run_key(args, method, speedup, seed):
    shared = "" if args.dense_seed is None else f"|d{args.dense_seed}"
    return f"{method}|{speedup}|{seed}|e{args.epochs}{shared}"


def tp_magnitude_at_macs(model, target, iters=12):
    """torch-pruning's MagnitudePruner (L1), every conv (the classifier ignored), its uniform
    ratio bisected to the FLOPs closest to ``target``."""
    import torch_pruning as tp

    x = torch.zeros(1, *SHAPE)
    lo, hi, best, gap = 0.0, 0.95, None, float("inf")
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=mid, ignored_layers=[m.fc])
        pruner.step()
        got = macs(m)
        if abs(got - target) < gap:
            best, gap = m, abs(got - target)
        if got > target:
            lo = mid
        else:
            hi = mid
    return best


# method label -> (prune_to_budget method, its options)
METHODS = {
    "l1_filter": ("l1_filter", {}),
    "bn_scale_global": ("bn_scale", {"allocation": "global", "min_channels": 8}),
    "thinet": ("thinet", {}),
    "lasso": ("lasso", {"memory_bytes": 512 * 2 ** 20}),
}
SPEEDUPS = (2.0, 4.26)


def render(bench, seeds):
    a = bench.args
    labels = ["tp_magnitude"] + list(METHODS)
    names = {"tp_magnitude": "torch-pruning MagnitudePruner (L1), plain fine-tune",
             "l1_filter": "prunekit l1_filter, uniform", "bn_scale_global": "prunekit bn_scale, global, min_channels=8",
             "thinet": "prunekit ThiNet (per-channel scaling, dense target)",
             "lasso": "prunekit LASSO (full refit, dense target)"}
    dense_seeds = sorted({dense_seed(a, s) for s in seeds})
    dense = [bench.cache.get(f"dense|{s}|e{a.epochs}", {}).get("top1") for s in dense_seeds]
    lines = ["## Structured pruning at a FLOPs budget vs torch-pruning (issue #19)", "",
             f"Fashion-MNIST CNN (5 conv + BN, {macs(FashionCNN()) / 2e6:.1f}M MACs), dense top-1 "
             f"{mean_std(dense)} ({a.epochs} dense epochs"
             f"{'' if a.dense_seed is None else f', one dense model (seed {a.dense_seed}) shared by every seed'}). "
             f"Each method prunes the same dense model to 1/2 and "
             f"1/4.26 of its MACs (`prune_to_budget(flops_ratio=...)`; torch-pruning: ratio bisected), then "
             f"{a.ft_epochs} fine-tune epochs (SGD lr {a.ft_lr}, cosine, on {a.ft_subset or 60000} training images"
             f"{'; prunekit rows distil from the dense logits, T=4, alpha=0.7' if a.distill else ''}). "
             f"Top-1 %, mean +- std over seeds {seeds}; speedup = dense / pruned latency at batch 64 "
             f"(1 thread, median of {a.latency_repeats}).", "",
             "| method | MACs kept 2x (requested 0.500) | 2x: pruned -> fine-tuned | speedup b64 | "
             "MACs kept 4.26x (requested 0.235) | 4.26x: pruned -> fine-tuned | speedup b64 |",
             "|---|---|---|---|---|---|---|"]
    data = {"dense": dense, "rows": {}}
    for label in labels:
        cells = [names[label]]
        for sp in SPEEDUPS:
            rows = [bench.cache.get(run_key(a, label, sp, s)) for s in seeds]
            rows = [r for r in rows if r]
            data["rows"][f"{label}|{sp}"] = rows
            if not rows:
                cells += ["not run"] * 3
                continue
            cells += [f"{statistics.mean(1 / r['macs_ratio'] for r in rows):.3f}",
                      f"{mean_std([r['oneshot'] for r in rows])} -> {mean_std([r['finetuned'] for r in rows])}"
                      f" (n={len(rows)})",
                      f"{statistics.mean(r['speedup_b64'] for r in rows):.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    for sp in SPEEDUPS:
        def ft(label):
            rows = data["rows"].get(f"{label}|{sp}") or []
            return statistics.mean(r["finetuned"] for r in rows) if rows else None
        tp = ft("tp_magnitude")
        done = {label: ft(label) for label in METHODS if ft(label) is not None}
        if tp is not None and done:
            best = max(done, key=done.get)
            lines.append(f"- {sp}x: best prunekit row {names[best]} {done[best]:.2f} vs torch-pruning {tp:.2f} "
                         f"({done[best] - tp:+.2f} pt; dense {mean_std(dense)}).")
    lines += ["", "Budget caveats: the dense model had only the epochs stated above (the issue's dense CNN "
              "reaches 92.75%), so the issue's absolute targets (>= 92.4 / 91.7) cannot be read off this "
              "table, only the differences to torch-pruning on the same weights. The speedups were timed on "
              "2 cores shared with other jobs: l1_filter, ThiNet and LASSO build identical widths at each "
              "budget, so the spread between their speedups is the timing noise.",
              "", f"Command: `{command_line()}`; machine: {machine()}."]
    write_section("structured_budget", "\n".join(lines), data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2, help="dense epochs")
    ap.add_argument("--dense-seed", type=int, default=None,
                    help="train one dense model with this seed and prune it under every --seeds seed "
                         "(default: one dense model per seed)")
    ap.add_argument("--train-subset", type=int, default=None, help="dense training images (default all 60k)")
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--ft-lr", type=float, default=0.01)
    ap.add_argument("--ft-subset", type=int, default=None, help="fine-tuning images (default all)")
    ap.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--calib-per-class", type=int, default=10)
    ap.add_argument("--layer-ft-batches", type=int, default=20, help="ThiNet/LASSO layer-wise fine-tuning batches")
    ap.add_argument("--latency-repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["tp_magnitude", "thinet", "l1_filter", "lasso", "bn_scale_global"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    if not args.render_only:
        dense_models = {}
        for seed in args.seeds:
            ds = dense_seed(args, seed)
            if ds not in dense_models:
                dense_models = {ds: bench.dense(ds).eval()}
            dense = dense_models[ds]
            for sp in SPEEDUPS:
                for method in args.methods:
                    bench.run(seed, method, sp, dense)
                    render(bench, args.seeds)
    render(bench, args.seeds)


if __name__ == "__main__":
    main()
