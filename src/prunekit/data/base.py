"""Types shared by every dataset: what a dataset is, what a builder returns, the registry.

A dataset lives in memory as uint8 images (N, C, H, W) and int64 labels (N,); conversion to
float and normalisation happen per batch in `Loader`, so a 60,000-image set costs 47 MB, not
188 MB. Lazily decoded datasets (`imagefolder`) follow the same protocol: ``__len__``,
``.labels`` and ``images_at(indices)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from prunekit.registry import Registry

#: name -> builder(data_dir: str | None, download: bool, **options) -> DataSplits
DATASETS: Registry[Callable[..., "DataSplits"]] = Registry("dataset")

# Datasets whose standard training recipe uses random crop + flip (`loaders(augment=None)`).
_AUGMENT_BY_DEFAULT: Dict[str, bool] = {}


def register_dataset(name: str, augment_by_default: bool = False):
    """Decorator: register a builder under ``name`` and record its default augmentation."""

    def add(builder):
        DATASETS.register(name)(builder)
        _AUGMENT_BY_DEFAULT[name] = augment_by_default
        return builder

    return add


def augment_by_default(name: str) -> bool:
    """Whether dataset ``name`` is trained with crop + flip augmentation by default."""
    DATASETS.get(name)  # an unknown name is a KeyError listing the valid ones
    return _AUGMENT_BY_DEFAULT.get(name, False)


class DataNotFoundError(FileNotFoundError):
    """The dataset's files were found nowhere and could not be downloaded.

    The message says where the loader looked and how to provide the data.
    """


@dataclass
class DatasetInfo:
    """What a model and a loader need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self):
        # Tuples whatever came in (YAML gives lists), so infos compare and print alike.
        self.image_size = tuple(int(v) for v in self.image_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"dataset {self.name!r}: mean and std need one value per channel "
                f"({self.in_channels}), got {len(self.mean)} and {len(self.std)}"
            )


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Pick ``n`` indices keeping each class's share of ``labels`` (seeded, sorted).

    Each class gets ``n * count / total`` samples rounded down; the samples left over go to
    the classes with the largest remainders (ties to the lower class id), so the result is
    exact and deterministic. Within a class the samples are chosen at random.
    """
    total = int(labels.numel())
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"subset size must be a positive integer, got {n!r}")
    if n > total:
        raise ValueError(f"subset size {n} is larger than the dataset ({total} samples)")
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    leftover = n - int(quota.sum())
    # Largest remainder first; a stable sort keeps lower class ids first among ties.
    order = torch.sort(exact - quota, descending=True, stable=True).indices
    quota[order[:leftover]] += 1

    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for cls, k in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.sort(torch.cat(picked)).values


@dataclass
class TensorDataset:
    """An in-memory dataset: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                "images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(
                "labels must be an int64 tensor of shape (N,), got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels; they must match"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        """Where the tensors are (the CPU unless `to` moved a copy)."""
        return self.images.device

    def to(self, device) -> "TensorDataset":
        """This dataset with its tensors on ``device`` (a new object; ``self`` if already
        there). uint8 images: CIFAR-10's 50,000 cost 147 MB of device memory."""
        device = torch.device(device)
        if self.images.device == device and self.labels.device == device:
            return self
        return TensorDataset(self.images.to(device), self.labels.to(device))

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``indices`` (the protocol `Loader` reads batches through)."""
        return self.images[indices]

    def subset(self, n: int, seed: int) -> "TensorDataset":
        """A seeded, class-stratified subset of ``n`` samples (see `stratified_indices`),
        on this dataset's device; the choice is made on the CPU, so it is the same anywhere."""
        idx = stratified_indices(self.labels.cpu(), n, seed).to(self.device)
        return TensorDataset(self.images[idx], self.labels[idx])


@dataclass
class DataSplits:
    """What a dataset builder returns: the two splits and their `DatasetInfo`."""

    train: TensorDataset
    test: TensorDataset
    info: DatasetInfo
