"""Worker for tests/test_distributed.py: run as ``torchrun --nproc_per_node 2 this.py OUT``
(every rank) or as ``python this.py OUT`` (the one-process reference).

Each rank trains, prunes and fine-tunes tiny models on the synthetic dataset through the
library (fit, prune, finetune, GMP, ste_fixed, a crash + resume) and then runs
``prunekit run`` on a oneshot spec; it saves what it ended with to ``OUT/rank<r>.pt`` so the
test can compare ranks bit for bit, and the one-process run with the two-process one.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch
from torch import nn

SPEC = """\
name: ddp_test
data: {name: synthetic, train_subset: 384, batch_size: 64}
model: {name: lenet_300_100}
train: {epochs: 1, optimizer: sgd, lr: 0.05, schedule: cosine}
method:
  name: oneshot
  params: {sparsity: 0.8, finetune_epochs: 1}
seeds: [0]
baselines: [random_same_allocation]
"""


class Crash(RuntimeError):
    pass


def _callbacks():
    from prunekit.training import Callback

    class CrashAt(Callback):
        """Raise at the start of epoch ``epoch`` (after the previous epoch's checkpoint)."""

        def __init__(self, epoch):
            self.epoch = epoch

        def on_epoch_start(self, state):
            if state.epoch == self.epoch:
                raise Crash(f"simulated crash at epoch {state.epoch}")

    return CrashAt


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    from prunekit import data, distributed
    from prunekit.cli.main import main as cli
    from prunekit.core.prune import prune
    from prunekit.methods.base import MethodCallback
    from prunekit.methods.gmp import GMP
    from prunekit.methods.ste_fixed import STEFixed
    from prunekit.pipelines.finetune import finetune
    from prunekit.training import fit

    distributed.setup()
    rank, world = distributed.rank(), distributed.world_size()
    # Count the DistributedDataParallel wraps fit makes (one per fit call with 2 ranks).
    import prunekit.training.data_parallel as dp

    wraps, real_wrap = [], dp.wrap
    dp.wrap = lambda model, device: wraps.append(type(model).__name__) or real_wrap(model, device)
    train, test, _ = data.loaders("synthetic", batch_size=64, test_batch_size=128, seed=0, train_subset=512)
    kw = dict(lr=0.05, seed=0, progress=False)
    res = {"world": world, "rank": rank}

    # Dense training from a different initialisation on every rank (fit broadcasts rank 0's),
    # one-shot pruning, fine-tuning with the mask enforced.
    model = mlp(100 + rank)
    res["fit_hist"] = list(fit(model, train, test, epochs=1, checkpoint_dir=out / "fit", **kw))
    res["dense"] = {k: v.clone() for k, v in model.state_dict().items()}
    res["oneshot_mask"] = prune(model, 0.7).state_dict()
    from prunekit.core.mask import Mask

    mask = Mask(res["oneshot_mask"], model)
    res["ft_hist"] = list(finetune(model, mask, train, test, epochs=1, checkpoint_dir=out / "finetune",
                                   **kw))
    res["finetuned"] = model.state_dict()

    # GMP (prune() inside training) on a BatchNorm model: BN buffers are synchronised too.
    net = bn_net(7)
    gmp = GMP(0.8, start_step=0, end_step=8, prune_every=4)
    res["gmp_hist"] = list(fit(net, train, test, epochs=1, callbacks=[MethodCallback(gmp)], **kw))
    res["gmp_mask"] = gmp.finalize().state_dict()
    res["gmp_model"] = net.state_dict()

    # ste_fixed: thresholds recomputed every step, mask from finalize().
    net = mlp(8)
    ste = STEFixed(0.8, bound="binary_search")
    fit(net, train, test, epochs=1, callbacks=[MethodCallback(ste)], **kw)
    res["ste_mask"] = ste.finalize().state_dict()
    res["ste_model"] = net.state_dict()

    # LTP under fp16 autocast + GradScaler: its thresholds are optimizer parameters outside the
    # model (averaged by hand next to DDP), its state must be identical on every rank.
    from prunekit.methods.ltp import LTP

    net = bn_net(11)
    ltp = LTP(lam=1.0, init_sparsity=0.5)
    res["ltp_hist"] = list(fit(net, train, test, epochs=1, callbacks=[MethodCallback(ltp)],
                               precision="fp16", **kw))
    res["ltp_state"] = ltp.state_dict()
    res["ltp_mask"] = ltp.finalize().state_dict()
    res["ltp_model"] = net.state_dict()

    # An image folder through FileLoader: under torchrun each rank reads its DistributedSampler
    # share (global batch 8 = 4 per rank), augmentation per (seed, epoch, index).
    folder = out.parent / "images"  # shared by the one- and two-process runs (made by the test)
    files, files_test, _ = data.loaders("imagefolder", batch_size=8, test_batch_size=12, data_dir=str(folder),
                                        workers=1, image_size=16, seed=0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    torch.manual_seed(0)
    for p in net.parameters():
        nn.init.normal_(p, std=0.01)
    res["files_sharded"] = files.sharded
    res["files_hist"] = list(fit(net, files, files_test, epochs=2, **kw))
    res["files_model"] = net.state_dict()

    # A batch size the world size does not divide: one clear error on every rank, no hang.
    odd, _, _ = data.loaders("synthetic", batch_size=63, seed=0, train_subset=512)
    try:
        fit(mlp(1), odd, epochs=1, **kw)
        res["odd_batch"] = "trained"
    except ValueError as err:
        res["odd_batch"] = str(err)

    # Crash after the first of two epochs, then resume from rank 0's checkpoint; compare with
    # an uninterrupted run.
    CrashAt = _callbacks()
    net = bn_net(9)
    try:
        fit(net, train, test, epochs=2, checkpoint_dir=out / "crash", callbacks=[CrashAt(1)], **kw)
        raise AssertionError("the simulated crash did not happen")
    except Crash:
        pass
    net = bn_net(9)
    res["resumed_hist"] = list(fit(net, train, test, epochs=2, checkpoint_dir=out / "crash",
                                   callbacks=[CrashAt(-1)], **kw))
    res["resumed"] = net.state_dict()
    net = bn_net(9)
    fit(net, train, test, epochs=2, **kw)
    res["straight"] = net.state_dict()

    # The experiments layer: `prunekit run` (dense -> oneshot -> random baseline).
    (out / "spec.yaml").write_text(SPEC) if rank == 0 else None
    distributed.barrier()
    res["cli_exit"] = cli(["run", str(out / "spec.yaml"), "--dir", str(out / "proj"), "--quiet"])
    # The same spec with a batch size 2 processes cannot split: exit 2 with one line on every
    # rank, before any run folder exists.
    (out / "odd.yaml").write_text(SPEC.replace("batch_size: 64", "batch_size: 63")) if rank == 0 else None
    distributed.barrier()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        res["cli_odd_exit"] = cli(["run", str(out / "odd.yaml"), "--dir", str(out / "odd_proj"), "--quiet"])
    res["cli_odd_err"] = err.getvalue()
    res["cli_odd_runs"] = (out / "odd_proj" / "runs").exists()
    res["wraps"] = wraps
    torch.save(res, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
