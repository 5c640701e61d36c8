"""The rethinking_* example specs load, validate and expand to the intended runs."""
from pathlib import Path

import pytest

from prunekit.experiments.spec import Sweep
from prunekit.experiments.sweep import plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name,mains,baselines", [
    ("rethinking_l1_filter", 6, {"scratch_e", "scratch_b", "structured_lottery", "uniform_channels"}),
    ("rethinking_slimming", 6, {"scratch_e", "scratch_b"}),
    ("rethinking_quick", 1, {"scratch_e", "scratch_b", "structured_lottery"}),
    ("rethinking_sss", 6, {"scratch_e", "scratch_b"}),
])
def test_example_expands(name, mains, baselines):
    sweep = Sweep.from_yaml((EXAMPLES / f"{name}.yaml").read_text())
    runs = [p.spec for p in plan(sweep)]
    assert sum(1 for s in runs if s.baseline is None and s.method.name in ("structured", "slimming", "sss")) == mains
    assert {s.baseline.name for s in runs if s.baseline is not None} == baselines
