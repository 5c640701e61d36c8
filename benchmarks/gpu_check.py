"""One check of a GPU machine (issue #14 E), run by ``benchmarks/gpu_check.sh``; prints a table.

1. CIFAR-10 ResNet-56, one training epoch (batch 128, SGD) per set-up: fp32, AMP (fp16 autocast
   + GradScaler on CUDA, bf16 autocast on a CPU), fp32 + channels_last, AMP + channels_last.
   Real CIFAR-10 with ``--data-dir``, else random CIFAR-shaped tensors (the same work per step).
2. Mask exactness under fp16 + GradScaler: GMP to 80% with two steps made to overflow; after
   every step the pruned weights and their momentum must be exactly 0, and a skipped step
   must change nothing.
3. DDP on the devices present: ``torchrun`` with one process per GPU (nccl), or 2 CPU processes
   (gloo) without CUDA; one epoch, compared with one process on the same global batch.

On a machine without CUDA it runs at tiny sizes (``--tiny`` is implied: ResNet-56 at width 0.25,
256 images), so CI keeps it working; on a GPU the defaults take a few minutes. Exit code 1 when
a check fails.

    bash benchmarks/gpu_check.sh [--data-dir CIFAR_DIR] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import prunekit as pk
from prunekit.training import Callback, fit


def batches(n: int, batch: int, data_dir, seed: int = 0):
    if data_dir:
        train, _, _ = pk.data.loaders("cifar10", batch_size=batch, data_dir=data_dir, seed=seed,
                                      train_subset=n if n < 50000 else None)
        return train
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(min(batch, n - i), 3, 32, 32, generator=g), torch.randint(0, 10, (min(batch, n - i),), generator=g))
            for i in range(0, n, batch)]


def model(width: float):
    torch.manual_seed(0)
    return pk.models.get("resnet56", num_classes=10, in_channels=3, width=width)


def epoch_times(device, n, batch, width, data_dir):
    amp = "fp16" if device.type == "cuda" else "bf16"
    setups = [("fp32", "fp32", False), (f"AMP ({amp})", amp, False), ("fp32 + channels_last", "fp32", True),
              (f"AMP ({amp}) + channels_last", amp, True)]
    train = batches(n, batch, data_dir)
    # Warm-up (allocator, kernels' first calls), so the first set-up is not charged for it.
    fit(model(width), batches(2 * batch, batch, None), epochs=1, lr=0.05, device=device, progress=False)
    rows = []
    for name, precision, cl in setups:
        hist = fit(model(width), train, epochs=1, lr=0.05, device=device, precision=precision,
                   channels_last=cl, progress=False, seed=0)
        rows.append((name, hist[-1]["seconds"], hist[-1]["train_loss"]))
    return rows


def mask_exactness(device, width) -> tuple:
    from prunekit.methods.base import MethodCallback
    from prunekit.methods.gmp import GMP

    checks = {"steps": 0, "skipped": 0, "leaks": 0}

    class Check(Callback):
        def __init__(self, gmp):
            self.gmp = gmp

        def penalty(self, state):
            self.before = [p.detach().clone() for p in state.model.parameters()]
            if state.step in (1, 4):  # an infinite gradient: GradScaler must skip this step
                return next(state.model.parameters()).sum() * float("inf")
            return None

        def on_step_end(self, state):
            checks["steps"] += 1
            if state.skipped:
                checks["skipped"] += 1
                checks["leaks"] += sum(not torch.equal(a, b) for a, b in zip(self.before, state.model.parameters()))
            mask = getattr(self.gmp, "mask", None)
            if mask is None:
                return
            params = mask.parameters(state.model)
            for name, keep in mask.items():
                p = params[name]
                buf = state.optimizer.state.get(p, {}).get("momentum_buffer")
                checks["leaks"] += int((p.detach()[~keep] != 0).any())
                if buf is not None:
                    checks["leaks"] += int((buf[~keep] != 0).any())

    net = model(width)
    gmp = GMP(0.8, start_step=0, end_step=4, prune_every=2)
    cbs = [None, MethodCallback(gmp)]
    cbs[0] = Check(gmp)
    fit(net, batches(8 * 16, 16, None, seed=1), epochs=1, lr=0.05, device=device, precision="fp16",
        progress=False, seed=0, callbacks=cbs)
    ok = checks["leaks"] == 0 and checks["skipped"] >= 2
    return ok, checks


def ddp_worker(out: Path, n: int, batch: int, width: float) -> None:
    from prunekit import distributed
    from prunekit.device import resolve

    device = resolve("auto")
    distributed.setup(device)
    torch.set_num_threads(1)
    hist = fit(model(width), batches(n, batch, None, seed=2), epochs=1, lr=0.05, device=device, progress=False, seed=0)
    if distributed.is_main():
        out.write_text(json.dumps({"seconds": hist[-1]["seconds"], "loss": hist[-1]["train_loss"],
                                   "world": distributed.world_size(), "device": str(device)}))


def ddp(n, batch, width) -> tuple:
    procs = torch.cuda.device_count() if torch.cuda.is_available() else 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PRUNEKIT_DEVICE"):
        env.pop(key, None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in (1, procs):
            out = Path(tmp) / f"{p}.json"
            args = [str(Path(__file__).resolve()), "--ddp-worker", str(out), "--images", str(n), "--batch-size", str(batch),
                    "--width", str(width)]
            cmd = [sys.executable] + args if p == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(p)] + args
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
            results[p] = json.loads(out.read_text())
    return procs, results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: random CIFAR-shaped tensors)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (implied without CUDA)")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--width", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    n = args.images or (256 if tiny else 50000)
    width = args.width or (0.25 if tiny else 1.0)
    batch = 64 if tiny else args.batch_size
    if args.ddp_worker:
        ddp_worker(Path(args.ddp_worker), n, batch, width)
        return 0
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)
    print(f"prunekit gpu_check: device {device}"
          + (f" ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPUs)" if cuda else "")
          + f", torch {torch.__version__}, {'tiny sizes' if tiny else 'full sizes'}: ResNet-56 width {width:g}, "
          f"{n} images, batch {batch}")
    rows = []
    times = epoch_times(device, n, batch, width, None if tiny else args.data_dir)
    base = times[0][1]
    for name, seconds, loss in times:
        rows.append((f"epoch: {name}", f"{seconds:.2f} s", f"{base / seconds:.2f}x vs fp32; loss {loss:.3f}"))
    ok, checks = mask_exactness(device, width)
    rows.append(("mask exact under fp16 GradScaler", "yes" if ok else "NO",
                 f"{checks['steps']} steps, {checks['skipped']} skipped, {checks['leaks']} leaks"))
    procs, res = ddp(n, batch, width)
    one, many = res[1], res[procs]
    rel = abs(one["loss"] - many["loss"]) / abs(one["loss"])
    ddp_ok = rel < 0.05
    rows.append((f"DDP {procs} procs ({'nccl' if cuda else 'gloo'}) vs 1", f"{many['seconds']:.2f} s vs {one['seconds']:.2f} s",
                 f"ratio {many['seconds'] / one['seconds']:.2f}; epoch loss {many['loss']:.4f} vs {one['loss']:.4f} "
                 f"({'same' if ddp_ok else 'DIFFERENT'} to 5%)"))
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    print(f"{'check':<{width0}} | {'result':<{width1}} | detail")
    print(f"{'-' * width0}-+-{'-' * width1}-+-------")
    for a, b, c in rows:
        print(f"{a:<{width0}} | {b:<{width1}} | {c}")
    return 0 if ok and ddp_ok else 1


if __name__ == "__main__":
    sys.exit(main())
