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

``--method`` is any registered during-training method (``prunekit.methods.METHODS``) or
``dense_equivalent``; each method's flags are generated from its ``Params``
(:mod:`.method_flags`), so a new method needs no change here.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .. import data, models
from ..artifacts import save_model
from ..core.accounting import report
from ..device import resolve
from ..distributed import is_main
from ..io import atomic_write_json
from ..methods import METHODS
from ..methods.base import Method, MethodCallback
from ..params import MISSING, add_arguments, from_namespace
from ..pipelines.dense_equivalent import equivalent_width
from ..pipelines.finetune import EnforceMask
from ..pipelines.threshold_pipelines import DenseEquivalentParams
from ..training import evaluate, fit
from .method_flags import add_method_arguments, method_flag_defaults, method_params

DENSE_EQUIVALENT = "dense_equivalent"  # not a method: the thin dense model of a kept fraction

# The checkpoints of a run record its arguments, and a rerun resumes only when they are the
# same. These are the arguments train-sparse had before its method flags were generated: they
# are always recorded, as then; a flag added since is recorded only when set to a value other
# than its default, so that runs started before it existed still resume.
RECORDED_ALWAYS = frozenset({
    "method", "model", "width", "data", "batch_size", "train_subset", "epochs", "optimizer", "lr", "momentum",
    "weight_decay", "schedule", "include", "exclude", "pretrain_epochs", "method_lr", "finetune_epochs",
    "finetune_lr", "sparsity", "bound", "eps", "budget", "budget_flops", "variant", "weights", "lam_p", "lam_f",
    "r_init", "r_lr_factor", "min_weights", "no_recenter", "T0", "tau_lr", "init_sparsity", "absolute_tau",
    "trail", "lam", "kept_fraction", "seed"})
NOT_RECORDED = ("func", "quiet", "out", "data_dir", "command")


def method_choices():
    return (*METHODS.names(), DENSE_EQUIVALENT)


def register(subparsers) -> argparse.ArgumentParser:
    choices = method_choices()
    p = subparsers.add_parser(
        "train-sparse", help=f"train while pruning during training: {', '.join(choices[:-1])} (or a dense equivalent)",
        description="Train from scratch while a method prunes (seeds 002 and 000), hard-prune at the end, "
                    "optionally fine-tune with the mask fixed. Rerunning the same command resumes.")
    p.add_argument("--method", required=True, choices=choices)
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
    p.add_argument("--lr-schedule", "--schedule", dest="schedule", default="cosine", help="lr schedule (e.g. cosine, cosine_restarts, constant)")
    p.add_argument("--include", nargs="*", default=None, help="name patterns of tensors to prune")
    p.add_argument("--exclude", nargs="*", default=None, help="name patterns of tensors to leave dense")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="dense epochs before the method starts (LTP's paper prunes trained networks); "
                        "the method then trains for --epochs minus these")
    p.add_argument("--method-lr", type=float, default=None, help="lr once the method runs (default --lr)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs with the final mask fixed")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (model.pt, result.json, checkpoints)")
    p.add_argument("--quiet", action="store_true")
    add_method_arguments(p)
    add_arguments(p.add_argument_group(DENSE_EQUIVALENT), DenseEquivalentParams)
    p.set_defaults(func=cmd_train_sparse)
    return p


def _runtime_arguments(method_class: type, args) -> Dict[str, Any]:
    """Constructor arguments that are not parameters, where the method takes them: LTP's
    ``trail_dir`` (``--out``/trail) and a random score's ``seed``."""
    available = {"trail_dir": str(Path(args.out) / "trail"), "seed": args.seed}
    accepted = inspect.signature(method_class.__init__).parameters
    return {k: v for k, v in available.items() if k in accepted}


def build_method(args) -> Optional[Method]:
    """The Method named by ``args.method`` with its command-line parameters (None: dense_equivalent)."""
    if args.method == DENSE_EQUIVALENT:
        return None
    method_class = METHODS.get(args.method)
    return method_class.from_params(method_params(args, args.method), **_runtime_arguments(method_class, args))


def requested_sparsity(args) -> Optional[float]:
    """The weight sparsity the command asks for (None: the method finds its own)."""
    if args.method == DENSE_EQUIVALENT:
        return None
    return METHODS.get(args.method).requested_sparsity(method_params(args, args.method))


def recorded_arguments(args) -> Dict[str, Any]:
    """The arguments written into the checkpoints (see ``RECORDED_ALWAYS``)."""
    defaults = method_flag_defaults()
    out = {k: v for k, v in vars(args).items()
           if k not in NOT_RECORDED and k != "relative_tau" and (k in RECORDED_ALWAYS or v != defaults.get(k))}
    # LTP's switch was --absolute-tau (relative by default) until issue #15 made absolute the
    # default (--relative-tau): record it as before, so a run resumes exactly when it means
    # the same (old default <-> --relative-tau, old --absolute-tau <-> new default).
    out["absolute_tau"] = args.method == "ltp" and not getattr(args, "relative_tau", False)
    if args.method == "ste_fixed":  # --min-weights applies to ste_fixed since issue #15: not an old run
        out["ste_fixed_min_weights"] = args.min_weights
    # A moved default (param(new, legacy=old), issue #15) is recorded whenever it is not the
    # legacy value, so a checkpoint made before the move never resumes with the new meaning.
    if args.method in METHODS.names():
        for f in dataclasses.fields(METHODS.get(args.method).Params):
            legacy = f.metadata.get("legacy", MISSING)
            if legacy is not MISSING and f.name in vars(args) and f.name != "relative":
                out.pop(f.name, None)
                if vars(args)[f.name] != legacy:
                    out[f.name] = vars(args)[f.name]
    return out


def cmd_train_sparse(args) -> int:
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
    if args.method == DENSE_EQUIVALENT:
        thin = from_namespace(DenseEquivalentParams, args, owner=f"--method {DENSE_EQUIVALENT}")
        width = equivalent_width(thin.kept_fraction, args.width)
    train, test, info = data.loaders(args.data, batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed,
                                     train_subset=args.train_subset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels, "width": width}
    torch.manual_seed(args.seed)
    model = models.get(args.model, **kwargs)
    out = Path(args.out)
    recipe = {"epochs": args.epochs, "optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
              "weight_decay": args.weight_decay, "schedule": args.schedule, "seed": args.seed}
    tag = recorded_arguments(args)
    progress = None if not args.quiet else False
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
    # a loss's own estimate (the sparsity loss's Gaussian one), reported beside the achieved sparsity
    predicted = 1.0 - float(method.predicted_density().detach()) if hasattr(method, "predicted_density") else None
    mask = method.finalize() if method is not None else None
    finalized = evaluate(model, test, device=device)["top1"]
    if mask is not None and args.finetune_epochs:
        history += [dict(r, phase="finetune") for r in fit(
            model, train, test, epochs=args.finetune_epochs, lr=args.finetune_lr, schedule="cosine",
            callbacks=[EnforceMask(mask)], checkpoint_dir=out / "checkpoints" / "finetune", progress=progress,
            seed=args.seed, device=device)]
    rep = report(model)
    requested = requested_sparsity(args)
    result = {"method": args.method, "requested_sparsity": requested, "predicted_sparsity": predicted,
              "achieved_sparsity": rep.sparsity,
              "finalized_top1": finalized, "top1": evaluate(model, test, device=device)["top1"], "params": rep.total_params,
              "nonzero_params": rep.nonzero_params, "flops": rep.flops, "effective_flops": rep.effective_flops,
              "width": width, "history": history}
    if hasattr(method, "trail"):  # LTP's checkpoints along the way
        result["trail"] = [{k: v for k, v in r.items() if k in ("level", "sparsity", "step", "path")} for r in method.trail]
    if not is_main():  # under torchrun rank 0 writes the files (every rank holds the same model)
        return 0
    save_model(out / "model.pt", model, model_name=args.model, model_kwargs=kwargs, dataset=args.data, mask=mask,
               metrics={k: v for k, v in result.items() if k not in ("history", "trail")}, recipe=recipe, history=history)
    atomic_write_json(out / "result.json", result, indent=2, default=str)
    print(f"{args.method} {args.model} on {args.data}: top-1 {result['top1']:.2f}%, sparsity "
          f"{rep.sparsity:.4f} (requested {requested if requested is not None else '-'}), "
          f"{rep.nonzero_params:,}/{rep.total_params:,} nonzero params -> {out / 'model.pt'}")
    return 0
