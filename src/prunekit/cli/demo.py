"""``prunekit demo``: LeNet-5 on Fashion-MNIST, pruned one-shot with each allocation.

Trains the dense model (resumable), then for every allocation and sparsity prunes a copy,
fine-tunes it briefly with the mask enforced, and records requested vs achieved sparsity,
accuracy, parameters and FLOPs. Results are kept in ``OUT/results.json`` so a rerun skips what
is done; the table is printed and the plot saved as ``OUT/accuracy_vs_sparsity.png``.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from ..io import atomic_path, atomic_write_json
from .. import data, models
from ..core.accounting import report
from ..core.prune import prune
from ..pipelines.finetune import finetune
from ..training import evaluate, fit

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
# (label, score, allocation): LAMP is a score used with the global allocation (SPEC.md 1).
VARIANTS = (
    ("global", "magnitude", "global"),
    ("lamp", "lamp", "global"),
    ("uniform", "magnitude", "uniform"),
    ("uniform_plus", "magnitude", "uniform_plus"),
    ("erk", "magnitude", "erk"),
)


def _write_json(path: Path, obj) -> None:
    atomic_write_json(path, obj, indent=2)


def run_demo(out="demo_out", epochs=4, finetune_epochs=1, finetune_subset=10000, data_dir=None, seed=0,
             quiet=False, dataset="fashion_mnist", model_name="lenet5", sparsities=SPARSITIES, variants=VARIANTS,
             batch_size=128):
    """Run the demo and return the list of result rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = False if quiet else None
    started = time.time()
    train, test, info = data.loaders(dataset, batch_size=batch_size, data_dir=data_dir, seed=seed)
    torch.manual_seed(seed)
    dense = models.get(model_name, num_classes=info.num_classes, in_channels=info.in_channels)
    history = fit(dense, train, test, epochs=epochs, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                  checkpoint_dir=out / "dense", seed=seed, progress=progress,
                  recipe={"epochs": epochs, "lr": 0.05, "schedule": "cosine", "optimizer": "sgd"})
    dense_rep = report(dense)
    dense_acc = history[-1]["test_top1"]
    print(f"dense {model_name}: top-1 {dense_acc:.2f}% after {epochs} epochs, {dense_rep.total_params:,} params, "
          f"{dense_rep.flops:,} FLOPs", flush=True)

    ft_train = train
    if finetune_subset:
        ft_train, _, _ = data.loaders(dataset, batch_size=batch_size, data_dir=data_dir, seed=seed,
                                      train_subset=min(finetune_subset, train.num_samples))
    results_path = out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["allocation"], r["requested_sparsity"]) for r in rows}
    for label, score, allocation in variants:
        for s in sparsities:
            if (label, s) in done:
                continue
            model = copy.deepcopy(dense)
            try:
                mask = prune(model, s, score=score, allocation=allocation)
            except ValueError as err:      # e.g. uniform+ cannot reach 98%: say so in the table
                rows.append({"allocation": label, "requested_sparsity": s, "error": str(err)})
                _write_json(results_path, rows)
                continue
            oneshot = evaluate(model, test)["top1"]
            hist = finetune(model, mask, ft_train, test, epochs=finetune_epochs, lr=0.01, seed=seed, progress=progress)
            rep = report(model)
            rows.append({"allocation": label, "requested_sparsity": s, "achieved_sparsity": rep.sparsity,
                         "oneshot_top1": oneshot, "top1": hist[-1]["test_top1"], "nonzero_params": rep.nonzero_params,
                         "params": rep.total_params, "effective_flops": rep.effective_flops, "flops": rep.flops})
            _write_json(results_path, rows)
            print(f"  {label:<13} sparsity {s:.2f}: one-shot {oneshot:6.2f}% -> fine-tuned {rows[-1]['top1']:6.2f}%",
                  flush=True)
    print()
    print(format_table(rows, dense_acc))
    plot_path = plot(rows, dense_acc, out / "accuracy_vs_sparsity.png", f"{model_name} on {dataset}")
    print(f"\nplot: {plot_path}\nresults: {results_path}\nwall time: {time.time() - started:.0f} s")
    return rows


def format_table(rows, dense_acc: float) -> str:
    head = f"{'allocation':<13} {'requested':>9} {'achieved':>9} {'one-shot':>9} {'fine-tuned':>10} {'nonzero params':>15} {'eff. FLOPs':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['allocation']:<13} {r['requested_sparsity']:>9.2%}   infeasible: {r['error'].split(':')[0]}")
            continue
        lines.append(f"{r['allocation']:<13} {r['requested_sparsity']:>9.2%} {r['achieved_sparsity']:>9.2%} "
                     f"{r['oneshot_top1']:>8.2f}% {r['top1']:>9.2f}% {r['nonzero_params']:>15,} {r['effective_flops']:>11,}")
    lines.append(f"(dense: {dense_acc:.2f}%)")
    return "\n".join(lines)


def plot(rows, dense_acc: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in dict.fromkeys(r["allocation"] for r in rows):
        pts = sorted((r["achieved_sparsity"], r["top1"]) for r in rows if r["allocation"] == label and "error" not in r)
        if pts:
            ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.axhline(dense_acc, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:  # savefig infers the format from it
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path
