"""``fit``: the training loop shared by every method and pipeline.

Its data parallelism under ``torchrun`` is in :mod:`.data_parallel`, the checkpoint it
writes after every epoch and the guards on resuming it in :mod:`.resume`.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from prunekit import device as devices
from prunekit import distributed
from prunekit.training.amp import MixedPrecision
from prunekit.training.callbacks import Callback, TrainState
from prunekit.training.checkpoint import load_checkpoint, save_checkpoint
from prunekit.training import data_parallel
from prunekit.training.data_parallel import my_slice, sync_buffers
from prunekit.training.health import DivergedError, check_finite, warn_if_collapsed  # noqa: F401
from prunekit.training.metrics import History, evaluate, on_device, to_device, topk_correct
from prunekit.training.optim import make_optimizer
# The checkpoint layout and resume guards have their own module; its names stay importable here.
from prunekit.training.resume import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, check_resumable,  # noqa: F401
                                      checkpoint_payload, guarded, make_recipe, restore)
from prunekit.training.schedules import Schedule, make_schedule


def fit(model: nn.Module, train: Iterable, test: Optional[Iterable] = None, epochs: int = 1,
        optimizer: Union[str, torch.optim.Optimizer] = "sgd",
        schedule: Union[str, Schedule, Callable[[int, int], float]] = "constant",
        callbacks: Sequence[Callback] = (), checkpoint_dir: Optional[Union[str, Path]] = None,
        resume: bool = True, device: Any = "cpu", progress: Optional[bool] = None,
        seed: Optional[int] = None, loss_fn: Optional[Callable] = None, lr: float = 0.1,
        momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 5e-4,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
        schedule_kwargs: Optional[Dict[str, Any]] = None,
        recipe: Optional[Dict[str, Any]] = None, precision: Optional[str] = None,
        channels_last: Optional[bool] = None, compile: Any = None) -> History:
    """Train ``model`` for ``epochs`` epochs over ``train`` (batches of ``(x, y)``).

    ``train`` must have ``len()`` (batches per epoch), which lays out the per-iteration lr
    schedule; if it has ``set_epoch(epoch)`` it is called at the start of every epoch with
    the 0-based epoch, so batch order is reproducible and resumable. A loader with
    ``on_device(device)`` (:class:`prunekit.data.Loader`) is iterated through it: on a GPU the
    in-memory dataset is copied there once and augmented there (same batches as on the CPU). After each epoch the
    model is evaluated on ``test`` (if given) and one dict is appended to the returned
    :class:`History`: epoch (1-based), train_loss (task loss, batch-weighted mean),
    train_top1, test_loss, test_top1, test_top5, lr (first param group's lr at the epoch's
    last step), seconds, step (global), plus train_penalty when a callback adds a penalty,
    plus whatever callbacks add in ``on_epoch_end``.

    ``optimizer`` is "sgd", "adamw" (built by :func:`make_optimizer` from lr, momentum,
    nesterov, weight_decay and ``optimizer_kwargs``) or a ready optimizer (those arguments
    then do not apply). ``schedule`` is a name, a :class:`Schedule` of ``epochs * len(train)``
    steps or a function ``f(step, total_steps) -> factor``; it multiplies every param group's
    own base lr (``initial_lr`` when an earlier scheduler set one, else ``lr``) and is
    stepped after every optimizer step.

    With ``checkpoint_dir``, ``checkpoint_dir/last.pt`` is written atomically after every
    epoch. With ``resume`` and an existing one, training continues after its last epoch
    (a finished run restores the model, trains nothing, calls ``on_fit_end`` and returns the
    stored history). Resuming refuses a checkpoint whose recipe differs from this call's.
    The saved ``recipe`` is this call's settings (optimizer, lr, momentum, nesterov,
    weight_decay, optimizer_kwargs, schedule, schedule_kwargs, epochs, steps_per_epoch,
    total_steps, eta_max, eta_min, seed) updated with the ``recipe`` argument.

    How it computes (not part of the recipe; ``None`` reads ``prunekit.device``'s settings,
    i.e. the CLI's ``--precision`` / ``--channels-last`` / ``--compile`` or
    ``$PRUNEKIT_PRECISION`` / ``$PRUNEKIT_CHANNELS_LAST`` / ``$PRUNEKIT_COMPILE``):

    - ``precision``: "fp32" (default), "bf16" (autocast) or "fp16" (autocast +
      ``torch.amp.GradScaler``; its scale is checkpointed), see :mod:`.amp`. The forward
      pass, the task loss and the evaluation run under autocast; penalties, weights,
      gradients and optimizer state stay fp32, and masks stay exact (a step GradScaler skips
      touches no weight and no optimizer state; ``TrainState.skipped`` is set for it and the
      history gets ``skipped_steps``);
    - ``channels_last``: the model's 4-d weights and every 4-d input batch in
      ``torch.channels_last`` memory format (done before ``on_fit_start``, so a mask enforcer
      created there views the converted weights);
    - ``compile``: True or a backend name: the training forward pass goes through
      ``torch.compile(model, backend=...)``; callbacks, evaluation and checkpoints keep
      the plain module.

    Several processes (``torchrun --nproc_per_node N``, see :mod:`prunekit.distributed`):
    fit initialises the process group if needed and then trains data-parallel:

    - rank 0's initial weights and buffers are broadcast to every rank;
    - every rank walks the same batches in the same order (``train`` is untouched, so
      ``set_epoch`` and resuming behave as in one process) and takes its slice of each batch
      (``tensor_split``: rank r gets the r-th of N near-equal pieces). One step is therefore
      still one batch of ``batch_size`` samples: the number of steps, the lr schedule, a
      method's step counts and the checkpoint's recipe are those of a one-process run, which
      can resume a checkpoint written by N processes and vice versa;
      A loader with ``sharded = True`` (:class:`prunekit.data.files.FileLoader` under a
      ``DistributedSampler``) already yields this rank's part and is not sliced. A batch
      size the world size does not divide (or a last batch smaller than the world) is
      refused with one ValueError before the first step, on every rank;
    - the forward and backward passes run through ``DistributedDataParallel`` (built after
      ``on_fit_start``, so it sees the parameters and hooks a method attached), which
      all-reduces the gradients in buckets while ``backward`` still runs. Each rank's loss
      is scaled by ``N * its samples / batch samples``, so DDP's plain mean is the gradient
      of the whole batch's mean loss even when the last batch splits unevenly. The model
      object stays the user's (no ``module.`` prefix in any state_dict; callbacks, methods
      and evaluation see the plain module); parameters a method adds to the optimizer but
      not to the model (thresholds) are averaged by hand after ``backward``, and
      MaskEnforcer's optimizer hooks see the averaged gradients. A parameter set is fixed
      when DDP is built: a method must not start training new model parameters mid-fit;
    - BatchNorm normalises each rank's slice with that slice's statistics (no
      SyncBatchNorm, as with DDP); its running statistics are per rank during an epoch and
      averaged over the ranks at the end of every epoch, before evaluation and checkpoint,
      so every rank holds the same buffers from then on;
    - train loss/accuracy are summed over the ranks and the test set is evaluated in
      shards (:func:`evaluate` with ``sharded=True``); the epoch's metrics row is then rank
      0's, so every rank returns the same history;
    - only rank 0 writes the checkpoint (the others wait at a barrier), and every rank
      resumes from it; only rank 0 shows a progress bar.
    """
    if seed is not None:
        torch.manual_seed(seed)
    epochs = int(epochs)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = torch.device(device)
    # An in-memory prunekit Loader holds its data on the device from here on (copied once,
    # augmented there); the caller's loader object is left as it was.
    train = on_device(train, device)
    if test is not None:
        test = on_device(test, device)
    amp = MixedPrecision(devices.precision(precision), device)
    to_channels_last = devices.channels_last(channels_last)
    backend = devices.compile_backend(compile)
    model.to(device)
    if to_channels_last:
        model.to(memory_format=torch.channels_last)
    if distributed.setup(device):
        # Same start everywhere, whatever each process's seed or construction did.
        distributed.broadcast_(list(model.parameters()) + list(model.buffers()))
    data_parallel.check_split(train, distributed.world_size())
    loss_fn = loss_fn or F.cross_entropy
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be prunekit.training.Callback instances, "
                            f"got {type(cb).__name__}")

    steps_per_epoch = _steps_per_epoch(train)
    total_steps = epochs * steps_per_epoch
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        opt = make_optimizer(model, optimizer, lr=lr, momentum=momentum, nesterov=nesterov,
                             weight_decay=weight_decay, **(optimizer_kwargs or {}))
    # A zero-epoch run still gets a valid (unused) one-step schedule.
    sched = make_schedule(schedule, max(total_steps, 1), steps_per_epoch,
                          **(schedule_kwargs or {}))
    run_recipe = make_recipe(opt, optimizer, optimizer_kwargs, sched, schedule,
                             epochs, steps_per_epoch, total_steps, seed, recipe)

    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    payload = None
    if path is not None and resume and path.exists():
        payload = load_checkpoint(path)  # unreadable -> CheckpointError, file left in place
        check_resumable(payload, run_recipe, len(callbacks), path)

    state = TrainState(model=model, optimizer=opt, steps_per_epoch=steps_per_epoch,
                       total_steps=total_steps, epochs=epochs, device=device)
    if payload is not None:
        guarded(path, "model", lambda: model.load_state_dict(payload["model"]))
    for cb in callbacks:
        cb.on_fit_start(state)
    # Built after on_fit_start so param groups added there (a method's thresholds) follow
    # the schedule. A plain function, so LambdaLR's state_dict stays plain data.
    state.scheduler = LambdaLR(opt, lambda t: sched.factor(t))
    start_epoch = 0
    if payload is not None:
        start_epoch = restore(payload, state, callbacks, path)
        amp.load_state_dict(payload.get("amp"))
    forward: Callable = model
    if distributed.world_size() > 1:
        forward = data_parallel.wrap(model, device)
    if backend is not None:
        forward = torch.compile(forward, backend=backend)
    run = _Runner(forward, amp, to_channels_last,
                  data_parallel.extra_parameters(opt, model) if distributed.world_size() > 1 else [])

    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and distributed.is_main()
    bar = tqdm(total=total_steps, initial=state.step, disable=not progress,
               dynamic_ncols=True, unit="it")
    try:
        for epoch in range(start_epoch, epochs):
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            metrics, classes = _run_epoch(state, epoch, train, test, loss_fn, callbacks, bar, run)
            # before a NaN model is checkpointed; the lr named is the configured (peak) one
            peak_lr = opt.param_groups[0].get("initial_lr", metrics.get("lr"))
            check_finite(model, metrics, epoch, peak_lr)
            if distributed.is_main():
                warn_if_collapsed(state.history, metrics, classes, peak_lr)
            state.history.append(metrics)
            if path is not None:
                if distributed.is_main():
                    payload = checkpoint_payload(state, callbacks, run_recipe)
                    if amp.scaler is not None:
                        payload["amp"] = amp.state_dict()
                    save_checkpoint(path, payload)
                distributed.barrier()  # nobody reads or races past a half-written epoch
    finally:
        bar.close()
        amp.close()  # its step hook (fp16) leaves the optimizer with the run
    state.epoch = epochs
    for cb in callbacks:
        cb.on_fit_end(state)
    return state.history


# ------------------------------------------------------------------------------ epochs


class _Runner:
    """How a step computes: the forward callable (the model, DDP or compiled), mixed
    precision, memory format, and the optimizer's parameters DDP does not reduce."""

    def __init__(self, forward: Callable, amp: MixedPrecision, channels_last: bool, extras: list):
        self.forward, self.amp, self.channels_last, self.extras = forward, amp, channels_last, extras

    def inputs(self, x: Any) -> Any:
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def _run_epoch(state: TrainState, epoch: int, train: Iterable, test: Optional[Iterable],
               loss_fn: Callable, callbacks: List[Callback], bar, run: _Runner) -> Tuple[Dict[str, Any], Optional[int]]:
    """Train one epoch and evaluate: the history row, and the number of classes the model
    scores (its output width; None when the task is not classification)."""
    model, opt = state.model, state.optimizer
    state.epoch = epoch
    if hasattr(train, "set_epoch"):
        train.set_epoch(epoch)
    model.train()
    for cb in callbacks:
        cb.on_epoch_start(state)
    start = time.perf_counter()
    loss_sum, penalty_sum, seen, correct, steps = 0.0, 0.0, 0, 0, 0
    has_penalty, classification, classes = False, True, None
    lr = opt.param_groups[0]["lr"]
    world = distributed.world_size()
    sharded = world > 1 and getattr(train, "sharded", False)
    skipped_before = state.skipped_steps
    for x, y in train:
        full = len(y) * world if sharded else len(y)
        if world > 1 and not sharded:
            data_parallel.check_batch(full, world)
            x, y = my_slice(x), my_slice(y)
        x, y = run.inputs(to_device(x, state.device)), to_device(y, state.device)
        opt.zero_grad(set_to_none=True)
        batch = len(y)
        with run.amp.autocast():
            out = run.forward(x)
            task = loss_fn(out, y)
        task = task.float()
        loss = task
        for cb in callbacks:
            extra = cb.penalty(state)
            if extra is not None:
                loss = loss + extra
                penalty_sum += float(extra.detach() if torch.is_tensor(extra) else extra)
                has_penalty = True
        # Under DDP (a plain mean over ranks): this rank's share of the whole batch's mean loss.
        run.amp.backward(loss * (batch * world / full) if world > 1 else loss)
        state.loss = float(loss.detach())
        if world > 1:
            data_parallel.average_extra_gradients(run.extras)
        lr = opt.param_groups[0]["lr"]  # the lr this step uses
        state.skipped = not run.amp.step(opt)
        state.skipped_steps += int(state.skipped)
        if state.skipped:
            # A step GradScaler skipped still advances the schedule (it counts iterations);
            # torch warns about that order only when the very first step was skipped.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                state.scheduler.step()
        else:
            state.scheduler.step()
        state.step += 1

        seen += batch
        steps += 1
        if batch:
            loss_sum += float(task.detach()) * batch
            counts = topk_correct(out.detach(), y, ks=(1,))
            if counts is None:
                classification = False
            else:
                correct += counts.get(1, 0)
                classes = out.size(1)
        for cb in callbacks:
            cb.on_step_end(state)
        bar.update(1)
        bar.set_postfix(loss=f"{state.loss:.4f}", refresh=False)

    if world > 1:
        sync_buffers(model)
        loss_sum, seen, correct, penalty_sum, logits = distributed.all_reduce_sum(
            [loss_sum, seen, correct, penalty_sum, float(classification)])
        seen, correct = int(seen), int(correct)
        classification = logits == world
        penalty_sum /= world  # every rank adds the same penalty (same parameters)
    metrics: Dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / seen if seen else None,
        "train_top1": 100.0 * correct / seen if seen and classification else None,
        "test_loss": None, "test_top1": None, "test_top5": None,
    }
    if test is not None:
        with run.amp.autocast():
            result = evaluate(model, test, device=state.device, loss_fn=loss_fn, sharded=True)
        metrics.update(test_loss=result["loss"], test_top1=result["top1"],
                       test_top5=result["top5"])
    metrics.update(lr=float(lr), seconds=time.perf_counter() - start, step=state.step)
    if has_penalty:
        metrics["train_penalty"] = penalty_sum / steps
    if run.amp.scaler is not None:
        metrics["skipped_steps"] = state.skipped_steps - skipped_before
    for cb in callbacks:
        cb.on_epoch_end(state, metrics)
    if metrics.get("test_top1") is not None:
        bar.set_postfix(loss=f"{state.loss:.4f}", top1=f"{metrics['test_top1']:.2f}")
    row = {k: _plain_number(v) for k, v in metrics.items()}
    # Rank 0's row everywhere (its seconds, its callbacks' numbers): one history per job.
    return (distributed.broadcast_object(row) if world > 1 else row), (classes if classification else None)


def _plain_number(value: Any) -> Any:
    # Callbacks may report 0-d tensors or numpy scalars; the history must stay plain data.
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def _steps_per_epoch(train: Iterable) -> int:
    try:
        n = len(train)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError("fit() needs len(train), the number of batches per epoch, to lay out "
                         "the learning-rate schedule; pass a DataLoader, a list of batches, "
                         "or an iterable with __len__") from None
    if n < 1:
        raise ValueError("the training loader is empty (len(train) == 0)")
    return int(n)


