"""Test-only instrumentation: a sweep's runs report their progress to the test and wait for it.

With ``PRUNEKIT_TEST_EVENTS`` naming a Unix socket the test listens on, ``install()`` (run in
each sweep process by a ``sitecustomize`` shim or Ray's worker setup hook) makes every run

* send ``checkpoint <pid> <path>`` after each epoch's checkpoint is saved, and
* send ``done <pid> <run folder>`` once its ``metrics.json`` (the "done" marker) is written,

then block until the test answers. A test can so kill a run at a known point (its checkpoint
saved, its next epoch not started) by not answering, instead of polling the run folders.
"""
import os
import socket
from pathlib import Path

ENV = "PRUNEKIT_TEST_EVENTS"


def install() -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    from prunekit.experiments import runner
    from prunekit.training import loop

    save_checkpoint, atomic_write_json = loop.save_checkpoint, runner.atomic_write_json

    def report(kind: str, where: Path) -> None:
        with socket.socket(socket.AF_UNIX) as conn:
            try:
                conn.connect(path)
            except (FileNotFoundError, ConnectionRefusedError):
                return  # no test listening (another test of a module sharing this set-up)
            conn.sendall(f"{kind} {os.getpid()} {where}".encode())
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # the answer; a test that kills us never sends it

    def save_and_report(ckpt, payload):
        saved = save_checkpoint(ckpt, payload)
        report("checkpoint", Path(ckpt))
        return saved

    def write_and_report(target, data):
        written = atomic_write_json(target, data)
        if Path(target).name == runner.METRICS:
            report("done", Path(target).parent)
        return written

    loop.save_checkpoint, runner.atomic_write_json = save_and_report, write_and_report


class Listener:
    """The test's end: ``next()`` returns one event as ``(kind, pid, path, conn)``; answer it
    with ``go(conn)`` to let that run continue."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(16)

    def next(self, timeout: float = None):
        self.server.settimeout(timeout)
        try:
            conn, _ = self.server.accept()
        except socket.timeout:
            return None
        conn.settimeout(None)
        message = b""
        while chunk := conn.recv(4096):  # the sender shuts its side after the message
            message += chunk
        kind, pid, where = message.decode().split(" ", 2)
        return kind, int(pid), Path(where), conn

    @staticmethod
    def go(conn) -> None:
        conn.sendall(b"g")
        conn.close()

    def stop(self) -> None:
        """Wakes a thread blocked in ``next()`` with a ``("stop", ...)`` event."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(self.path)
            conn.sendall(f"stop {os.getpid()} -".encode())
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)

    def close(self) -> None:
        self.server.close()
