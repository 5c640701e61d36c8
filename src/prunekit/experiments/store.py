"""The results store: one SQLite file per project folder, safe with concurrent workers.

Tables (``prunekit runs`` and ``prunekit report`` read them; so can any SQLite client):

- ``runs``: one row per run id: pipeline, baseline, parent (the main run of a baseline),
  label, dataset, model, seed, requested sparsity, the resolved spec (JSON), status
  (pending, running, done, failed, blocked, interrupted), attempts, pid, host, timings
  (created, started, finished, elapsed of the last attempt) and the last error.
- ``metrics``: the finished run's numbers: top1, top5, loss, requested and achieved sparsity,
  params, nonzero_params, prunable_params, prunable_nonzero, flops, effective_flops, epochs,
  steps (training cost including the runs it built on), wall_time (its own training seconds),
  extra (JSON of anything else a pipeline reported).
- ``layers``: per-layer rows (name, shape, params, kept, sparsity, flops, effective_flops).
- ``history``: per-epoch rows (phase, epoch, step, losses, accuracies, lr, sparsity, seconds).
- ``trail``: per-phase points (phase, sparsity, top1, top5, loss, nonzero_params).
- ``sweeps`` and ``sweep_runs``: which runs each sweep consists of, and in which role
  (main, baseline, dependency).

Concurrency: WAL journal, a 60 s busy timeout, and every write is one ``BEGIN IMMEDIATE``
transaction (it takes the write lock up front, so two writers never deadlock upgrading a
read lock). A process killed mid-write leaves the previous state: SQLite rolls the
transaction back. All of a run's result rows are written in one transaction. Opening retries
the switch to WAL and the schema creation with backoff (the busy timeout does not cover the
first: see ``Store._setup``). A process with ``PRUNEKIT_NO_STORE`` set cannot open the store
(Ray tasks: their sweep's driver writes it for them).

Faults: ``Store(path, verify=True)`` (a sweep's reconcile, ``prunekit runs``) runs ``PRAGMA
quick_check``, O(file size), so it is not paid by every run that records its result; other
accesses translate SQLite's "malformed" errors the same way. A damaged file (truncated, overwritten) raises
``StoreCorruptError`` with one line that names the file and the way out (``prunekit runs DIR
--repair`` rebuilds the store from the run folders, which are the truth). A full disk or a
read-only folder raises the one-line ``prunekit.io.StorageError`` instead of SQLite's
"disk I/O error".
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from ..io import MIN_FREE_BYTES, StorageError, storage_error

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
# Set (to anything non-empty) in processes that must not open the store: see Store.__init__.
NO_STORE_ENV = "PRUNEKIT_NO_STORE"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    baseline TEXT,
    parent TEXT,
    label TEXT,
    dataset TEXT,
    model TEXT,
    seed INTEGER,
    requested_sparsity REAL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT,
    created REAL,
    started REAL,
    finished REAL,
    elapsed REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT PRIMARY KEY,
    top1 REAL, top5 REAL, loss REAL,
    requested_sparsity REAL, achieved_sparsity REAL,
    params INTEGER, nonzero_params INTEGER, prunable_params INTEGER, prunable_nonzero INTEGER,
    flops INTEGER, effective_flops INTEGER,
    epochs REAL, steps INTEGER, wall_time REAL,
    extra TEXT
);
CREATE TABLE IF NOT EXISTS layers (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL, shape TEXT,
    params INTEGER, kept INTEGER, sparsity REAL, flops INTEGER, effective_flops INTEGER,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, phase TEXT, epoch INTEGER, step INTEGER,
    train_loss REAL, train_top1 REAL, test_loss REAL, test_top1 REAL, test_top5 REAL,
    lr REAL, sparsity REAL, seconds REAL, extra TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS trail (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, phase TEXT, sparsity REAL,
    top1 REAL, top5 REAL, loss REAL, nonzero_params INTEGER, extra TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY, spec TEXT, resolved TEXT, created REAL, updated REAL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL, run_id TEXT NOT NULL, role TEXT NOT NULL, position INTEGER,
    PRIMARY KEY (sweep, run_id)
);
"""

METRIC_COLUMNS = ("top1", "top5", "loss", "requested_sparsity", "achieved_sparsity", "params",
                  "nonzero_params", "prunable_params", "prunable_nonzero", "flops",
                  "effective_flops", "epochs", "steps", "wall_time")
HISTORY_COLUMNS = ("phase", "epoch", "step", "train_loss", "train_top1", "test_loss", "test_top1",
                   "test_top5", "lr", "sparsity", "seconds")
TRAIL_COLUMNS = ("phase", "sparsity", "top1", "top5", "loss", "nonzero_params")
LAYER_COLUMNS = ("name", "shape", "params", "kept", "sparsity", "flops", "effective_flops")


def _retry_locked(step: Callable[[], None], timeout: float = BUSY_TIMEOUT_S) -> None:
    """Run ``step`` again, with jittered exponential backoff (1 ms doubling to 0.5 s), while
    SQLite says the database is locked or busy, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            return step()
        except sqlite3.OperationalError as err:
            text = str(err).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


class StoreCorruptError(ValueError):
    """The results database is damaged; the message says how to rebuild it."""


def _is_locked(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _translate(err: BaseException, path: Path) -> Optional[Exception]:
    """A one-line error for what SQLite (or the OS) said, or None to let ``err`` through."""
    if isinstance(err, OSError):
        return storage_error(err, path)
    if not isinstance(err, sqlite3.DatabaseError) or _is_locked(err):
        return None
    text = str(err).lower()
    code = getattr(err, "sqlite_errorcode", None)
    if "disk is full" in text or code == 13:  # SQLITE_FULL
        return StorageError("no space left on device", path, errno.ENOSPC)
    if "readonly" in text or "read-only" in text:
        return StorageError("read-only file system or no write permission", path, errno.EROFS)
    if "disk i/o error" in text or "unable to open" in text:
        try:  # SQLite says "disk I/O error" for a full disk too: look
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        if free is not None and free < MIN_FREE_BYTES:
            return StorageError("no space left on device", path, errno.ENOSPC)
        if "unable to open" in text:
            if not os.access(path.parent, os.W_OK):
                return StorageError("permission denied", path, errno.EACCES)
            return None
        return StorageError("disk I/O error", path, errno.EIO)
    if isinstance(err, sqlite3.OperationalError) and "malformed" not in text and "not a database" not in text:
        return None
    return corrupt(path, str(err))


def corrupt(path: Path, detail: str) -> StoreCorruptError:
    folder = path.parent
    return StoreCorruptError(
        f"the results store {path} is damaged ({detail.splitlines()[0] if detail else 'corrupt'}); "
        f"the run folders are intact: `prunekit runs {folder} --repair` rebuilds it from them")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


class Store:
    """The results database of one project folder. One connection per process: open a Store
    in each worker (connections must not cross ``fork``/``spawn``)."""

    def __init__(self, path: Union[str, Path], verify: bool = False):
        if os.environ.get(NO_STORE_ENV):
            # Set in processes that must leave the database to another one (Ray tasks: the
            # sweep's driver alone writes the store); opening it there is a bug, not a race.
            raise RuntimeError(f"this process must not open the results store {path} "
                               f"({NO_STORE_ENV} is set: the driver of the sweep writes it)")
        self.path = Path(path)
        with self._translated():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in _write).
            self.conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            with self._translated():
                self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                _retry_locked(self._setup)
                if verify:
                    self.check()
        except BaseException:
            self.conn.close()
            raise

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.DatabaseError, OSError) as err:
            translated = _translate(err, self.path)
            if translated is None or translated is err:
                raise
            raise translated from None

    def check(self) -> None:
        """``PRAGMA quick_check`` (O(size), no index cross-checks); raises
        ``StoreCorruptError`` when the file is damaged."""
        rows = [r[0] for r in self.conn.execute("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            raise corrupt(self.path, "; ".join(map(str, rows[:3])))

    def _setup(self) -> None:
        """WAL mode and the schema. Switching a fresh file to WAL needs an exclusive lock, and
        SQLite answers "database is locked" at once (or returns the old mode) when another
        connection holds any lock then, without calling the busy handler; so this runs under
        :func:`_retry_locked` rather than relying on the busy timeout."""
        mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(  # "locked": retried; persists on a filesystem without WAL (NFS)
                f"database is locked: {self.path} stayed in journal mode {mode!r}, not WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: never corrupt
        if self.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # schema in place: opening takes no write lock
        with self._write() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator["_Tx"]:
        with self._translated():
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            with self._translated():
                yield _Tx(self.conn)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
                self.conn.execute("ROLLBACK")
            raise
        with self._translated():
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------- registering

    @staticmethod
    def _run_row(spec) -> Dict[str, Any]:
        """Column values describing a RunSpec (what stays fixed for its id)."""
        return {
            "id": spec.id,
            "pipeline": spec.method.name,
            "baseline": spec.baseline.name if spec.baseline is not None else None,
            "parent": spec.main_spec().id if spec.baseline is not None else None,
            "label": spec.label,
            "dataset": spec.data.name,
            "model": spec.model.name,
            "seed": spec.seed,
            "requested_sparsity": spec.requested_sparsity,
            "spec": _json(spec.to_dict()),
        }

    def _ensure(self, db: "_Tx", spec) -> None:
        row = self._run_row(spec)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        db.execute(f"INSERT OR IGNORE INTO runs ({cols}, created) VALUES ({marks}, ?)",
                   (*row.values(), time.time()))
        # The label is display-only and may change between sweeps: keep the latest.
        db.execute("UPDATE runs SET label = ? WHERE id = ?", (row["label"], row["id"]))

    def register_sweep(self, name: str, spec: Dict[str, Any], resolved: Dict[str, Any],
                       planned: Sequence) -> None:
        """Record sweep ``name`` (its file ``spec`` and its first point ``resolved``) and its
        runs ``planned`` (objects with ``.spec`` and ``.role``), replacing the sweep's
        previous membership."""
        now = time.time()
        with self._write() as db:
            db.execute("INSERT INTO sweeps (name, spec, resolved, created, updated) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, resolved = excluded.resolved, "
                       "updated = excluded.updated", (name, _json(spec), _json(resolved), now, now))
            db.execute("DELETE FROM sweep_runs WHERE sweep = ?", (name,))
            for position, item in enumerate(planned):
                self._ensure(db, item.spec)
                db.execute("INSERT INTO sweep_runs (sweep, run_id, role, position) VALUES (?, ?, ?, ?)",
                           (name, item.spec.id, item.role, position))

    # ------------------------------------------------------------------- run status

    def add(self, spec, status: str = "pending", error: Optional[str] = None) -> None:
        """Record a run (a row with ``status``) without results; ``--repair`` uses it."""
        with self._write() as db:
            self._ensure(db, spec)
            db.execute("UPDATE runs SET status = ?, error = ? WHERE id = ?", (status, error, spec.id))

    def start(self, spec) -> None:
        """Mark the run running in this process (one more attempt)."""
        with self._write() as db:
            self._ensure(db, spec)
            db.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, pid = ?, host = ?, "
                       "started = ?, error = NULL WHERE id = ?",
                       (os.getpid(), socket.gethostname(), time.time(), spec.id))

    def fail(self, run_id: str, error: str, status: str = "failed") -> None:
        with self._write() as db:
            db.execute("UPDATE runs SET status = ?, error = ?, finished = ? WHERE id = ?",
                       (status, error, time.time(), run_id))

    def set_status(self, run_ids: Iterable[str], status: str, error: Optional[str] = None) -> None:
        with self._write() as db:
            for run_id in run_ids:
                db.execute("UPDATE runs SET status = ?, error = ? WHERE id = ?", (status, error, run_id))

    def finish(self, spec, record: Dict[str, Any]) -> None:
        """Store a finished run's record (``metrics.json``) in one transaction. Idempotent:
        the run's old result rows are replaced, so re-ingesting never duplicates."""
        run_id = spec.id
        metrics = record["metrics"]
        with self._write() as db:
            self._ensure(db, spec)
            for table in ("metrics", "layers", "history", "trail"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute(f"INSERT INTO metrics (run_id, {', '.join(METRIC_COLUMNS)}, extra) VALUES "
                       f"(?, {', '.join('?' for _ in METRIC_COLUMNS)}, ?)",
                       (run_id, *[metrics.get(c) for c in METRIC_COLUMNS], _json(record.get("extra", {}))))
            for i, layer in enumerate(record.get("layers", [])):
                db.execute(f"INSERT INTO layers (run_id, idx, {', '.join(LAYER_COLUMNS)}) VALUES "
                           f"(?, ?, {', '.join('?' for _ in LAYER_COLUMNS)})",
                           (run_id, i, *[_json(layer[c]) if c == "shape" else layer.get(c) for c in LAYER_COLUMNS]))
            for table, columns, rows in (("history", HISTORY_COLUMNS, record.get("history", [])),
                                         ("trail", TRAIL_COLUMNS, record.get("trail", []))):
                for i, row in enumerate(rows):
                    extra = {k: v for k, v in row.items() if k not in columns}
                    db.execute(f"INSERT INTO {table} (run_id, idx, {', '.join(columns)}, extra) VALUES "
                               f"(?, ?, {', '.join('?' for _ in columns)}, ?)",
                               (run_id, i, *[row.get(c) for c in columns], _json(extra)))
            db.execute("UPDATE runs SET status = 'done', error = NULL, finished = ?, elapsed = ? WHERE id = ?",
                       (record.get("finished", time.time()), record.get("elapsed"), run_id))

    # ------------------------------------------------------------------------ queries

    def _rows(self, sql: str, args: Sequence = ()) -> List[Dict[str, Any]]:
        with self._translated():
            return [dict(r) for r in self.conn.execute(sql, args).fetchall()]

    def runs(self, sweep: Optional[str] = None, status: Optional[str] = None) -> List[Dict[str, Any]]:
        """Runs (with their metrics when finished), in sweep order or creation order."""
        sql = ("SELECT r.*, m.top1, m.top5, m.loss, m.achieved_sparsity, m.params, m.nonzero_params, "
               "m.prunable_params, m.prunable_nonzero, m.flops, m.effective_flops, m.epochs, m.steps, "
               "m.wall_time, m.extra")
        args: List[Any] = []
        if sweep is not None:
            sql += (", s.role FROM sweep_runs s JOIN runs r ON r.id = s.run_id "
                    "LEFT JOIN metrics m ON m.run_id = r.id WHERE s.sweep = ?")
            args.append(sweep)
        else:
            sql += ", NULL AS role FROM runs r LEFT JOIN metrics m ON m.run_id = r.id WHERE 1"
        if status is not None:
            sql += " AND r.status = ?"
            args.append(status)
        sql += " ORDER BY s.position" if sweep is not None else " ORDER BY r.created, r.id"
        return self._rows(sql, args)

    def sweeps(self) -> List[Dict[str, Any]]:
        return self._rows("SELECT name, spec, resolved, created, updated FROM sweeps ORDER BY created")

    def run(self, run_id: str) -> Optional[Dict[str, Any]]:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        return rows[0] if rows else None

    def _per_run(self, table: str, run_ids: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
        out: Dict[str, List[Dict[str, Any]]] = {r: [] for r in run_ids}
        for chunk in range(0, len(run_ids), 500):  # SQLite caps the number of parameters
            ids = list(run_ids[chunk:chunk + 500])
            marks = ", ".join("?" for _ in ids)
            for row in self._rows(f"SELECT * FROM {table} WHERE run_id IN ({marks}) ORDER BY run_id, idx", ids):
                out[row["run_id"]].append(row)
        return out

    def layers(self, run_ids: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
        return self._per_run("layers", run_ids)

    def history(self, run_ids: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
        return self._per_run("history", run_ids)

    def trail(self, run_ids: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
        return self._per_run("trail", run_ids)

    def integrity(self) -> str:
        """SQLite's own check: "ok" when the file is sound."""
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]


class _Tx:
    """The connection inside a write transaction (just ``execute``)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql: str, args: Sequence = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, args)
