"""Fashion-MNIST accuracy of one-shot pruning + fine-tuning for each allocation, 3 seeds.

Budget (stated next to every figure): dense training 8 epochs (SGD 0.05, momentum 0.9, wd 5e-4,
cosine, batch 128), then one-shot pruning and 2 epochs of fine-tuning (SGD 0.01, cosine) with
the mask enforced: 10 epochs in total. Side by side, with the same dense models and the same
fine-tuning: torch.nn.utils.prune global L1 (global_unstructured) and per-layer L1
(l1_unstructured on every layer). Results are cached in results/accuracy_runs.json, so an
interrupted run resumes where it stopped.

    python benchmarks/bench_accuracy.py [--models lenet5 lenet_300_100] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit as pk
from prunekit.io import atomic_write_json
from prunekit.pipelines import finetune
from prunekit.training import evaluate, fit
from _common import RESULTS, command_line, machine, mean_std, write_section

DENSE = dict(epochs=8, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine")
FINETUNE = dict(epochs=2, lr=0.01, schedule="cosine")
VARIANTS = {  # label -> (score, allocation)
    "global magnitude": ("magnitude", "global"),
    "LAMP": ("lamp", "global"),
    "uniform": ("magnitude", "uniform"),
    "uniform+": ("magnitude", "uniform_plus"),
    "ERK": ("magnitude", "erk"),
}
TORCH_VARIANTS = ("torch global L1", "torch per-layer L1")


def torch_prune_and_finetune(model, label, sparsity, train, test, seed):
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if label == "torch global L1":
        torch_prune.global_unstructured([(m, "weight") for m in layers], pruning_method=torch_prune.L1Unstructured,
                                        amount=sparsity)
    else:
        for m in layers:
            torch_prune.l1_unstructured(m, "weight", amount=sparsity)
    oneshot = evaluate(model, test)["top1"]
    hist = fit(model, train, test, seed=seed, progress=False, **FINETUNE)
    for m in layers:
        torch_prune.remove(m, "weight")
    return oneshot, hist[-1]["test_top1"]


def train_dense(model_name, seed):
    """The dense model of (model, seed), checkpointed in results/ckpt/<model>-s<seed> (a rerun
    resumes or reloads it): ``(model, history, train loader, test loader)``."""
    train, test, info = pk.data.loaders("fashion_mnist", batch_size=128, seed=seed)
    torch.manual_seed(seed)
    dense = pk.models.get(model_name)
    hist = fit(dense, train, test, seed=seed, progress=False, checkpoint_dir=RESULTS / "ckpt" / f"{model_name}-s{seed}",
               **DENSE)
    return dense, hist, train, test


def run(models, seeds, sparsities, cache_path):
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}

    def save():
        atomic_write_json(cache_path, cache, indent=1)

    for model_name in models:
        for seed in seeds:
            t0 = time.time()
            dense, hist, train, test = train_dense(model_name, seed)
            key = f"{model_name}|dense|0|{seed}"
            cache.setdefault(key, {"top1": hist[-1]["test_top1"], "seconds": time.time() - t0})
            save()
            for s in sparsities:
                for label in [*VARIANTS, *TORCH_VARIANTS]:
                    key = f"{model_name}|{label}|{s}|{seed}"
                    if key in cache:
                        continue
                    model = copy.deepcopy(dense)
                    torch.manual_seed(seed)
                    t0 = time.time()
                    if label in VARIANTS:
                        score, allocation = VARIANTS[label]
                        try:
                            mask = pk.prune(model, s, score=score, allocation=allocation)
                        except ValueError as err:
                            cache[key] = {"error": str(err)}
                            save()
                            continue
                        oneshot = evaluate(model, test)["top1"]
                        top1 = finetune(model, mask, train, test, seed=seed, progress=False, **FINETUNE)[-1]["test_top1"]
                    else:
                        oneshot, top1 = torch_prune_and_finetune(model, label, s, train, test, seed)
                    rep = pk.core.accounting.report(model, flops=False)
                    cache[key] = {"oneshot": oneshot, "top1": top1, "achieved": rep.sparsity, "seconds": time.time() - t0}
                    save()
                    print(f"{model_name} seed {seed} {label:<18} {s:.2f}: {oneshot:.2f} -> {top1:.2f} "
                          f"(achieved {rep.sparsity:.4f})", flush=True)
    return cache


def render(cache, models, seeds, sparsities):
    lines = ["## Fashion-MNIST: one-shot pruning + fine-tuning, each allocation",
             "",
             f"`{command_line()}` on {machine()}. Budget: dense 8 epochs (SGD 0.05, momentum 0.9, wd 5e-4, "
             "cosine, batch 128) + one-shot prune + 2 fine-tune epochs (SGD 0.01, cosine) = 10 epochs. "
             f"Test top-1 %, mean +- std over seeds {list(seeds)}; one-shot = before fine-tuning. "
             "torch.nn.utils.prune rows start from the same dense models and get the same fine-tuning.", ""]
    for model_name in models:
        dense = [cache[f"{model_name}|dense|0|{s}"]["top1"] for s in seeds if f"{model_name}|dense|0|{s}" in cache]
        lines += [f"### {model_name} (dense {mean_std(dense)}%)", "",
                  "| method | " + " | ".join(f"{s:.0%} fine-tuned (one-shot)" for s in sparsities) + " |",
                  "|---|" + "---|" * len(sparsities)]
        for label in [*VARIANTS, *TORCH_VARIANTS]:
            cells = []
            for s in sparsities:
                runs = [cache.get(f"{model_name}|{label}|{s}|{seed}") for seed in seeds]
                runs = [r for r in runs if r is not None]
                if runs and "error" in runs[0]:
                    cells.append("infeasible")
                    continue
                cells.append(f"{mean_std([r['top1'] for r in runs])} ({mean_std([r['oneshot'] for r in runs])})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["lenet5", "lenet_300_100"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.98])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 when sharing the CPU)")
    ap.add_argument("--dense-only", action="store_true",
                    help="only train (or resume) the dense checkpoints results/ckpt/<model>-s<seed>/last.pt that "
                         "other benchmarks load; no pruning, no cache or section written")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    if args.dense_only:
        for model_name in args.models:
            for seed in args.seeds:
                train_dense(model_name, seed)
        return
    cache = run(args.models, args.seeds, args.sparsities, RESULTS / "accuracy_runs.json")
    write_section("accuracy", render(cache, args.models, args.seeds, args.sparsities), cache)


if __name__ == "__main__":
    main()
