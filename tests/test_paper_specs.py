"""examples/paper/*.yaml: the seeds' recipes at full scale, each with the paper's reported
numbers beside it. Every file loads and plans (a dry run: nothing trained), every paper entry
names a configuration the sweep produces, and `prunekit report` prints the paper's numbers
next to the reproduced ones."""
from pathlib import Path

import pytest

from prunekit.experiments.spec import SpecError, Sweep

PAPER = sorted((Path(__file__).resolve().parents[1] / "examples" / "paper").glob("*.yaml"))


def _configurations(sweep):
    """(label, requested sparsity) of every run the sweep plans: what the report groups by."""
    out = set()
    for point in sweep.points:
        for main in point.run_specs():
            for run in [main] + point.baseline_specs(main) + main.requirements():
                s = run.requested_sparsity
                out.add((run.label, None if s is None else round(s, 9)))
    return out


def test_there_are_paper_specs():
    assert len(PAPER) >= 7


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_spec_loads_plans_and_names_real_configurations(path, tmp_path, capsys):
    sweep = Sweep.from_yaml(path)
    assert sweep.paper and sweep.paper["source"] and sweep.paper["results"]
    assert sweep.name.startswith("paper_")
    planned = _configurations(sweep)
    for entry in sweep.paper["results"]:
        s = entry.get("sparsity")
        key = (entry["label"], None if s is None else round(float(s), 9))
        assert key in planned, (key, sorted(planned, key=str))
    # The paper block survives the round trip the project folder stores.
    assert Sweep.from_dict(sweep.to_dict()).paper == sweep.paper
    from prunekit.cli.main import main

    assert main(["sweep", str(path), "--dir", str(tmp_path / "proj"), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip()


def test_bad_paper_blocks_are_refused_with_the_key_path():
    base = {"name": "x", "data": {"name": "synthetic"}, "model": {"name": "lenet_300_100"},
            "method": {"name": "oneshot", "params": {"sparsity": 0.5}}}
    with pytest.raises(SpecError, match="paper.results"):
        Sweep.from_dict({**base, "paper": {"source": "s", "results": []}})
    with pytest.raises(SpecError, match=r"paper.results\[0\].top1"):
        Sweep.from_dict({**base, "paper": {"results": [{"label": "a", "top1": "high"}]}})
    with pytest.raises(SpecError, match="paper.venue"):
        Sweep.from_dict({**base, "paper": {"venue": "x", "results": [{"label": "a"}]}})


def test_report_prints_paper_and_reproduced_side_by_side(tmp_path):
    from prunekit.experiments.report import write_report
    from prunekit.experiments.sweep import run_sweep

    sweep = Sweep.from_yaml("""
name: paper_tiny
data: {name: synthetic, train_subset: 64, batch_size: 32}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1, lr: 0.05}
method: {name: oneshot, label: magnitude, params: {sparsity: 0.5}}
seeds: [0]
baselines: [dense]
paper:
  source: "a made-up table"
  results:
    - {label: magnitude, sparsity: 0.5, top1: 12.5, note: "the paper's"}
    - {label: never run, top1: 99.0}
""")
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed
    md = Path(write_report(tmp_path)[0]).read_text()
    assert "Paper vs reproduced (a made-up table)" in md
    table = md.split("Paper vs reproduced")[1]
    row = next(line for line in table.splitlines() if line.startswith("| magnitude"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "12.50" and cells[3] not in ("-", "") and cells[4].startswith(("+", "-"))
    assert any(line.startswith("| never run") and "| - |" in line for line in table.splitlines())
