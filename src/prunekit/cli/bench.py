"""``prunekit bench``: measured latency, throughput, sizes and memory of a model file's forms.

    prunekit bench runs/lenet/pruned.pt
    prunekit bench runs/r20_half --batch-sizes 1 64 --repeats 20 --json bench.json

For a pruned file: the dense original, the masked model (dense kernels), the same through
torch.nn.utils.prune and the CSR-sparse export; for a shrunk (structured) folder: the dense
original, the thin model and its torch.export program. The table puts the measured speedup
beside the theoretical FLOPs ratio (prunekit.export.bench explains every column).
``register(subparsers)`` adds the subcommand.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_write_json
import torch

from ..export.bench import bench_model, format_table


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="latency / throughput / size of a model file: dense, masked, sparse and thin exports",
        description="Measure, side by side (interleaved repeats, medians), each executable form of a model "
                    "file or shrunk folder at several batch sizes; prints a table.")
    p.add_argument("model", metavar="MODEL_FILE_OR_FOLDER", help="a prunekit model file or a shrunk run folder")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per figure (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PRUNEKIT_THREADS / all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the profiler's peak-memory figure")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be a positive integer, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    path = Path(args.model)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give a prunekit model file or a shrunk run folder)")
    if path.is_dir() and not (path / "model.pt").exists():
        raise FileNotFoundError(f"{path} is a folder without model.pt")
    rows = bench_model(path, batch_sizes=args.batch_sizes, repeats=args.repeats, memory=not args.no_memory)
    print(f"{path}: {torch.get_num_threads()} thread(s), median of {args.repeats} interleaved repeats")
    print(format_table(rows))
    print("speedup: median of paired dense/form times; FLOPs ratio: theoretical (dense / effective FLOPs); "
          "file: torch.save(state_dict) (.pt2 for thin-pt2); weights: parameter + buffer bytes; "
          "peak mem: torch CPU allocator peak during one forward (activations, not weights, not RSS)")
    if args.json:
        atomic_write_json(args.json, rows, indent=1)
        print(f"wrote {args.json}")
    return 0
