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


# ------------------------------------------------------------------ disks

def _fail_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """Files created under ``folder`` fail with ``code`` (EROFS: a read-only mount; root
    ignores permission bits, so CI cannot make one with chmod). Reads go through."""
    real = os.open
    folder = str(Path(folder).absolute())

    def fake(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and \
                os.path.abspath(os.fspath(path)).startswith(folder):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)


TRAIN = ["train", "--model", "lenet_300_100", "--width", "0.25", "--data", "synthetic", "--train-subset", "128",
         "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert main(TRAIN + ["--out", str(out)]) == 0
    return out / "model.pt"


def test_read_only_output_folder_fails_before_training_in_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    (out / "model.pt").write_bytes(b"an earlier result")
    _fail_writes_under(monkeypatch, out, errno.EROFS)
    assert main(TRAIN + ["--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err) == f"prunekit train: error: read-only file system: {out}"
    assert "top-1" not in captured.out  # stopped before the work
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]
    assert (out / "model.pt").read_bytes() == b"an earlier result"


def test_read_only_project_folder_stops_a_sweep_and_keeps_its_results(tmp_path, monkeypatch, capsys):
    root = tmp_path / "project"
    run_id, record = _finished_project(root)
    spec = tmp_path / "q.yaml"
    spec.write_text(QUICK.replace("name: quick", "name: quick2").replace("train: {epochs: 1}", "train: {epochs: 2}"))
    _fail_writes_under(monkeypatch, root, errno.EROFS)
    assert main(["sweep", str(spec), "--dir", str(root), "--quiet"]) == 2
    assert _one_line(capsys.readouterr().err) == f"prunekit sweep: error: read-only file system: {root}"
    monkeypatch.undo()
    _assert_survived(root, run_id, record)


def test_full_disk_is_said_before_the_work_starts(tmp_path, monkeypatch, capsys):
    import shutil
    root = tmp_path / "project"
    run_id, record = _finished_project(root)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=3 * 2**20))
    spec = tmp_path / "q.yaml"
    spec.write_text(QUICK.replace("name: quick", "name: quick2").replace("train: {epochs: 1}", "train: {epochs: 2}"))
    assert main(["sweep", str(spec), "--dir", str(root), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("prunekit sweep: error: no space left on device (3.0 MB free") and line.endswith(str(root))
    monkeypatch.undo()
    _assert_survived(root, run_id, record)
    assert set(_status(root)) == {run_id}  # nothing of the second sweep was started


def test_disk_full_while_writing_the_model_is_one_line_and_keeps_the_old_file(trained, tmp_path, monkeypatch, capsys):
    import prunekit.io as pio
    out = tmp_path / "pruned.pt"
    out.write_bytes(b"the previous pruned model")
    real = pio._fsync_file

    def full(tmp):  # the disk fills up while model.pt is written (after the check)
        if tmp.name.startswith(".pruned.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp)

    monkeypatch.setattr(pio, "_fsync_file", full)
    assert main(["prune", str(trained), "--sparsity", "0.5", "--no-eval", "--out", str(out)]) == 2
    assert _one_line(capsys.readouterr().err) == f"prunekit prune: error: no space left on device: {out}"
    assert out.read_bytes() == b"the previous pruned model"
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def _mount_tiny_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


def test_a_real_full_filesystem(tmp_path):
    """The kernel's own ENOSPC, on a 512 KiB tmpfs (where mounting is allowed)."""
    from prunekit.io import StorageError, atomic_torch_save, check_writable
    from prunekit.experiments.store import Store
    small = tmp_path / "small"
    if not _mount_tiny_tmpfs(small, "512k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the injected cases cover it")
    try:
        store = Store(small / "results.sqlite")
        atomic_torch_save({"w": torch.zeros(16)}, small / "model.pt")
        before = (small / "model.pt").read_bytes()
        with pytest.raises(StorageError) as err:
            atomic_torch_save({"w": torch.zeros(2**18)}, small / "model.pt")  # 1 MiB
        assert str(err.value) == f"no space left on device: {small / 'model.pt'}"
        assert (small / "model.pt").read_bytes() == before
        with pytest.raises(StorageError, match=r"^no space left on device \("):
            check_writable(small)
        with open(small / "filler", "wb", buffering=0) as f:  # fill what is left, then write the store
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 4096)
        with pytest.raises(StorageError, match="^no space left on device: "):
            store.register_sweep("big", {"notes": "y" * 200_000}, {}, [])
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(small)])
