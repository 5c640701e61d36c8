"""Runs, sweeps, the results store and reports, end to end on the synthetic dataset.

The sweeps here train LeNet-300-100 on a few hundred synthetic images for an epoch or two,
so the whole file stays well under a minute on 2 cores.
"""
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import _run_events

from prunekit.artifacts import load_model
from prunekit.cli.main import main
from prunekit.experiments.project import Project
from prunekit.experiments.report import write_report
from prunekit.experiments.runner import execute
from prunekit.experiments.spec import RunSpec, Sweep
from prunekit.experiments.store import Store
from prunekit.experiments.sweep import plan, run_sweep
from prunekit.training import load_checkpoint

LABEL = "global <b>MP</b> & co"  # a name that must be escaped in the HTML report

SWEEP = f"""
name: tiny
data: {{name: synthetic, train_subset: 384}}
model: {{name: lenet_300_100, width: 0.25}}
train: {{epochs: 2, lr: 0.05, schedule: cosine}}
method: {{name: oneshot, params: {{finetune_epochs: 1}}}}
seeds: [0, 1]
baselines: [dense, random_same_allocation]
grid:
  method:
    - {{label: "{LABEL}", params: {{score: magnitude}}}}
    - {{label: LAMP, params: {{score: lamp}}}}
  method.params.sparsity: [0.5, 0.9]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    sweep = Sweep.from_yaml(SWEEP)
    summary = run_sweep(root, sweep, quiet=True)
    return root, sweep, summary


def _db(root):
    conn = sqlite3.connect(Path(root) / "results.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


def test_sweep_runs_everything_once_and_shares_the_dense_model(finished):
    root, sweep, summary = finished
    planned = plan(sweep)
    # 2 seeds x (1 dense + 4 one-shot + 4 random baselines): the dense run is trained once
    # per seed, shared by every pruned variant and by the dense baseline.
    assert len(planned) == 18 and summary.ran == 18 and not summary.failed and not summary.blocked
    assert sum(p.spec.method.name == "dense" for p in planned) == 2
    rows = _db(root).execute("SELECT id, status, attempts FROM runs").fetchall()
    assert sorted(r["id"] for r in rows) == sorted(p.spec.id for p in planned)
    assert {r["status"] for r in rows} == {"done"} and {r["attempts"] for r in rows} == {1}
    project = Project(root)
    for item in planned:
        folder = project.run_folder(item.spec.id)
        assert RunSpec.from_yaml(folder / "spec.yaml").id == item.spec.id
        model, data = load_model(folder / "model.pt")
        record = json.loads((folder / "metrics.json").read_text())
        if item.spec.method.name == "oneshot":
            assert data["mask"] is not None
            assert abs(record["metrics"]["achieved_sparsity"] - item.spec.requested_sparsity) < 1e-4
            assert record["metrics"]["epochs"] == 2 + 1  # dense training counted in the cost
            assert [t["phase"] for t in record["trail"]] == ["pruned", "final"]
        else:
            assert record["metrics"]["epochs"] == 2


def test_rerun_is_free(finished):
    root, sweep, _ = finished
    marker = Project(root).run_folder(plan(sweep)[1].spec.id) / "metrics.json"
    before = marker.stat().st_mtime_ns
    again = run_sweep(root, sweep, quiet=True)
    assert again.skipped == 18 and again.ran == 0
    assert marker.stat().st_mtime_ns == before
    assert _db(root).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 18


def test_store_rows_match_the_run_folders(finished):
    root, sweep, _ = finished
    db = _db(root)
    for item in plan(sweep):
        record = Project(root).read_record(item.spec.id)
        row = db.execute("SELECT * FROM metrics WHERE run_id = ?", (item.spec.id,)).fetchone()
        for key in ("top1", "top5", "loss", "achieved_sparsity", "nonzero_params", "effective_flops", "epochs"):
            assert row[key] == record["metrics"][key], key
        layers = db.execute("SELECT name, kept, params FROM layers WHERE run_id = ? ORDER BY idx",
                            (item.spec.id,)).fetchall()
        assert [(r["name"], r["kept"]) for r in layers] == [(x["name"], x["kept"]) for x in record["layers"]]
        assert sum(r["kept"] for r in layers) == row["nonzero_params"] - _biases(record)
        n_history = db.execute("SELECT COUNT(*) FROM history WHERE run_id = ?", (item.spec.id,)).fetchone()[0]
        assert n_history == len(record["history"]) == (2 if item.spec.method.name == "dense" else 1)


def _biases(record):
    # nonzero_params counts every parameter; layers list the prunable weights only.
    return record["metrics"]["nonzero_params"] - sum(x["kept"] for x in record["layers"])


def test_random_same_allocation_keeps_each_layers_count(finished):
    root, sweep, _ = finished
    project = Project(root)
    pairs = [(p.spec, p.spec.main_spec()) for p in plan(sweep) if p.spec.baseline is not None]
    assert len(pairs) == 8
    for baseline, main_spec in pairs:
        _, main_data = load_model(project.run_folder(main_spec.id) / "model.pt")
        _, base_data = load_model(project.run_folder(baseline.id) / "model.pt")
        for name, keep in main_data["mask"].items():
            assert int(base_data["mask"][name].sum()) == int(keep.sum())
        assert any(not torch.equal(base_data["mask"][n], m) for n, m in main_data["mask"].items())


def test_report_renders_and_its_numbers_match_the_database(finished, tmp_path):
    root, _, _ = finished
    md_path, html_path = write_report(root, out=tmp_path / "report")
    md, page = md_path.read_text(), html_path.read_text()
    db = _db(root)
    rows = db.execute("SELECT r.label, r.requested_sparsity AS s, m.top1, m.nonzero_params FROM runs r "
                      "JOIN metrics m ON m.run_id = r.id WHERE r.pipeline = 'oneshot' AND r.baseline IS NULL").fetchall()
    groups = {}
    for r in rows:
        groups.setdefault((r["label"], r["s"]), []).append(r["top1"])
    assert len(groups) == 4 and all(len(v) == 2 for v in groups.values())
    for (label, s), values in groups.items():
        cell = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        escaped = label.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        pivot_row = next(line for line in md.splitlines() if line.startswith(f"| {escaped} |"))
        assert cell in pivot_row.split(" | ")[1 if s == 0.5 else 2]
        assert f"<td>{escaped}</td>" in page and cell in page
    dense = [r["top1"] for r in db.execute("SELECT m.top1 FROM runs r JOIN metrics m ON m.run_id = r.id "
                                           "WHERE r.pipeline = 'dense'")]
    assert f"top-1 {statistics.fmean(dense):.2f} ± {statistics.stdev(dense):.2f}%" in md
    # Figures: PNG files beside the Markdown, embedded in the self-contained HTML.
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["tiny_curves.png", "tiny_layers_s50.png", "tiny_layers_s90.png", "tiny_tradeoff.png"]
    assert all(f"]({name})" in md for name in pngs)
    assert page.count("src='data:image/png;base64,") == 4 and "src='tiny" not in page
    # Names from the spec never reach the HTML unescaped (in the Markdown, only inside the
    # fenced YAML block, which renderers show verbatim).
    assert "<b>MP</b>" not in page and "&lt;b&gt;MP&lt;/b&gt;" in page
    assert "<b>MP</b>" not in re.sub(r"```yaml.*?```", "", md, flags=re.S)


def test_cli_runs_report_and_errors(finished, tmp_path, capsys):
    root, sweep, _ = finished
    assert main(["runs", str(root), "--sweep", "tiny"]) == 0
    out = capsys.readouterr().out
    assert all(p.spec.id in out for p in plan(sweep)) and "18 runs" in out
    assert main(["runs", str(root), "--status", "failed"]) == 0
    assert "0 runs" in capsys.readouterr().out
    assert main(["report", str(root), "--out", str(tmp_path / "r"), "--y", "error"]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: synthetic}\nmodel: {name: lenet5}\nmethod: {name: oneshot, "
                   "params: {sparsity: 0.5, finetune_epoch: 1}}\n")
    assert main(["run", str(bad), "--dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method.params.finetune_epoch: unknown key" in err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_failed_run_blocks_its_baselines_and_is_retried(tmp_path):
    sweep = Sweep.from_yaml("""
name: infeasible
data: {name: synthetic, train_subset: 128}
model: {name: lenet_300_100, width: 0.25}
method: {name: oneshot, params: {sparsity: 0.9999, allocation: uniform_plus, finetune_epochs: 0}}
baselines: [random_same_allocation]
""")
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert summary.ran == 1 and len(summary.failed) == 1 and len(summary.blocked) == 1  # dense ran
    status = dict(_db(tmp_path).execute("SELECT pipeline || coalesce('/' || baseline, ''), status FROM runs"))
    assert status == {"dense": "done", "oneshot": "failed", "oneshot/random_same_allocation": "blocked"}
    error = _db(tmp_path).execute("SELECT error FROM runs WHERE status = 'failed'").fetchone()[0]
    assert error.startswith("ValueError") and "uniform" in error
    assert (Project(tmp_path).run_folder(summary.failed[0].id) / "error.log").is_file()
    again = run_sweep(tmp_path, sweep, quiet=True)
    assert again.skipped == 1 and len(again.failed) == 1  # failed runs are tried again


# ------------------------------------------------------------------------ crash safety

KILL_SWEEP = """
name: killed
data: {name: synthetic, batch_size: 32, train_subset: 1024}
model: {name: lenet_300_100}
train: {epochs: 6, lr: 0.02, schedule: cosine}
method: {name: oneshot, params: {finetune_epochs: 2}}
seeds: [0, 1, 2]
baselines: [dense]
grid:
  method.params.score: [magnitude, lamp]
  method.params.sparsity: [0.8]
"""


def _sweep_command(spec_path, root):
    return [sys.executable, "-m", "prunekit", "sweep", str(spec_path), "--dir", str(root), "--workers", "2",
            "--quiet"]


def _env():
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PRUNEKIT_THREADS": "2", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _shim(tmp_path):
    """A sitecustomize that makes every process of a sweep report to the test (_run_events)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import _run_events\n_run_events.install()\n")
    return shim


def test_sweep_killed_mid_run_restarts_and_finishes_cleanly(tmp_path):
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(KILL_SWEEP)
    root = tmp_path / "project"
    runs = root / "runs"
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(_shim(tmp_path)), str(Path(__file__).parent), env["PYTHONPATH"]])
    env[_run_events.ENV] = str(tmp_path / "events.sock")
    events = _run_events.Listener(tmp_path / "events.sock")
    proc = subprocess.Popen(_sweep_command(spec_path, root), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Every run waits for an answer after each checkpoint. Once some run is done, the next run
    # to checkpoint is left waiting, frozen mid-run with its checkpoint saved, and the sweep
    # and its workers are killed there.
    done, victim, deadline = set(), None, time.monotonic() + 600
    while victim is None:
        event = events.next(timeout=1)
        if event is None:  # not a synchronisation: only to notice a sweep that died
            assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no run finished and checkpointed again within 10 minutes"
            continue
        kind, _, where, conn = event
        run_id = where.parents[2].name if kind == "checkpoint" else where.name
        if kind == "checkpoint" and done and run_id not in done:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-run
            victim = run_id
            conn.close()
        else:
            done |= {run_id} if kind == "done" else set()
            events.go(conn)
    proc.wait()
    events.close()
    assert proc.returncode == -signal.SIGKILL
    victims = [victim]

    restarted = subprocess.run(_sweep_command(spec_path, root), env=_env(), capture_output=True, text=True,
                               timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-2000:]

    planned = plan(Sweep.from_yaml(KILL_SWEEP))
    with Store(root / "results.sqlite") as store:
        assert store.integrity() == "ok"
        rows = store.runs(sweep="killed")
        assert sorted(r["id"] for r in rows) == sorted(p.spec.id for p in planned)  # each once
        assert {r["status"] for r in rows} == {"done"}
        history = store.history([p.spec.id for p in planned])
    db = _db(root)
    assert db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == len(planned)
    for item in planned:
        epochs = [(h["phase"], h["epoch"]) for h in history[item.spec.id]]
        expected = ([("train", e) for e in range(1, 7)] if item.spec.method.name == "dense"
                    else [("finetune", 1), ("finetune", 2)])
        assert epochs == expected  # no epoch lost or repeated by the resume
    for ckpt in runs.glob("*/checkpoints/*/last.pt"):
        assert load_checkpoint(ckpt)["epoch"] >= 1  # every checkpoint is readable
    for victim in victims:
        attempts = db.execute("SELECT attempts FROM runs WHERE id = ?", (victim,)).fetchone()[0]
        assert attempts == 2  # resumed by the second sweep, not duplicated
    # The interrupted-and-resumed run ends exactly where an uninterrupted one does.
    victim_spec = next(p.spec for p in planned if p.spec.id == victims[0])
    fresh = tmp_path / "fresh"
    torch.set_num_threads(1)  # as each of the 2 workers on 2 cores
    reference = execute(fresh, victim_spec)
    resumed = Project(root).read_record(victim_spec.id)["metrics"]
    assert reference.metrics["loss"] == resumed["loss"] and reference.metrics["top1"] == resumed["top1"]
    a, _ = load_model(Project(root).run_folder(victim_spec.id) / "model.pt")
    b, _ = load_model(Project(fresh).run_folder(victim_spec.id) / "model.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


WRITER = textwrap.dedent("""
    import sys
    from prunekit.experiments.spec import RunSpec
    from prunekit.experiments.store import Store
    db, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = Store(db)
    # Start barrier: "ready" on stdout once the store is open, then wait for the go byte on stdin.
    print("ready", flush=True)
    assert sys.stdin.read(1) == "g"
    for seed in range(first, first + count):
        spec = RunSpec.from_dict({"data": {"name": "synthetic"}, "model": {"name": "lenet5"}, "seed": seed})
        store.start(spec)
        record = {"metrics": {"top1": float(seed), "nonzero_params": seed},
                  "layers": [{"name": f"l{i}", "shape": [i], "params": i, "kept": i} for i in range(5)],
                  "history": [{"phase": "train", "epoch": e, "test_top1": float(e)} for e in range(1, 11)],
                  "trail": [{"phase": "final", "top1": float(seed)}]}
        store.finish(spec, record)
        store.runs()  # readers interleave with the writers
""")


def test_two_workers_writing_concurrently_lose_nothing(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db, count = tmp_path / "results.sqlite", 60
    procs = [subprocess.Popen([sys.executable, str(script), str(db), str(first), str(count)], env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for first in (0, 1000)]
    # Both have the store open (a dead writer gives EOF here, not a hang) ...
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
    for p in procs:  # ... and both start writing at the same moment
        p.stdin.write("g")
        p.stdin.close()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    conn = _db(tmp_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert tuple(conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM runs WHERE status = 'done'").fetchone()) == (120, 120)
    assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 120
    assert conn.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 120 * 5
    assert conn.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 120 * 10
    assert conn.execute("SELECT SUM(top1) FROM metrics").fetchone()[0] == sum(range(60)) + sum(range(1000, 1060))
    assert re.fullmatch("ok", conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_report_bench_measures_each_configuration_once_and_caches_it(finished, tmp_path):
    root, sweep, _ = finished
    assert main(["report", str(root), "--out", str(tmp_path / "r"), "--bench", "--bench-batch-sizes", "1",
                 "--bench-repeats", "2"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    table = md[md.index("Measured inference"):]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    main_forms = {(r.split(" | ")[0].lstrip("| "), r.split(" | ")[2]) for r in rows}
    assert ("LAMP", "masked") in main_forms and ("LAMP", "sparse") in main_forms
    assert all(re.search(r"\d+\.\d+x", r) for r in rows)  # a measured speedup on every row
    # Cached: a second report with the same settings reads bench.json instead of measuring.
    cached = [p for p in Path(root).rglob("bench.json")]
    assert cached
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    write_report(root, out=tmp_path / "r2", bench=True, bench_batch_sizes=(1,), bench_repeats=2)
    assert all(p.stat().st_mtime_ns == stamp[p] for p in cached)


def test_a_records_only_folder_counts_as_done_and_reruns_a_dense_run_whose_model_is_needed(tmp_path):
    # A sweep folder committed without its .pt files (benchmarks/results/leaderboard_project):
    # finished runs stay finished; a one-shot run still to do gets its dense model back by
    # rerunning the dense run, whose old record is kept aside.
    sweep = Sweep.from_yaml("""
name: records
data: {name: synthetic, train_subset: 128}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1}
method: {name: oneshot, params: {sparsity: 0.8, finetune_epochs: 0}}
grid:
  method.params.score: [magnitude, lamp]
""")
    assert run_sweep(tmp_path, sweep, quiet=True).ran == 3
    project = Project(tmp_path)
    items = plan(sweep)
    dense = next(i.spec for i in items if i.spec.method.name == "dense")
    magnitude, lamp = [i.spec for i in items if i.spec.method.name == "oneshot"]
    for path in Path(tmp_path).rglob("*.pt"):
        path.unlink()
    (project.run_folder(lamp.id) / "metrics.json").unlink()  # still to do
    (Path(tmp_path) / "results.sqlite").unlink()  # the index is not committed either
    again = run_sweep(tmp_path, sweep, quiet=True)
    assert again.ran == 1 and again.skipped == 2 and not again.failed  # the lamp run; dense reran inside it
    assert project.is_done(lamp.id) and project.has_model(dense.id)
    assert (project.run_folder(dense.id) / "metrics.json.no-model").is_file()
    assert project.is_done(magnitude.id) and not project.has_model(magnitude.id)
    from prunekit.experiments.report_bench import run_speed
    assert run_speed(project, magnitude.id, (1,), 2) == []  # nothing to time, nothing cached
    assert not (project.run_folder(magnitude.id) / "bench.json").exists()
