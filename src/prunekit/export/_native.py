"""prunekit's own CSR x dense kernel (``csr_linear.cpp``), compiled on first use.

Why our own kernel: the sparse x dense products torch offers on CPU (MKL through
``torch.addmm`` on a CSR tensor, ``torch.sparse.mm``, BSR) reach 1.7-3.9x over dense on
all-MiniLM-L6-v2's 90%-sparse layers at 128 tokens, and are slower than dense at 73-75%
sparsity (its query / key layers); the ~60-line kernel here reaches 4-15x and 1.7x there
(``benchmarks/bench_minilm_export.py``). It is one candidate form among the ones ``sparse()``
times per layer, so a layer only uses it where it measured fastest.

It is built with torch's own extension builder (``torch.utils.cpp_extension.load``: a C++
compiler is needed; the build is cached under ``$TORCH_EXTENSIONS_DIR``, ~20 s once per
machine) for the CPU it runs on (``-march=native``; the cache name includes a hash of the CPU
so a shared home directory never loads a build made for another CPU). Without a compiler, or
with ``PRUNEKIT_NATIVE=0``, ``load()`` returns None, ``reason()`` says why, and ``sparse()``
uses MKL's kernels only; a model exported with the kernel falls back to MKL the same way.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

ENV = "PRUNEKIT_NATIVE"
SOURCE = Path(__file__).with_name("csr_linear.cpp")

_lock = threading.Lock()
_state: dict = {}  # "module" once built, or "reason" why it is not available


def _cpu_tag() -> str:
    """A short hash of the CPU model and its instruction-set flags (Linux) or the platform."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                if line.strip() == "":  # the first CPU is enough
                    break
    except OSError:
        pass
    return hashlib.sha1((text + SOURCE.read_text()).encode()).hexdigest()[:10]


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; a venv used without activation (``.venv/bin/python``)
    does not have its own ``ninja`` (the ``ninja`` package, a dependency) there."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # the build then fails with torch's own message about ninja


def load() -> Optional[Any]:
    """The compiled extension (its ``csr_linear`` function), or None (see ``reason()``)."""
    module = _state.get("module")
    if module is not None:  # every SparseLinear forward asks: no lock once it is built
        return module
    with _lock:
        if "module" in _state or "reason" in _state:
            return _state.get("module")
        if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            _state["reason"] = f"disabled by {ENV}={os.environ[ENV]}"
            return None
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            _state["reason"] = f"no C++ compiler ({compiler}) on PATH to build prunekit's CSR kernel; MKL's kernels are used"
            warnings.warn(_state["reason"], RuntimeWarning, stacklevel=2)
            return None
        try:
            import torch.utils.cpp_extension as cpp_extension  # ~1.4 s: only when building

            _put_ninja_on_path()

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _state["module"] = cpp_extension.load(
                    name=f"prunekit_csr_linear_{_cpu_tag()}", sources=[str(SOURCE)],
                    extra_cflags=["-O3", "-march=native"], verbose=False)
        except Exception as error:  # noqa: BLE001 - no compiler, no headers, a failed build: MKL only
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _state["reason"] = f"prunekit's CSR kernel could not be built ({first[:200]}); MKL's kernels are used"
            warnings.warn(_state["reason"], RuntimeWarning, stacklevel=2)
        return _state.get("module")


def reason() -> Optional[str]:
    """Why the kernel is not available (after ``load()``), else None."""
    return _state.get("reason")
