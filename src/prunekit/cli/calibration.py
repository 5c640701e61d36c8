"""Calibration data for ``prunekit prune --score wanda|sparsegpt`` (scores that look at data).

- a prunekit model file: the first ``--calibration-batches`` batches of its dataset's training
  split (inputs only, no augmentation);
- ``--model hf:PATH``: the lines of ``--calibration-text FILE`` (one sentence or passage a line),
  tokenized by the folder's tokenizer, at most ``--calibration-samples`` of them.

Scores that need no data ignore these flags; a score that needs data without them is one clear
error saying which flag to give.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List, Optional

from .. import data
from ..core.scores import CALIBRATED_SCORES
from ..models import hf


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (scores that look at data: " + ", ".join(CALIBRATED_SCORES.names()) + ")")
    g.add_argument("--pattern", default=None,
                   help="how the kept weights are spread: unstructured (default), per_output, or N:M "
                        "such as 2:4 (needs --sparsity 1-N/M)")
    g.add_argument("--calibration-batches", type=int, default=8,
                   help="model file: batches of its training split used for calibration")
    g.add_argument("--calibration-text", default=None, metavar="FILE",
                   help="--model hf:PATH: a text file, one calibration sentence or passage a line")
    g.add_argument("--calibration-samples", type=int, default=128,
                   help="--model hf:PATH: lines of --calibration-text used (the first N)")


def needs_calibration(score: str) -> bool:
    return score in CALIBRATED_SCORES


def from_dataset(args, dataset: str) -> Optional[List[Any]]:
    """The first ``--calibration-batches`` input batches of ``dataset``'s training split."""
    if not needs_calibration(args.score):
        return None
    if args.calibration_batches < 1:
        raise ValueError(f"--calibration-batches must be a positive integer, got {args.calibration_batches}")
    train, _, _ = data.loaders(dataset, batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed,
                               augment=False)
    batches = []
    for x, _ in train:
        batches.append(x)
        if len(batches) == args.calibration_batches:
            break
    return batches


def from_text(args, model) -> Optional[List[Any]]:
    """Tokenized batches of the first ``--calibration-samples`` lines of ``--calibration-text``."""
    if not needs_calibration(args.score):
        return None
    if args.calibration_text is None:
        raise ValueError(f"--score {args.score} looks at data: give --calibration-text FILE "
                         "(one sentence or passage a line)")
    path = Path(args.calibration_text)
    if not path.is_file():
        raise ValueError(f"--calibration-text {path}: no such file")
    if args.calibration_samples < 1:
        raise ValueError(f"--calibration-samples must be a positive integer, got {args.calibration_samples}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return hf.text_batches(model, lines[:args.calibration_samples], max_length=args.seq_len)
