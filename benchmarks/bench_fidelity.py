"""Issue #15 (seed fidelity): the effect of the fixes that change a reproduced figure, each
before (the legacy behaviour, kept by name) and after (the new default), on a tiny CPU budget.

1. Scratch-B with a step-decay recipe (seed 001): ``scratch_b`` with the schedule stretched to
   its length (default) vs milestones at absolute epochs (``stretch_schedule: false``), on the
   architecture of a structured run (L1-filter, ratio 0.5 on every block's first conv).
2. Network slimming on a pre-activation ResNet (Liu et al. 2017): one model trained with the L1
   penalty on BN gammas, then the same global share of channels removed with
   ``scope="block"`` (channel selection; residual stream whole; default) vs ``scope="stream"``
   (the last conv paired with the next block's bn1), each fine-tuned the same way.
3. LTP (seed 000): tau trained in units of var(w) (``relative=True``, the old default) vs tau
   itself (``relative=False``, the paper and the new default), same lambda, from the same
   pretrained dense model; absolute tau also with a tau lr scaled like the relative one's.

Budgets are stated in the output and are small: read the numbers as the direction of each
effect on this budget, not as the papers' figures. Runs go through ``prunekit.experiments``
(sweeps cached in ``--root``, so a rerun resumes) except part 2, which is plain Python so that
both scopes cut the same trained model.

    python benchmarks/bench_fidelity.py --threads 1 --root /tmp/bench_fidelity
"""
from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch

import prunekit as pk
from prunekit.core.accounting import flops_per_module
from prunekit.experiments.project import Project
from prunekit.experiments.spec import Sweep
from prunekit.experiments.sweep import plan, run_sweep
from prunekit.methods.base import MethodCallback
from prunekit.methods.slimming import Slimming
from prunekit.training import evaluate, fit
from _common import command_line, machine, write_section


def _sweep(root, text):
    sweep = Sweep.from_yaml(text)
    summary = run_sweep(root, sweep, quiet=True)
    if summary.failed or summary.blocked:
        raise RuntimeError(f"sweep failed: {summary}")
    project = Project(root)
    out = {}
    for p in plan(sweep):
        key = p.spec.baseline.name if p.spec.baseline else p.spec.method.name
        out.setdefault(key, []).append((p.spec, project.read_record(p.spec.id)))
    return out


# ------------------------------------------------------------------------------ 1. Scratch-B


SCRATCH_B = """
name: fidelity_scratch_b
data: {{name: fashion_mnist, train_subset: {subset}, batch_size: 128}}
model: {{name: resnet20, width: 0.25}}
train: {{epochs: {epochs}, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, schedule: multistep,
        schedule_kwargs: {{milestones: {milestones}, gamma: 0.1}}}}
method: {{name: structured, params: {{ratio: 0.5, finetune_epochs: 0, latency_repeats: 0}}}}
seeds: {seeds}
baselines: [{baseline}]
"""


def part_scratch_b(args):
    e = args.epochs
    milestones = [e // 2, (3 * e) // 4]
    rows, data = [], {}
    for label, baseline in (("after: stretched (default)", "scratch_b"),
                            ("before: absolute milestones", "{name: scratch_b, params: {stretch_schedule: false}}")):
        runs = _sweep(args.root, SCRATCH_B.format(subset=args.subset, epochs=e, milestones=milestones,
                                                  seeds=list(args.seeds), baseline=baseline))
        for spec, rec in runs["scratch_b"]:
            lrs = [row["lr"] for row in rec["history"]]
            n = rec["extra"]["own_epochs"]
            at_top = sum(1 for lr in lrs if abs(lr - 0.1) < 1e-9)
            at_last = sum(1 for lr in lrs if abs(lr - 0.001) < 1e-9)
            dense = runs["structured"][0][1]["extra"].get("dense_flops")
            rows.append((label, spec.seed, n, at_top, at_last, rec["metrics"]["top1"], rec.get("elapsed") or 0.0))
            data.setdefault(label, []).append({"seed": spec.seed, "epochs": n, "epochs_at_lr_0.1": at_top,
                                               "epochs_at_lr_0.001": at_last, "top1": rec["metrics"]["top1"],
                                               "run": spec.id, "dense_flops": dense})
    dense_top1 = _sweep(args.root, SCRATCH_B.format(subset=args.subset, epochs=e, milestones=milestones,
                                                    seeds=list(args.seeds), baseline="scratch_b"))
    main = {spec.seed: rec for spec, rec in dense_top1["structured"]}
    lines = [f"### 1. Scratch-B with a multistep recipe (seed 001)", "",
             f"Budget: ResNet-20 (width 0.25) on a {args.subset}-image Fashion-MNIST subset, dense E = {e} epochs "
             f"(SGD 0.1, momentum 0.9, wd 5e-4, batch 128, multistep x0.1 at epochs {milestones}); the pruned "
             "architecture is L1-filter ratio 0.5 on every block's first conv (one-shot, not fine-tuned); "
             "Scratch-B trains it from a fresh init for E x FLOPs ratio epochs. Seeds: "
             f"{list(args.seeds)}. Test top-1 on the full 10k test set.", "",
             "| Scratch-B schedule | seed | epochs | epochs at lr 0.1 | epochs at lr 0.001 | test top-1 (%) | wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for label, seed, n, top, last, top1, wall in rows:
        lines.append(f"| {label} | {seed} | {n} | {top} | {last} | {top1:.2f} | {wall:.0f} |")
    lines.append("")
    lines.append("Pruned model before any retraining (one-shot): " + ", ".join(
        f"seed {s}: {r['metrics']['top1']:.2f}%" for s, r in sorted(main.items())) + ".")
    return "\n".join(lines), data


# ------------------------------------------------------------------ 2. Slimming on PreResNet


class _First:
    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)


def part_slimming(args):
    train, test, info = pk.data.loaders("fashion_mnist", batch_size=128, train_subset=args.slim_subset,
                                        seed=0, test_batch_size=1000)
    test_part = _First(test, args.slim_test_batches)
    torch.manual_seed(0)
    model = pk.models.get(args.slim_model, width=0.25, in_channels=1, num_classes=10)
    shape = (1, 28, 28)
    model.input_shape = shape
    method = Slimming(s=args.slim_s, fraction=args.slim_fraction)
    t0 = time.perf_counter()
    fit(model, train, None, epochs=args.slim_epochs, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine",
        callbacks=[MethodCallback(method)], progress=False, seed=0)
    train_s = time.perf_counter() - t0
    dense_top1 = evaluate(model, test_part)["top1"]
    f0 = flops_per_module(model, shape)[1]
    p0 = sum(p.numel() for p in model.parameters())
    rows, data = [], {"dense_top1": dense_top1, "dense_flops": f0, "dense_params": p0}
    for scope, label in (("block", "after: channel selection in blocks (default)"),
                         ("stream", "before: stream channels paired across blocks")):
        m = copy.deepcopy(model)
        sl = Slimming(s=args.slim_s, fraction=args.slim_fraction, scope=scope)
        sl.attach(m, torch.optim.SGD(m.parameters(), lr=0.0))
        sl.finalize()
        small = sl.shrunk()
        stream = [blk.conv3.out_channels if hasattr(blk, "conv3") else blk.conv2.out_channels
                  for n, blk in small.named_modules() if type(blk).__name__.startswith("PreAct")]
        one_shot = evaluate(small, test_part)["top1"]
        fit(small, train, None, epochs=args.slim_ft_epochs, lr=0.01, momentum=0.9, weight_decay=1e-4,
            schedule="cosine", progress=False, seed=0)
        tuned = evaluate(small, test_part)["top1"]
        f1 = flops_per_module(small, shape)[1]
        p1 = sum(p.numel() for p in small.parameters())
        rows.append((label, p1 / p0, f1 / f0, min(stream), max(stream), one_shot, tuned))
        data[scope] = {"params_kept": p1 / p0, "flops_kept": f1 / f0, "stream_min": min(stream),
                       "stream_max": max(stream), "one_shot_top1": one_shot, "finetuned_top1": tuned,
                       "inner_channels_removed": sum(len(v) for v in sl.channels().values()),
                       "inputs_removed": sum(len(v) for v in sl.inputs().values())}
    n_test = 1000 * args.slim_test_batches
    widest = max(blk.conv3.out_channels for blk in model.modules() if type(blk).__name__ == "PreActBottleneck") \
        if args.slim_model == "preresnet164" else None
    lines = [f"### 2. Network slimming on {args.slim_model} (width 0.25)", "",
             f"Budget: {args.slim_subset}-image Fashion-MNIST subset, {args.slim_epochs} epochs with L1 on BN gammas "
             f"(s = {args.slim_s}; SGD 0.1 cosine, wd 1e-4, batch 128, {train_s:.0f} s), then {args.slim_fraction:.0%} "
             f"of the channels removed by one global |gamma| threshold, each model fine-tuned {args.slim_ft_epochs} "
             f"epochs (SGD 0.01 cosine). Test top-1 on the first {n_test} test images. Trained model before pruning: "
             f"{dense_top1:.2f}%.", "",
             "| pruning scope | params kept | FLOPs kept | residual stream width (min-max per block) | "
             "one-shot top-1 (%) | fine-tuned top-1 (%) |", "|---|---|---|---|---|---|"]
    for label, pk_, fk, smin, smax, one, tuned in rows:
        lines.append(f"| {label} | {pk_:.1%} | {fk:.1%} | {smin}-{smax}"
                     + (f" (of {widest} max)" if widest else "") + f" | {one:.2f} | {tuned:.2f} |")
    return "\n".join(lines), data


# ----------------------------------------------------------------------------------- 3. LTP


LTP = """
name: fidelity_ltp
data: {{name: fashion_mnist, train_subset: {subset}, batch_size: 128}}
model: {{name: lenet_300_100}}
train: {{epochs: {epochs}, lr: 0.05, momentum: 0.9, schedule: cosine}}
method: {{name: ltp, params: {{lam: {lam}, pretrain_epochs: {pretrain}, relative: {relative}{extra}}}}}
seeds: {seeds}
"""


def part_ltp(args):
    rows, data = [], {}
    variants = (("before: relative tau (t x var(w))", "true", ""),
                ("after: absolute tau (paper), default tau lr (recipe lr x min var(w)^2)", "false", ""),
                ("after: absolute tau, tau lr = recipe lr", "false", ", tau_lr: 0.05")) + tuple(
        (f"after: absolute tau, tau lr {v:g}", "false", f", tau_lr: {v}") for v in args.ltp_tau_lr)
    for label, relative, extra in variants:
        runs = _sweep(args.root, LTP.format(subset=args.subset, epochs=args.ltp_epochs, lam=args.ltp_lam,
                                            pretrain=args.ltp_pretrain, relative=relative, extra=extra,
                                            seeds=list(args.seeds)))
        for spec, rec in runs["ltp"]:
            layers = {row["name"]: row["sparsity"] for row in rec.get("layers") or []}
            rows.append((label, spec.seed, rec["metrics"]["achieved_sparsity"], rec["metrics"]["top1"], layers))
            data.setdefault(label, []).append({"seed": spec.seed, "sparsity": rec["metrics"]["achieved_sparsity"],
                                               "top1": rec["metrics"]["top1"], "layer_sparsity": layers,
                                               "run": spec.id})
    names = sorted({n for *_, layers in rows for n in layers})
    lines = ["### 3. LTP: relative vs absolute threshold (seed 000)", "",
             f"Budget: LeNet-300-100 on a {args.subset}-image Fashion-MNIST subset, {args.ltp_pretrain} dense epochs then "
             f"{args.ltp_epochs - args.ltp_pretrain} LTP epochs (SGD 0.05 cosine over all {args.ltp_epochs}, momentum 0.9, "
             f"lambda = {args.ltp_lam}, T0 = 1e-3, no fine-tuning), hard mask at the end; seeds {list(args.seeds)}; "
             "test top-1 on the full test set.", "",
             "| tau | seed | sparsity | test top-1 (%) | " + " | ".join(f"{n} sparsity" for n in names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for label, seed, sp, top1, layers in rows:
        lines.append(f"| {label} | {seed} | {sp:.2%} | {top1:.2f} | "
                     + " | ".join(f"{layers.get(n, float('nan')):.1%}" for n in names) + " |")
    return "\n".join(lines), data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/bench_fidelity", help="experiment store (runs cached there)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--subset", type=int, default=2000, help="training images (parts 1 and 3)")
    ap.add_argument("--epochs", type=int, default=4, help="part 1: dense epochs E")
    ap.add_argument("--slim-model", default="preresnet110")
    ap.add_argument("--slim-subset", type=int, default=2000)
    ap.add_argument("--slim-epochs", type=int, default=6)
    ap.add_argument("--slim-ft-epochs", type=int, default=2)
    ap.add_argument("--slim-s", type=float, default=1e-4)
    ap.add_argument("--slim-fraction", type=float, default=0.4)
    ap.add_argument("--slim-test-batches", type=int, default=2)
    ap.add_argument("--ltp-epochs", type=int, default=4)
    ap.add_argument("--ltp-pretrain", type=int, default=2)
    ap.add_argument("--ltp-lam", type=float, default=1.0)
    ap.add_argument("--ltp-tau-lr", type=float, nargs="+", default=[1e-8, 1e-9],
                    help="absolute-tau runs with these tau learning rates (besides the recipe's)")
    ap.add_argument("--parts", nargs="+", default=["scratch_b", "slimming", "ltp"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = {"scratch_b": part_scratch_b, "slimming": part_slimming, "ltp": part_ltp}
    text, data = [], {"command": command_line(), "machine": machine()}
    for name in args.parts:
        t0 = time.perf_counter()
        md, d = parts[name](args)
        text.append(md + f"\n\n({name}: {time.perf_counter() - t0:.0f} s wall on this run, cached runs excluded)")
        data[name] = d
    header = ["## Seed fidelity (issue #15): before/after on a CPU budget", "",
              f"Command: `{command_line()}`. Machine: {machine()} (shared CPU: wall times are noisy).", ""]
    write_section("fidelity", "\n".join(header) + "\n\n".join(text), data)


if __name__ == "__main__":
    main()
