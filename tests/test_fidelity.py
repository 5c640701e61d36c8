"""Issue #15: the seeds' behaviour is the default; each test fails on the behaviour before."""
import pytest
import torch

pytest.importorskip("prunekit.experiments.sweep")

from prunekit.experiments.project import Project  # noqa: E402
from prunekit.experiments.spec import Sweep  # noqa: E402
from prunekit.experiments.sweep import plan, run_sweep  # noqa: E402
from prunekit.pipelines.budget import scratch_b_epochs  # noqa: E402
from prunekit.training.schedules import stretched_schedule_kwargs  # noqa: E402


def _run(tmp_path, text):
    torch.set_num_threads(1)
    sweep = Sweep.from_yaml(text)
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed and not summary.blocked, summary
    specs = {p.spec.baseline.name if p.spec.baseline else p.spec.method.name: p.spec for p in plan(sweep)}
    return Project(tmp_path), specs


def _lrs(record, phase):
    return [row["lr"] for row in record["history"] if row.get("phase") == phase]


# ---------------------------------------------------------------- 1. Scratch-B stretches the schedule


def test_stretched_milestones_fall_at_the_same_fractions():
    """Liu et al.: CIFAR milestones [80, 120] of 160 epochs -> 50% and 75% of the new length."""
    assert stretched_schedule_kwargs("multistep", {"milestones": [80, 120], "gamma": 0.1}, 160, 320) == \
        {"milestones": [160.0, 240.0], "gamma": 0.1}
    assert stretched_schedule_kwargs("step", {"step_size": 30}, 90, 180) == {"step_size": 60.0}
    assert stretched_schedule_kwargs("cosine", {}, 90, 180) == {}


SCRATCH_B = """
name: scratch_b_multistep
data: {name: synthetic, train_subset: 64, batch_size: 64}
model: {name: resnet20, width: 0.25}
train: {epochs: 2, lr: 0.1, schedule: multistep, schedule_kwargs: {milestones: [1], gamma: 0.1}}
method: {name: structured, params: {ratio: 0.5, finetune_epochs: 0, latency_repeats: 0}}
seeds: [0]
baselines: [scratch_b]
"""


def test_scratch_b_decays_at_the_same_fraction_of_its_longer_training(tmp_path):
    project, specs = _run(tmp_path, SCRATCH_B)
    _, old = _run(tmp_path, SCRATCH_B.replace("[scratch_b]", "[{name: scratch_b, params: {stretch_schedule: false}}]"))
    stretched, absolute = specs["scratch_b"], old["scratch_b"]
    assert stretched.id != absolute.id
    rec = project.read_record(stretched.id)
    n = rec["extra"]["own_epochs"]
    assert n >= 4
    lrs = _lrs(rec, "scratch_b")
    high = sum(1 for lr in lrs if lr == pytest.approx(0.1))
    assert len(lrs) == n and high == round(n / 2)  # decay at 50%, as the dense recipe (1 of 2 epochs)
    assert sum(1 for lr in _lrs(project.read_record(absolute.id), "scratch_b") if lr == pytest.approx(0.1)) == 1


RANDOM_REINIT = """
name: random_reinit_b
data: {name: synthetic, train_subset: 64, batch_size: 64}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 2, lr: 0.1, schedule: multistep, schedule_kwargs: {milestones: [1]}}
method: {name: oneshot, params: {sparsity: 0.75, finetune_epochs: 0}}
seeds: [0]
baselines: [{name: random_reinit, params: {budget: B}}]
"""


def test_random_reinit_gets_scratch_b_epochs_from_the_sparse_flops(tmp_path):
    project, specs = _run(tmp_path, RANDOM_REINIT)
    rec = project.read_record(specs["random_reinit"].id)
    ratio = rec["extra"]["flops_ratio"]  # kept
    assert ratio == pytest.approx(0.25, rel=0.05)  # global 75% on a MLP: ~1/4 of the multiply-adds
    assert rec["extra"]["flops_reduction"] == pytest.approx(1 / ratio)
    n = rec["extra"]["own_epochs"]
    assert n == scratch_b_epochs(2, 1.0, ratio) >= 7
    lrs = _lrs(rec, "random_reinit")
    assert sum(1 for lr in lrs if lr == pytest.approx(0.1)) == round(n / 2)


# ---------------------------------------------------- 9. prune(mask=M) with masked non-zero weights


def test_lamp_with_a_mask_over_nonzero_weights_scores_them_as_zeros():
    """LAMP (Lee et al. Eq. 2) over the surviving weights: the same counts as on the zeroed model."""
    from torch import nn

    from prunekit.core import Mask, prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[4].weight.mul_(5.0)
    masks = {f"{i}.weight": torch.ones_like(model[i].weight, dtype=torch.bool) for i in (0, 2, 4)}
    big = model[4].weight.abs() >= model[4].weight.abs().flatten().kthvalue(20).values  # its 13 largest
    masks["4.weight"] = ~big
    zeroed = __import__("copy").deepcopy(model)
    with torch.no_grad():
        zeroed[4].weight.mul_(masks["4.weight"])
    want = prune(zeroed, 0.6, score="lamp")
    got = prune(model, 0.6, score="lamp", mask=Mask(masks, model))
    counts = [int(got[k].sum()) for k in masks]
    assert counts == [int(want[k].sum()) for k in masks]
    for k in masks:
        assert torch.equal(got[k], want[k]), k


# ------------------------------- 7 (BS/GA skip small layers), 8 (c_i), and GA without STE (seed 002)


def _small_and_big():
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 50), nn.ReLU(), nn.Linear(50, 10))  # 2000 and 500 weights


def test_fixed_bs_ga_leave_layers_under_1000_weights_dense_like_the_sparsity_loss():
    from prunekit.methods.ste_fixed import STEFixed

    for bound in ("binary_search", "gaussian"):
        model = _small_and_big()
        method = STEFixed(0.9, bound=bound).attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
        mask = method.finalize()
        assert bool(mask["2.weight"].all()) and float(mask["0.weight"].float().mean()) < 0.2
        model = _small_and_big()
        mask = STEFixed(0.9, bound=bound, min_weights=0).attach(model, torch.optim.SGD(model.parameters(), lr=0.1)).finalize()
        assert float(mask["2.weight"].float().mean()) < 0.2  # by name: every layer pruned


def test_sparsity_loss_leaves_skipped_layers_out_of_c():
    """Authors' code: c_i over the pruned layers; with every pruned layer at s_i -> 1, L_s -> 0."""
    from prunekit.methods.sparsity_loss import SparsityLoss

    for c_layers, skipped_share in (("pruned", 0.0), ("all", 500 / 2500)):
        model = _small_and_big()
        m = SparsityLoss(budget=0.15, c_layers=c_layers).attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
        assert float(m._c["wavg"].sum()) == pytest.approx(1.0)
        assert float(m._c["wavg"][1]) == pytest.approx(skipped_share)
        assert m.density_floor() == pytest.approx(skipped_share, abs=1e-5)
    assert SparsityLoss(budget=0.15).c_layers == "pruned"


def test_ste_fixed_without_ste_gives_pruned_weights_no_gradient():
    """Seed 002 Sec. 3.3.3: back-propagating through the hard-shrink excludes pruned weights."""
    from prunekit.methods.ste_fixed import STEFixed

    grads = {}
    for ste in (True, False):
        model = _small_and_big()
        method = STEFixed(0.8, bound="gaussian", ste=ste).attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
        model(torch.randn(8, 40)).square().sum().backward()
        pruned = ~method.keep_mask("0.weight")
        grads[ste] = model[0].weight.grad[pruned]
    assert grads[True].abs().sum() > 0 and torch.count_nonzero(grads[False]) == 0


# ----------------------------------------------------------------------- 7. defaults near the papers


def _imp_spec(**params):
    from prunekit.experiments.spec import RunSpec

    return RunSpec.from_dict({"data": {"name": "synthetic"}, "model": {"name": "lenet_300_100"},
                              "train": {"epochs": 10, "lr": 0.1, "schedule": "cosine"},
                              "method": {"name": "imp", "params": {"sparsity": 0.9, **params}}})


def test_ft_after_a_cosine_to_zero_recipe_does_not_retrain_at_the_last_tiny_lr():
    from prunekit.pipelines.retrain_schedules import OriginalSchedule, retrain_schedule

    orig = OriginalSchedule.from_recipe({"lr": 0.1, "schedule": "cosine", "epochs": 10, "steps_per_epoch": 50})
    assert orig.eta_min < 1e-5                                             # cosine to zero: ~1e-6
    assert retrain_schedule("ft", 20, orig.with_ft_floor(0.01)).factor(0) == pytest.approx(1e-3)
    step = OriginalSchedule.from_recipe({"lr": 0.1, "schedule": "multistep", "epochs": 10, "steps_per_epoch": 5,
                                         "schedule_kwargs": {"milestones": [5, 8]}})
    assert step.with_ft_floor(0.01).eta_min == pytest.approx(step.eta_min)  # a step recipe's last plateau: as before
    from prunekit.pipelines.imp_pipelines import ImpParams
    assert ImpParams(sparsity=0.9).ft_floor == 0.01
    # run ids: only FT runs move; writing the old value out keeps their old id
    assert "ft_floor" not in _imp_spec(schedule="slr").canonical()["method"]["params"]
    assert _imp_spec(schedule="ft").canonical()["method"]["params"]["ft_floor"] == 0.01
    assert "ft_floor" not in _imp_spec(schedule="ft", ft_floor=0.0).canonical()["method"]["params"]


def test_structured_fine_tuning_defaults_to_40_epochs_at_1e_3():
    """Li et al. (2017) / Liu et al. (2019): fine-tune 40 epochs at lr 1e-3."""
    from prunekit.pipelines.structured_pipelines import SlimmingParams, SSSParams, StructuredParams

    for params in (StructuredParams(), SlimmingParams(fraction=0.4), SSSParams()):
        assert (params.finetune_epochs, params.finetune_lr) == (40, 1e-3), type(params).__name__


# ---------------------------------------------------- 5. uniform channels trained from scratch (Fig. 3)


UNIFORM = """
name: uniform_scratch
data: {name: synthetic, train_subset: 64, batch_size: 64}
model: {name: resnet20, width: 0.25}
train: {epochs: 2, lr: 0.05}
method: {name: structured, params: {ratio: 0.5, finetune_epochs: 1, latency_repeats: 0}}
seeds: [0]
baselines: [uniform_channels]
"""


def test_uniform_channels_trains_the_uniform_architecture_from_scratch(tmp_path):
    project, specs = _run(tmp_path, UNIFORM)
    rec = project.read_record(specs["uniform_channels"].id)
    assert [row["phase"] for row in rec["history"]] == ["uniform_channels"] * 2   # E epochs, no fine-tuning
    assert rec["extra"]["trained_from"] == "scratch" and rec["extra"]["own_epochs"] == 2
    # by name: the fine-tuned variant (the behaviour before issue #15)
    _, old = _run(tmp_path, UNIFORM.replace("[uniform_channels]", "[{name: uniform_channels, params: {train: finetune}}]"))
    rec = project.read_record(old["uniform_channels"].id)
    assert [row["phase"] for row in rec["history"]][-1] == "finetune"


# ------------------------------------------- 2. slimming on pre-activation models: channel selection


def _slim(name, scope, fraction=0.4):
    import prunekit as pk

    torch.manual_seed(0)
    model = pk.models.get(name, width=0.25).eval()
    with torch.no_grad():  # trained-looking gammas: spread, some near 0
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) ** 2)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
    method = pk.methods.get("slimming")(s=1e-5, fraction=fraction, scope=scope)
    method.attach(model, torch.optim.SGD(model.parameters(), lr=0.0))
    return model, method


def _stream_widths(model):
    return [(n, m.conv3.out_channels if hasattr(m, "conv3") else m.conv2.out_channels)
            for n, m in model.named_modules() if type(m).__name__.startswith("PreAct")]


@pytest.mark.parametrize("name", ["preresnet164", "preresnet110"])
def test_slimming_on_preresnet_keeps_the_residual_stream_whole(name):
    """Liu et al. Sec. 4: channel selection after bn1; only in-block channels and block inputs go."""
    model, method = _slim(name, "block")
    before = _stream_widths(model)
    method.finalize()
    small = method.shrunk().eval()
    assert _stream_widths(small) == before                       # the stream keeps every channel
    assert method.inputs() and method.channels()                 # some inputs selected, some inner channels cut
    assert all(not k.endswith("conv3") and k != "conv1" for k in method.channels())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-4)    # the masked model = the smaller one
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    # rebuilt from structure.json's contents, as the scratch baselines and load_shrunk do
    import prunekit as pk
    from prunekit.structured.plan import apply_plan

    rebuilt = apply_plan(pk.models.get(name, width=0.25), method.channels(), removed_inputs=method.inputs())
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), small(x), atol=1e-5)
    # by name: the stream scope cuts stream channels across a stage (the behaviour before)
    model, method = _slim(name, "stream")
    method.finalize()
    assert _stream_widths(method.shrunk()) != before


def test_slimming_on_densenet_selects_inputs_and_keeps_the_concatenation():
    model, method = _slim("densenet40", "block")
    method.finalize()
    assert method.channels() == {} and method.inputs()
    small = method.shrunk().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-4)
    assert small.fc.in_features == model.fc.in_features


# ------------------------------------------------------------- Li et al.'s sensitivity analysis


def test_sensitivity_command_writes_per_layer_curves_and_a_plot(tmp_path):
    import json

    import prunekit as pk
    from prunekit.artifacts import save_model
    from prunekit.cli.main import main

    torch.manual_seed(0)
    model = pk.models.get("lenet5")
    save_model(tmp_path / "m.pt", model, model_name="lenet5", model_kwargs={}, dataset="synthetic")
    out = tmp_path / "sens"
    assert main(["sensitivity", "--from", str(tmp_path / "m.pt"), "--fractions", "0.25", "0.5", "0.75",
                 "--test-batches", "1", "--batch-size", "16", "--out", str(out)]) == 0
    report = json.loads((out / "sensitivity.json").read_text())
    curves = report["curves"]
    assert list(curves) == ["features.0", "features.3", "classifier.0", "classifier.2"]
    for layer, rows in curves.items():
        assert [r["fraction"] for r in rows] == [0.0, 0.25, 0.5, 0.75], layer
        assert rows[0]["channels_removed"] == 0 and rows[-1]["channels_removed"] > rows[1]["channels_removed"]
        assert rows[0]["top1"] == curves[next(iter(curves))][0]["top1"]  # the same unpruned model
    assert (out / "sensitivity.png").stat().st_size > 1000


def test_sensitivity_removes_li_et_al_counts_and_leaves_the_model_alone():
    import prunekit as pk
    from prunekit.structured.sensitivity import sensitivity

    torch.manual_seed(0)
    model = pk.models.get("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))]
    curves = sensitivity(model, batches, fractions=[0.5], layers=["features.0"])
    c = model.features[0].out_channels
    assert curves["features.0"][1]["channels_removed"] == c - int(c * 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
