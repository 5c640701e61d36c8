"""prunekit's C++ kernels, compiled on first use with torch's own extension builder.

Two kernels ship as C++ sources beside the modules that use them: the CSR x dense product of
``export.sparse`` (``export/csr_linear.cpp``) and the masked optimizer step of ``core.mask``
(``core/masked_step.cpp``). Each is built with ``torch.utils.cpp_extension.load`` (a C++
compiler is needed; the build is cached under ``$TORCH_EXTENSIONS_DIR``, ~20 s once per machine)
for the CPU it runs on (``-march=native``; the cache name includes a hash of the CPU, the flags and the
source, so a shared home directory never loads a build made for another CPU, version or flags).
Without a compiler, or with ``PRUNEKIT_NATIVE=0``, ``load()`` returns None, ``reason()`` says why
(one warning line when a build was tried and failed), and the caller takes its torch-only path.
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


def _build_tag(source: Path) -> str:
    """A short hash of the CPU model and instruction-set flags (Linux) or the platform, of the
    source and of the compiler flags (a build with other flags is another build)."""
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
    return hashlib.sha1((text + source.read_text() + " ".join(_flags())).encode()).hexdigest()[:10]


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; a venv used without activation (``.venv/bin/python``)
    does not have its own ``ninja`` (the ``ninja`` package, a dependency) there."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # the build then fails with torch's own message about ninja


def _flags() -> list:
    """Optimise for this CPU; sqrt without errno so loops over it vectorise; on x86, 512-bit
    vectors where the CPU has them (GCC prefers 256: the masked step was ~10% slower)."""
    flags = ["-O3", "-march=native", "-fno-math-errno"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")
    return flags


class NativeKernel:
    """One C++ source, built once per process on the first ``load()``.

    ``what``: how messages name it ("prunekit's CSR kernel"); ``instead``: what the caller does
    without it ("MKL's kernels are used")."""

    def __init__(self, name: str, source: Path, what: str, instead: str):
        self.name, self.source, self.what, self.instead = name, Path(source), what, instead
        self._lock = threading.Lock()
        self._state: dict = {}  # "module" once built, or "reason" why it is not available

    def load(self) -> Optional[Any]:
        """The compiled extension, or None (see ``reason()``)."""
        module = self._state.get("module")
        if module is not None:  # asked on hot paths: no lock once it is built
            return module
        with self._lock:
            if "module" in self._state or "reason" in self._state:
                return self._state.get("module")
            if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
                self._state["reason"] = f"disabled by {ENV}={os.environ[ENV]}"
                return None
            compiler = os.environ.get("CXX", "c++")
            if shutil.which(compiler) is None:
                self._state["reason"] = f"no C++ compiler ({compiler}) on PATH to build {self.what}; {self.instead}"
                warnings.warn(self._state["reason"], RuntimeWarning, stacklevel=3)
                return None
            try:
                import torch.utils.cpp_extension as cpp_extension  # ~1.4 s: only when building

                _put_ninja_on_path()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._state["module"] = cpp_extension.load(
                        name=f"{self.name}_{_build_tag(self.source)}", sources=[str(self.source)],
                        extra_cflags=_flags(), verbose=False)
            except Exception as error:  # noqa: BLE001 - no headers, a failed build: the torch-only path
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                self._state["reason"] = f"{self.what} could not be built ({first[:200]}); {self.instead}"
                warnings.warn(self._state["reason"], RuntimeWarning, stacklevel=3)
            return self._state.get("module")

    def reason(self) -> Optional[str]:
        """Why the kernel is not available (after ``load()``), else None."""
        return self._state.get("reason")
