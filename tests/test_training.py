"""Tests for prunekit.training: schedules, optimizers, fit, callbacks, checkpoints."""
import math
import os

import pytest
import torch
from torch import nn

from prunekit.training import (Callback, CheckpointError, History, Schedule, TrainState,
                               evaluate, fit, load_checkpoint, make_optimizer, make_schedule,
                               save_checkpoint, schedule_from_recipe)


# ------------------------------------------------------------------------ fixtures


class TinyLoader:
    """In-memory batches; the order depends only on (seed, epoch), like a resumable sampler."""

    def __init__(self, x, y, batch_size=16, seed=0, shuffle=True):
        self.x, self.y, self.batch_size, self.seed, self.shuffle = x, y, batch_size, seed, shuffle
        self.epoch = 0
        self.epochs_seen = []

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def make_data(n=96, classes=5, dim=8, seed=0):
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return x, y


def make_model(seed=0):
    torch.manual_seed(seed)
    # Dropout makes the run depend on the torch RNG, which seeding and resuming must handle.
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 5))


def loaders(seed=0):
    x, y = make_data(seed=seed)
    xt, yt = make_data(n=40, seed=seed + 100)
    return TinyLoader(x, y, seed=seed), TinyLoader(xt, yt, shuffle=False)


def without_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ------------------------------------------------------------------------ schedules


def test_schedule_factors_hand_computed():
    f = make_schedule("constant", 50).factor
    assert f(0) == f(49) == 1.0

    s = make_schedule("step", 60, steps_per_epoch=10, step_size=2)  # decay every 20 steps
    assert [s.factor(t) for t in (0, 19)] == [1.0, 1.0]
    assert s.factor(20) == pytest.approx(0.1) and s.factor(45) == pytest.approx(0.01)

    s = make_schedule("multistep", 50, 10, milestones=[1, 3], gamma=0.5)
    assert [s.factor(t) for t in (9, 10, 29, 30, 49)] == [1.0, 0.5, 0.5, 0.25, 0.25]

    s = make_schedule("cosine", 100)
    assert s.factor(0) == 1.0
    assert s.factor(25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)  # 0.853553...
    assert s.factor(50) == pytest.approx(0.5)
    s = make_schedule("cosine", 100, eta_min_factor=0.1)
    assert s.factor(50) == pytest.approx(0.55) and s.factor(0) == 1.0

    # onecycle, T = 100: warm-up ends at a = 0.3 * 100 - 1 = 29; f0 = 1/25, f_min = f0 / 1e4.
    s = make_schedule("onecycle", 100)
    assert s.factor(0) == pytest.approx(0.04)
    assert s.factor(29) == pytest.approx(1.0)
    assert s.factor(64) == pytest.approx((1 + 4e-6) / 2)  # halfway down: (64-29)/(99-29)
    assert s.factor(99) == pytest.approx(4e-6)

    # SGDR with T_0 = 1 epoch of 10 steps, T_mult = 2: cycles of 10, 20, 40 steps.
    s = make_schedule("cosine_restarts", 70, 10, T_0=1, T_mult=2)
    assert s.factor(5) == pytest.approx(0.5)
    assert s.factor(10) == 1.0 and s.factor(20) == pytest.approx(0.5) and s.factor(30) == 1.0
    s = make_schedule("cosine_restarts", 30, 10, T_0=1, eta_min_factor=0.2)
    assert s.factor(15) == pytest.approx(0.6) and s.factor(20) == 1.0

    s = make_schedule("linear", 10)
    assert s.factor(0) == 1.0 and s.factor(5) == pytest.approx(0.5)

    s = make_schedule(lambda t, total: 1 - t / total, 10)
    assert s.factor(5) == 0.5
    assert s.factor(-3) == 1.0 and s.factor(100) == pytest.approx(0.1)  # clamped to the ends


def test_onecycle_and_sgdr_match_torch():
    def torch_lrs(make, n):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
        sched = make(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"] / 0.5)
            opt.step()
            sched.step()
        return out

    ours = make_schedule("onecycle", 57, pct_start=0.25, div_factor=10, final_div_factor=100)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.5, total_steps=57, pct_start=0.25, div_factor=10, final_div_factor=100,
        cycle_momentum=False), 57)
    assert ours.factors() == pytest.approx(ref, rel=1e-9, abs=1e-12)

    ours = make_schedule("cosine_restarts", 75, 5, T_0=1, T_mult=2, eta_min_factor=0.1)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=5, T_mult=2, eta_min=0.05), 75)
    assert ours.factors() == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_schedule_composition_for_retraining():
    s = make_schedule("multistep", 40, 10, milestones=[2, 3])  # 1 x20, 0.1 x10, 0.01 x10
    assert s.max_factor() == 1.0 and s.min_factor() == pytest.approx(0.01)
    lrw = s.last(15)  # replay the last 1.5 epochs
    assert lrw.total_steps == 15
    assert lrw.factor(0) == pytest.approx(0.1) and lrw.factor(5) == pytest.approx(0.01)
    slr = s.stretched(8)  # g(t) = f(floor(t * 40 / 8)) = f(5 t)
    assert slr.factors() == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = Schedule.linear(0, 1, 4).then(Schedule.cosine(1, 0.1, 6))
    assert warm.total_steps == 10
    assert warm.factors()[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert warm.factor(7) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 3 / 6)) / 2)
    assert warm.scaled(2).factor(2) == pytest.approx(1.0)
    assert warm.window(4, 6).factors() == pytest.approx([1.0, warm.factor(5)])
    with pytest.raises(ValueError):
        s.last(41)


def test_unknown_schedule_names_and_kwargs_are_rejected_with_choices():
    with pytest.raises(KeyError) as err:
        make_schedule("cosin", 10)
    for name in ("constant", "step", "multistep", "cosine", "onecycle", "cosine_restarts"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="accepted: T_0, T_mult, eta_min_factor"):
        make_schedule("cosine_restarts", 10, 5, T0=1)
    with pytest.raises(ValueError, match="step_size"):
        make_schedule("step", 10, 5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_schedule("step", 10, step_size=1)
    with pytest.raises(ValueError, match="total_steps=20"):  # a Schedule must fit the run
        make_schedule(make_schedule("cosine", 20), 30)


# ------------------------------------------------------------------------ optimizers


def test_make_optimizer_and_unknown_names():
    model = make_model()
    sgd = make_optimizer(model, "sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)
    g = sgd.param_groups[0]
    assert isinstance(sgd, torch.optim.SGD)
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.05, 0.8, True, 1e-3)
    adamw = make_optimizer(model.parameters(), "adamw", lr=1e-3, weight_decay=0.01,
                           betas=(0.8, 0.9))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(KeyError, match="sgd, adamw"):
        make_optimizer(model, "adam")
    with pytest.raises(ValueError, match="accepted"):
        make_optimizer(model, "sgd", betas=(0.9, 0.99))
    x, y = make_data(n=16)
    with pytest.raises(KeyError, match="sgd, adamw"):
        fit(model, [(x, y)], optimizer="rmsprop")


# ------------------------------------------------------------------------ evaluate


def test_evaluate_topk_and_restores_modes():
    logits = torch.tensor([[5., 4, 3, 2, 1, 0],    # target 0: top-1
                           [5., 4, 3, 2, 1, 0],    # target 4: top-5 only
                           [5., 4, 3, 2, 1, 0],    # target 5: neither
                           [0., 1, 2, 3, 4, 5]])   # target 5: top-1
    y = torch.tensor([0, 4, 5, 5])
    model = nn.Sequential(nn.Identity(), nn.Dropout(0.5))
    model.train()
    model[0].eval()  # a caller's frozen submodule must stay frozen
    out = evaluate(model, [(logits[:2], y[:2]), (logits[2:], y[2:])])
    assert out["top1"] == 50.0 and out["top5"] == 75.0
    assert out["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item())
    assert model.training and not model[0].training and model[1].training
    # With 3 classes the rows' top-1 are 0, 0, 0, 2.
    three = evaluate(nn.Identity(), [(logits[:, :3], torch.tensor([0, 1, 2, 2]))])
    assert three["top1"] == 50.0 and three["top5"] is None


# ------------------------------------------------------------------------ fit


def test_fit_decreases_loss_and_reports_metrics():
    train, test = loaders()
    hist = fit(make_model(), train, test, epochs=8, lr=0.05, schedule="cosine", seed=0)
    assert isinstance(hist, History) and len(hist) == 8
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist.last["test_top1"] > 80 and hist.last["test_top5"] == 100.0
    assert set(hist[0]) >= {"epoch", "train_loss", "train_top1", "test_loss", "test_top1",
                            "test_top5", "lr", "seconds", "step"}
    assert [r["epoch"] for r in hist] == list(range(1, 9))
    assert [r["step"] for r in hist] == [6 * e for e in range(1, 9)]
    assert train.epochs_seen == list(range(8))
    assert hist.best("test_loss")["test_loss"] == min(r["test_loss"] for r in hist)
    assert hist.best("test_top1")["test_top1"] == max(r["test_top1"] for r in hist)


def test_same_seed_gives_identical_losses():
    runs = [fit(make_model(), loaders()[0], epochs=3, seed=s) for s in (1, 1, 2)]
    losses = [[r["train_loss"] for r in h] for h in runs]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]  # dropout draws differ


def test_schedule_scales_each_param_groups_own_base_lr():
    train, _ = loaders()
    model = make_model()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[3].parameters(), "lr": 0.001}], lr=0.1)
    seen = []

    class Spy(Callback):
        def on_step_end(self, state):
            seen.append([g["lr"] for g in state.optimizer.param_groups])

    hist = fit(model, train, epochs=3, optimizer=opt, schedule="step",
               schedule_kwargs={"step_size": 1}, callbacks=[Spy()])
    # After step t the scheduler has set the lr for step t+1: 0.1 * 0.1 ** ((t+1) // 6).
    assert seen[4] == pytest.approx([0.1, 0.001]) and seen[5] == pytest.approx([0.01, 1e-4])
    assert [r["lr"] for r in hist] == pytest.approx([0.1, 0.01, 0.001])


# ------------------------------------------------------------------------ callbacks


class Recorder(Callback):
    """Logs its hooks; its state is a step count and a tensor, to check the round trip."""

    def __init__(self, crash_at_epoch=None, log=None):
        self.crash_at_epoch = crash_at_epoch
        self.log = [] if log is None else log
        self.steps = 0
        self.total = torch.zeros(2)

    def on_fit_start(self, state):
        self.log.append("fit_start")

    def on_epoch_start(self, state):
        if state.epoch == self.crash_at_epoch:
            raise KeyboardInterrupt("simulated interruption")
        self.log.append(f"epoch_start {state.epoch}")

    def penalty(self, state):
        self.log.append("penalty")
        return None

    def on_step_end(self, state):
        self.steps += 1
        self.total += torch.tensor([1.0, state.loss])
        self.log.append(f"step_end {state.step}")

    def on_epoch_end(self, state, metrics):
        metrics["recorder_steps"] = self.steps
        self.log.append(f"epoch_end {state.epoch}")

    def on_fit_end(self, state):
        self.log.append("fit_end")

    def state_dict(self):
        return {"steps": self.steps, "total": self.total.clone()}

    def load_state_dict(self, state):
        self.steps = state["steps"]
        self.total = state["total"].clone()


def test_callback_hooks_are_called_in_order():
    x, y = make_data(n=8)
    log = []
    hist = fit(make_model(), [(x[:4], y[:4]), (x[4:], y[4:])], epochs=2,
               callbacks=[Recorder(log=log)])
    assert log == ["fit_start",
                   "epoch_start 0", "penalty", "step_end 1", "penalty", "step_end 2",
                   "epoch_end 0",
                   "epoch_start 1", "penalty", "step_end 3", "penalty", "step_end 4",
                   "epoch_end 1", "fit_end"]
    assert [r["recorder_steps"] for r in hist] == [2, 4]


def test_penalty_reaches_the_loss_and_its_gradient():
    x, y = make_data(n=16)
    model = make_model().eval()
    model[2].p = 0.0  # no dropout: the task loss is a fixed function of the weights
    task = nn.functional.cross_entropy(model(x), y).item()

    class Constant(Callback):
        losses = []

        def penalty(self, state):
            return torch.tensor(5.0)

        def on_step_end(self, state):
            self.losses.append(state.loss)

    # lr = 0: weights never move, so each step's loss is the same task loss + 5.
    hist = fit(model, [(x, y)], epochs=2, lr=0.0, callbacks=[Constant()])
    assert Constant.losses == pytest.approx([task + 5, task + 5], rel=1e-6)
    assert hist[0]["train_penalty"] == 5.0 and hist[0]["train_loss"] == pytest.approx(task)

    class Shrink(Callback):
        def penalty(self, state):
            return 10 * sum((p ** 2).sum() for p in state.model.parameters())

    # With a zero task loss only the penalty's gradient can move the weights.
    model = make_model()
    before = sum(p.abs().sum().item() for p in model.parameters())
    fit(model, [(x, y)], epochs=20, lr=0.01, momentum=0.0, weight_decay=0.0,
        loss_fn=lambda out, target: out.sum() * 0, callbacks=[Shrink()])
    after = sum(p.abs().sum().item() for p in model.parameters())
    assert after < 0.05 * before


# ------------------------------------------------------------------------ checkpoints


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    kwargs = dict(epochs=5, schedule="cosine", lr=0.05, seed=3)
    train, test = loaders()
    ref_model, ref_cb = make_model(), Recorder()
    ref = fit(ref_model, train, test, callbacks=[ref_cb], **kwargs)

    train, test = loaders()
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), train, test, callbacks=[Recorder(crash_at_epoch=2)],
            checkpoint_dir=tmp_path, **kwargs)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["epoch"] == 2 and saved["step"] == 12 and len(saved["history"]) == 2
    assert saved["callbacks"][0]["steps"] == 12

    train, test = loaders()
    model, cb = make_model(seed=99), Recorder()  # different init: the checkpoint must win
    resumed = fit(model, train, test, callbacks=[cb], checkpoint_dir=tmp_path, **kwargs)
    assert train.epochs_seen == [2, 3, 4]
    assert without_time(resumed) == without_time(ref)
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)
    assert cb.steps == ref_cb.steps == 30 and torch.equal(cb.total, ref_cb.total)

    # A finished run trains nothing and returns the stored history (and the trained model).
    train, _ = loaders()
    model, log = make_model(seed=7), []
    again = fit(model, train, test, callbacks=[Recorder(log=log)], checkpoint_dir=tmp_path,
                **kwargs)
    assert again == resumed and train.epochs_seen == [] and log == ["fit_start", "fit_end"]
    assert torch.equal(model[0].weight, ref_model[0].weight)


def test_checkpoint_recipe_and_mismatch(tmp_path):
    train, _ = loaders()
    fit(make_model(), train, epochs=2, lr=0.2, schedule="multistep",
        schedule_kwargs={"milestones": [1]}, checkpoint_dir=tmp_path, recipe={"model": "tiny"})
    recipe = load_checkpoint(tmp_path / "last.pt")["recipe"]
    assert recipe["lr"] == 0.2 and recipe["optimizer"] == "sgd" and recipe["epochs"] == 2
    assert recipe["eta_max"] == pytest.approx(0.2) and recipe["eta_min"] == pytest.approx(0.02)
    assert recipe["model"] == "tiny" and recipe["total_steps"] == 12
    rebuilt = schedule_from_recipe(recipe)
    assert rebuilt.factors() == make_schedule("multistep", 12, 6, milestones=[1]).factors()
    # Resuming with another recipe would silently mix two runs: refused, file kept.
    with pytest.raises(CheckpointError, match="lr: 0.2 -> 0.1"):
        fit(make_model(), train, epochs=2, lr=0.1, schedule="multistep",
            schedule_kwargs={"milestones": [1]}, checkpoint_dir=tmp_path,
            recipe={"model": "tiny"})
    # resume=False starts over (and overwrites, as asked).
    hist = fit(make_model(), train, epochs=1, checkpoint_dir=tmp_path, resume=False)
    assert len(hist) == 1 and load_checkpoint(tmp_path / "last.pt")["recipe"]["epochs"] == 1


def test_corrupt_checkpoint_gives_clear_error_and_is_kept(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"this is not a checkpoint")
    train, _ = loaders()
    with pytest.raises(CheckpointError) as err:
        fit(make_model(), train, epochs=1, checkpoint_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "delete it" in msg and "resume=False" not in msg  # not a CLI option (#18)
    assert path.read_bytes() == b"this is not a checkpoint"
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_checkpoint_is_atomic_and_plain(tmp_path):
    path = tmp_path / "sub" / "ck.pt"
    save_checkpoint(path, {"w": torch.arange(3), "meta": {"a": [1, 2.5, None, "x"]}})
    save_checkpoint(path, {"w": torch.arange(4)})  # replaces the old file
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4))
    assert os.listdir(path.parent) == ["ck.pt"]  # no temp file left behind

    class Thing:
        pass

    with pytest.raises(TypeError, match=r"payload\['bad'\]\[0\]"):
        save_checkpoint(path, {"bad": [Thing()]})
    with pytest.raises(TypeError):
        save_checkpoint(path, {"h": History([{"epoch": 1}])})  # a list subclass would not load
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4))  # old file intact


def test_train_state_is_a_dataclass_with_the_interface_fields():
    fields = set(TrainState.__dataclass_fields__)
    assert fields >= {"model", "optimizer", "scheduler", "epoch", "step", "steps_per_epoch",
                      "total_steps", "history", "device", "loss"}


# ------------------------------------------------------------------------ collapse
class KillHiddenUnits(Callback):
    """From epoch ``at`` on, every hidden ReLU is dead: the network can only output its last
    bias, a constant. What ste_fixed at 99% does to LeNet-5 at a high lr, made on purpose."""

    def __init__(self, at):
        self.at = at

    def on_epoch_start(self, state):
        if state.epoch == self.at:
            with torch.no_grad():
                state.model[0].bias.fill_(-1e4)


def balanced_loader(classes=5, n=100, seed=0):
    centers = torch.randn(classes, 8, generator=torch.Generator().manual_seed(1234)) * 3
    y = torch.arange(n) % classes  # balanced: a constant output scores exactly chance
    x = centers[y] + torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    return TinyLoader(x, y, batch_size=20)


def test_a_run_that_collapses_to_a_constant_output_warns_once_with_the_epoch():
    from prunekit.training import CollapseWarning
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    with pytest.warns(CollapseWarning) as caught:
        hist = fit(model, balanced_loader(), epochs=8, lr=0.1, schedule="constant",
                   callbacks=[KillHiddenUnits(at=3)])
    collapse = [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert len(collapse) == 1  # once, not every collapsed epoch
    message = str(collapse[0].message)
    first = next(r["epoch"] for r in hist if r["train_loss"] >= 0.99 * math.log(5))
    assert first >= 4 and message.startswith(f"training collapsed in epoch {first}: ")
    assert "ln 5" in message and "lower the learning rate (it was 0.1)" in message
    assert hist.last["train_top1"] == pytest.approx(20.0)  # the run went on; its numbers are true


def test_no_collapse_warning_when_training_learns_or_never_learned():
    import warnings
    from prunekit.training import CollapseWarning
    from prunekit.training.health import warn_if_collapsed
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        fit(make_model(), *loaders(), epochs=4, lr=0.05, seed=0)
        # at chance from the first epoch (nothing learned): a hard task, not a collapse
        chance = {"epoch": 2, "train_loss": math.log(10), "train_top1": 10.0}
        assert not warn_if_collapsed([dict(chance, epoch=1)], chance, 10)
        # no classes (regression) or no accuracy: nothing to compare with
        assert not warn_if_collapsed([{"epoch": 1, "train_loss": 0.1}], chance, None)
    learned = {"epoch": 1, "train_loss": 0.5, "train_top1": 85.0}
    with pytest.warns(CollapseWarning, match=r"epoch 2: .* ~ ln 10 .* chance, after 0\.500 in epoch 1: "):
        assert warn_if_collapsed([learned], dict(chance, train_top1=10.5), 10)
    # above 1.5x chance or clearly below ln C: still learning something
    assert not warn_if_collapsed([learned], dict(chance, train_top1=16.0), 10)
    assert not warn_if_collapsed([learned], dict(chance, train_loss=2.2), 10)
