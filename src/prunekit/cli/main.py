"""The ``prunekit`` command: train, prune, eval, list, demo.

Errors from bad input end the command with one line on stderr and exit code 2; the message
says what was wrong and what is accepted.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import torch

from .. import __version__, data, distributed, models
from ..artifacts import load_model, save_model
from ..core import ALLOCATIONS, CALIBRATED_SCORES, SCORES
from ..core.accounting import report
from ..core.prune import prune
from ..device import (CHANNELS_LAST_ENV, COMPILE_ENV, ENV as DEVICE_ENV, PRECISION_ENV, precision,  # noqa: F401
                      resolve)
from ..distributed import is_main, threads_per_rank
from ..io import StorageError, atomic_write_json, check_writable
from ..pipelines.finetune import finetune
from ..training import evaluate, fit
from ..training.checkpoint import CheckpointError
from . import calibration
from . import (bench as bench_cli, experiments as experiments_cli, imp as imp_cli,
               sensitivity as sensitivity_cli, structured as structured_cli, thresholds as thresholds_cli)
from .demo import run_demo
from .pretrained import prune_pretrained

EXIT_USAGE = 2


def _threads() -> None:
    # PRUNEKIT_THREADS is the cores to use; under torchrun they are shared by the local ranks.
    torch.set_num_threads(threads_per_rank(max(1, int(os.environ.get("PRUNEKIT_THREADS", os.cpu_count() or 1)))))


def _add_data_args(p: argparse.ArgumentParser, with_name: bool = True) -> None:
    if with_name:
        p.add_argument("--data", default="fashion_mnist", help="dataset name (see `prunekit list`)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--batch-size", type=int, default=128)


def _add_training_args(p: argparse.ArgumentParser, epochs: int, lr: float, schedule: str) -> None:
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--optimizer", default="sgd", help="sgd or adamw")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-schedule", "--schedule", dest="schedule", default=schedule,
                   help="lr schedule: constant, step, multistep, cosine, onecycle, cosine_restarts")
    p.add_argument("--train-subset", type=int, default=None, help="train on a seeded subset of N images")
    p.add_argument("--seed", type=int, default=0)


def _recipe(args) -> dict:
    return {"epochs": args.epochs, "optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
            "nesterov": args.nesterov, "weight_decay": args.weight_decay, "schedule": args.schedule,
            "batch_size": args.batch_size, "train_subset": args.train_subset, "seed": args.seed}


def _fit_kwargs(recipe: dict) -> dict:
    return {k: recipe[k] for k in ("epochs", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "seed")}


def _loaders(dataset: str, args, seed: int = 0, train_subset=None):
    return data.loaders(dataset, batch_size=args.batch_size, data_dir=args.data_dir, seed=seed,
                        train_subset=train_subset)


def _positive(value: Optional[int], what: str) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value}")


# --- commands -------------------------------------------------------------------------------

def _is_main() -> bool:
    return is_main()


def resolve_device():
    """The device of this invocation: ``--device``, else ``$PRUNEKIT_DEVICE``, else cpu."""
    return resolve()


def cmd_train(args) -> int:
    _positive(args.epochs, "--epochs")
    _positive(args.batch_size, "--batch-size")

    train, test, info = _loaders(args.data, args, seed=args.seed, train_subset=args.train_subset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels, "width": args.width}
    torch.manual_seed(args.seed)
    model = models.get(args.model, **kwargs)
    out = Path(args.out)
    recipe = _recipe(args)
    history = fit(model, train, test, checkpoint_dir=out / "checkpoints", progress=None if not args.quiet else False,
                  recipe=recipe, device=resolve_device(), **_fit_kwargs(recipe))
    metrics = {k: history[-1][k] for k in ("test_top1", "test_top5", "test_loss") if k in history[-1]}
    rep = report(model)
    metrics.update({"params": rep.total_params, "flops": rep.flops})
    if not _is_main():  # under torchrun rank 0 writes the file (every rank holds the same model)
        return 0
    save_model(out / "model.pt", model, model_name=args.model, model_kwargs=kwargs, dataset=args.data,
               metrics=metrics, recipe=recipe, history=list(history))
    print(f"{args.model} on {args.data}: top-1 {metrics.get('test_top1', float('nan')):.2f}% after {args.epochs} epochs "
          f"-> {out / 'model.pt'}")
    return 0


def cmd_prune(args) -> int:
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give either a model file (prunekit prune FILE ...) or --model NAME "
                         "(a torchvision name, torchvision:NAME, timm:NAME or hf:PATH), not both or neither")
    if args.model is not None:
        return prune_pretrained(args)
    device = resolve_device()
    model, stored = load_model(args.checkpoint, device=device)
    dataset = stored.get("dataset")
    if calibration.needs_calibration(args.score) and dataset is None:
        raise ValueError(f"--score {args.score} looks at data, and {args.checkpoint} names no dataset")
    calib = calibration.from_dataset(args, dataset) if dataset is not None else None
    mask = prune(model, args.sparsity, score=args.score, allocation=args.allocation, include=args.include,
                 exclude=args.exclude, seed=args.seed, min_density=args.min_density, calibration=calib,
                 pattern=args.pattern)
    metrics = {"requested_sparsity": args.sparsity}
    if args.finetune_epochs or not args.no_eval:
        if dataset is None:
            raise ValueError(f"{args.checkpoint} names no dataset; cannot evaluate or fine-tune")
        train, test, _ = _loaders(dataset, args, seed=args.seed)
        metrics["oneshot_top1"] = evaluate(model, test, device=device)["top1"]
        if args.finetune_epochs:
            torch.manual_seed(args.seed)
            history = finetune(model, mask, train, test, epochs=args.finetune_epochs, lr=args.lr,
                               progress=None if not args.quiet else False, seed=args.seed, device=device)
            metrics["test_top1"] = history[-1]["test_top1"]
        else:
            metrics["test_top1"] = metrics["oneshot_top1"]
    rep = report(model)
    metrics.update({"achieved_sparsity": rep.sparsity, "params": rep.total_params, "nonzero_params": rep.nonzero_params,
                    "flops": rep.flops, "effective_flops": rep.effective_flops})
    out = Path(args.out)
    if not _is_main():  # under torchrun rank 0 writes the files (every rank holds the same model)
        return 0
    save_model(out, model, model_name=stored["model"]["name"], model_kwargs=stored["model"]["kwargs"],
               dataset=dataset, mask=mask, metrics=metrics, recipe=stored.get("recipe"))
    atomic_write_json(out.with_suffix(".report.json"), {"metrics": metrics, "report": rep.as_dict()}, indent=2)
    print(rep.table())
    line = f"requested sparsity {args.sparsity:.4f}, achieved {rep.sparsity:.4f}"
    if "test_top1" in metrics:
        line += f"; top-1 one-shot {metrics['oneshot_top1']:.2f}%"
        if args.finetune_epochs:
            line += f", after {args.finetune_epochs} fine-tune epochs {metrics['test_top1']:.2f}%"
    print(line + f" -> {out}")
    return 0


def cmd_eval(args) -> int:
    device = resolve_device()
    model, stored = load_model(args.checkpoint, device=device)
    dataset = args.data or stored.get("dataset")
    if dataset is None:
        raise ValueError(f"{args.checkpoint} names no dataset: pass --data")
    _, test, _ = _loaders(dataset, args)
    result = evaluate(model, test, device=device)
    rep = report(model)
    print(rep.table())
    print(f"{dataset} test: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def cmd_list(args) -> int:
    for title, names in [("datasets", data.names()), ("models", models.names()),
                         ("scores", SCORES.names()), ("scores from calibration data", CALIBRATED_SCORES.names()),
                         ("allocations", ALLOCATIONS.names())]:
        print(f"{title}: {', '.join(names)}")
    # Optional sources: available ones, and for the others one line saying why not.
    for source, reason in models.sources().items():
        what = models.optional.SOURCES[source][1]
        print(f"source {source}: " + (f"available: {what}" if reason is None else f"unavailable: {reason}"))
    return 0


def cmd_demo(args) -> int:
    run_demo(out=args.out, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
             finetune_subset=args.finetune_subset, data_dir=args.data_dir, seed=args.seed,
             quiet=args.quiet, dataset=args.data)
    return 0


# --- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Prune PyTorch networks and tell the truth about the result.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--device", default=None,
                        help="where to train and evaluate: cpu (default), auto, cuda, cuda:N, mps "
                             "(also $PRUNEKIT_DEVICE; give it before the command)")
    parser.add_argument("--precision", default=None,
                        help="fp32 (default), bf16 (autocast) or fp16 (autocast + GradScaler); "
                             "also $PRUNEKIT_PRECISION")
    parser.add_argument("--channels-last", action="store_true", default=None,
                        help="4-d weights and inputs in channels_last memory format "
                             "(also $PRUNEKIT_CHANNELS_LAST=1)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="train through torch.compile (also $PRUNEKIT_COMPILE=1 or =BACKEND)")
    parser.add_argument("--compile-backend", default=None, metavar="BACKEND",
                        help="torch.compile backend of --compile (default: inductor)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a registered model on a dataset")
    p.add_argument("--model", required=True,
                   help="a prunekit model, a torchvision name or torchvision:NAME (torchvision:vgg16 is the "
                        "ImageNet VGG-16; vgg16 prunekit's CIFAR one)")
    p.add_argument("--width", type=float, default=1.0)
    _add_data_args(p)
    _add_training_args(p, epochs=8, lr=0.05, schedule="cosine")
    p.add_argument("--out", required=True, help="output folder (model.pt, checkpoints/)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help="prune a model file or a pretrained model one-shot (optionally fine-tune)")
    p.add_argument("checkpoint", nargs="?", default=None, help="a prunekit model file (or use --model)")
    p.add_argument("--model", default=None,
                   help="prune a pretrained model instead: hf:PATH (transformers / sentence-transformers "
                        "folder), timm:NAME, a torchvision name or torchvision:NAME (e.g. torchvision:vgg16, "
                        "where prunekit's vgg16 is the CIFAR one); --out is then a folder")
    p.add_argument("--weights", default=None, help="torchvision weights for --model (DEFAULT, IMAGENET1K_V1, ...)")
    p.add_argument("--seq-len", type=int, default=128,
                   help="tokens of the example input of an hf: model without a tokenizer (FLOPs)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of prunable weights removed, in [0, 1)")
    p.add_argument("--score", default="magnitude")
    p.add_argument("--allocation", default=None,
                   help="global (default), uniform, uniform_plus, erk; wanda and sparsegpt default to uniform")
    p.add_argument("--include", nargs="*", default=None, help="name patterns of tensors to prune")
    p.add_argument("--exclude", nargs="*", default=None, help="name patterns of tensors to leave dense")
    p.add_argument("--min-density", type=float, default=None,
                   help="fraction of every prunable tensor kept at least, e.g. 0.01 (default: no floor)")
    calibration.add_arguments(p)
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy evaluation")
    p.add_argument("--seed", type=int, default=0)
    _add_data_args(p, with_name=False)
    p.add_argument("--out", required=True, help="pruned model file (with --model: a folder)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="accuracy and size report of a model file")
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="dataset (default: the one in the file)")
    _add_data_args(p, with_name=False)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("list", help="list datasets, models, scores, allocations")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="LeNet-5 on Fashion-MNIST: train, prune with each allocation, fine-tune, table + plot")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--data-dir", default=None)
    # About a minute on 2 cores: 4 dense epochs, then 1 fine-tune epoch of 10,000 images per
    # pruned copy (25 copies). More epochs give better figures; the demo shows the trade-offs.
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-subset", type=int, default=10000, help="images per fine-tune epoch (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    # Subcommands of the other layers: run, sweep, runs, report (experiments); imp;
    # train-sparse (threshold methods); shrink (structured).
    experiments_cli.register(sub)
    imp_cli.register(sub)
    thresholds_cli.register(sub)
    structured_cli.register(sub)
    sensitivity_cli.register(sub)
    bench_cli.register(sub)
    return parser


def _version() -> str:
    return f"prunekit {__version__}"


def _user_errors():
    return (ValueError, KeyError, FileNotFoundError, CheckpointError, TypeError, StorageError)


def _outputs(args) -> List[Path]:
    """The folders the command will write to (checked before any work starts)."""
    cmd = args.command
    if cmd in ("run", "sweep") and not getattr(args, "dry_run", False):
        return [Path(args.dir)]
    if cmd == "runs" and getattr(args, "repair", False):
        return [Path(args.dir)]
    if cmd == "report":
        return [Path(args.out) if args.out else Path(args.dir) / "report"]
    if cmd == "prune":
        return [Path(args.out).parent]
    if cmd == "bench" and getattr(args, "json", None):
        return [Path(args.json).parent]
    out = getattr(args, "out", None)
    return [Path(out)] if isinstance(out, str) and cmd != "bench" else []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that everything cleans up the same way (exit 143)."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> int:
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads()
    try:
        if args.device is not None:
            resolve(args.device)  # a bad name fails here, with what is accepted
            os.environ["PRUNEKIT_DEVICE"] = args.device  # sweep workers and Ray tasks inherit it
        elif os.environ.get(DEVICE_ENV) and args.command not in ("list", "runs"):
            try:  # $PRUNEKIT_DEVICE=cuda on a machine without CUDA: one line now, not a failed run later
                resolve()
            except ValueError as err:
                raise ValueError(f"${DEVICE_ENV}: {err}") from None
        # How to compute, like the device: read by fit() in this process and every worker.
        if args.precision is not None:
            os.environ[PRECISION_ENV] = precision(args.precision)  # a bad name fails here
        if args.channels_last:
            os.environ[CHANNELS_LAST_ENV] = "1"
        if args.compile or args.compile_backend:
            os.environ[COMPILE_ENV] = args.compile_backend or "inductor"

        if distributed.requested():  # launched by torchrun: one process group for the command

            distributed.setup(resolve())
        data_dir = getattr(args, "data_dir", None)
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():  # never created
            raise FileNotFoundError(f"--data-dir {data_dir} does not exist (it is not created: "
                                    "check the path, or leave the option out)")
        for folder in _outputs(args):  # a full disk or a read-only folder: before the work
            check_writable(folder)
        return args.func(args)
    except _user_errors() as err:
        if os.environ.get("PRUNEKIT_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"prunekit {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated):
            print("terminated (SIGTERM); rerun the same command to resume from the last checkpoint",
                  file=sys.stderr)
            return 128 + signal.SIGTERM
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
