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


# ------------------------------------------------------------------ diverging training

def test_diverging_training_stops_with_a_clear_error_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    argv = TRAIN[:-3] + ["--train-subset", "512", "--batch-size", "32", "--epochs", "1", "--lr", "1e4", "--quiet"]
    assert main(argv + ["--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("prunekit train: error: training diverged in epoch 1: ") and "lower the learning rate" in line
    assert not (out / "model.pt").exists() and not list(out.rglob("*.pt"))  # no NaN model, no NaN checkpoint


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--momentum", "nan"),
                                        ("--weight-decay", "-inf")])
def test_non_finite_hyper_parameters_are_rejected(tmp_path, capsys, flag, value):
    assert main(TRAIN + [f"{flag}={value}", "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert flag.strip("-").replace("-", "_") in line and value in line and "finite" in line


def test_non_finite_momentum_in_a_spec_is_rejected():
    with pytest.raises(ValueError, match="momentum"):
        Sweep.from_yaml(QUICK.replace("train: {epochs: 1}", "train: {epochs: 1, momentum: .nan}"))


DIVERGE = """
name: diverge
data: {name: synthetic, train_subset: 512, batch_size: 32}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1, lr: 10000.0}
method: {name: dense}
"""


def test_a_diverged_sweep_run_is_recorded_as_diverged(tmp_path, capsys):
    root = tmp_path / "project"
    run_id, record = _finished_project(root)
    (tmp_path / "d.yaml").write_text(DIVERGE)
    assert main(["sweep", str(tmp_path / "d.yaml"), "--dir", str(root), "--quiet"]) == 1
    (row,) = _db(root).execute("SELECT r.status, r.error FROM runs r JOIN sweep_runs s ON s.run_id = r.id "
                               "WHERE s.sweep = 'diverge'").fetchall()
    assert row[0] == "diverged" and "training diverged in epoch 1" in row[1]
    (item,) = plan(Sweep.from_yaml(DIVERGE))
    assert not (Project(root).run_folder(item.spec.id) / "metrics.json").exists()
    assert "training diverged" in capsys.readouterr().err
    _assert_survived(root, run_id, record)


# ------------------------------------------------------------------ damaged stores and run files

@pytest.mark.parametrize("damage", ["random bytes", "truncated", "overwritten pages"])
def test_a_damaged_store_is_one_line_and_repair_rebuilds_it(tmp_path, capsys, damage):
    root = tmp_path / "project"
    run_id, record = _finished_project(root)
    db = root / "results.sqlite"
    with sqlite3.connect(str(db)) as conn:  # fold the WAL into the file, as after a clean exit
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    if damage == "random bytes":
        data = bytearray(torch.randint(0, 256, (len(data),), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif damage == "truncated":
        data = data[: len(data) // 3]
    else:
        page = int.from_bytes(data[16:18], "big")
        data[page: len(data)] = bytes([0x5A]) * (len(data) - page)
    db.write_bytes(bytes(data))
    for argv, cmd in ((["runs", str(root)], "runs"),
                      (["sweep", str(tmp_path / "q.yaml"), "--dir", str(root), "--quiet"], "sweep")):
        (tmp_path / "q.yaml").write_text(QUICK)
        assert main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"prunekit {cmd}: error: the results store {db} is damaged")
        assert f"prunekit runs {root} --repair" in line
    assert main(["runs", str(root), "--repair"]) == 0
    assert "1 finished runs" in capsys.readouterr().out
    assert list(root.glob("results.sqlite.damaged-*"))  # the old file is kept
    _assert_survived(root, run_id, record)
    summary = run_sweep(root, Sweep.from_yaml(QUICK), quiet=True)
    assert summary.skipped == 1 and summary.ran == 0


def test_a_damaged_metrics_json_is_marked_and_the_run_rerun(tmp_path):
    root = tmp_path / "project"
    run_id, record = _finished_project(root)
    path = Project(root).run_folder(run_id) / "metrics.json"
    path.write_bytes(record[: len(record) // 2])  # cut short
    again = run_sweep(root, Sweep.from_yaml(QUICK), quiet=True)
    assert again.ran == 1 and again.skipped == 0 and not again.failed
    assert path.with_name("metrics.json.corrupt").read_bytes() == record[: len(record) // 2]
    assert json.loads(path.read_text())["metrics"] == json.loads(record)["metrics"]  # same result
    assert _status(root)[run_id] == "done"


# ------------------------------------------------------------------ untrusted data files

def _pickle_with(obj) -> bytes:
    import pickle
    return pickle.dumps(obj, protocol=2)


class _HugeArray:  # pickles as numpy.ndarray((2**40,), uint8): 1 TiB of uninitialised memory
    def __reduce__(self):
        import numpy as np
        return (np.ndarray, ((2**40,), np.dtype("u1")))


class _UninitialisedLabels:
    def __reduce__(self):
        import numpy as np
        return (np.ndarray, ((4,), np.dtype("i8")))


@pytest.mark.parametrize("what", ["huge", "uninitialised"])
def test_a_cifar_batch_cannot_ask_for_memory_it_does_not_hold(tmp_path, what):
    import numpy as np
    from prunekit.data.cifar import read_batch
    if what == "huge":
        batch = {b"data": _HugeArray(), b"labels": [1]}
    else:
        batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": _UninitialisedLabels()}
    path = tmp_path / "data_batch_1"
    path.write_bytes(_pickle_with(batch))
    with pytest.raises(ValueError) as err:
        read_batch(str(path), "labels", 10)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "numpy.ndarray" in message
    assert "labels must lie" not in message  # no values from uninitialised memory


def test_a_cifar_batch_declaring_more_than_the_file_holds_is_refused(tmp_path):
    import numpy as np
    from prunekit.data.cifar import read_batch
    raw = _pickle_with({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]})
    # _reconstruct(ndarray, (0,), b'b'): declare (2**38,) instead of (0,)
    small = b"K\x00\x85"  # BININT1 0, TUPLE1
    big = b"\x8a\x05" + (2**38).to_bytes(5, "little") + b"\x85"  # LONG1 2**38, TUPLE1
    assert small in raw
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw.replace(small, big, 1))
    with pytest.raises(ValueError, match=r"declares an array of 274,877,906,944 bytes in a file of"):
        read_batch(str(path), "labels", 10)


# ------------------------------------------------------------------ smaller cases

def test_erk_with_a_zero_size_layer():
    from torch import nn
    from prunekit.core.prune import prune
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 0), nn.Linear(0, 5), nn.Linear(5, 3))
    prune(model, 0.5, allocation="erk")  # was a ZeroDivisionError
    kept = sum(int(torch.count_nonzero(m.weight)) for m in model if hasattr(m, "weight"))
    assert kept == round(0.5 * (108 + 15))


def test_a_sparsity_that_keeps_no_weight_is_rejected(trained, tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["prune", str(trained), "--sparsity", "0.999999", "--no-eval", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "keeps no weight" in line and "the highest sparsity that keeps one is" in line
    assert not out.exists()


def test_a_damaged_checkpoint_advises_only_what_exists(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert main(TRAIN + ["--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "delete it" in line and "resume=False" not in line


def test_a_mistyped_data_dir_is_an_error_and_is_not_created(tmp_path, capsys):
    typo = tmp_path / "dtaa"
    assert main(["train", "--model", "lenet5", "--data", "mnist", "--data-dir", str(typo), "--epochs", "1",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert _one_line(capsys.readouterr().err) == (f"prunekit train: error: --data-dir {typo} does not exist "
                                                  "(it is not created: check the path, or leave the option out)")
    assert not typo.exists() and not (tmp_path / "out").exists()


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    from urllib.error import URLError
    import prunekit.data.download as download
    from prunekit import data

    def offline(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setattr(download, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="offline"):
        data.load("mnist", data_dir=str(tmp_path / "new" / "data"))
    assert list(tmp_path.iterdir()) == []


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ndata: {name: synthetic\nmodel: [a\n")
    assert main(["sweep", str(spec), "--dir", str(tmp_path / "p")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"prunekit sweep: error: {spec}, line 3, column ") and "not valid YAML" in line
    assert not (tmp_path / "p").exists()


class _FakeRay:
    """Just enough of Ray for run_ray's driver loop: tasks never finish, and the wait for one
    is where SIGTERM (as KeyboardInterrupt) arrives. Records what the driver cancels."""

    class exceptions:
        RayTaskError = RuntimeError

    def __init__(self):
        self.cancelled, self.shutdown_called, self.submitted = [], False, []

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        pass

    def shutdown(self):
        self.shutdown_called = True

    def cluster_resources(self):
        return {"CPU": 2.0}

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kwargs):
                return self

            def remote(self, *args):
                ref = object()
                fake.submitted.append(ref)
                return ref
        return Task()

    def wait(self, refs, num_returns=1):
        raise KeyboardInterrupt  # the driver is told to stop while its tasks run

    def cancel(self, ref, force=False):
        self.cancelled.append((ref, force))


def test_a_stopped_ray_sweep_cancels_its_tasks_and_marks_their_runs(tmp_path, monkeypatch):
    import prunekit.experiments.ray_executor as rx
    import prunekit.experiments.sweep as sw
    fake = _FakeRay()
    monkeypatch.setattr(rx, "import_ray", lambda: fake)
    monkeypatch.setattr(sw, "import_ray", lambda: fake)
    root = tmp_path / "project"
    sweep = Sweep.from_yaml(QUICK.replace("name: quick", "name: quick2") + "seeds: [0, 1]\n")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(root, sweep, executor="ray", quiet=True)
    assert len(fake.submitted) == 2
    assert {id(ref) for ref, force in fake.cancelled if force} == {id(ref) for ref in fake.submitted}
    assert fake.shutdown_called
    assert sorted(_status(root).values()) == ["interrupted", "interrupted"]


def test_a_run_without_store_writes_reports_diverged_to_its_driver(tmp_path):
    """Ray tasks run with store_writes=False: the driver records what the outcome says."""
    from prunekit.experiments.runner import execute
    (item,) = plan(Sweep.from_yaml(DIVERGE))
    outcome = execute(tmp_path, item.spec, store_writes=False)
    assert outcome.status == "diverged" and "training diverged in epoch 1" in outcome.error
    assert not (tmp_path / "results.sqlite").exists()


def test_disk_full_during_a_sweep_stops_it_in_one_line(tmp_path, monkeypatch, capsys):
    """ENOSPC while a run writes model.pt (after the check at the start): the sweep stops with
    one line naming the file, exit 2; the run is interrupted (it resumes at the next sweep).
    In a pool worker the same StorageError is raised again in the parent: it pickles intact
    (checked here; a spawned pool would cost this module ~15 s more)."""
    import pickle
    import prunekit.io as pio
    from prunekit.io import StorageError
    err = pickle.loads(pickle.dumps(StorageError("no space left on device", "x/model.pt", errno.ENOSPC)))
    assert str(err) == "no space left on device: x/model.pt" and err.errno == errno.ENOSPC
    root = tmp_path / "project"
    run_id, record = _finished_project(root)
    spec = QUICK.replace("name: quick", "name: quick2").replace("train: {epochs: 1}", "train: {epochs: 2}")
    (tmp_path / "q.yaml").write_text(spec)
    (item,) = plan(Sweep.from_yaml(spec))
    model = Project(root).run_folder(item.spec.id) / "model.pt"
    real = pio._fsync_file

    def full(tmp):
        if tmp.name.startswith(".model.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp)

    monkeypatch.setattr(pio, "_fsync_file", full)
    assert main(["sweep", str(tmp_path / "q.yaml"), "--dir", str(root), "--quiet"]) == 2
    assert _one_line(capsys.readouterr().err) == f"prunekit sweep: error: no space left on device: {model}"
    assert not model.exists() and not (model.parent / "metrics.json").exists()
    assert _status(root)[item.spec.id] == "interrupted"
    monkeypatch.undo()
    _assert_survived(root, run_id, record)
