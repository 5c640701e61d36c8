"""Pipelines for tests/test_faults.py, and a ``prunekit`` entry point that registers them.

Run as a script (``python tests/_fault_pipelines.py sweep ...``) it is the ``prunekit``
command with two more pipelines; the spawned sweep workers re-import this file as their
``__mp_main__``, so they know the pipelines too.

- ``fault_quick``: the untrained model as the result (a finished run in a few seconds);
- ``fault_hold``: reports this process's PID (one line) into the FIFO named by
  ``$PRUNEKIT_TEST_FIFO``, then waits until the process is killed: the test knows every
  worker is inside a run, without sleeping or polling.
"""
import os
import sys
import threading
from dataclasses import dataclass

from prunekit.pipelines.registry import PIPELINES, register_pipeline

FIFO_ENV = "PRUNEKIT_TEST_FIFO"


@dataclass
class NoParams:
    """No parameters."""


if "fault_quick" not in PIPELINES.names():
    @register_pipeline("fault_quick", NoParams, target=lambda p: 0.0)
    def run_quick(ctx, p):
        """The untrained model."""
        return ctx.result(ctx.model)

    @register_pipeline("fault_hold", NoParams, target=lambda p: 0.0)
    def run_hold(ctx, p):
        """Report the worker's PID, then hold the run until the process is killed."""
        fd = os.open(os.environ[FIFO_ENV], os.O_WRONLY)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        threading.Event().wait()  # until killed


if __name__ == "__main__":
    from prunekit.cli.main import main

    sys.exit(main(sys.argv[1:]))
