"""``prunekit shrink``: structured pruning of a model file into a physically smaller model.

    prunekit shrink --from runs/resnet56/model.pt --config resnet56-b --out runs/r56b
    prunekit shrink --model resnet20 --width 0.5 --flops-ratio 0.25 --out runs/r20_quarter
    prunekit shrink --from vgg.pt --fraction 0.4 --score bn_scale --out runs/vgg_slim
    prunekit shrink --from cnn.pt --flops-ratio 0.5 --method thinet --data fashion_mnist --out runs/cnn_2x

Exactly one selection: ``--config`` (vgg16-a, resnet56-a/b, resnet110-a/b: Li et al.'s
predefined targets), ``--ratio`` (the same ratio in every prunable layer), ``--fraction``
(one global threshold over the channel scores) or ``--flops-ratio`` (uniform ratio keeping
that share of the FLOPs). ``--flops-ratio`` / ``--params-ratio`` go through
``prunekit.structured.prune_to_budget``: any channel method (``--method``: l1_filter, bn_scale,
random, thinet, lasso; default ``--score``) meets the target within one channel step, with
floors ``--min-channels`` / ``--max-ratio``; thinet / lasso calibrate on ``--calib-per-class``
training images per class of ``--data``. ``--out`` receives ``model.pt`` (the shrunk weights, with the
original model's name) and ``structure.json`` (the plan: ``prunekit.structured.load_shrunk``
rebuilds the model from both), and ``report.json`` with parameters, FLOPs and the measured
CPU latency at batch 1 and 64 of both models. ``register(subparsers)`` adds the subcommand.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_write_json
import torch

from .. import data, models
from ..artifacts import load_model, save_model
from ..pipelines.structured_pipelines import StructuredParams, structured_plan
from ..structured import CHANNEL_SCORES, compare, save_plan, shrink
from ..structured.budget import RECONSTRUCTIONS, calibration_images, prune_to_budget
from ..structured.plan import example_input


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "shrink", help="structured pruning: remove channels, write the smaller model",
        description="Remove whole channels (L1-filter, BN scale, predefined A/B configs, uniform) with "
                    "torch-pruning's dependency graph and write the physically smaller model "
                    "(SPEC.md section 5).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="pretrained", metavar="MODEL_PT", help="a prunekit model file to prune")
    src.add_argument("--model", help="a registered model name (freshly initialised, e.g. to inspect sizes)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (with --model)")
    p.add_argument("--num-classes", type=int, default=10, help="classes (with --model)")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--config", help="predefined configuration: vgg16-a, resnet56-a/b, resnet110-a/b, resnet34-a/b, "
                          "resnet50-thinet-30/50/70, or a FLOPs target: vgg16-5x, resnet50-2x")
    sel.add_argument("--ratio", type=float, help="fraction of channels removed in every prunable layer")
    sel.add_argument("--fraction", type=float, help="fraction of all channels removed by one global threshold")
    sel.add_argument("--flops-ratio", type=float, help="keep this fraction of the FLOPs (within one channel step)")
    sel.add_argument("--params-ratio", type=float, help="keep this fraction of the parameters (within one channel step)")
    p.add_argument("--score", default="l1_filter", help="channel score: l1_filter, bn_scale, random")
    p.add_argument("--method", default=None,
                   help="with --flops-ratio/--params-ratio: l1_filter, bn_scale, random, thinet, lasso (default --score)")
    p.add_argument("--allocation", default=None, help="uniform or global (default: global for bn_scale, else uniform)")
    p.add_argument("--min-channels", type=int, default=1, help="fewest channels any layer keeps")
    p.add_argument("--max-ratio", type=float, default=1.0, help="largest share of a layer's channels removed")
    p.add_argument("--data", default=None, help="dataset of the calibration images (thinet, lasso)")
    p.add_argument("--data-dir", default=None, help="where --data is")
    p.add_argument("--calib-per-class", type=int, default=10, help="calibration images per class (ThiNet: 10)")
    p.add_argument("--scale", default=None, help="thinet/lasso refit: channel (ThiNet's default) or full (LASSO's default)")
    p.add_argument("--memory-mb", type=float, default=256.0, help="bound on the reconstruction's memory (MB)")
    p.add_argument("--latency-repeats", type=int, default=5, help="timed forwards per latency figure (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (model.pt, structure.json, report.json)")
    p.set_defaults(func=cmd_shrink)
    return p


def cmd_shrink(args) -> int:
    CHANNEL_SCORES.get(args.score)  # an unknown score fails before any work
    if args.pretrained:
        model, stored = load_model(args.pretrained)
        name, kwargs, dataset = stored["model"]["name"], stored["model"]["kwargs"], stored.get("dataset")
    else:
        torch.manual_seed(args.seed)
        name, kwargs, dataset = args.model, {"width": args.width, "num_classes": args.num_classes}, None
        model = models.get(name, **kwargs)
    model.eval()
    x = example_input(model)
    budget = None
    if args.flops_ratio is not None or args.params_ratio is not None:
        budget = _budget(model, x, args)
        plan, small = budget.plan, budget.model
    else:
        params = StructuredParams(config=args.config, ratio=args.ratio, fraction=args.fraction, score=args.score)
        plan = structured_plan(model, x, params)
        small = shrink(model, x, plan)
    shape = tuple(x.shape[1:])
    stats = compare(model, small, shape, repeats=args.latency_repeats) if args.latency_repeats else \
        compare(model, small, shape, batch_sizes=())
    out = Path(args.out)
    save_plan(out, plan, dense_flops=stats["flops"], flops=stats["flops_shrunk"], dense_params=stats["params"],
              params=stats["params_shrunk"])
    save_model(out / "model.pt", small, model_name=name, model_kwargs=kwargs, dataset=dataset,
               metrics={k: v for k, v in stats.items()})
    if budget is not None:
        stats["budget"] = {k: v for k, v in budget.summary().items()}
    atomic_write_json(out / "report.json", stats, indent=1)
    print(f"{name}: params {stats['params']:,} -> {stats['params_shrunk']:,} ({stats['params_reduction']:.2f}x fewer), "
          f"FLOPs {stats['flops']:,} -> {stats['flops_shrunk']:,} ({stats['flops_reduction']:.2f}x fewer)")
    for b in (1, 64):
        if f"speedup_b{b}" in stats:
            print(f"  batch {b}: {1e3 * stats[f'latency_b{b}']:.2f} ms -> {1e3 * stats[f'latency_shrunk_b{b}']:.2f} ms "
                  f"({stats[f'speedup_b{b}']:.2f}x)")
    if budget is not None:
        print(f"  {budget.metric} kept: requested {budget.requested:.4f}, achieved {budget.achieved:.4f} "
              f"(one channel step {budget.step:.4f}){'' if budget.met else ' NOT MET: the floors stop it'}")
    print(f"wrote {out / 'model.pt'} and {out / 'structure.json'}")
    return 0


def _budget(model, x, args):
    method = args.method or args.score
    kwargs = {}
    if method in RECONSTRUCTIONS.names():
        if not args.data:
            raise ValueError(f"--method {method} chooses channels from activations: give --data (the calibration set)")
        train, _, _ = data.loaders(args.data, batch_size=128, data_dir=args.data_dir, seed=args.seed)
        train.set_epoch(0)
        kwargs = dict(images=calibration_images(train, args.calib_per_class), scale=args.scale,
                      memory_bytes=int(args.memory_mb * 2 ** 20), seed=args.seed)
    return prune_to_budget(model, x, flops_ratio=args.flops_ratio, params_ratio=args.params_ratio, method=method,
                           allocation=args.allocation, min_channels=args.min_channels, max_ratio=args.max_ratio,
                           **kwargs)
