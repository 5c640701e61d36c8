"""Fault injection (issue #18): what a cluster and a hostile user do to a run, in CI.

Each case asserts the exit code, the one-line message and that the results stored before the
fault survive. Processes synchronise through pipes (a FIFO the sweep's workers write their PID
into), never sleeps or polled files; processes are waited for through pidfds (a bounded wait
that fails the test, never one that passes silently), and "no orphan" is checked by PID.
Disk faults are injected (ENOSPC, EROFS: root ignores permission bits, CI runs as root); a real
tiny tmpfs is used in addition where this machine allows mounting one.
"""
from __future__ import annotations

import errno
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import _fault_pipelines  # noqa: F401  (registers fault_quick / fault_hold in this process too)
from prunekit.cli.main import main
from prunekit.experiments import Project
from prunekit.experiments.spec import Sweep
from prunekit.experiments.sweep import plan, run_sweep

HELPER = Path(_fault_pipelines.__file__).resolve()
SRC = Path(__file__).resolve().parents[1] / "src"

QUICK = """
name: quick
data: {name: synthetic, train_subset: 64, batch_size: 32}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1}
method: {name: fault_quick}
"""
HOLD = """
name: hold
data: {name: synthetic, train_subset: 64, batch_size: 32}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1}
method: {name: fault_hold}
seeds: [0, 1]
"""


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    return lines[0]


def _db(root) -> sqlite3.Connection:
    return sqlite3.connect(str(Path(root) / "results.sqlite"))


def _status(root, sweep=None):
    sql = "SELECT r.id, r.status FROM runs r"
    if sweep:
        sql += f" JOIN sweep_runs s ON s.run_id = r.id WHERE s.sweep = '{sweep}'"
    return dict(_db(root).execute(sql).fetchall())


def _finished_project(root: Path):
    """A project folder with one finished run; returns (run id, its metrics.json bytes)."""
    summary = run_sweep(root, Sweep.from_yaml(QUICK), quiet=True)
    assert summary.ran == 1 and not summary.failed
    (item,) = plan(Sweep.from_yaml(QUICK))
    return item.spec.id, (Project(root).run_folder(item.spec.id) / "metrics.json").read_bytes()


def _assert_survived(root: Path, run_id: str, record: bytes) -> None:
    assert (Project(root).run_folder(run_id) / "metrics.json").read_bytes() == record
    assert _db(root).execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert _status(root)[run_id] == "done"


# ------------------------------------------------------------------ processes, by PID


def _descendants(root_pid: int):
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_exited(pidfds, timeout: float = 60.0) -> None:
    """Every process behind ``pidfds`` has exited (a pidfd turns readable then); fails loudly
    naming the survivors after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = dict(pidfds)
    while alive:
        ready, _, _ = select.select(list(alive.values()), [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in alive
                     if Path(f"/proc/{pid}").exists()}
            pytest.fail(f"processes left behind after the sweep was killed: {names}")
        for pid in [p for p, fd in alive.items() if fd in ready]:
            os.close(alive.pop(pid))


def _read_pids(fifo_fd: int, count: int, timeout: float = 180.0):
    """``count`` PIDs, one line each, from the FIFO (the workers' readiness reports)."""
    deadline = time.monotonic() + timeout
    data = b""
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fifo_fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the sweep's workers did not report ready in {timeout:.0f} s (got {data!r})"
        data += os.read(fifo_fd, 4096)
    return [int(line) for line in data.split()]


@pytest.mark.skipif(not hasattr(os, "pidfd_open") or not Path("/proc/self/stat").exists(),
                    reason="needs Linux pidfds and /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_parallel_sweep_leaves_no_process_and_keeps_results(tmp_path, sig):
    root = tmp_path / "project"
    run_id, record = _finished_project(root)
    (tmp_path / "hold.yaml").write_text(HOLD)
    fifo = tmp_path / "ready.fifo"
    os.mkfifo(fifo)
    fifo_fd = os.open(fifo, os.O_RDWR)  # read end that never sees EOF (Linux)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               PRUNEKIT_THREADS="2", **{_fault_pipelines.FIFO_ENV: str(fifo)})
    proc = subprocess.Popen([sys.executable, str(HELPER), "sweep", str(tmp_path / "hold.yaml"), "--dir", str(root),
                             "--workers", "2", "--quiet"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        workers = _read_pids(fifo_fd, 2)
        family = _descendants(proc.pid)
        assert set(workers) <= set(family), (workers, family)
        pidfds = {pid: os.pidfd_open(pid) for pid in family}  # held: a PID cannot be reused
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        _wait_exited(pidfds)
    finally:
        os.close(fifo_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert "terminated" in _one_line(err.decode())
        held = _status(root, "hold")
        assert sorted(held.values()) == ["interrupted", "interrupted"], held
    else:
        assert proc.returncode == -signal.SIGKILL
        # the store says "running"; `prunekit runs` sees no process holds them
        assert main(["runs", str(root), "--status", "interrupted", "--json"]) == 0
    _assert_survived(root, run_id, record)
