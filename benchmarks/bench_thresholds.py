"""Pruning during training with thresholds (seeds 002 and 000) on Fashion-MNIST, 3 seeds.

Budget: every run trains from scratch for the same epochs as the dense run (default 10: SGD
0.05, momentum 0.9, wd 5e-4, cosine, batch 128; the methods' own parameters at the authors'
defaults: r at lr/100, lambda 10, layers under 1000 weights skipped; LTP T0 = 1e-3).

1. Budget 85% (B_p = 0.15): fixed-BS and fixed-GA (ste_fixed, s = 0.85 per layer),
   budget-avg and budget-wavg (sparsity_loss, budget squared): requested vs achieved sparsity
   and accuracy (seed 002's WRN-16-8 / CIFAR-100: 84.90 / 86.09 / 77.21 / 85.45%).
2. Trade-off curves, error vs nonzero parameters, in one plot: fixed-GA (sparsity sweep),
   budget-wavg (budget sweep), unconstrained (lambda sweep), the LTP trail (one run, every
   checkpoint evaluated) and the dense-equivalent thin models (channels x sqrt(r_c)).
3. Training time per epoch of each method / dense (ratio).

Models: LeNet-5 (every table and curve), and ResNet-20 at reduced width (``--resnet-width``)
for the BatchNorm case (budget table, one dense equivalent and timing; ``--curve-models`` adds
its curves too).
Each finished run is cached in results/<name>_runs.json (keyed by data, epochs, model, method,
parameter and seed), so an interrupted run resumes where it stopped.

    python benchmarks/bench_thresholds.py --threads 2                       # the full grid
    python benchmarks/bench_thresholds.py --data synthetic --epochs 1 --seeds 0 --models lenet5 \\
        --name thresholds_smoke --threads 1 --quick                         # a smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import prunekit as pk
from prunekit.io import atomic_write_json
from prunekit.methods.base import MethodCallback
from prunekit.methods.sparsity_loss import SparsityLoss
from prunekit.pipelines.dense_equivalent import equivalent_width
from prunekit.training import evaluate, fit
from _common import RESULTS, command_line, machine, mean_std, write_section

RECIPE = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine")
LTP_PRE_LR = RECIPE["lr"] / 5  # LTP's epochs after the dense ones
TRAIL = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
BUDGET_TABLE = [("fixed-BS", "ste_bs", 0.85), ("fixed-GA", "ste_ga", 0.85),
                ("budget-avg", "budget_avg", 0.15), ("budget-wavg", "budget_wavg", 0.15),
                ("budget-wavg, no layer skipped", "budget_wavg_all", 0.15),
                ("budget-wavg, no layer skipped, r at lr/10", "budget_wavg_all_fast", 0.15)]


# Each kind of run: the registered method and its Params fields (VALUE: the swept value;
# LTP_LAM: --ltp-lam). Built through Method.from_params, like the pipelines and train-sparse.
VALUE, LTP_LAM = object(), object()
METHOD_KINDS = {
    "ste_bs": ("ste_fixed", {"sparsity": VALUE, "bound": "binary_search"}),
    "ste_ga": ("ste_fixed", {"sparsity": VALUE, "bound": "gaussian"}),
    "budget_avg": ("sparsity_loss", {"budget": VALUE, "weights": "avg"}),
    "budget_wavg": ("sparsity_loss", {"budget": VALUE, "weights": "wavg"}),
    # min_weights=0: the small layers are pruned too
    "budget_wavg_all": ("sparsity_loss", {"budget": VALUE, "weights": "wavg", "min_weights": 0}),
    # and r learns 10x faster than the authors' lr/100 (short budgets)
    "budget_wavg_all_fast": ("sparsity_loss", {"budget": VALUE, "weights": "wavg", "min_weights": 0,
                                               "r_lr_factor": 0.1}),
    "unconstrained": ("sparsity_loss", {"variant": "unconstrained", "lam": VALUE}),
    "ltp": ("ltp", {"lam": LTP_LAM, "trail": list(TRAIL)}),
    "ltp_pre": ("ltp", {"lam": VALUE, "trail": list(TRAIL)}),
}


def make_method(kind: str, value, ltp_lam: float, trail_dir: str):
    if kind in ("dense", "dense_equivalent"):
        return None
    if kind not in METHOD_KINDS:
        raise ValueError(kind)
    name, fields = METHOD_KINDS[kind]
    method_class = pk.methods.get(name)
    params = method_class.Params(**{k: value if v is VALUE else ltp_lam if v is LTP_LAM else v
                                    for k, v in fields.items()})
    return method_class.from_params(params, **({"trail_dir": trail_dir} if name == "ltp" else {}))


def one_run(args, model_name, kind, value, seed):
    train, test, info = pk.data.loaders(args.data, batch_size=128, seed=seed, train_subset=args.train_subset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    width = args.resnet_width if model_name.startswith("resnet") else 1.0
    if kind == "dense_equivalent":
        width = equivalent_width(value, width)
    torch.manual_seed(seed)
    model = pk.models.get(model_name, width=width, **kwargs)
    ckpt = RESULTS / "ckpt" / "thresholds"
    trail_dir = str(ckpt / (f"{args.data}-{model_name}-ltp-s{seed}" if kind == "ltp"
                            else f"{args.data}-{model_name}-ltp_pre-l{value:g}-s{seed}"))
    method = make_method(kind, value, args.ltp_lam, trail_dir)
    callbacks = [MethodCallback(method)] if method is not None else []
    epochs, recipe = args.epochs, dict(RECIPE)
    if kind == "ltp_pre":
        # LTP as its paper uses it: on a trained network. Same total budget: E/2 dense epochs
        # (checkpointed, shared by the lambda sweep), then E/2 LTP epochs at LTP_PRE_LR.
        warm = args.epochs // 2
        fit(model, train, test, epochs=warm, seed=seed, progress=False, **RECIPE,
            checkpoint_dir=ckpt / f"{args.data}-{args.train_subset}-{model_name}-dense{warm}-s{seed}")
        epochs, recipe["lr"] = args.epochs - warm, LTP_PRE_LR
    t0 = time.time()
    hist = fit(model, train, test, epochs=epochs, seed=seed, progress=False, callbacks=callbacks, **recipe)
    seconds = time.time() - t0
    last_reported = hist[-1]["test_top1"]
    trail = []
    # the sparsity loss's own Gaussian prediction, next to what hard pruning then achieves
    predicted = 1.0 - float(method.predicted_density().detach()) if isinstance(method, SparsityLoss) else None
    if method is not None:
        points = list(getattr(method, "trail", []))
        method.finalize()
        for row in points:  # LTP: evaluate every checkpoint of the trail
            saved = torch.load(row["path"], map_location="cpu", weights_only=True)
            point = pk.models.get(model_name, width=width, **kwargs)
            point.load_state_dict(saved["model"])
            rep = pk.core.accounting.report(point, flops=False)
            trail.append({"level": row["level"], "step": row["step"], "sparsity": rep.sparsity,
                          "nonzero_params": rep.nonzero_params, "top1": evaluate(point, test)["top1"]})
    rep = pk.core.accounting.report(model, flops=False)
    return {"top1": evaluate(model, test)["top1"], "last_reported_top1": last_reported, "achieved": rep.sparsity,
            "nonzero_params": rep.nonzero_params, "params": rep.total_params, "prunable": rep.prunable_params,
            "seconds_per_epoch": sum(r["seconds"] for r in hist) / len(hist), "seconds": seconds,
            "trail": trail, "width": width, "predicted": predicted}


def plan(args, seed):
    jobs = []
    for model_name in args.models:
        jobs.append((model_name, "dense", 0))
        for _, kind, value in BUDGET_TABLE:
            jobs.append((model_name, kind, value))
        if model_name not in args.curve_models or seed not in args.curve_seeds:
            jobs.append((model_name, "dense_equivalent", 0.15))  # the budget table's thin twin
            continue
        for s in args.ga_sparsities:
            jobs.append((model_name, "ste_ga", s))
        for b in args.budgets:
            jobs.append((model_name, "budget_wavg", b))
        for lam in args.lambdas:
            jobs.append((model_name, "unconstrained", lam))
        jobs.append((model_name, "ltp", args.ltp_lam))
        for lam in args.ltp_pre_lams:
            jobs.append((model_name, "ltp_pre", lam))
        for k in args.kept:
            jobs.append((model_name, "dense_equivalent", k))
    return list(dict.fromkeys(jobs))


def run(args, cache_path):
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}

    def save():
        atomic_write_json(cache_path, cache, indent=1)

    for seed in args.seeds:
        for model_name, kind, value in plan(args, seed):
            key = key_of(args, model_name, kind, value, seed)
            if key in cache:
                continue
            cache[key] = one_run(args, model_name, kind, value, seed)
            save()
            r = cache[key]
            print(f"{model_name} seed {seed} {kind:<16} {value:<6}: top1 {r['top1']:.2f}, sparsity {r['achieved']:.4f}, "
                  f"{r['seconds_per_epoch']:.1f} s/epoch", flush=True)
    return cache


def key_of(args, model_name, kind, value, seed):
    return f"{args.data}|{args.train_subset}|{args.epochs}|{model_name}|{kind}|{value}|{seed}"


def runs_of(cache, args, model_name, kind, value):
    return [cache[k] for k in (key_of(args, model_name, kind, value, s) for s in args.seeds) if k in cache]


def plot(cache, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(args.models), figsize=(6 * len(args.models), 4.5), squeeze=False)
    for ax, model_name in zip(axes[0], args.models):
        def curve(kind, values, label, marker):
            pts = []
            for v in values:
                runs = runs_of(cache, args, model_name, kind, v)
                if runs:
                    pts.append((statistics.mean(r["nonzero_params"] for r in runs),
                                100 - statistics.mean(r["top1"] for r in runs)))
            if pts:
                pts.sort()
                ax.plot(*zip(*pts), marker=marker, label=label)
        curve("ste_ga", args.ga_sparsities, "fixed-GA", "o")
        curve("budget_wavg", args.budgets, "budget-wavg", "s")
        curve("unconstrained", args.lambdas, "unconstrained (lambda sweep)", "^")
        curve("dense_equivalent", args.kept, "dense equivalent", "D")
        curve("ltp_pre", args.ltp_pre_lams, "LTP after E/2 dense (lambda sweep)", "P")
        for kind, lam, label in (("ltp", args.ltp_lam, f"LTP trail, from scratch (lambda {args.ltp_lam:g})"),
                                 ("ltp_pre", args.ltp_trail_lam, f"LTP trail, after E/2 dense "
                                                                 f"(lambda {args.ltp_trail_lam:g})")):
            ltp = runs_of(cache, args, model_name, kind, lam)
            if ltp and ltp[0]["trail"]:
                levels = sorted({p["level"] for r in ltp for p in r["trail"]})
                pts = []
                for lv in levels:
                    ps = [p for r in ltp for p in r["trail"] if p["level"] == lv]
                    pts.append((statistics.mean(p["nonzero_params"] for p in ps),
                                100 - statistics.mean(p["top1"] for p in ps)))
                ax.plot(*zip(*pts), marker="v", ls="--", label=label)
        dense = runs_of(cache, args, model_name, "dense", 0)
        if dense:
            ax.axhline(100 - statistics.mean(r["top1"] for r in dense), color="grey", ls=":", label="dense")
        ax.set_xscale("log")
        ax.set_yscale("log")  # collapsed points (90% error) and 10% errors on one readable axis
        ax.set_yticks([5, 10, 20, 50, 100], labels=["5", "10", "20", "50", "100"])
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("nonzero parameters")
        ax.set_ylabel("test error % (log)")
        ax.set_title(f"{model_name} on {args.data}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reachable_sparsity(args, model_name: str, kind: str) -> str:
    """The sparsity loss's lowest reachable predicted density, as a sparsity (see density_floor)."""
    if not kind.startswith("budget_"):
        return "100%"
    import warnings

    in_channels = 3 if args.data.startswith("cifar") else 1  # only the parameter counts matter here
    model = pk.models.get(model_name, width=args.resnet_width if model_name.startswith("resnet") else 1.0,
                          num_classes=10, in_channels=in_channels)
    method = make_method(kind, 0.15, 1.0, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning is the point of this column
        method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return f"{100 * (1 - method.density_floor()):.0f}%"


def render(cache, args, plot_name):
    lines = [f"## Pruning during training with thresholds: {', '.join(args.models)} on {args.data}", "",
             f"`{command_line()}` on {machine()}. Every run trains from scratch for {args.epochs} epochs in all "
             f"(SGD {RECIPE['lr']:g}, momentum 0.9, wd 5e-4, cosine, batch 128; LTP after dense: {args.epochs // 2} "
             f"dense epochs, then {args.epochs - args.epochs // 2} LTP epochs at lr {LTP_PRE_LR:g}"
             + (f", {args.train_subset} training images" if args.train_subset else "")
             + f"); ResNet-20 at width {args.resnet_width}. Test top-1 %, mean +- std over seeds {list(args.seeds)}"
             + (f" (trade-off curves: seeds {list(args.curve_seeds)})" if args.curve_seeds != list(args.seeds) else "")
             + ".", ""]
    for model_name in args.models:
        dense = runs_of(cache, args, model_name, "dense", 0)
        lines += [f"### {model_name}: budget 85% (B_p = 0.15), dense {mean_std([r['top1'] for r in dense])}%", "",
                  "| method | requested sparsity | highest reachable | predicted (Gaussian) % | achieved sparsity % "
                  "| top-1 % | finalized = last reported |",
                  "|---|---|---|---|---|---|---|"]
        for label, kind, value in BUDGET_TABLE:
            runs = runs_of(cache, args, model_name, kind, value)
            same = all(abs(r["top1"] - r["last_reported_top1"]) < 1e-9 for r in runs) if runs else None
            reach = reachable_sparsity(args, model_name, kind)
            predicted = [100 * r["predicted"] for r in runs if r.get("predicted") is not None]
            lines.append(f"| {label} | 85% | {reach} | {mean_std(predicted) if predicted else '-'} | "
                         f"{mean_std([100 * r['achieved'] for r in runs])} | "
                         f"{mean_std([r['top1'] for r in runs])} | {same} |")
        lines += ["", "(seed 002, WRN-16-8 on CIFAR-100: achieved 84.90 / 86.09 / 77.21 / 85.45%; target here: "
                  "budget-wavg within 0.5 pt of 85%.) 'Highest reachable': the sparsity loss skips layers under "
                  "1000 weights (the authors' default) and counts them as dense in its predicted density, so a "
                  "budget below their share cannot be met (prunekit warns) and the loss keeps pushing the other layers "
                  "towards r = 5; under 'avg' every layer counts equally, so a few small skipped layers cap it far "
                  "lower than under 'wavg'. The fixed-sparsity rows and 'no layer skipped' (min_weights=0) prune "
                  "every layer. 'Predicted': "
                  "the loss's own estimate sum_i c_i erf(r_i / sqrt 2) at the end of training, in the variant's weights "
                  "(under 'avg' a mean over layers, not over parameters); hard pruning then "
                  "removes what |w| < r sigma actually holds, which differs where trained weights are not Gaussian "
                  "(more peaked: more weights fall under the bound).", ""]
        lines += [f"#### {model_name}: trade-off points", "", "| method | parameter | achieved sparsity % | nonzero params | top-1 % |",
                  "|---|---|---|---|---|"]
        for label, kind, values in (("fixed-GA", "ste_ga", args.ga_sparsities), ("budget-wavg", "budget_wavg", args.budgets),
                                    ("unconstrained", "unconstrained", args.lambdas),
                                    ("dense equivalent", "dense_equivalent", args.kept)):
            for v in values:
                runs = runs_of(cache, args, model_name, kind, v)
                if runs:
                    lines.append(f"| {label} | {v} | {mean_std([100 * r['achieved'] for r in runs])} | "
                                 f"{mean_std([r['nonzero_params'] for r in runs], '{:.0f}')} | {mean_std([r['top1'] for r in runs])} |")
        trail_rows = [("ltp", args.ltp_lam, f"from scratch, lambda {args.ltp_lam:g}")]
        trail_rows += [("ltp_pre", lam, f"after {args.epochs // 2} dense epochs, lambda {lam:g}")
                       for lam in args.ltp_pre_lams]
        for kind, lam, how in trail_rows:
            ltp = runs_of(cache, args, model_name, kind, lam)
            for r in ltp[:1]:
                for p in r["trail"]:
                    lines.append(f"| LTP trail ({how}; seed {args.seeds[0]}, step {p['step']}) | {p['level']:.2f} | "
                                 f"{100 * p['sparsity']:.2f} | {p['nonzero_params']} | {p['top1']:.2f} |")
            if ltp:
                lines.append(f"| **LTP final ({how})** | - | {mean_std([100 * r['achieved'] for r in ltp])} | "
                             f"{mean_std([r['nonzero_params'] for r in ltp], '{:.0f}')} | "
                             f"{mean_std([r['top1'] for r in ltp])} |")
        lines += ["", "LTP's trail is taken while tau rises, before any fine-tuning: each checkpoint is the "
                  "hard-pruned network at the step it first reached the level. From scratch (lambda 1, lr 0.05) "
                  "the thresholds outrun the training, so the early checkpoints are barely trained networks; on a "
                  "trained network (the paper's use) the trail is a usable sparsity/accuracy menu. The sparsity LTP "
                  "settles at is set by lambda.", ""]
        lines += ["", f"#### {model_name}: training time per epoch vs dense, as recorded during this grid", "",
                  "(The runs ran one after another while the machine's load changed, so these ratios carry that "
                  "noise; the side-by-side measurement is in the threshold-overhead section.)", "",
                  "| method | s/epoch | ratio to dense |", "|---|---|---|"]
        base = statistics.mean(r["seconds_per_epoch"] for r in dense) if dense else None
        for label, kind, value in [("dense", "dense", 0), *BUDGET_TABLE, ("unconstrained", "unconstrained", args.lambdas[0]),
                                   ("LTP", "ltp", args.ltp_lam)]:
            runs = runs_of(cache, args, model_name, kind, value)
            if runs:
                spe = statistics.mean(r["seconds_per_epoch"] for r in runs)
                lines.append(f"| {label} | {spe:.2f} | {spe / base:.2f} |" if base else f"| {label} | {spe:.2f} | n/a |")
        lines.append("")
    # the path from BENCHMARKS.md (repository root), where the sections are assembled
    lines += [f"![error vs parameters](benchmarks/results/{plot_name})", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion_mnist")
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    ap.add_argument("--curve-models", nargs="+", default=["lenet5"],
                    help="models that get the full trade-off curves (the others: budget table + timing)")
    ap.add_argument("--resnet-width", type=float, default=0.5)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--curve-seeds", nargs="+", type=int, default=None,
                    help="seeds that also run the trade-off curves (default: all of --seeds)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ga-sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.85, 0.9, 0.95])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.15, 0.1, 0.05])
    ap.add_argument("--lambdas", nargs="+", type=float, default=[0.01, 0.1, 1.0, 10.0])
    ap.add_argument("--kept", nargs="+", type=float, default=[0.5, 0.3, 0.15, 0.1, 0.05])
    ap.add_argument("--ltp-lam", type=float, default=1.0, help="LTP from scratch (one run, its trail)")
    ap.add_argument("--ltp-pre-lams", nargs="+", type=float, default=[1.0, 10.0, 30.0],
                    help="LTP after E/2 dense epochs: lambda sweep")
    ap.add_argument("--ltp-trail-lam", type=float, default=10.0, help="whose trail (after dense) the plot shows")
    ap.add_argument("--name", default="thresholds", help="results/<name>.md, .json, _runs.json, .png")
    ap.add_argument("--quick", action="store_true", help="one point per curve (a smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 when sharing the CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.curve_seeds is None:
        args.curve_seeds = list(args.seeds)
    if args.quick:
        args.ga_sparsities, args.budgets, args.lambdas, args.kept = [0.85], [0.15], [1.0], [0.15]
        args.ltp_pre_lams = [10.0]
    RESULTS.mkdir(exist_ok=True)
    cache = run(args, RESULTS / f"{args.name}_runs.json")
    plot_name = f"{args.name}.png"
    plot(cache, args, RESULTS / plot_name)
    write_section(args.name, render(cache, args, plot_name), cache)


if __name__ == "__main__":
    main()
