"""``prunekit prune --model SOURCE``: one-shot pruning of a pretrained model, written to a folder.

    prunekit prune --model hf:models/minilm --sparsity 0.5 --out runs/minilm50
    prunekit prune --model resnet18 --weights DEFAULT --sparsity 0.7 --out runs/r18_70
    prunekit prune --model torchvision:vgg16 --weights DEFAULT --sparsity 0.9 --out runs/vgg16_90

The folder holds ``state_dict.pt`` (the plain pruned state_dict, same keys as the original),
``report.json`` (requested vs achieved sparsity, per-layer figures) and the model itself: for
Hugging Face models the files ``from_pretrained`` / ``SentenceTransformer`` load (tokenizer
included), for others a prunekit model file ``model.pt``. FLOPs are counted on the model's
example input (``prunekit.models.example_input``: its tokenizer's output at ``--seq-len`` tokens
for a Hugging Face model).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import models
from ..artifacts import save_model
from ..core.accounting import report
from ..core.prune import prune
from ..io import atomic_torch_save, atomic_write_json
from ..models import hf
from . import calibration


def prune_pretrained(args) -> int:
    if args.seq_len < 1:
        raise ValueError(f"--seq-len must be a positive integer, got {args.seq_len}")
    if args.finetune_epochs:
        raise ValueError("--finetune-epochs needs a prunekit model file with its dataset; "
                         "--model prunes a pretrained model one-shot")
    kwargs = {"weights": args.weights} if args.weights else {}
    if kwargs and (args.model.startswith(hf.PREFIX) or args.model.startswith("timm:")):
        raise ValueError("--weights applies to torchvision models only")
    model = models.get(args.model, **kwargs).eval()
    calib = calibration.from_text(args, model) if hf.is_hf(model) else None
    if calibration.needs_calibration(args.score) and calib is None:
        raise ValueError(f"--score {args.score} looks at data; with --model it is supported for hf: models "
                         "(--calibration-text FILE)")
    mask = prune(model, args.sparsity, score=args.score, allocation=args.allocation, include=args.include,
                 exclude=args.exclude, seed=args.seed, min_density=args.min_density, calibration=calib,
                 pattern=args.pattern)
    with torch.no_grad():
        # Over the tensors that were pruned (--include/--exclude), so achieved matches requested.
        rep = report(model, example_input=models.example_input(model, seq_len=args.seq_len),
                     include=args.include, exclude=args.exclude)
    metrics = {"requested_sparsity": args.sparsity, "achieved_sparsity": rep.sparsity, "params": rep.total_params,
               "nonzero_params": rep.nonzero_params, "flops": rep.flops, "effective_flops": rep.effective_flops}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; with --model it must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    if hf.is_hf(model):
        hf.save(model, out)
    else:
        save_model(out / "model.pt", model, model_name=args.model, model_kwargs=kwargs, mask=mask, metrics=metrics)
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "state_dict.pt")
    atomic_write_json(out / "report.json", {"model": args.model, "metrics": metrics, "report": rep.as_dict()},
                      indent=2)
    print(rep.table())
    print(f"requested sparsity {args.sparsity:.4f}, achieved {rep.sparsity:.4f} -> {out}")
    return 0
