"""``prunekit sensitivity``: Li et al.'s per-layer sensitivity analysis of a trained model.

    prunekit sensitivity --from runs/vgg16/model.pt --out runs/vgg16_sensitivity
    prunekit sensitivity --from lenet5.pt --fractions 0.25 0.5 0.75 --test-batches 2 --out s

Each prunable layer is pruned on its own (its lowest-L1 filters, 10%..90% by default) and the
model evaluated without retraining (Li et al. 2017, Sec. 3.3, Fig. 2(b)). ``--out`` receives
``sensitivity.json`` (per-layer curves: fraction, channels removed, top-1/top-5/loss) and
``sensitivity.png`` (accuracy vs fraction pruned, one line per layer).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import data
from ..artifacts import load_model
from ..device import resolve
from ..experiments.plots import sensitivity as plot_sensitivity
from ..io import atomic_write_json
from ..structured.scores import CHANNEL_SCORES
from ..structured.sensitivity import DEFAULT_FRACTIONS, sensitivity


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sensitivity", help="Li et al.'s sensitivity analysis: accuracy vs filters pruned, per layer",
        description="Prune each layer alone (lowest L1 filters) at increasing fractions and evaluate without "
                    "retraining; write per-layer curves (JSON) and their plot (Li et al. 2017, Fig. 2(b)).")
    p.add_argument("--from", dest="pretrained", required=True, metavar="MODEL_PT", help="a trained prunekit model file")
    p.add_argument("--data", help="dataset (default: the one recorded in the model file)")
    p.add_argument("--data-dir", help="where the dataset is")
    p.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                   help="fractions of a layer's filters pruned (default: 0.1 ... 0.9)")
    p.add_argument("--layers", nargs="+", help="layers to analyse (default: every prunable layer)")
    p.add_argument("--score", default="l1_filter", choices=CHANNEL_SCORES.names(), help="filter score")
    p.add_argument("--test-batches", type=int, help="evaluate on the first N test batches only (default: all)")
    p.add_argument("--batch-size", type=int, default=1000, help="test batch size")
    p.add_argument("--out", required=True, help="output folder (sensitivity.json, sensitivity.png)")
    p.set_defaults(func=cmd_sensitivity)
    return p


def cmd_sensitivity(args) -> int:
    model, stored = load_model(args.pretrained)
    name = args.data or stored.get("dataset")
    if not name:
        raise ValueError(f"{args.pretrained} records no dataset: pass --data")
    _, test, _ = data.loaders(name, batch_size=args.batch_size, test_batch_size=args.batch_size,
                              data_dir=args.data_dir)
    device = resolve(None)
    model.to(device)
    curves = sensitivity(model, test, args.fractions, layers=args.layers, score=args.score, device=device,
                         max_batches=args.test_batches)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_name = stored.get("model", {}).get("name", "model")
    atomic_write_json(out / "sensitivity.json", {"model": stored.get("model"), "dataset": name,
                                                 "score": args.score, "test_batches": args.test_batches,
                                                 "curves": curves}, indent=1)
    plot_sensitivity(curves, out / "sensitivity.png", f"{model_name} on {name}: sensitivity to pruning")
    for layer, rows in curves.items():
        worst = rows[-1]
        print(f"{layer}: {rows[0]['top1']:.2f}% -> {worst['top1']:.2f}% at {100 * worst['fraction']:.0f}% pruned")
    print(f"wrote {out / 'sensitivity.json'} and {out / 'sensitivity.png'}")
    return 0
