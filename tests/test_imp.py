"""IMP: exact per-phase counts, shrinking masks, rewinding, resuming, cost accounting.

Synthetic data (16 batches per epoch) and a quarter-width LeNet-300-100 keep every IMP run
well under a second.
"""
import sys

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import Mask
from prunekit.core.targets import prunable_parameters
from prunekit.pipelines.imp import PruneResult, imp, phase_sparsity, train_ticket
from prunekit.pipelines.rewind import RewindPoint, reinitialized_weights, rewind
from prunekit.training import fit

IMP_MODULE = sys.modules["prunekit.pipelines.imp"]  # the package attribute is the function
RECIPE = {"epochs": 1, "lr": 0.05, "schedule": "cosine"}


@pytest.fixture(scope="module")
def data():
    train, test, _ = pk.data.loaders("synthetic", batch_size=128, seed=0)
    return train, test


def small_model(seed=0):
    torch.manual_seed(seed)
    return pk.models.get("lenet_300_100", width=0.25)


def nonzero_prunable(model):
    return sum(int(torch.count_nonzero(p)) for p in prunable_parameters(model).values())


@pytest.mark.parametrize("score,allocation", [("magnitude", "global"), ("lamp", "global"), ("magnitude", "erk")])
def test_each_phase_keeps_exactly_round_n_density_and_masks_shrink(data, tmp_path, score, allocation):
    model = small_model()
    n = sum(p.numel() for p in prunable_parameters(model).values())
    s, phases = 0.9, 3
    result = imp(model, data, s, phases=phases, retrain_epochs=1, schedule="clr", score=score,
                 allocation=allocation, recipe=RECIPE, folder=tmp_path, progress=False)
    previous = None
    for j in range(1, phases + 1):
        mask = Mask.load(tmp_path / f"phase_{j:02d}" / "mask.pt")
        assert mask.kept() == round(n * (1 - s) ** (j / phases))
        assert result.history[j]["kept"] == mask.kept()
        assert result.history[j]["requested_sparsity"] == pytest.approx(1 - (1 - s) ** (j / phases))
        if previous is not None:
            assert mask.is_subset_of(previous)
        previous = mask
    assert result.mask.kept() == round(n * (1 - s))            # the target, exactly
    assert nonzero_prunable(result.model) == result.mask.kept()  # and the weights are zeros
    assert phase_sparsity(s, phases, phases) == s


def test_history_counts_the_whole_cost(data):
    result = imp(small_model(), data, 0.8, phases=2, retrain_epochs=2, schedule="ft",
                 recipe=dict(RECIPE, epochs=2), progress=False)
    assert isinstance(result, PruneResult)
    assert [r["phase"] for r in result.history] == [0, 1, 2]
    assert [r["epochs"] for r in result.history] == [2, 2, 2]
    assert result.total_epochs == 6
    assert all(r["seconds"] > 0 for r in result.history)
    assert result.total_seconds == pytest.approx(sum(r["seconds"] for r in result.history))
    assert result.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert result.top1 is not None and "total: 6 epochs" in result.table()
    assert [r["stage"] for r in result.epochs_log] == ["dense"] * 2 + ["phase_01"] * 2 + ["phase_02"] * 2


def test_allr_peak_stays_between_its_bounds(data):
    result = imp(small_model(), data, 0.9, phases=2, retrain_epochs=1, schedule="allr",
                 recipe=dict(RECIPE, epochs=2), progress=False)
    eta_max = 0.05  # cosine's largest lr is the base lr
    for row in result.history[1:]:
        assert 0.5 * eta_max - 1e-12 <= row["lr_peak"] <= eta_max  # lower = min(1/2, 1) eta_max


def test_interrupted_after_phase_two_resumes_at_phase_three(data, tmp_path, monkeypatch):
    kwargs = dict(phases=3, retrain_epochs=1, schedule="slr", recipe=RECIPE, progress=False)
    reference = imp(small_model(), data, 0.9, folder=tmp_path / "ref", **kwargs)

    real_fit, real_prune = IMP_MODULE.masked_fit, IMP_MODULE.prune
    calls = {"fit": [], "prune": 0}

    def interrupting_fit(*args, recipe=None, **kw):
        calls["fit"].append(recipe["imp_phase"])
        if recipe["imp_phase"] == 3 and len(calls["fit"]) == 3:
            raise KeyboardInterrupt  # the first run dies when phase 3 starts training
        return real_fit(*args, recipe=recipe, **kw)

    def counting_prune(*args, **kw):
        calls["prune"] += 1
        return real_prune(*args, **kw)

    monkeypatch.setattr(IMP_MODULE, "masked_fit", interrupting_fit)
    monkeypatch.setattr(IMP_MODULE, "prune", counting_prune)
    with pytest.raises(KeyboardInterrupt):
        imp(small_model(), data, 0.9, folder=tmp_path / "run", **kwargs)
    assert calls == {"fit": [1, 2, 3], "prune": 3}
    assert not (tmp_path / "run" / "phase_03" / "model.pt").exists()

    calls.update(fit=[], prune=0)
    resumed = imp(small_model(), data, 0.9, folder=tmp_path / "run", **kwargs)
    assert calls == {"fit": [3], "prune": 1}          # phases 1-2 come from their folders
    assert [r["phase"] for r in resumed.history] == [0, 1, 2, 3]
    for name in resumed.mask:                           # same result as the uninterrupted run
        assert torch.equal(resumed.mask[name], reference.mask[name])
    assert resumed.history[3]["top1"] == reference.history[3]["top1"]
    assert [r["stage"] for r in resumed.epochs_log] == [r["stage"] for r in reference.epochs_log]

    calls.update(fit=[], prune=0)
    imp(small_model(), data, 0.9, folder=tmp_path / "run", **kwargs)  # finished: nothing reruns
    assert calls == {"fit": [], "prune": 0}


def test_folder_refuses_other_settings(data, tmp_path):
    imp(small_model(), data, 0.5, phases=1, retrain_epochs=1, schedule="ft", recipe=RECIPE, folder=tmp_path,
        progress=False)
    with pytest.raises(ValueError, match="other settings.*schedule"):
        imp(small_model(), data, 0.5, phases=1, retrain_epochs=1, schedule="llr", recipe=RECIPE, folder=tmp_path,
            progress=False)


def test_rewind_point_and_rewind_restore_exact_values(data):
    model = small_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    at_zero, at_five = RewindPoint(0), RewindPoint(5)
    fit(model, data[0], None, epochs=1, lr=0.05, callbacks=[at_zero, at_five], progress=False)
    for k in init:
        assert torch.equal(at_zero.weights[k], init[k])
    assert not torch.equal(at_five.weights["fc1.weight"], init["fc1.weight"])
    mask = pk.prune(model, 0.7)
    rewind(model, mask, at_five.weights)
    for name, p in model.state_dict().items():
        expected = at_five.weights[name]
        if name in mask:
            assert torch.equal(p[mask[name]], expected[mask[name]])   # survivors: saved values
            assert bool((p[~mask[name]] == 0).all())                  # pruned: zero
        else:
            assert torch.equal(p, expected)                           # biases too


def test_imp_with_rewinding_replays_the_original_schedule(data, tmp_path):
    model = small_model()
    result = imp(model, data, 0.8, phases=2, rewind=0, recipe=dict(RECIPE, epochs=2), folder=tmp_path,
                 progress=False)
    assert [r["epochs"] for r in result.history] == [2, 2, 2]   # each phase: the whole schedule
    assert [r["stage"] for r in result.history[1:]] == ["rewind", "rewind"]
    assert result.history[-1]["lr_peak"] == pytest.approx(0.05)
    saved = torch.load(tmp_path / "dense" / "rewind.pt", weights_only=True)
    assert saved["step"] == 0 and torch.equal(saved["weights"]["fc1.weight"], small_model().state_dict()["fc1.weight"])


def test_random_reinit_baseline(data):
    model = small_model()
    mask = pk.prune(model, 0.8)
    fresh = reinitialized_weights(model, seed=7)
    assert not torch.equal(fresh["fc1.weight"], small_model().state_dict()["fc1.weight"])
    assert torch.equal(fresh["fc1.weight"], reinitialized_weights(model, seed=7)["fc1.weight"])
    result = train_ticket(model, mask, fresh, data, recipe=RECIPE, stage="random_reinit", progress=False)
    assert result.history[0]["epochs"] == 1 and result.total_epochs == 1
    assert nonzero_prunable(result.model) <= mask.kept()
    assert result.mask.kept() == mask.kept()


def test_pretrained_checkpoint_supplies_the_original_schedule(data, tmp_path):
    model = small_model()
    fit(model, data[0], data[1], epochs=2, lr=0.05, schedule="cosine", checkpoint_dir=tmp_path / "dense",
        progress=False)
    result = imp(small_model(), data, 0.5, phases=1, retrain_epochs=1, schedule="lrw",
                 pretrained=tmp_path / "dense" / "last.pt", progress=False)
    assert result.history[0]["stage"] == "given" and result.history[0]["epochs"] == 2
    assert result.total_epochs == 3
    # lrw replays the last epoch of the 2-epoch cosine: it starts half way down.
    assert result.history[1]["lr_peak"] == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(torch.pi / 2)).item()) / 2)


@pytest.mark.parametrize("schedule", ["lrw", "slr", "allr"])
def test_pretrained_without_recipe_raises_before_pruning(data, schedule):
    model = small_model()
    before = model.state_dict()["fc1.weight"].clone()
    with pytest.raises(ValueError, match="recipe"):
        imp(model, data, 0.5, phases=1, schedule=schedule, pretrained=True, progress=False)
    assert torch.equal(model.state_dict()["fc1.weight"], before)


def test_pretrained_without_recipe_runs_ft_with_explicit_eta_min(data):
    result = imp(small_model(), data, 0.5, phases=1, schedule="ft", pretrained=True, eta_min=0.001, progress=False)
    assert result.history[1]["lr_peak"] == pytest.approx(0.001)


def test_bad_arguments_say_what_is_accepted(data):
    with pytest.raises(ValueError, match="phases"):
        imp(small_model(), data, 0.5, phases=0)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        imp(small_model(), data, 1.0)
    with pytest.raises(KeyError, match="allr"):
        imp(small_model(), data, 0.5, schedule="warm")


def test_unfinished_phase_resumes_from_its_epoch_checkpoint(data, tmp_path, monkeypatch):
    kwargs = dict(phases=2, retrain_epochs=2, schedule="llr", recipe=RECIPE, progress=False)
    reference = imp(small_model(), data, 0.8, folder=tmp_path / "ref", **kwargs)
    epochs_run, crash = [], [True]

    class Interrupt(IMP_MODULE.EnforceMask):
        def on_epoch_start(self, state):
            epochs_run.append(state.epoch)

        def on_epoch_end(self, state, metrics):
            super().on_epoch_end(state, metrics)
            if crash[0] and len(epochs_run) == 2:  # phase 1: epoch 0 saved, epoch 1 dies before its checkpoint
                raise KeyboardInterrupt

    monkeypatch.setattr(IMP_MODULE, "EnforceMask", Interrupt)
    with pytest.raises(KeyboardInterrupt):
        imp(small_model(), data, 0.8, folder=tmp_path / "run", **kwargs)
    epochs_run.clear()
    crash[0] = False
    resumed = imp(small_model(), data, 0.8, folder=tmp_path / "run", **kwargs)
    assert epochs_run == [1, 0, 1]     # phase 1 redoes only its second epoch, then phase 2
    assert resumed.history[1]["epochs"] == 2
    for name in resumed.mask:
        assert torch.equal(resumed.mask[name], reference.mask[name])
    assert resumed.history[2]["top1"] == reference.history[2]["top1"]


def test_a_schedule_that_cannot_be_replayed_fails_before_training(data, monkeypatch):
    trained = []
    monkeypatch.setattr(IMP_MODULE, "fit", lambda *a, **k: trained.append(1))
    with pytest.raises(ValueError, match="recipe"):   # a custom lr function cannot be rebuilt for SLR
        imp(small_model(), data, 0.5, phases=1, schedule="slr", recipe={"schedule": lambda t, n: 1.0},
            progress=False)
    assert trained == []
