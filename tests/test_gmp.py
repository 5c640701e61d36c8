"""Gradual magnitude pruning: the cubic schedule, exact counts on schedule, enforcement, resume."""
import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.core.targets import prunable_parameters
from prunekit.methods import MethodCallback
from prunekit.methods.gmp import GMP, cubic_sparsity
from prunekit.pipelines.gradual import gmp as gmp_pipeline
from prunekit.training import fit


@pytest.fixture(scope="module")
def data():
    train, test, _ = pk.data.loaders("synthetic", batch_size=128, seed=0)
    return train, test


def small_model(seed=0):
    torch.manual_seed(seed)
    return pk.models.get("lenet_300_100", width=0.25)


def test_registered():
    assert pk.methods.get("gmp") is GMP


def test_cubic_schedule_by_hand():
    # s_f = 0.9, s_i = 0, t0 = 10, dt = 10, n = 4: s = 0.9 - 0.9 (1 - i/4)^3.
    s = [cubic_sparsity(t, 0.9, 10, 50, 10) for t in (5, 10, 20, 25, 30, 40, 50, 80)]
    assert s == pytest.approx([0.0, 0.0, 0.5203125, 0.5203125, 0.7875, 0.8859375, 0.9, 0.9])
    assert cubic_sparsity(50, 0.9, 10, 50, 10) == 0.9   # exactly the target
    # With s_i = 0.5: s = 0.9 - 0.4 (1 - i/4)^3.
    assert cubic_sparsity(10, 0.9, 10, 50, 10, 0.5) == pytest.approx(0.5)
    assert cubic_sparsity(30, 0.9, 10, 50, 10, 0.5) == pytest.approx(0.9 - 0.4 * 0.125)


@pytest.mark.parametrize("score,allocation", [("magnitude", "global"), ("lamp", "global"), ("magnitude", "erk")])
def test_reaches_final_sparsity_on_schedule_and_holds_it(data, score, allocation):
    model = small_model()
    n = sum(p.numel() for p in prunable_parameters(model).values())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = GMP(0.9, start_step=4, end_step=16, prune_every=4, initial_sparsity=0.2, score=score,
                 allocation=allocation).attach(model, optimizer)
    expected_kept = lambda t: round(n * (1 - method.sparsity_at(t)))  # noqa: E731
    previous, t = None, 0
    for _ in range(2):  # 32 steps: pruning at 4, 8, 12, 16, then 16 steps holding 90%
        for x, y in data[0]:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            method.step()
            t += 1
            if t < 4:
                assert method.mask is None or method.mask.kept() == n
                continue
            assert method.mask.kept() == expected_kept(t)
            if previous is not None:
                assert method.mask.is_subset_of(previous)
            previous = method.mask
            params = prunable_parameters(model)
            for name, m in method.mask.items():   # pruned weights and their momentum stay zero
                assert bool((params[name][~m] == 0).all())
                assert bool((optimizer.state[params[name]]["momentum_buffer"][~m] == 0).all())
    assert t == 32 and method.steps == 32
    assert method.mask.kept() == round(n * 0.1)
    mask = method.finalize()
    assert sum(int(torch.count_nonzero(p)) for p in prunable_parameters(model).values()) == mask.kept()
    assert not optimizer._optimizer_step_post_hooks     # plain model and optimizer again
    assert set(model.state_dict()) == set(small_model().state_dict())


def test_start_at_zero_prunes_before_the_first_step(data):
    model = small_model()
    n = sum(p.numel() for p in prunable_parameters(model).values())
    method = GMP(0.8, start_step=0, end_step=8, prune_every=4, initial_sparsity=0.5)
    method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert method.mask.kept() == round(n * 0.5)


def test_state_dict_round_trip_restores_mask_and_step(data):
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = GMP(0.9, start_step=0, end_step=8, prune_every=4).attach(model, opt)
    for _, (x, y) in zip(range(6), data[0]):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        method.step()
    state = method.state_dict()
    other = GMP(0.9, start_step=0, end_step=8, prune_every=4)
    other.load_state_dict(state)                       # before attach, as a plain loop may do
    clone = small_model()
    clone.load_state_dict(model.state_dict())
    other.attach(clone, torch.optim.SGD(clone.parameters(), lr=0.05))
    assert other.steps == 6
    for name in method.mask:
        assert torch.equal(other.mask[name], method.mask[name])


def test_inside_fit_resumes_with_its_mask(data, tmp_path):
    # An interrupted run (after epoch 1 of 3) rebuilt from its checkpoint carries on.
    first = small_model()
    fit_epochs = {"n": 0}

    class Stop(pk.training.Callback):
        def on_epoch_end(self, state, metrics):
            fit_epochs["n"] += 1
            if fit_epochs["n"] == 2:
                raise KeyboardInterrupt

    method = GMP(0.9, start_step=0, end_step=24, prune_every=8)
    with pytest.raises(KeyboardInterrupt):
        fit(first, data[0], data[1], epochs=3, lr=0.05, callbacks=[MethodCallback(method), Stop()],
            checkpoint_dir=tmp_path, progress=False)
    resumed_method = GMP(0.9, start_step=0, end_step=24, prune_every=8)
    history = fit(small_model(), data[0], data[1], epochs=3, lr=0.05,
                  callbacks=[MethodCallback(resumed_method), Stop()], checkpoint_dir=tmp_path, progress=False)
    assert resumed_method.steps == 48
    assert history[-1]["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert history[0]["target_sparsity"] == pytest.approx(0.9 - 0.9 * (1 - 2 / 3) ** 3)  # after 16 steps


def test_pipeline_reports_cost_and_exact_sparsity(data, tmp_path):
    model = small_model()
    n = sum(p.numel() for p in prunable_parameters(model).values())
    result = gmp_pipeline(model, data, 0.95, recipe={"epochs": 2, "lr": 0.05}, folder=tmp_path, progress=False)
    assert result.mask.kept() == round(n * 0.05)
    assert result.total_epochs == 2 and result.total_seconds > 0
    row = result.history[0]
    assert (row["start_step"], row["end_step"], row["prune_every"]) == (0, 24, 4)  # 3/4 of 32 steps, dt = 16 // 4
    again = gmp_pipeline(small_model(), data, 0.95, recipe={"epochs": 2, "lr": 0.05}, folder=tmp_path,
                             progress=False)
    assert again.history == result.history and torch.equal(again.mask["fc1.weight"], result.mask["fc1.weight"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of prune_every"):
        GMP(0.9, start_step=0, end_step=10, prune_every=4)
    with pytest.raises(ValueError, match="above final_sparsity"):
        GMP(0.5, end_step=8, initial_sparsity=0.6, prune_every=4)
    with pytest.raises(ValueError, match="sparsity must be"):
        GMP(1.2, end_step=8)
    with pytest.raises(RuntimeError, match="attach"):
        GMP(0.5, end_step=8, prune_every=4).step()
