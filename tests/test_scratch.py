"""The Rethinking baselines in experiment specs: structured / slimming pipelines, Scratch-E,
Scratch-B (epochs follow the FLOPs ratio), structured lottery and uniform channels."""
import pytest
import torch

from prunekit.experiments.project import Project
from prunekit.experiments.spec import Sweep
from prunekit.experiments.sweep import plan, run_sweep
from prunekit.pipelines.scratch import scratch_b_epochs
from prunekit.structured.plan import load_plan, load_shrunk

SWEEP = """
name: rethinking_tiny
data: {name: synthetic, train_subset: 128}
model: {name: resnet20, width: 0.25}
train: {epochs: 2, lr: 0.05, schedule: cosine}
method: {name: structured, params: {ratio: 0.5, finetune_epochs: 1, latency_repeats: 1}}
seeds: [0]
baselines: [dense, scratch_e, scratch_b, structured_lottery, uniform_channels]
"""


def test_scratch_b_epochs_follow_the_flops_ratio():
    assert scratch_b_epochs(10, 4e6, 1e6) == 40
    assert scratch_b_epochs(160, 125.5e6, 90.9e6) == round(160 * 125.5 / 90.9)  # ResNet-56-B-like cut
    assert scratch_b_epochs(90, 4e9, 1e9, max_ratio=2) == 180                  # the ImageNet cap
    assert scratch_b_epochs(10, 1e6, 1e6) == 10
    with pytest.raises(ValueError):
        scratch_b_epochs(0, 1, 1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rethinking")
    sweep = Sweep.from_yaml(SWEEP)
    summary = run_sweep(root, sweep, quiet=True)
    assert not summary.failed and not summary.blocked, summary
    specs = {p.spec.baseline.name if p.spec.baseline else p.spec.method.name: p.spec for p in plan(sweep)}
    return Project(root), specs


def test_structured_run_is_smaller_and_reports_flops_latency(finished):
    project, specs = finished
    record = project.read_record(specs["structured"].id)
    m, extra = record["metrics"], record["extra"]
    assert m["params"] < extra["dense_params"] and m["flops"] < extra["dense_flops"]
    # *_ratio is the fraction kept, as the flops_ratio= targets; *_reduction the "x fewer"
    assert extra["flops_ratio"] == pytest.approx(m["flops"] / extra["dense_flops"]) and extra["flops_ratio"] < 1
    assert extra["flops_reduction"] == pytest.approx(extra["dense_flops"] / m["flops"])
    assert {"latency_b1", "latency_shrunk_b64", "speedup_b64"} <= set(extra)
    assert m["epochs"] == 2 + 1  # dense + fine-tune
    model, _ = load_shrunk(project.run_folder(specs["structured"].id))
    assert sum(p.numel() for p in model.parameters()) == m["params"]


def test_scratch_baselines_train_the_same_architecture_for_the_right_epochs(finished):
    project, specs = finished
    main = project.read_record(specs["structured"].id)
    info = load_plan(project.run_folder(specs["structured"].id))
    for name in ("scratch_e", "scratch_b", "structured_lottery"):
        record = project.read_record(specs[name].id)
        assert record["metrics"]["params"] == main["metrics"]["params"], name
    own = {n: project.read_record(specs[n].id)["extra"]["own_epochs"] for n in ("scratch_e", "scratch_b")}
    assert own["scratch_e"] == 2
    assert own["scratch_b"] == scratch_b_epochs(2, info["dense_flops"], info["flops"]) > 2
    uniform = project.read_record(specs["uniform_channels"].id)["metrics"]
    assert abs(uniform["flops"] / main["metrics"]["flops"] - 1) < 0.2  # the same FLOPs budget (integer channels)


SLIMMING = """
name: slimming_tiny
data: {name: synthetic, train_subset: 128}
model: {name: vgg11, width: 0.125}
train: {epochs: 1, lr: 0.05}
method: {name: slimming, params: {fraction: 0.4, s: 1.0e-3, finetune_epochs: 1, latency_repeats: 0}}
seeds: [0]
baselines: [scratch_b]
"""


def test_slimming_pipeline_prunes_the_global_share_and_scratch_b_extends_training(tmp_path):
    torch.set_num_threads(1)
    sweep = Sweep.from_yaml(SLIMMING)
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed and not summary.blocked, summary
    project = Project(tmp_path)
    specs = {p.spec.baseline.name if p.spec.baseline else p.spec.method.name: p.spec for p in plan(sweep)}
    main = project.read_record(specs["slimming"].id)
    model, _ = load_shrunk(project.run_folder(specs["slimming"].id))
    widths = [m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    total = sum(max(1, int(c * 0.125)) for c in (64, 128, 256, 256, 512, 512, 512, 512))
    assert sum(widths) == total - round(0.4 * total)
    assert main["metrics"]["epochs"] == 2
    info = load_plan(project.run_folder(specs["slimming"].id))
    assert project.read_record(specs["scratch_b"].id)["extra"]["own_epochs"] == scratch_b_epochs(
        1, info["dense_flops"], info["flops"])


THINET = """
name: thinet_tiny
data: {name: synthetic, train_subset: 128}
model: {name: resnet20, width: 0.25}
train: {epochs: 1, lr: 0.05}
method: {name: structured, params: {ratio: 0.5, selection: thinet, finetune_epochs: 0, latency_repeats: 0}}
seeds: [0]
"""


def test_structured_pipeline_with_thinet_selection(tmp_path):
    torch.set_num_threads(1)
    sweep = Sweep.from_yaml(THINET)
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed and not summary.blocked, summary
    spec = [p.spec for p in plan(sweep) if p.spec.method.name == "structured"][0]
    model, _ = load_shrunk(Project(tmp_path).run_folder(spec.id))
    assert model.layer1[0].conv1.out_channels == 2 and model.layer3[2].conv1.out_channels == 8


SSS = """
name: sss_tiny
data: {name: synthetic, train_subset: 256, batch_size: 64}
model: {name: resnet20, width: 0.25}
train: {epochs: 1, lr: 0.05}
method: {name: sss, params: {gamma: 0.3, factor_lr: 1.0, finetune_epochs: 1, latency_repeats: 0}}
seeds: [0]
baselines: [scratch_e]
"""


def test_sss_pipeline_removes_zero_factor_blocks_and_scratch_rebuilds_them(tmp_path):
    from prunekit.methods.sss import RemovedBlock

    torch.set_num_threads(1)
    sweep = Sweep.from_yaml(SSS)
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed and not summary.blocked, summary
    project = Project(tmp_path)
    specs = {p.spec.baseline.name if p.spec.baseline else p.spec.method.name: p.spec for p in plan(sweep)}
    folder = project.run_folder(specs["sss"].id)
    removed = load_plan(folder)["removed_blocks"]
    assert 0 < len(removed) <= 9, removed  # 4 steps of soft-threshold 0.3 kill some of the 9 blocks
    model, _ = load_shrunk(folder)
    assert sum(isinstance(m, RemovedBlock) for m in model.modules()) == len(removed)
    record = project.read_record(specs["sss"].id)
    assert record["metrics"]["flops"] < record["extra"]["dense_flops"]
    assert record["extra"]["blocks_removed"] == len(removed)
    scratch = project.read_record(specs["scratch_e"].id)
    assert scratch["metrics"]["params"] == record["metrics"]["params"]
