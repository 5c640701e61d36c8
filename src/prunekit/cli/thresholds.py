"""``prunekit train-sparse``: train from scratch while a threshold method prunes (SPEC.md 3, 4).

    prunekit train-sparse --method sparsity_loss --budget 0.15 --weights wavg --model lenet5 --out runs/sl
    prunekit train-sparse --method ste_fixed --sparsity 0.85 --bound gaussian --model lenet5 --out runs/ga
    prunekit train-sparse --method ltp --lam 10 --pretrain-epochs 5 --method-lr 0.01 --model lenet5 --out runs/ltp
    prunekit train-sparse --method dense_equivalent --kept-fraction 0.15 --model lenet5 --out runs/thin

Trains ``--epochs`` with the recipe (SGD, cosine by default) and the method attached, calls
``finalize()`` (hard pruning: a plain model with exact zeros), optionally fine-tunes
``--finetune-epochs`` with the mask fixed, and writes ``--out/model.pt`` (with its mask) and
``--out/result.json`` (requested and achieved sparsity, accuracy, parameter counts, per-epoch
history; for LTP the trail of checkpoints in ``--out/trail``). Rerunning resumes training.
``register(subparsers)`` adds the subcommand.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_write_json

METHOD_CHOICES = ("ste_fixed", "sparsity_loss", "ltp", "dense_equivalent")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-sparse", help="train while pruning with thresholds: ste_fixed, sparsity_loss, ltp (or a dense equivalent)",
        description="Train from scratch while a threshold method prunes (seeds 002 and 000), hard-prune at the end, "
                    "optionally fine-tune with the mask fixed. Rerunning the same command resumes.")
    p.add_argument("--method", required=True, choices=METHOD_CHOICES)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--data", default="fashion_mnist", help="dataset name")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=None, help="train on a seeded subset of N images")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--optimizer", default="sgd", help="sgd or adamw")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", help="lr schedule (e.g. cosine, cosine_restarts, constant)")
    p.add_argument("--include", nargs="*", default=None, help="name patterns of tensors to prune")
    p.add_argument("--exclude", nargs="*", default=None, help="name patterns of tensors to leave dense")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="dense epochs before the method starts (LTP's paper prunes trained networks); "
                        "the method then trains for --epochs minus these")
    p.add_argument("--method-lr", type=float, default=None, help="lr once the method runs (default --lr)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs with the final mask fixed")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    g = p.add_argument_group("ste_fixed")
    g.add_argument("--sparsity", type=float, default=None, help="per-layer sparsity in [0, 1)")
    g.add_argument("--bound", default="binary_search", choices=("binary_search", "gaussian", "topk"))
    g.add_argument("--eps", type=float, default=1e-3, help="binary search tolerance")
    g = p.add_argument_group("sparsity_loss")
    g.add_argument("--budget", type=float, default=None, help="B_p: fraction of parameters kept (0.15 = 85%% sparsity)")
    g.add_argument("--budget-flops", type=float, default=None, help="B_f: fraction of FLOPs kept")
    g.add_argument("--variant", default=None, choices=("unconstrained", "budget", "hinge"))
    g.add_argument("--weights", default="wavg", choices=("avg", "wavg", "flops"))
    g.add_argument("--lam-p", type=float, default=None)
    g.add_argument("--lam-f", type=float, default=None)
    g.add_argument("--r-init", type=float, default=None)
    g.add_argument("--r-lr-factor", type=float, default=0.01, help="lr of r = this x --lr")
    g.add_argument("--min-weights", type=int, default=1000, help="layers with fewer weights are skipped")
    g.add_argument("--no-recenter", action="store_true", help="do not re-centre the weights every forward")
    g = p.add_argument_group("ltp")
    g.add_argument("--T0", type=float, default=1e-3, help="temperature factor: T_l = T0 var(w_l)")
    g.add_argument("--tau-lr", type=float, default=None, help="lr of the thresholds (default --lr)")
    g.add_argument("--init-sparsity", type=float, default=0.0)
    g.add_argument("--absolute-tau", action="store_true", help="train tau itself, not in units of var(w)")
    g.add_argument("--trail", type=float, nargs="*", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
                   help="sparsity levels at which a checkpoint is saved")
    g = p.add_argument_group("shared")
    g.add_argument("--lam", type=float, default=None,
                   help="penalty weight (sparsity_loss default 10, ltp default 1)")
    g.add_argument("--kept-fraction", type=float, default=None, help="dense_equivalent: r_c, fraction of parameters kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (model.pt, result.json, checkpoints)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_sparse)
    return p


def build_method(args):
    """The Method named by ``args.method`` with its command-line parameters (None: dense_equivalent)."""
    from ..methods.ltp import LTP
    from ..methods.sparsity_loss import SparsityLoss
    from ..methods.ste_fixed import STEFixed

    if args.method == "ste_fixed":
        if args.sparsity is None:
            raise ValueError("--method ste_fixed needs --sparsity")
        return STEFixed(args.sparsity, bound=args.bound, eps=args.eps, include=args.include, exclude=args.exclude)
    if args.method == "sparsity_loss":
        return SparsityLoss(budget=args.budget, budget_flops=args.budget_flops, variant=args.variant, weights=args.weights,
                            lam=10.0 if args.lam is None else args.lam, lam_p=args.lam_p, lam_f=args.lam_f,
                            r_init=args.r_init, r_lr_factor=args.r_lr_factor, min_weights=args.min_weights,
                            recenter=not args.no_recenter, include=args.include, exclude=args.exclude)
    if args.method == "ltp":
        return LTP(lam=1.0 if args.lam is None else args.lam, T0=args.T0, tau_lr=args.tau_lr,
                   init_sparsity=args.init_sparsity, relative=not args.absolute_tau, trail=args.trail,
                   trail_dir=str(Path(args.out) / "trail"), include=args.include, exclude=args.exclude)
    return None


def cmd_train_sparse(args) -> int:
    import torch

    from .. import data, models
    from ..artifacts import save_model
    from ..core.accounting import report
    from ..methods.base import MethodCallback
    from ..pipelines.dense_equivalent import equivalent_width
    from ..pipelines.finetune import EnforceMask
    from ..training import evaluate, fit

    for value, what in ((args.epochs, "--epochs"), (args.batch_size, "--batch-size")):
        if value <= 0:
            raise ValueError(f"{what} must be a positive integer, got {value}")
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if not 0 <= args.pretrain_epochs < args.epochs:
        raise ValueError(f"--pretrain-epochs must be in [0, --epochs) = [0, {args.epochs}), got {args.pretrain_epochs}: "
                         "the method trains for the epochs that remain")
    method = build_method(args)
    width = args.width
    if args.method == "dense_equivalent":
        if args.kept_fraction is None:
            raise ValueError("--method dense_equivalent needs --kept-fraction")
        width = equivalent_width(args.kept_fraction, args.width)
    train, test, info = data.loaders(args.data, batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed,
                                     train_subset=args.train_subset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels, "width": width}
    torch.manual_seed(args.seed)
    model = models.get(args.model, **kwargs)
    out = Path(args.out)
    recipe = {"epochs": args.epochs, "optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
              "weight_decay": args.weight_decay, "schedule": args.schedule, "seed": args.seed}
    tag = {k: v for k, v in vars(args).items() if k not in ("func", "quiet", "out", "data_dir", "command")}
    progress = None if not args.quiet else False
    from ..device import resolve

    device = resolve()
    callbacks = [MethodCallback(method)] if method is not None else []
    history = []
    if args.pretrain_epochs:
        history += [dict(r, phase="pretrain") for r in fit(
            model, train, test, checkpoint_dir=out / "checkpoints" / "pretrain", progress=progress,
            recipe={"train_sparse": tag}, device=device, **dict(recipe, epochs=args.pretrain_epochs))]
    method_recipe = dict(recipe, epochs=args.epochs - args.pretrain_epochs)
    if args.method_lr is not None:
        method_recipe["lr"] = args.method_lr
    history += list(fit(model, train, test, checkpoint_dir=out / "checkpoints" / "train", progress=progress,
                        callbacks=callbacks, recipe={"train_sparse": tag}, device=device, **method_recipe))
    # the sparsity loss's own Gaussian estimate, reported beside the achieved sparsity
    predicted = 1.0 - float(method.predicted_density().detach()) if args.method == "sparsity_loss" else None
    mask = method.finalize() if method is not None else None
    finalized = evaluate(model, test, device=device)["top1"]
    if mask is not None and args.finetune_epochs:
        history += [dict(r, phase="finetune") for r in fit(
            model, train, test, epochs=args.finetune_epochs, lr=args.finetune_lr, schedule="cosine",
            callbacks=[EnforceMask(mask)], checkpoint_dir=out / "checkpoints" / "finetune", progress=progress,
            seed=args.seed, device=device)]
    rep = report(model)
    requested = {"ste_fixed": args.sparsity, "sparsity_loss": (1 - args.budget) if args.budget else None,
                 "ltp": None, "dense_equivalent": None}[args.method]
    result = {"method": args.method, "requested_sparsity": requested, "predicted_sparsity": predicted,
              "achieved_sparsity": rep.sparsity,
              "finalized_top1": finalized, "top1": evaluate(model, test, device=device)["top1"], "params": rep.total_params,
              "nonzero_params": rep.nonzero_params, "flops": rep.flops, "effective_flops": rep.effective_flops,
              "width": width, "history": history}
    if args.method == "ltp":
        result["trail"] = [{k: v for k, v in r.items() if k in ("level", "sparsity", "step", "path")} for r in method.trail]
    from ..distributed import is_main

    if not is_main():  # under torchrun rank 0 writes the files (every rank holds the same model)
        return 0
    save_model(out / "model.pt", model, model_name=args.model, model_kwargs=kwargs, dataset=args.data, mask=mask,
               metrics={k: v for k, v in result.items() if k not in ("history", "trail")}, recipe=recipe, history=history)
    atomic_write_json(out / "result.json", result, indent=2, default=str)
    print(f"{args.method} {args.model} on {args.data}: top-1 {result['top1']:.2f}%, sparsity "
          f"{rep.sparsity:.4f} (requested {requested if requested is not None else '-'}), "
          f"{rep.nonzero_params:,}/{rep.total_params:,} nonzero params -> {out / 'model.pt'}")
    return 0
