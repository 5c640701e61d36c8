"""``structured_budget`` reachable from a YAML spec (issue #19): every channel method at a FLOPs
target through the sweep, the achieved fraction reported within one channel step."""
import pytest
import torch

pytest.importorskip("prunekit.experiments.sweep")

from prunekit.experiments.project import Project  # noqa: E402
from prunekit.experiments.spec import Sweep  # noqa: E402
from prunekit.experiments.sweep import plan, run_sweep  # noqa: E402
from prunekit.structured.plan import load_shrunk  # noqa: E402

SWEEP = """
name: budget_tiny
data: {name: synthetic, train_subset: 128}
model: {name: vgg11, width: 0.125}
train: {epochs: 1, lr: 0.05, schedule: cosine}
method:
  name: structured_budget
  params: {flops_ratio: 0.5, finetune_epochs: 1, latency_repeats: 0, calib_per_class: 2,
           layer_finetune_batches: 1, distill: 0.5, min_channels: 2}
grid: {method.params.method: [l1_filter, bn_scale, thinet, lasso]}
seeds: [0]
"""


def test_every_channel_method_runs_from_a_spec_at_a_flops_target(tmp_path):
    torch.set_num_threads(1)
    sweep = Sweep.from_yaml(SWEEP)
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed and not summary.blocked, summary
    project = Project(tmp_path)
    mains = [p.spec for p in plan(sweep) if p.spec.baseline is None and p.spec.method.name == "structured_budget"]
    assert len(mains) == 4
    for spec in mains:
        record = project.read_record(spec.id)
        m, extra = record["metrics"], record["extra"]
        assert extra["budget_requested"] == 0.5 and extra["budget_met"]
        assert abs(extra["budget_achieved"] - 0.5) <= extra["budget_step"] + 1e-12
        assert m["flops"] == pytest.approx(extra["budget_achieved"] * extra["dense_flops"])
        # one convention in one record: flops_ratio is the fraction kept, like the target
        assert extra["flops_ratio"] == pytest.approx(extra["budget_achieved"])
        assert extra["flops_reduction"] == pytest.approx(1 / extra["budget_achieved"])
        assert min(extra["widths"][k][1] for k in extra["widths"]) >= 2
        model, _ = load_shrunk(project.run_folder(spec.id))
        assert sum(p.numel() for p in model.parameters()) == m["params"]
