"""prunekit's own CSR x dense kernel (``csr_linear.cpp``), compiled on first use (``prunekit.native``).

Why our own kernel: the sparse x dense products torch offers on CPU (MKL through
``torch.addmm`` on a CSR tensor, ``torch.sparse.mm``, BSR) reach 1.7-3.9x over dense on
all-MiniLM-L6-v2's 90%-sparse layers at 128 tokens, and are slower than dense at 73-75%
sparsity (its query / key layers); the kernel here reaches 4-15x and 1.7x there
(``benchmarks/bench_minilm_export.py``). It is one candidate form among the ones ``sparse()``
times per layer, so a layer only uses it where it measured fastest. Without a compiler, or
with ``PRUNEKIT_NATIVE=0``, ``load()`` returns None, ``reason()`` says why, and ``sparse()``
uses MKL's kernels only; a model exported with the kernel falls back to MKL the same way.
"""
from __future__ import annotations

from pathlib import Path

from ..native import ENV, NativeKernel

__all__ = ["ENV", "KERNEL", "load", "reason"]

KERNEL = NativeKernel("prunekit_csr_linear", Path(__file__).with_name("csr_linear.cpp"),
                      "prunekit's CSR kernel", "MKL's kernels are used")
load = KERNEL.load
reason = KERNEL.reason
