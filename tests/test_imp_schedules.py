"""IMP retraining schedules (SPEC.md section 2) against hand-computed learning rates.

The original schedule throughout: cosine from base lr 0.1 over T = 100 steps (10 epochs of 10
steps), so lr_orig(t) = 0.05 (1 + cos(pi t / 100)); eta_max = lr_orig(0) = 0.1 and
eta_min = lr_orig(99). Retraining runs n = 20 steps, so the warm-up is w = 2 steps.
"""
import math

import pytest
import torch

from prunekit.pipelines.retrain_schedules import (OriginalSchedule, allr_peak, relative_change,
                                                  retrain_schedule, warmup_steps)
from prunekit.pipelines.rewind import replay_schedule

RECIPE = {"lr": 0.1, "schedule": "cosine", "schedule_kwargs": {}, "epochs": 10, "steps_per_epoch": 10,
          "total_steps": 100}


def lr_orig(t):
    return 0.05 * (1 + math.cos(math.pi * t / 100))


ETA_MAX, ETA_MIN = lr_orig(0), lr_orig(99)


@pytest.fixture
def orig():
    return OriginalSchedule.from_recipe(RECIPE)


def test_original_schedule_from_recipe(orig):
    assert orig.eta_max == pytest.approx(0.1)
    assert orig.eta_min == pytest.approx(ETA_MIN)
    assert orig.epochs == 10 and orig.steps_per_epoch == 10
    assert orig.lr.factor(37) == pytest.approx(lr_orig(37))
    # A `prunekit train` model-file recipe has no step counts: the loader's length fills them in.
    short = OriginalSchedule.from_recipe({"lr": 0.1, "schedule": "cosine", "epochs": 10}, steps_per_epoch=10)
    assert short.lr.total_steps == 100 and short.eta_min == pytest.approx(ETA_MIN)


def test_warmup_is_ten_percent_rounded_down():
    assert [warmup_steps(n) for n in (5, 10, 19, 20, 469)] == [0, 1, 1, 2, 46]


def test_ft_is_constant_eta_min(orig):
    s = retrain_schedule("ft", 20, orig)
    assert [s.factor(t) for t in (0, 7, 19)] == pytest.approx([ETA_MIN] * 3)


def test_lrw_replays_the_last_n_steps(orig):
    s = retrain_schedule("lrw", 20, orig)
    assert s.factor(0) == pytest.approx(lr_orig(80))        # 0.0095492
    assert s.factor(0) == pytest.approx(0.05 * (1 + math.cos(0.8 * math.pi)))
    assert s.factor(10) == pytest.approx(lr_orig(90))
    assert s.factor(19) == pytest.approx(lr_orig(99))
    with pytest.raises(ValueError, match="only has|has only"):
        retrain_schedule("lrw", 101, orig)


def test_slr_warms_up_then_compresses_the_original(orig):
    s = retrain_schedule("slr", 20, orig)
    assert s.factor(0) == 0.0
    assert s.factor(1) == pytest.approx(0.05)                # half way up the 2-step ramp
    assert s.factor(2) == pytest.approx(lr_orig(0))          # the original's first step
    assert s.factor(3) == pytest.approx(lr_orig(5))          # floor(1 * 100 / 18) = 5
    assert s.factor(19) == pytest.approx(lr_orig(94))        # floor(17 * 100 / 18) = 94


def test_clr_warms_up_then_cosine_to_eta_min(orig):
    s = retrain_schedule("clr", 20, orig)
    assert s.factor(0) == 0.0 and s.factor(1) == pytest.approx(0.05)
    assert s.factor(2) == pytest.approx(ETA_MAX)
    assert s.factor(11) == pytest.approx((ETA_MAX + ETA_MIN) / 2)  # cos(pi/2) = 0: half way
    assert s.factor(19) == pytest.approx(ETA_MIN + (ETA_MAX - ETA_MIN) * (1 + math.cos(math.pi * 17 / 18)) / 2)


def test_llr_warms_up_then_decays_linearly_to_zero(orig):
    s = retrain_schedule("llr", 20, orig)
    assert s.factor(1) == pytest.approx(0.05)
    assert s.factor(2) == pytest.approx(0.1)
    assert s.factor(11) == pytest.approx(0.05)               # 0.1 * (1 - 9/18)
    assert s.factor(19) == pytest.approx(0.1 / 18)           # 0.1 * (1 - 17/18)
    no_warmup = retrain_schedule("llr", 5, orig)             # n < 10: no warm-up
    assert no_warmup.factor(0) == pytest.approx(0.1) and no_warmup.factor(4) == pytest.approx(0.02)


def test_allr_is_llr_with_its_own_peak(orig):
    s = retrain_schedule("allr", 20, orig, peak=0.06)
    assert s.factor(0) == 0.0
    assert s.factor(1) == pytest.approx(0.03)
    assert s.factor(2) == pytest.approx(0.06)
    assert s.factor(11) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="peak"):
        retrain_schedule("allr", 20, orig)


def test_allr_peak_clips_between_budget_bound_and_eta_max():
    # T_r = 2 of T_train = 10 epochs: lower bound 0.2 * eta_max = 0.02.
    assert allr_peak(0.3, 0.25, 0.1, 2, 10) == pytest.approx(0.06)   # 0.3 / 0.5 * 0.1
    assert allr_peak(0.8, 0.25, 0.1, 2, 10) == pytest.approx(0.1)    # 0.16 clipped to eta_max
    assert allr_peak(0.01, 0.25, 0.1, 2, 10) == pytest.approx(0.02)  # 0.002 raised to the bound
    assert allr_peak(0.01, 0.25, 0.1, 20, 10) == pytest.approx(0.1)  # min(T_r/T_train, 1) = 1


def test_relative_change_by_hand():
    before = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])}
    after = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0])}
    assert relative_change(before, after) == pytest.approx(0.8)  # ||(0, 4)|| / ||(3, 4)||


def test_schedules_without_a_recipe(orig):
    bare = OriginalSchedule()
    for name in ("lrw", "slr", "allr"):
        with pytest.raises(ValueError, match="recipe"):
            retrain_schedule(name, 20, bare, peak=0.05)
    given = bare.replace(eta_max=0.1, eta_min=0.001)   # explicit values suffice for ft, clr, llr
    assert retrain_schedule("ft", 20, given).factor(3) == pytest.approx(0.001)
    assert retrain_schedule("clr", 20, given).factor(2) == pytest.approx(0.1)
    assert retrain_schedule("llr", 20, given).factor(11) == pytest.approx(0.05)
    with pytest.raises(KeyError, match="ft, lrw, slr, clr, llr, allr"):
        retrain_schedule("cosine", 20, orig)


def test_replay_from_rewind_point(orig):
    epochs, s = replay_schedule(orig, 15, 10)       # 85 steps left -> 9 whole epochs
    assert epochs == 9 and s.total_steps == 90
    assert s.factor(0) == pytest.approx(lr_orig(15))
    assert s.factor(84) == pytest.approx(lr_orig(99))
    assert s.factor(89) == pytest.approx(lr_orig(99))  # the rounding-up steps hold the last lr
    epochs, s = replay_schedule(orig, 0, 10)
    assert epochs == 10 and s.factor(0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="recipe"):
        replay_schedule(OriginalSchedule(), 0, 10)
