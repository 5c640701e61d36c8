"""CIFAR-10 and CIFAR-100 from the official python batches, read without trusting pickle.

The batches are pickles. A pickle can name any importable callable and call it, so the files
go through `SafeUnpickler`, which resolves only what a numpy array needs; anything else is
refused before it is imported.
"""
from __future__ import annotations

import math
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, replace
from typing import Optional, Tuple
from urllib.error import URLError

import numpy as np
import torch

from . import locate
from .base import DataNotFoundError, DataSplits, DatasetInfo, TensorDataset, register_dataset
from .download import download_file, safe_extract


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a class or function outside the numpy-array allow-list."""


def _numpy_core():
    # numpy 2 renamed numpy.core to numpy._core; importing the old name warns.
    return getattr(np, "_core", None) or np.core


def _latin1_encode(text, encoding="latin1"):
    # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(text, "latin1"); only that
    # codec is accepted, so the call can do nothing but rebuild the bytes.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _NdarrayToken:
    """What a pickle gets for ``numpy.ndarray``: usable only as ``_reconstruct``'s subtype.
    Calling ``numpy.ndarray(shape)`` itself would hand out uninitialised memory of any
    declared size (a 236-byte file could ask for 1 TiB)."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("refusing to call numpy.ndarray directly (it allocates uninitialised "
                                "memory of the declared size); a CIFAR batch holds pickled arrays")


_NDARRAY = _NdarrayToken()


def _declared_bytes(shape, dtype) -> int:
    try:
        dims = [int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,))]
        itemsize = np.dtype(dtype).itemsize if not isinstance(dtype, bytes) else np.dtype(dtype.decode("latin1")).itemsize
    except (TypeError, ValueError, OverflowError):
        raise UnsafePickleError(f"an array with shape {shape!r} and dtype {dtype!r}") from None
    if any(d < 0 for d in dims):
        raise UnsafePickleError(f"an array with negative shape {tuple(dims)}")
    return math.prod(dims) * max(1, itemsize)


def _allowed(limit: int):
    """The allow-list; ``limit`` (the file's size) bounds every array declared in it."""
    core = _numpy_core()
    reconstruct = core.multiarray._reconstruct
    frombuffer = core.numeric._frombuffer

    def bounded_reconstruct(subtype, shape, dtype):
        if subtype is not _NDARRAY:
            raise UnsafePickleError(f"refusing to reconstruct an array of type {subtype!r}")
        if _declared_bytes(shape, dtype) > limit:
            raise ValueError(f"it declares an array of {_declared_bytes(shape, dtype):,} bytes in a "
                             f"file of {limit:,} bytes")
        return reconstruct(np.ndarray, shape, dtype)

    return {
        # numpy arrays as written by numpy 1.x (numpy.core) and 2.x (numpy._core)
        ("numpy.core.multiarray", "_reconstruct"): bounded_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): bounded_reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
        # protocol 5 (Python 3.14's default) rebuilds contiguous arrays from a buffer (its own
        # bytes: the size is bounded by the file)
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        # bytes in Python 3 pickles of protocol <= 2
        ("_codecs", "encode"): _latin1_encode,
    }


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists, dicts, numbers and strings only, and no
    array larger than ``limit`` bytes (the file's size: the data must be in the file)."""

    def __init__(self, file, *args, limit: int = 2**40, **kwargs):
        super().__init__(file, *args, **kwargs)
        self.allowed = _allowed(limit)

    def find_class(self, module: str, name: str):
        allowed = self.allowed
        if (module, name) not in allowed:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: this file may only contain numpy arrays, "
                "lists, dicts, numbers and strings (loading other objects could run code)"
            )
        return allowed[(module, name)]


def safe_load(path: str):
    """Unpickle ``path`` with `SafeUnpickler` (``encoding='bytes'``, like the official loader)."""
    with open(path, "rb") as fh:
        try:
            return SafeUnpickler(fh, encoding="bytes", limit=os.fstat(fh.fileno()).st_size).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, MemoryError, OverflowError) as err:
            raise ValueError(f"{path}: not a readable CIFAR batch ({err})") from None


@dataclass(frozen=True)
class CifarSource:
    info: DatasetInfo
    url: str
    md5: str
    folder: str  # the batches folder inside the archive
    train: Tuple[str, ...]
    test: str
    label_key: str
    how_to_get: str


SOURCES = {
    "cifar10": CifarSource(
        info=DatasetInfo("cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465),
                         (0.2470, 0.2435, 0.2616)),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        label_key="labels",
        how_to_get="  - without internet, make a copy from the shared JPEG archive: "
                   "python3 make_cifar10.py FOLDER (in shared/data/cifar10/; needs numpy and "
                   "Pillow), then pass --data-dir FOLDER\n",
    ),
    "cifar100": CifarSource(
        info=DatasetInfo("cifar100", 100, 3, (32, 32), (0.5071, 0.4865, 0.4409),
                         (0.2673, 0.2564, 0.2762)),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test="test",
        label_key="fine_labels",
        how_to_get="",
    ),
}


def _field(batch, key: str, path: str):
    # Official (Python 2) batches have bytes keys under encoding='bytes'; re-pickled ones str.
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR batch must be a dict, got {type(batch).__name__}")
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise ValueError(f"{path}: CIFAR batch has no {key!r} entry (keys: {list(batch)})")


def read_batch(path: str, label_key: str, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read one python batch file: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    batch = safe_load(path)
    data = _field(batch, "data", path)
    labels = np.asarray(_field(batch, label_key, path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be a uint8 array (N, 3072), got "
                         f"{getattr(data, 'dtype', type(data).__name__)} "
                         f"{getattr(data, 'shape', '')}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must hold {len(data)} integers, got "
                         f"{labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must lie in 0..{num_classes - 1}, got "
                         f"{labels.min()}..{labels.max()}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _batches_folder(source: CifarSource, folder: str) -> Optional[str]:
    """``folder`` itself or its ``cifar-10-batches-py``-style child, if it holds the batches."""
    for path in (folder, os.path.join(folder, source.folder)):
        names = source.train + (source.test,)
        if all(os.path.isfile(os.path.join(path, n)) for n in names):
            return path
    return None


def _download(source: CifarSource, target: str) -> None:
    """Download and unpack the archive so that ``target/<batches folder>`` appears at once."""
    os.makedirs(target, exist_ok=True)
    archive = os.path.join(target, os.path.basename(source.url))
    if not os.path.isfile(archive):
        download_file(source.url, archive, source.md5)
    staging = tempfile.mkdtemp(dir=target, prefix=".extract-")
    try:
        safe_extract(archive, staging)
        final = os.path.join(target, source.folder)
        if os.path.isdir(final):  # an earlier incomplete copy
            shutil.rmtree(final)
        os.replace(os.path.join(staging, source.folder), final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    os.remove(archive)


def _not_found(name, source, cands, reason, target) -> DataNotFoundError:
    return DataNotFoundError(
        f"{name}: data not found. Looked in:\n{locate.describe(cands)}\n{reason}\n"
        f"To provide the data, do one of:\n{source.how_to_get}"
        f"  - pass the folder holding {source.folder}/ (or that folder itself) as --data-dir "
        f"FOLDER (data_dir=FOLDER in Python), or set {locate.ENV_VAR}=FOLDER\n"
        f"  - run with internet access once: {source.url} is downloaded into {target}"
    )


def load_cifar(name: str, data_dir: Optional[str] = None, download: bool = True) -> DataSplits:
    """Find (or download) and read the python batches of ``cifar10`` or ``cifar100``."""
    source = SOURCES[name]
    found, cands = locate.find(name, data_dir, (name,),
                               lambda d: _batches_folder(source, d) is not None)
    if found is None:
        target = locate.download_dir(name, data_dir)
        if not download:
            raise _not_found(name, source, cands, "Downloading was disabled (download=False).",
                             target)
        try:
            with locate.created_only_on_success(target):
                _download(source, target)
        except (URLError, OSError) as err:
            raise _not_found(name, source, cands, f"Download of {source.url} failed: {err}",
                             target) from err
        found = target
    folder = _batches_folder(source, found)
    info = replace(source.info)
    parts = [read_batch(os.path.join(folder, n), source.label_key, info.num_classes)
             for n in source.train]
    train = TensorDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = TensorDataset(*read_batch(os.path.join(folder, source.test), source.label_key,
                                     info.num_classes))
    return DataSplits(train=train, test=test, info=info)


@register_dataset("cifar10", augment_by_default=True)
def cifar10(data_dir: Optional[str] = None, download: bool = True) -> DataSplits:
    """CIFAR-10: 50,000 / 10,000 colour 32x32 images of 10 classes."""
    return load_cifar("cifar10", data_dir, download)


@register_dataset("cifar100", augment_by_default=True)
def cifar100(data_dir: Optional[str] = None, download: bool = True) -> DataSplits:
    """CIFAR-100: 50,000 / 10,000 colour 32x32 images of 100 fine classes."""
    return load_cifar("cifar100", data_dir, download)
