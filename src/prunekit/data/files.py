"""File-backed datasets at scale: ``torch.utils.data.DataLoader`` with worker processes.

    train = FileLoader(splits.train, info, batch_size=256, train=True, workers=8, seed=0)
    test = FileLoader(splits.test, info, batch_size=500, train=False, workers=8)

For image folders (the ImageNet layout, :mod:`.imagefolder`) too big to hold in memory:

- workers (``workers`` processes; 0 = decode in this process) decode JPEGs with Pillow and
  apply the ImageNet transforms of :mod:`.transforms` (``torchvision.transforms.v2`` when it
  imports, the plain-torch twin otherwise); batches travel as uint8 and are normalised here;
  ``persistent_workers`` keeps the workers between epochs; pinned memory when CUDA is present;
  workers start from the forkserver, not by fork (``WORKER_START``: a fork beside threads can
  hang), importing torch once each per loader;
- order: training batches follow a ``DistributedSampler`` (with one process: ``num_replicas=1``)
  reseeded per epoch by ``set_epoch``; each sample's augmentation is drawn from a generator
  seeded by (seed, epoch, index). Epoch ``e`` is therefore the same batches, crops and flips
  whether a run gets there directly or resumes, with any number of workers;
- under ``torchrun`` (a process group of N ranks) each rank reads only its share
  (``sharded``): global batch ``k`` of a one-process run is the union of the N ranks' batch
  ``k`` (``batch_size`` is the global batch and must be a multiple of N). The sampler pads the
  last samples so every rank takes the same number of steps (as ``DistributedSampler`` does).
  Evaluation splits the samples ``rank, rank + N, ...`` without padding; ``evaluate`` sums them;
- a file that does not decode (corrupt or truncated JPEG, not an image) is *skipped and
  reported*: it is left out of its batch, a warning names it once, and ``skipped`` lists every
  such path (with the reason). Nothing waits on a dead file.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .. import distributed
from .base import DatasetInfo
from .loader import normalize
from .transforms import eval_transform, resolve_backend, train_transform


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    digest = hashlib.sha256(f"prunekit-sample:{int(seed)}:{int(epoch)}:{int(index)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def decode(path: str) -> torch.Tensor:
    """One image file -> uint8 (3, H, W) RGB (Pillow, imported here: only image folders need it)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(h, w, 3).permute(2, 0, 1)


class _Files(Dataset):
    """Items are (index, epoch) keys: -> (uint8 image or None, label, error or None)."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, transform, seed: int):
        self.paths, self.labels, self.transform, self.seed = list(paths), labels, transform, int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Tuple[int, int]):
        index, epoch = key
        path = self.paths[index]
        try:
            image = decode(path)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
            return None, int(self.labels[index]), f"{path}: {type(err).__name__}: {err}"
        return self.transform(image, sample_generator(self.seed, epoch, index)), int(self.labels[index]), None


# How worker processes start. Not "fork": this process has threads by then (gloo's under
# torchrun, the other loader's queue feeders, tqdm's monitor), and a child forked while one of
# them holds an interpreter lock waits on it forever (seen here: a rank's evaluation worker stuck
# in PyOS_AfterFork_Child, the other rank in all_reduce). "forkserver" forks from a clean
# single-threaded server instead; the workers persist, so they start once per loader.
WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None


def _collate(items):
    good = [(x, y) for x, y, err in items if err is None]
    bad = [err for _, _, err in items if err is not None]
    if good:
        images = torch.stack([x for x, _ in good])
        labels = torch.tensor([y for _, y in good], dtype=torch.int64)
    else:
        images, labels = torch.empty((0, 3, 0, 0), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return images, labels, bad


class _Keys(Sampler):
    """Yields ``(index, epoch)`` from a sampler of indices (the epoch rides along to the workers)."""

    def __init__(self, inner: Sampler, epoch_of):
        self.inner, self.epoch_of = inner, epoch_of

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        epoch = self.epoch_of()
        return ((int(i), epoch) for i in self.inner)


class _Stride(Sampler):
    """Indices ``rank, rank + world, ...`` (evaluation: every sample once over the ranks)."""

    def __init__(self, n: int, world: int, rank: int):
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class FileLoader:
    """Normalised float32 batches from a file-backed dataset (``.paths`` and ``.labels``, e.g.
    :class:`prunekit.data.ImageFolderDataset`) through a ``DataLoader`` (see the module doc).

    ``train``: a shuffled (seed, epoch) order and, with ``augment``, RandomResizedCrop + flip;
    else (or without ``augment``) resize + center crop; evaluation loaders keep file order. ``image_size``/``resize_size`` default to the dataset's.
    ``world``/``rank`` default to the process group's (1/0 without one).
    """

    def __init__(self, dataset, info: DatasetInfo, batch_size: int = 256, train: bool = True,
                 workers: int = 0, seed: int = 0, image_size: Optional[int] = None,
                 resize_size: Optional[int] = None, pin_memory: Optional[bool] = None,
                 backend: str = "auto", world: Optional[int] = None, rank: Optional[int] = None,
                 prefetch_factor: int = 2, augment: bool = True):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
        if not hasattr(dataset, "paths") or not hasattr(dataset, "labels"):
            raise ValueError(f"FileLoader needs a dataset of files (.paths, .labels), got {type(dataset).__name__}")
        self.dataset, self.info, self.train, self.seed = dataset, info, bool(train), int(seed)
        self.world = int(world if world is not None else distributed.world_size())
        self.rank = int(rank if rank is not None else distributed.rank())
        # Training loaders shard; evaluation loaders only when asked to (world=...), since
        # evaluate() must then be called on every rank (sharded=True).
        self.sharded = self.world > 1 and (self.train or world is not None)
        if not self.sharded:
            self.world, self.rank = 1, 0
        if self.train and batch_size % self.world:
            raise ValueError(f"batch size {batch_size} cannot be split over {self.world} processes "
                             f"(WORLD_SIZE): use a batch size that is a multiple of {self.world}")
        self.batch_size = batch_size
        self.local_batch = batch_size // self.world if self.train else batch_size
        size = int(image_size or getattr(dataset, "image_size", info.image_size[0]))
        resize_size = resize_size or getattr(dataset, "resize_size", None)
        self.backend = resolve_backend(backend)
        self.augment = bool(augment) and self.train
        transform = (train_transform(size, self.backend) if self.augment
                     else eval_transform(size, resize_size, self.backend))
        self.epoch = 0
        self.skipped: List[str] = []
        self._reported: set = set()
        n = len(dataset)
        if self.train:
            self.sampler = DistributedSampler(range(n), num_replicas=self.world, rank=self.rank,
                                              shuffle=True, seed=self.seed, drop_last=False)
        else:
            self.sampler = _Stride(n, self.world, self.rank)
        self.pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        extra: Dict[str, Any] = {"persistent_workers": True, "prefetch_factor": prefetch_factor,
                                 "multiprocessing_context": WORKER_START} if workers else {}
        self.loader = DataLoader(_Files(dataset.paths, dataset.labels, transform, self.seed),
                                 batch_size=self.local_batch, sampler=_Keys(self.sampler, lambda: self.epoch),
                                 num_workers=workers, collate_fn=_collate, **extra)
        self.workers = workers

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``: order and augmentation depend only on (seed, epoch)."""
        self.epoch = int(epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        """Batches (steps) per pass, the same on every rank."""
        return math.ceil(len(self.sampler) / self.local_batch)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.set_epoch(self.epoch)
        try:
            for images, labels, bad in self.loader:
                for err in bad:
                    self._report(err)
                x = normalize(images, self.info.mean, self.info.std)
                yield (x.pin_memory(), labels.pin_memory()) if self.pin else (x, labels)
        finally:
            self.epoch += 1  # a plain loop without set_epoch moves on, like Loader

    def _report(self, err: str) -> None:
        path = err.split(": ", 1)[0]
        if path in self._reported:
            return
        self._reported.add(path)
        self.skipped.append(err)
        warnings.warn(f"skipped an unreadable image: {err}", RuntimeWarning, stacklevel=3)

    def __repr__(self) -> str:
        return (f"FileLoader({self.info.name}, samples={self.num_samples}, batch_size={self.batch_size}, "
                f"train={self.train}, workers={self.workers}, backend={self.backend}, "
                f"rank={self.rank}/{self.world})")
