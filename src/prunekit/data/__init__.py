"""Datasets as in-memory tensors, and a seeded, resumable batch loader.

    import prunekit.data as D
    train, test, info = D.loaders("fashion_mnist", batch_size=128)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        for x, y in train: ...

Registered datasets: fashion_mnist, mnist, cifar10, cifar100, imagefolder, synthetic.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from .base import (
    DATASETS,
    DataNotFoundError,
    DataSplits,
    DatasetInfo,
    TensorDataset,
    augment_by_default,
    register_dataset,
)
from .loader import Loader
from .files import FileLoader

# Importing these modules registers their datasets.
from . import cifar, imagefolder, mnist, synthetic  # noqa: E402,F401  (registration)
from .cifar import UnsafePickleError
from .download import ChecksumError
from .imagefolder import ImageFolderDataset

__all__ = [
    "DATASETS", "get", "names", "load", "loaders", "Loader", "FileLoader", "make_loaders",
    "DatasetInfo", "TensorDataset", "DataSplits", "ImageFolderDataset",
    "DataNotFoundError", "ChecksumError", "UnsafePickleError",
    "register_dataset", "augment_by_default",
]


def get(name: str):
    """The builder registered as ``name``: ``builder(data_dir, download, **options)``.

    An unknown name raises a KeyError that lists the valid names.
    """
    return DATASETS.get(name)


def names() -> List[str]:
    """Names of all registered datasets, sorted."""
    return DATASETS.names()


def load(name: str, data_dir: Optional[str] = None, download: bool = True,
         **options) -> DataSplits:
    """Build dataset ``name`` (train and test splits plus its `DatasetInfo`).

    ``options`` go to the builder (e.g. ``image_size=`` for ``imagefolder``).
    Raises `DataNotFoundError` when the files are nowhere and cannot be downloaded.
    """
    return get(name)(data_dir, download, **options)


def make_loaders(train, test, info: DatasetInfo, batch_size: int, test_batch_size: int,
                 seed: int = 0, augment: Optional[bool] = None, workers: Optional[int] = None,
                 name: Optional[str] = None):
    """Train and test loaders over two datasets: :class:`FileLoader` (a ``DataLoader`` with
    ``workers`` processes, ImageNet transforms, ``augment`` None meaning RandomResizedCrop +
    flip) when ``workers`` is given and the datasets are files, else the in-process
    :class:`Loader` (``augment`` None: the dataset's standard recipe)."""
    if workers is not None and hasattr(train, "paths"):
        return (FileLoader(train, info, batch_size=batch_size, train=True, workers=workers, seed=seed,
                           augment=True if augment is None else augment),
                FileLoader(test, info, batch_size=test_batch_size, train=False, workers=workers,
                           seed=seed), info)
    if augment is None:
        augment = augment_by_default(name or info.name)
    return (Loader(train, info, batch_size=batch_size, shuffle=True, augment=augment, seed=seed),
            Loader(test, info, batch_size=test_batch_size, shuffle=False, augment=False, seed=seed),
            info)


def loaders(name: str, batch_size: int = 128, test_batch_size: int = 1000,
            data_dir: Optional[str] = None, seed: int = 0, train_subset: Optional[int] = None,
            augment: Optional[bool] = None, download: bool = True, workers: Optional[int] = None,
            **options) -> Tuple[Loader, Loader, DatasetInfo]:
    """Train and test loaders for dataset ``name``, plus its `DatasetInfo`.

    The train loader shuffles (seeded by ``seed`` and the epoch); ``train_subset=n`` keeps
    a seeded class-stratified subset of n training samples. ``augment=None`` uses the
    dataset's standard recipe: crop + flip for cifar10/cifar100, none for the others. The
    test loader neither shuffles nor augments. ``workers=N`` (file datasets: imagefolder)
    reads through :class:`FileLoader`: a DataLoader with N worker processes (0: in this
    process) and the ImageNet transforms (augment None: RandomResizedCrop + flip).
    """
    splits = load(name, data_dir=data_dir, download=download, **options)
    train = splits.train
    if train_subset is not None:
        train = train.subset(train_subset, seed)
    return make_loaders(train, splits.test, splits.info, batch_size, test_batch_size, seed=seed,
                        augment=augment, workers=workers, name=name)
