"""A run's record keeps the warnings prunekit raised while it trained (a collapse, an emptied
tensor), so a top-1 at chance in a report comes with its reason."""
import json
import warnings
from dataclasses import dataclass

from prunekit.experiments.runner import execute
from prunekit.experiments.spec import Sweep
from prunekit.experiments.sweep import plan
from prunekit.pipelines.registry import PIPELINES, register_pipeline
from prunekit.training import CollapseWarning


@dataclass
class NoParams:
    """No parameters."""


def _warn(message):
    warnings.warn(message, CollapseWarning)  # one line for every run: Python shows it once per line by default


if "warns_collapse" not in PIPELINES.names():
    @register_pipeline("warns_collapse", NoParams, target=lambda p: 0.0)
    def run_warns(ctx, p):
        """The untrained model, after a prunekit warning (twice) and a warning of someone else."""
        _warn("training collapsed in epoch 2: test")
        _warn("training collapsed in epoch 2: test")
        warnings.warn("not prunekit's", UserWarning)
        return ctx.result(ctx.model)


SPEC = """
name: warns
data: {name: synthetic, train_subset: 32, batch_size: 32}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1}
method: {name: warns_collapse}
seeds: [0, 1]
"""


def test_a_runs_prunekit_warnings_are_in_its_record_and_its_line(tmp_path):
    items = plan(Sweep.from_yaml(SPEC))
    assert len(items) == 2
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")  # Python's own: once per message and line in a process
        outcomes = [execute(tmp_path, item.spec) for item in items]
    # the same warning from the same line in one process: shown and recorded for each run
    assert [str(w.message) for w in shown if w.category is CollapseWarning] == ["training collapsed in epoch 2: test"] * 2
    for item, outcome in zip(items, outcomes):
        record = json.loads((tmp_path / "runs" / item.spec.id / "metrics.json").read_text())
        assert record["warnings"] == ["CollapseWarning: training collapsed in epoch 2: test"]  # once, no UserWarning
        assert outcome.line().endswith("; 1 warning(s), first: CollapseWarning: training collapsed in epoch 2: test")


def test_ignored_warnings_are_not_recorded_and_filters_are_restored(tmp_path):
    (item, _) = plan(Sweep.from_yaml(SPEC))
    before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        execute(tmp_path, item.spec)
    assert "warnings" not in json.loads((tmp_path / "runs" / item.spec.id / "metrics.json").read_text())
    assert warnings.filters == before


def test_the_report_lists_the_runs_that_warned(tmp_path):
    from prunekit.experiments.report import write_report
    from prunekit.experiments.sweep import run_sweep
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the test pipeline's other warning
        warnings.simplefilter("default", CollapseWarning)
        run_sweep(tmp_path, Sweep.from_yaml(SPEC), quiet=True)
    md, _ = write_report(tmp_path, out=tmp_path / "report")
    text = md.read_text()
    assert "Runs with warnings" in text
    ids = [item.spec.id for item in plan(Sweep.from_yaml(SPEC))]
    rows = [line for line in text.splitlines() if "CollapseWarning: training collapsed in epoch 2: test" in line]
    assert len(rows) == 2 and all(any(i in row for i in ids) for row in rows)
