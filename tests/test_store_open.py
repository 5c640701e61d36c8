"""Opening the results store from several processes at once, on fresh database files.

A fresh file is in rollback-journal mode until a connection switches it to WAL; that switch
needs an exclusive lock, and SQLite reports "database is locked" at once, without calling the
busy handler, when another connection holds a lock then. Store() retries it (and the schema
creation) with backoff; before it did, this test saw 1 to 30 of its 720 opens fail (load-dependent).
"""
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prunekit.experiments.store import NO_STORE_ENV, SCHEMA_VERSION, Store

OPENER = textwrap.dedent("""
    import sys, time, pathlib
    from prunekit.experiments.store import Store
    folder, n_files, gap = pathlib.Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    # Start barrier: say "ready" once imported, then block until the parent sends the start
    # instant on stdin (a pipe: no half-written file to misread).
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    failures = []
    for i in range(n_files):
        # Every process wakes to open file i at the same instant (sleeping, not spinning: on
        # 2 cores spinning processes get descheduled and stop colliding). The clock only makes
        # collisions likely; nothing here depends on it for correctness.
        time.sleep(max(0.0, t0 + gap * i - time.time()))
        try:
            # Open only: a write here would queue the processes behind each other's commits
            # and spread them out of step.
            with Store(folder / f"db{i}.sqlite") as store:
                version = store.conn.execute("PRAGMA user_version").fetchone()[0]
            if version != 1:
                failures.append(f"db{i}: opened before its schema was written (user_version {version})")
        except Exception as err:
            failures.append(f"db{i}: {type(err).__name__}: {err}")
    print("\\n".join(failures))
    sys.exit(1 if failures else 0)
""")


def _env():
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_many_processes_open_fresh_stores_at_once(tmp_path):
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    n_procs, n_files, gap = 6, 120, 0.03
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(n_files), str(gap)],
                              env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for _ in range(n_procs)]
    # Every child has imported and is waiting (a dead child gives EOF, never a hang).
    ready = [p.stdout.readline() for p in procs]
    assert ready == ["ready\n"] * n_procs, ready
    start = str(time.time() + 0.5)  # all wait now, so a short common delay suffices
    for p in procs:
        p.stdin.write(start + "\n")
        p.stdin.flush()  # communicate() closes it
    outputs = ["".join(p.communicate(timeout=300)) for p in procs]
    assert [p.returncode for p in procs] == [0] * n_procs, "\n".join(outputs)[-3000:]
    for i in range(n_files):
        conn = sqlite3.connect(tmp_path / f"db{i}.sqlite")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 7
        conn.close()


def test_opening_is_refused_where_the_store_is_forbidden(tmp_path, monkeypatch):
    monkeypatch.setenv(NO_STORE_ENV, "1")
    with pytest.raises(RuntimeError, match=NO_STORE_ENV):
        Store(tmp_path / "results.sqlite")
    assert not (tmp_path / "results.sqlite").exists()


def test_the_full_file_check_runs_only_when_asked(tmp_path, monkeypatch):
    """quick_check reads the whole file: the sweep's reconcile and `prunekit runs` ask for it
    (verify=True); a run recording its result must not pay it on every open."""
    checked = []
    monkeypatch.setattr(Store, "check", lambda self: checked.append(self.path))
    with Store(tmp_path / "results.sqlite"):
        pass
    assert checked == []
    with Store(tmp_path / "results.sqlite", verify=True):
        pass
    assert checked == [tmp_path / "results.sqlite"]
