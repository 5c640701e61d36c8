"""Every examples/*.yaml loads through the spec loader `prunekit sweep` uses and expands.

Parametrized over the folder, so a new example is covered by being added; the rethinking_*
and threshold examples have closer checks in their own test files.
"""
import math
from pathlib import Path

import pytest

from prunekit.experiments.spec import RunSpec, Sweep
from prunekit.experiments.sweep import plan

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_the_examples_folder_is_found():
    assert len(EXAMPLES) >= 17, "examples/*.yaml not found next to tests/"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_expands_its_grid(path):
    sweep = Sweep.from_yaml(path)  # as `prunekit sweep FILE` does
    assert sweep.name
    grids = sweep.grid if isinstance(sweep.grid, list) else [sweep.grid]  # a list: the union of its grids
    assert len(sweep.points) == sum(math.prod(len(values) for values in g.values()) for g in grids)  # 1 without
    planned = plan(sweep)
    assert planned and sum(p.role == "main" for p in planned) >= 1
    ids = [p.spec.id for p in planned]
    assert len(ids) == len(set(ids)), "a planned run appears twice"
    for item in planned:  # every run crosses to a worker as plain data and comes back the same
        assert RunSpec.from_dict(item.spec.to_dict()).id == item.spec.id
    again = Sweep.from_dict(sweep.to_dict())  # the file as written loads back to the same points
    assert [p.spec.id for p in plan(again)] == ids
