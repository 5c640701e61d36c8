"""Sweeps on Ray (``run_sweep(..., executor="ray")``), on a local two-CPU Ray.

Every Ray worker of this module's Ray instance loads a ``sitecustomize`` shim that logs each
``sqlite3.connect`` it makes, so "only the driver opened the database" is observed from the
outside rather than assumed from the code. The tests that need no Ray (the error without it,
Ray never imported by default) run without it too.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import _run_events

from prunekit.artifacts import load_model
from prunekit.cli.main import main
from prunekit.experiments.project import Project
from prunekit.experiments.ray_executor import run_task
from prunekit.experiments.runner import execute
from prunekit.experiments.spec import Sweep
from prunekit.experiments.store import NO_STORE_ENV
from prunekit.experiments.sweep import plan, run_sweep
from prunekit.training import load_checkpoint

# dense (a requirement) -> one-shot pruning of it (main) -> a random baseline that needs both.
SWEEP = """
name: tinyray
data: {name: synthetic, train_subset: 256}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 2, lr: 0.05}
method: {name: oneshot, params: {sparsity: 0.8, finetune_epochs: 1}}
baselines: [random_same_allocation]
"""

SHIM = textwrap.dedent("""
    import os, sqlite3
    _log = os.environ.get("PRUNEKIT_TEST_CONNECT_LOG")
    if _log:
        _connect = sqlite3.connect
        def connect(database, *args, **kwargs):
            with open(os.path.join(_log, f"{os.getpid()}.log"), "a") as f:
                f.write(f"{database}\\n")
            return _connect(database, *args, **kwargs)
        sqlite3.connect = connect
""")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A local Ray with 2 CPUs whose workers log their SQLite connections to ``log``."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'prunekit[ray]'")
    shim, log = tmp_path_factory.mktemp("shim"), tmp_path_factory.mktemp("connects")
    (shim / "sitecustomize.py").write_text(SHIM)
    events = tmp_path_factory.mktemp("events") / "events.sock"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PRUNEKIT_TEST_CONNECT_LOG", _run_events.ENV)}
    # The local raylet, and so every worker, inherits the driver's environment at init.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(shim), str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "src")]
        + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ["PRUNEKIT_TEST_CONNECT_LOG"] = str(log)
    # Runs in the workers report to a test listening on `events` (_run_events; ignored when
    # no test listens). A setup hook, not the shim, so only Ray's workers import prunekit.
    os.environ[_run_events.ENV] = str(events)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": "_run_events.install"})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield ray, log, events
    ray.shutdown()


def _worker_connects(log):
    return {path.stem: path.read_text().split() for path in Path(log).glob("*.log")}


def _rows(root):
    conn = sqlite3.connect(Path(root) / "results.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


def test_ray_sweep_matches_the_process_executor_and_only_the_driver_opens_the_db(ray_session, tmp_path):
    ray, log, _ = ray_session
    sweep = Sweep.from_yaml(SWEEP)
    planned = plan(sweep)
    assert [p.role for p in planned] == ["dependency", "main", "baseline"]

    summary = run_sweep(tmp_path / "ray", sweep, executor="ray", quiet=True)
    assert (summary.ran, summary.failed, summary.blocked) == (3, [], [])
    reference = run_sweep(tmp_path / "process", sweep, quiet=True)  # in this process, 1 thread
    assert reference.ran == 3

    db = _rows(tmp_path / "ray")
    rows = db.execute("SELECT id, status, attempts, pid FROM runs").fetchall()
    assert sorted(r["id"] for r in rows) == sorted(p.spec.id for p in planned)  # each once
    assert {(r["status"], r["attempts"], r["pid"]) for r in rows} == {("done", 1, os.getpid())}
    ref = _rows(tmp_path / "process")
    for item in planned:
        run_id = item.spec.id
        mine = dict(db.execute("SELECT * FROM metrics WHERE run_id = ?", (run_id,)).fetchone())
        theirs = dict(ref.execute("SELECT * FROM metrics WHERE run_id = ?", (run_id,)).fetchone())
        mine.pop("wall_time"), theirs.pop("wall_time")  # measured seconds
        assert mine == theirs, run_id  # same seeds, same numbers: the task ran the same run
        for table in ("layers", "history", "trail"):
            count = f"SELECT COUNT(*) FROM {table} WHERE run_id = ?"
            assert db.execute(count, (run_id,)).fetchone()[0] == ref.execute(count, (run_id,)).fetchone()[0] > 0
        a, _ = load_model(Project(tmp_path / "ray").run_folder(run_id) / "model.pt")
        b, _ = load_model(Project(tmp_path / "process").run_folder(run_id) / "model.pt")
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    # The shim works in the workers (a task that connects is logged) ...
    probe_db = str(tmp_path / "probe.sqlite")
    probe = ray.remote(lambda path: (sqlite3.connect(path).close(), os.getpid())[1])
    probe_pid = ray.get(probe.remote(probe_db))
    assert _worker_connects(log).get(str(probe_pid)) == [probe_db]
    # ... and no worker ever connected to a results store.
    opened = [path for paths in _worker_connects(log).values() for path in paths]
    assert not [p for p in opened if p.endswith("results.sqlite")], opened

    # A rerun on Ray is free: everything is skipped at the driver, no task runs.
    again = run_sweep(tmp_path / "ray", sweep, executor="ray", quiet=True)
    assert (again.skipped, again.ran) == (3, 0)


def test_a_ray_task_writes_its_folder_and_returns_the_record_without_a_store(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'prunekit[ray]'")
    monkeypatch.setenv(NO_STORE_ENV, "")  # run_task sets it for the process; restored after the test
    dense = plan(Sweep.from_yaml(SWEEP))[0].spec
    outcome = run_task(str(tmp_path), dense.to_dict(), 1, {})
    assert os.environ[NO_STORE_ENV] == "1"
    assert outcome.status == "done" and not (tmp_path / "results.sqlite").exists()
    record = json.loads((Project(tmp_path).run_folder(dense.id) / "metrics.json").read_text())
    assert outcome.record == record and outcome.metrics == record["metrics"]
    again = run_task(str(tmp_path), dense.to_dict(), 1, {})  # e.g. a retry after the file was written
    assert again.status == "skipped" and again.record == record


FAILING = """
name: infeasible
data: {name: synthetic, train_subset: 128}
model: {name: lenet_300_100, width: 0.25}
method: {name: oneshot, params: {sparsity: 0.9999, allocation: uniform_plus, finetune_epochs: 0}}
baselines: [random_same_allocation]
"""


def test_a_failed_ray_run_is_recorded_and_blocks_what_needs_it(ray_session, tmp_path):
    summary = run_sweep(tmp_path, Sweep.from_yaml(FAILING), executor="ray", quiet=True)
    assert summary.ran == 1 and len(summary.failed) == 1 and len(summary.blocked) == 1
    status = dict(_rows(tmp_path).execute("SELECT pipeline || coalesce('/' || baseline, ''), status FROM runs"))
    assert status == {"dense": "done", "oneshot": "failed", "oneshot/random_same_allocation": "blocked"}
    error = _rows(tmp_path).execute("SELECT error FROM runs WHERE status = 'failed'").fetchone()[0]
    assert error.startswith("ValueError") and "uniform" in error
    assert (Project(tmp_path).run_folder(summary.failed[0].id) / "error.log").is_file()


KILLED = """
name: killed
data: {name: synthetic, batch_size: 32, train_subset: 1024}
model: {name: lenet_300_100}
train: {epochs: 5, lr: 0.02, schedule: cosine}
method: {name: dense}
"""


def test_a_killed_ray_worker_is_retried_and_resumes_from_its_checkpoint(ray_session, tmp_path):
    _, _, events_path = ray_session
    sweep = Sweep.from_yaml(KILLED)
    (item,) = plan(sweep)
    events = _run_events.Listener(events_path)
    seen = {}

    def kill_after_first_epoch():
        # Every run event is answered, except the first checkpoint: its worker, left waiting
        # right after saving it, is killed there. The retry's events are answered.
        while True:
            kind, pid, where, conn = events.next()
            if kind == "checkpoint" and not seen:
                seen["history"] = load_checkpoint(where)["history"]  # stable: its writer waits
                os.kill(pid, signal.SIGKILL)  # the worker, mid-training
                conn.close()
                continue
            events.go(conn)
            if kind == "stop":
                return

    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    killer.start()
    try:
        summary = run_sweep(tmp_path, sweep, executor="ray", quiet=True, ray_max_retries=2)
    finally:
        events.stop()
        killer.join()
        events.close()
        os.unlink(events_path)
    assert seen, "no checkpoint was reported: is the _run_events setup hook installed in the Ray workers?"
    assert summary.ran == 1 and not summary.failed, [o.error for o in summary.failed]
    record = Project(tmp_path).read_record(item.spec.id)
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5]  # none lost or repeated
    done_before = len(seen["history"])
    assert 1 <= done_before < 5
    # The epochs finished before the kill come from the checkpoint, timings and all: the
    # retry resumed rather than started over.
    resumed = [{k: v for k, v in row.items() if k != "phase"} for row in record["history"][:done_before]]
    assert resumed == seen["history"]  # the record adds the phase name to fit's rows
    # And it ends exactly where an uninterrupted run does.
    fresh = execute(tmp_path / "fresh", item.spec)
    assert fresh.metrics["loss"] == record["metrics"]["loss"] and fresh.metrics["top1"] == record["metrics"]["top1"]


def test_without_ray_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(SWEEP)
    with pytest.raises(ImportError, match=r"pip install 'prunekit\[ray\]'"):
        run_sweep(tmp_path / "project", Sweep.from_yaml(SWEEP), executor="ray", quiet=True)
    assert not (tmp_path / "project" / "results.sqlite").exists()  # refused before any write
    assert main(["sweep", str(spec_path), "--dir", str(tmp_path / "project"), "--executor", "ray"]) == 2
    assert "pip install 'prunekit[ray]'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown executor"):
        run_sweep(tmp_path / "project", Sweep.from_yaml(SWEEP), executor="dask", quiet=True)


def test_prunekit_and_the_process_executor_never_import_ray():
    code = ("import sys, prunekit, prunekit.cli.main, prunekit.experiments.sweep, prunekit.experiments.ray_executor; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": src})
    assert out.stdout.strip() == "[]"
