"""``prunekit imp``: iterative magnitude pruning from the command line.

    prunekit imp --model lenet5 --data fashion_mnist --sparsity 0.9 --phases 5 \\
                 --retrain-epochs 2 --retrain-schedule allr --out runs/imp
    prunekit imp --from runs/lenet5/model.pt --sparsity 0.98 --phases 4 --retrain-schedule slr --out runs/imp98

Trains dense (``--epochs``, ``--lr``, ``--lr-schedule`` ...) unless ``--from`` names a trained
prunekit model file, then prunes in phases and retrains (SPEC.md section 2). ``--out`` holds one
subfolder per phase (``model.pt`` with its mask, ``mask.pt``, ``metrics.json``), the final
``model.pt`` and ``result.json``; running the same command again resumes an interrupted run.
``register(subparsers)`` adds the subcommand (cli/main.py calls it).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_write_json
import torch

from .. import data, models
from ..artifacts import read_model_file, save_model
from ..core.accounting import report
from ..device import resolve
from ..pipelines.imp import imp


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "imp", help="iterative magnitude pruning: train, then prune + retrain in phases",
        description="Iterative magnitude pruning (SPEC.md section 2): train dense (or start --from a trained "
                    "model file), then --phases rounds of {prune -> retrain --retrain-epochs with --retrain-schedule}. "
                    "Rerunning the same command resumes an interrupted run.")
    p.add_argument("--model", default=None, help="registered model name (not needed with --from)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--from", dest="pretrained", default=None, metavar="MODEL_PT",
                   help="start from this trained model file (its recipe gives the original lr schedule)")
    p.add_argument("--data", default=None, help="dataset name (default: the one in --from, else fashion_mnist)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=None, help="train on a seeded subset of N images")
    p.add_argument("--sparsity", type=float, required=True, help="target fraction of prunable weights removed, in [0, 1)")
    p.add_argument("--phases", type=int, default=5, help="pruning phases J (each removes 1-(1-s)^(1/J) of the rest)")
    p.add_argument("--retrain-epochs", type=int, default=1, help="epochs of retraining after each pruning step")
    # Two lr schedules meet here; each flag names which one it sets. `--schedule` and
    # `--train-schedule` are the older spellings, kept so existing commands still run.
    p.add_argument("--retrain-schedule", "--schedule", dest="schedule", default="slr",
                   help="retraining lr schedule (Zimmer et al.): ft, lrw, slr, clr, llr, allr")
    p.add_argument("--score", default="magnitude", help="magnitude, lamp, random")
    p.add_argument("--allocation", default="global", help="global, uniform, uniform_plus, erk")
    p.add_argument("--include", nargs="*", default=None, help="name patterns of tensors to prune")
    p.add_argument("--exclude", nargs="*", default=None, help="name patterns of tensors to leave dense")
    p.add_argument("--rewind", type=int, default=None, metavar="K",
                   help="rewind survivors to dense iteration K after each pruning (0: lottery ticket)")
    p.add_argument("--eta-max", type=float, default=None, help="override the original schedule's largest lr")
    p.add_argument("--eta-min", type=float, default=None, help="override the original schedule's smallest lr")
    dense = p.add_argument_group("dense training (ignored with --from)")
    dense.add_argument("--epochs", type=int, default=8)
    dense.add_argument("--optimizer", default="sgd", help="sgd or adamw")
    dense.add_argument("--lr", type=float, default=0.05)
    dense.add_argument("--momentum", type=float, default=0.9)
    dense.add_argument("--nesterov", action="store_true")
    dense.add_argument("--weight-decay", type=float, default=5e-4)
    dense.add_argument("--lr-schedule", "--train-schedule", dest="train_schedule", default="cosine",
                       help="lr schedule of the dense training: constant, step, multistep, cosine, onecycle, "
                            "cosine_restarts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (phases, final model.pt, result.json)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_imp)
    return p


def cmd_imp(args) -> int:
    for value, flag in ((args.phases, "--phases"), (args.retrain_epochs, "--retrain-epochs"),
                        (args.batch_size, "--batch-size"), (args.epochs, "--epochs")):
        if value is None or value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    recipe = None
    if args.pretrained:
        stored = read_model_file(args.pretrained)
        name, kwargs = stored["model"]["name"], dict(stored["model"]["kwargs"])
        if args.model is not None and args.model != name:
            raise ValueError(f"--model {args.model} does not match the model in {args.pretrained} ({name})")
        dataset = args.data or stored.get("dataset") or "fashion_mnist"
    else:
        if args.model is None:
            raise ValueError("give --model (a registered model name) or --from a trained model file")
        name, dataset = args.model, args.data or "fashion_mnist"
        recipe = {"epochs": args.epochs, "optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
                  "nesterov": args.nesterov, "weight_decay": args.weight_decay, "schedule": args.train_schedule}
    train, test, info = data.loaders(dataset, batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed,
                                     train_subset=args.train_subset)
    if not args.pretrained:
        kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels, "width": args.width}
    torch.manual_seed(args.seed)
    model = models.get(name, **kwargs)
    out = Path(args.out)

    result = imp(model, (train, test), args.sparsity, phases=args.phases, retrain_epochs=args.retrain_epochs,
                 schedule=args.schedule, score=args.score, allocation=args.allocation, include=args.include,
                 exclude=args.exclude, rewind=args.rewind, recipe=recipe,
                 pretrained=args.pretrained or False, eta_max=args.eta_max, eta_min=args.eta_min, folder=out,
                 seed=args.seed, progress=False if args.quiet else None, device=resolve(),
                 model_info={"name": name, "kwargs": kwargs, "dataset": dataset})
    rep = report(result.model)
    metrics = {"test_top1": result.top1, "requested_sparsity": args.sparsity, "achieved_sparsity": result.mask.sparsity(),
               "params": rep.total_params, "nonzero_params": rep.nonzero_params, "flops": rep.flops,
               "effective_flops": rep.effective_flops, "total_epochs": result.total_epochs,
               "total_seconds": result.total_seconds}
    save_model(out / "model.pt", result.model, model_name=name, model_kwargs=kwargs, dataset=dataset,
               mask=result.mask, metrics=metrics, recipe=recipe or {}, history=result.history)
    atomic_write_json(out / "result.json", {"metrics": metrics, "history": result.history}, indent=2)
    print(result.table())
    dense_top1 = result.history[0].get("top1")
    print(f"{name} on {dataset}: sparsity {metrics['achieved_sparsity']:.4f} (requested {args.sparsity}), top-1 "
          f"{_pct(result.top1)} (dense {_pct(dense_top1)}), {result.total_epochs:g} epochs in total "
          f"-> {out / 'model.pt'}")
    return 0


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}%"
