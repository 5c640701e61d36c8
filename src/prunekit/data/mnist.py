"""MNIST and Fashion-MNIST: four IDX files each, found locally or downloaded with MD5 checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple
from urllib.error import URLError

import torch

from . import locate
from .base import DataNotFoundError, DataSplits, DatasetInfo, TensorDataset, register_dataset
from .download import download_file
from .idx import read_idx

# The four files, without the .gz that the official copies carry.
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxSource:
    """Everything that differs between MNIST-like datasets."""

    info: DatasetInfo
    base_url: str
    md5: Dict[str, str]  # official .gz file name -> MD5
    subfolders: Tuple[str, ...]  # names the dataset may have inside data_dir / $PRUNEKIT_DATA
    how_to_get: str  # dataset-specific advice for the not-found error


SOURCES = {
    "fashion_mnist": IdxSource(
        info=DatasetInfo("fashion_mnist", 10, 1, (28, 28), (0.2860,), (0.3530,)),
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        subfolders=("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
        how_to_get="  - on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
                   "(installs /usr/share/datasets/fashion-mnist)\n",
    ),
    "mnist": IdxSource(
        info=DatasetInfo("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,)),
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        subfolders=("mnist", "MNIST", "MNIST/raw"),
        how_to_get="",
    ),
}


def _file_in(folder: str, stem: str) -> Optional[str]:
    """The path of ``stem`` or ``stem.gz`` in ``folder``, whichever exists (plain first)."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def has_idx_files(folder: str) -> bool:
    """True when ``folder`` holds all four MNIST-style IDX files (gzipped or not)."""
    return all(_file_in(folder, stem) for stem in FILES)


def _download(source: IdxSource, folder: str) -> None:
    for name, md5 in source.md5.items():
        if _file_in(folder, name[: -len(".gz")]) is None:
            download_file(source.base_url + name, os.path.join(folder, name), md5)


def _not_found(name: str, source: IdxSource, cands, reason: str, folder: str) -> DataNotFoundError:
    files = ", ".join(source.md5)
    return DataNotFoundError(
        f"{name}: data not found. Looked in:\n{locate.describe(cands)}\n{reason}\n"
        f"To provide the data, do one of:\n{source.how_to_get}"
        f"  - put {files} (gzipped or not) in a folder and pass it as --data-dir FOLDER "
        f"(data_dir=FOLDER in Python), or set {locate.ENV_VAR}=FOLDER\n"
        f"  - run with internet access once: the files are downloaded from {source.base_url} "
        f"into {folder}"
    )


def load_idx_dataset(name: str, data_dir: Optional[str] = None, download: bool = True) -> DataSplits:
    """Find (or download) and read the IDX files of MNIST-like dataset ``name``."""
    source = SOURCES[name]
    folder, cands = locate.find(name, data_dir, source.subfolders, has_idx_files)
    if folder is None:
        target = locate.download_dir(name, data_dir)
        if not download:
            raise _not_found(name, source, cands, "Downloading was disabled (download=False).",
                             target)
        try:
            with locate.created_only_on_success(target):
                _download(source, target)
        except (URLError, OSError) as err:  # offline, DNS failure, refused, timeout...
            raise _not_found(name, source, cands,
                             f"Download from {source.base_url} failed: {err}", target) from err
        folder = target

    def read(stem: str) -> torch.Tensor:
        return read_idx(_file_in(folder, stem))

    train_x, train_y, test_x, test_y = (read(stem) for stem in FILES)
    info = replace(source.info)  # a copy: callers may not change the module's constant
    return DataSplits(
        train=_as_dataset(train_x, train_y, folder, info.num_classes),
        test=_as_dataset(test_x, test_y, folder, info.num_classes),
        info=info,
    )


def _as_dataset(images: torch.Tensor, labels: torch.Tensor, folder: str,
                num_classes: int) -> TensorDataset:
    if images.dim() != 3 or images.dtype != torch.uint8 or labels.dim() != 1:
        raise ValueError(
            f"{folder}: expected uint8 images (N, H, W) and labels (N,), got "
            f"{images.dtype} {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{folder}: labels must lie in 0..{num_classes - 1}, got "
                         f"{int(labels.min())}..{int(labels.max())}")
    return TensorDataset(images.unsqueeze(1).contiguous(), labels)


@register_dataset("fashion_mnist")
def fashion_mnist(data_dir: Optional[str] = None, download: bool = True) -> DataSplits:
    """Fashion-MNIST: 60,000 / 10,000 grey 28x28 images of 10 clothing classes."""
    return load_idx_dataset("fashion_mnist", data_dir, download)


@register_dataset("mnist")
def mnist(data_dir: Optional[str] = None, download: bool = True) -> DataSplits:
    """MNIST: 60,000 / 10,000 grey 28x28 images of handwritten digits."""
    return load_idx_dataset("mnist", data_dir, download)
