"""The parameter layer (prunekit.params): validators, argparse from dataclasses, and what the
refactor onto it must not move: run ids and the train-sparse command line."""
import argparse
import dataclasses
from typing import List, Optional

import pytest

from prunekit import params as valid
from prunekit.cli import thresholds
from prunekit.experiments.spec import RunSpec
from prunekit.params import param

BASE = {"data": {"name": "fashion_mnist"}, "model": {"name": "lenet5"},
        "train": {"epochs": 10, "lr": 0.05, "schedule": "cosine"}}

# Computed on the code before the method Params existed (commit 0fcbee3): the pipelines'
# params now inherit from the methods' Params, and no id may move.
PINNED_IDS = [
    # legacy values of moved defaults stated (issue #15): min_weights 0, c_layers all
    ("ste_fixed", {"sparsity": 0.85, "bound": "gaussian", "min_weights": 0}, "ste_fixed-9994ef1ec1aee530"),
    ("ste_fixed", {"sparsity": 0.9, "finetune_epochs": 2, "finetune_lr": 0.01, "exclude": ["fc3.weight"],
                   "min_weights": 0}, "ste_fixed-9a13a84716351101"),
    ("sparsity_loss", {"budget": 0.15, "weights": "avg", "c_layers": "all"}, "sparsity_loss-710fc3ca9113b296"),
    ("sparsity_loss", {"budget": 0.2, "budget_flops": 0.5, "variant": "hinge", "lam": 5.0, "lam_p": 2.0, "r_init": 1.0,
                       "recenter": False, "min_weights": 0, "finetune_epochs": 1, "c_layers": "all"},
     "sparsity_loss-153c3dd2f469a040"),
    ("sparsity_loss", {"c_layers": "all"}, "sparsity_loss-707914100155dfa1"),
    # Issue #15 moved some defaults (param(new, legacy=old)): a spec written before the move
    # states the old value to keep its id; the new default hashes to a new id (PINNED_MOVED).
    ("ltp", {"lam": 10.0, "trail": [0.5, 0.9], "pretrain_epochs": 2, "ltp_lr": 0.01, "relative": True},
     "ltp-25652bb093c00798"),
    ("ltp", {"relative": True}, "ltp-976c970c8ed24b85"),
    ("dense_equivalent", {"kept_fraction": 0.15}, "dense_equivalent-b3581d4d0023816b"),
    ("gmp", {"sparsity": 0.9, "start_epoch": 1.0, "prune_every": 50, "score": "lamp"}, "gmp-fb7057d5f04d57a0"),
    ("slimming", {"fraction": 0.4, "s": 1e-5, "latency_repeats": 0, "finetune_epochs": 1, "scope": "stream"},
     "slimming-5197d5c42b5dfd97"),
    ("sss", {"gamma": 0.02, "factor_lr": 0.2, "structure": "blocks", "finetune_epochs": 1, "factor_update": "proximal"},
     "sss-5a0445e76f3f7457"),
    ("sss", {"finetune_epochs": 1, "factor_update": "proximal"}, "sss-d34719c068d99a4c"),
    ("oneshot", {"sparsity": 0.9, "score": "lamp", "finetune_epochs": 2}, "oneshot-7a96491da60551c0"),
    ("imp", {"sparsity": 0.9, "phases": 3, "rewind": 0}, "imp-74b0aae9162a9079"),
    ("structured", {"ratio": 0.5, "finetune_epochs": 2}, "structured-b6b383350712dc40"),
]
PINNED_BASELINE_IDS = [
    ("dense_equivalent", {}, "dense_equivalent-701ee1f3cc4d4715"),
    ("dense_equivalent", {"epochs": 3}, "dense_equivalent-26316b518d866a60"),
    ("lottery", {}, "lottery-801f77ac4998b0e1"),
    ("random_reinit", {"init_seed": 7}, "random_reinit-64d453a9ad6cef1d"),
    ("scratch_b", {"max_ratio": 2.0, "stretch_schedule": False}, "scratch_b-ea35be404f3521a8"),  # legacy value
    ("random_same_allocation", {}, "random_same_allocation-433441d1a4576bea"),
]


@pytest.mark.parametrize("name,params,run_id", PINNED_IDS)
def test_run_ids_of_the_method_pipelines_did_not_move(name, params, run_id):
    assert RunSpec.from_dict(dict(BASE, method={"name": name, "params": params})).id == run_id


def test_labels_list_the_params_in_their_old_order():
    """Labels group results in tables and plots (display only, but they should not move)."""
    ltp = {"lam": 10.0, "pretrain_epochs": 5, "ltp_lr": 0.01, "finetune_epochs": 2, "finetune_lr": 0.01}
    assert RunSpec.from_dict(dict(BASE, method={"name": "ltp", "params": ltp})).label == \
        "ltp(lam=10.0, pretrain_epochs=5, ltp_lr=0.01, finetune_epochs=2, finetune_lr=0.01)"
    gmp = {"sparsity": 0.9, "start_epoch": 1.0, "score": "lamp"}
    assert RunSpec.from_dict(dict(BASE, method={"name": "gmp", "params": gmp})).label == \
        "gmp(start_epoch=1.0, score=lamp)"


@pytest.mark.parametrize("name,params,run_id", PINNED_BASELINE_IDS)
def test_run_ids_of_the_baselines_did_not_move(name, params, run_id):
    spec = RunSpec.from_dict(dict(BASE, method={"name": "ste_fixed", "params": {"sparsity": 0.9, "min_weights": 0}},
                                  baseline={"name": name, "params": params}))
    assert spec.id == run_id


# ------------------------------------------------------------------------- validators


@pytest.mark.parametrize("check,good,bad,accepted", [
    (valid.positive, [1e-9, 3], [0, -1.0, True, "1"], "> 0"),
    (valid.nonnegative, [0, 2.5], [-1e-9, float("nan")], ">= 0"),
    (valid.sparsity, [0.0, 0.999], [1.0, -0.1, 1.5, float("inf")], "[0, 1)"),
    (valid.fraction_removed, [0.0, 0.5], [1.0, -0.1], "[0, 1)"),
    (valid.fraction_kept, [1.0, 1e-6], [0.0, 1.5], "(0, 1]"),
    (valid.open_unit, [0.5], [0.0, 1.0], "(0, 1)"),
    (valid.int_at_least(1), [1, 7], [0, 1.5, True], "integer >= 1"),
    (valid.each(valid.sparsity), [[0.5, 0.9], []], [[0.5, 1.0]], "[0, 1)"),
])
def test_validators_accept_and_refuse_saying_what_is_accepted(check, good, bad, accepted):
    check(None)  # None means "not set"
    for value in good:
        check(value)
    for value in bad:
        with pytest.raises(ValueError) as info:
            check(value)
        assert accepted in str(info.value) and "got" in str(info.value)


# ------------------------------------------------------------------------ argparse


@dataclasses.dataclass(kw_only=True)
class DemoParams:
    sparsity: float = param(check=valid.sparsity, example=0.5, doc="fraction removed")
    bound: str = param("topk", choices=("topk", "gaussian"), doc="the rule")
    levels: List[float] = param([0.5, 0.9], doc="levels")
    budget: Optional[float] = param(None, check=valid.fraction_kept, doc="kept (100% is all)")
    recenter: bool = param(True, doc="re-centre")
    verbose: bool = param(False, doc="talk")
    relative: bool = param(True, flag="--absolute", doc="relative threshold")


def _parse(argv):
    parser = argparse.ArgumentParser()
    valid.add_arguments(parser, DemoParams)
    return parser, parser.parse_args(argv)


def test_add_arguments_and_from_namespace_round_trip():
    parser, args = _parse(["--sparsity", "0.7", "--bound", "gaussian", "--levels", "0.1", "0.2",
                           "--no-recenter", "--verbose", "--absolute"])
    p = valid.from_namespace(DemoParams, args)
    assert p == DemoParams(sparsity=0.7, bound="gaussian", levels=[0.1, 0.2], recenter=False, verbose=True,
                           relative=False)
    _, args = _parse(["--sparsity", "0.7"])
    assert valid.from_namespace(DemoParams, args) == DemoParams(sparsity=0.7)
    help_text = parser.format_help()
    assert "(default: 'topk')" in help_text and "100%" in help_text and "--no-recenter" in help_text


def test_from_namespace_names_the_flag_of_a_missing_or_bad_value():
    _, args = _parse([])
    with pytest.raises(ValueError, match="demo needs --sparsity"):
        valid.from_namespace(DemoParams, args, owner="demo")
    _, args = _parse(["--sparsity", "1.5"])
    with pytest.raises(ValueError, match=r"--sparsity: sparsity must be a number in \[0, 1\)"):
        valid.from_namespace(DemoParams, args)
    with pytest.raises(SystemExit):  # argparse itself refuses an unknown choice
        _parse(["--sparsity", "0.5", "--bound", "nope"])


def test_example_uses_the_examples_of_required_fields():
    assert valid.example(DemoParams) == DemoParams(sparsity=0.5)

    @dataclasses.dataclass
    class NoExample:
        x: int = param()

    with pytest.raises(TypeError, match="NoExample.x is required but has no example"):
        valid.example(NoExample)


# ------------------------------------------------------------- train-sparse compatibility


def _train_sparse(argv):
    parser = argparse.ArgumentParser()
    thresholds.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train-sparse", *argv, "--model", "lenet5", "--out", "x"])


def test_train_sparse_keeps_its_flags_and_builds_the_same_methods():
    m = thresholds.build_method(_train_sparse(["--method", "ste_fixed", "--sparsity", "0.85", "--bound", "gaussian"]))
    assert (type(m).__name__, m.sparsity, m.bound, m.eps) == ("STEFixed", 0.85, "gaussian", 1e-3)
    args = _train_sparse(["--method", "sparsity_loss", "--budget", "0.15", "--no-recenter", "--weights", "avg",
                          "--lam-p", "2", "--min-weights", "0"])
    m = thresholds.build_method(args)
    assert (m.budget, m.recenter, m.weights, m.lam, m.lam_p, m.lam_f, m.min_weights) == (0.15, False, "avg", 10.0, 2.0,
                                                                                         10.0, 0)
    assert thresholds.requested_sparsity(args) == pytest.approx(0.85)
    assert thresholds.build_method(_train_sparse(["--method", "ltp", "--relative-tau"])).relative is True
    m = thresholds.build_method(_train_sparse(["--method", "ltp", "--T0", "0.01",
                                               "--trail", "0.5", "0.9", "--include", "fc*"]))
    assert (m.relative, m.T0, m.lam, m.levels, m.include, str(m.trail_dir)) == (False, 0.01, 1.0, [0.5, 0.9],
                                                                                 ["fc*"], "x/trail")
    assert thresholds.build_method(_train_sparse(["--method", "ltp", "--lam", "20"])).lam == 20.0  # shared --lam
    assert thresholds.build_method(_train_sparse(["--method", "sparsity_loss", "--lam", "3"])).lam == 3.0
    assert thresholds.build_method(_train_sparse(["--method", "dense_equivalent", "--kept-fraction", "0.15"])) is None
    with pytest.raises(ValueError, match="--method ste_fixed needs --sparsity"):
        thresholds.build_method(_train_sparse(["--method", "ste_fixed"]))
    with pytest.raises(ValueError, match=r"--budget: must be a fraction kept, in \(0, 1\]"):
        thresholds.build_method(_train_sparse(["--method", "sparsity_loss", "--budget", "1.5"]))


def test_train_sparse_offers_every_registered_method():
    from prunekit.methods import METHODS

    for name in METHODS.names():
        example = valid.example(METHODS.get(name).Params)
        argv = ["--method", name]
        for f in dataclasses.fields(example):
            if valid.is_required(f):
                argv += [valid.flag_of(f)[0], str(f.metadata["example"])]
        assert isinstance(thresholds.build_method(_train_sparse(argv)), METHODS.get(name))


def test_train_sparse_records_the_same_arguments_as_before_so_old_runs_resume():
    """The checkpoints' record of the arguments (computed on the hand-written parser)."""
    # --c-layers all: the legacy value of a default moved by issue #15 (without it the run
    # records c_layers and never resumes a checkpoint made before the move)
    moved = thresholds.recorded_arguments(_train_sparse(["--method", "sparsity_loss", "--budget", "0.15"]))
    assert moved["c_layers"] == "pruned"
    args = _train_sparse(["--method", "sparsity_loss", "--budget", "0.15", "--no-recenter", "--weights", "avg",
                          "--c-layers", "all"])
    assert thresholds.recorded_arguments(args) == {
        "T0": 0.001, "absolute_tau": False, "batch_size": 128, "bound": "binary_search", "budget": 0.15,
        "budget_flops": None, "data": "fashion_mnist", "epochs": 10, "eps": 0.001, "exclude": None,
        "finetune_epochs": 0, "finetune_lr": 0.01, "include": None, "init_sparsity": 0.0, "kept_fraction": None,
        "lam": None, "lam_f": None, "lam_p": None, "lr": 0.1, "method": "sparsity_loss", "method_lr": None,
        "min_weights": 1000, "model": "lenet5", "momentum": 0.9, "no_recenter": True, "optimizer": "sgd",
        "pretrain_epochs": 0, "r_init": None, "r_lr_factor": 0.01, "schedule": "cosine", "seed": 0, "sparsity": None,
        "tau_lr": None, "trail": [0.5, 0.7, 0.8, 0.9, 0.95, 0.98], "train_subset": None, "variant": None,
        "weight_decay": 0.0005, "weights": "avg", "width": 1.0}
    # a flag added since is recorded once it is set
    args = _train_sparse(["--method", "gmp", "--final-sparsity", "0.9", "--end-step", "100", "--score", "lamp"])
    recorded = thresholds.recorded_arguments(args)
    assert recorded["score"] == "lamp" and recorded["final_sparsity"] == 0.9 and "allocation" not in recorded
