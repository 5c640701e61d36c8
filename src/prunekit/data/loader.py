"""Batches from an in-memory (or lazily decoded) dataset, with tensor-side augmentation.

No DataLoader, no worker processes: on 2 cores, indexing a uint8 tensor and normalising a
batch in the main process is faster than shipping batches between processes. Batch order and
augmentation draw from a `torch.Generator` seeded by (seed, epoch) only, so epoch ``e`` is
the same whether a run gets there directly or resumes from a checkpoint.

On an accelerator (issue #14 B) the uint8 dataset is copied to the device once
(``Loader.on_device``, which ``fit`` and ``evaluate`` call), and every batch is gathered,
padded, cropped, flipped and normalised there: per batch only its indices and the crop
offsets (a few hundred bytes) cross to the device, not the images. The random numbers are
still drawn on the CPU from the (seed, epoch) generator and then moved, so a batch is the
same on every device and the same as before this existed.
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from .base import DatasetInfo


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator whose stream depends only on ``(seed, epoch)``.

    Hashing (rather than ``seed + epoch``) keeps seed 1 epoch 0 apart from seed 0 epoch 1.
    """
    digest = hashlib.sha256(f"prunekit-loader:{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def random_crop_flip(images: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the original size at a random offset, and flip
    half of the images horizontally; one gather for the whole batch.

    ``images``: (B, C, H, W) of any dtype. Padding uses zeros in the stored (uint8) values,
    i.e. black, as torchvision's RandomCrop(padding=p) does before normalisation.
    """
    b, _, h, w = images.shape
    if b == 0:
        return images
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    # Drawn on the CPU generator (the same numbers on every device), computed where the images are.
    top = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(device)
    rows = top[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = left[:, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indices split by a slice put their dimensions first: result is (B, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def normalize(images: torch.Tensor, mean: Tuple[float, ...], std: Tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, on the images' device."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.to(torch.float32).div_(255.0) - m).div_(s)


class Loader:
    """Iterates over a dataset in batches of normalised float32 images and int64 labels.

    ``dataset`` is a `TensorDataset` or any object with ``__len__``, ``.labels`` and
    ``images_at(indices) -> uint8 (B, C, H, W)`` (e.g. the lazy `imagefolder` dataset).

    Epochs: ``set_epoch(e)`` fixes the order (and augmentation) of the next pass to epoch
    ``e``. Without it, each new pass moves on to the next epoch, like a shuffling DataLoader,
    so a plain ``for epoch ...: for x, y in loader`` loop does not repeat one order.

    Device: batches come out on ``device`` (default: where the dataset's tensors are, the
    CPU). ``on_device(d)`` is this loader yielding its batches on ``d``, with a
    `TensorDataset` copied there once (cached, so later calls reuse the copy) and the
    augmentation done there; the batches are the same values as on the CPU.
    """

    def __init__(self, dataset, info: DatasetInfo, batch_size: int = 128, shuffle: bool = True,
                 augment: bool = False, seed: int = 0, drop_last: bool = False,
                 padding: Optional[int] = None, device=None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not hasattr(dataset, "images_at") or not hasattr(dataset, "labels"):
            raise ValueError(
                "dataset must be a TensorDataset or have .labels and images_at(indices), got "
                f"{type(dataset).__name__}"
            )
        self.dataset = dataset
        self.info = info
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        # Crop padding: 4 for 32x32 (the standard CIFAR recipe), scaled with the image size.
        self.padding = padding if padding is not None else max(1, info.image_size[0] // 8)
        self.epoch = 0  # the epoch the next pass will use
        self._copies: Dict[str, object] = {}  # device -> the dataset copied there (on_device)
        self.device = _data_device(dataset)
        if device is not None:
            self.device = _canonical(device)
            self.dataset = self._dataset_on(self.device)

    def _dataset_on(self, device: torch.device):
        """The dataset with its tensors on ``device``, copied there at most once per loader
        (a lazily decoded dataset stays where it is: its batches are moved after decoding)."""
        if not hasattr(self.dataset, "to") or _data_device(self.dataset) == device:
            return self.dataset
        key = str(device)
        if key not in self._copies:
            self._copies[key] = self.dataset.to(device)
        return self._copies[key]

    def on_device(self, device) -> "Loader":
        """This loader with its batches on ``device``: ``self`` when they already are, else a
        shallow copy (same order, augmentation and epoch) over the dataset copied to ``device``
        once. ``fit`` and ``evaluate`` call it, so the images cross to a GPU once per run, not
        once per batch."""
        device = _canonical(device)
        if device == self.device:
            return self
        view = copy.copy(self)
        view.dataset = self._dataset_on(device)
        view.device = device
        return view

    @property
    def num_samples(self) -> int:
        """Samples in the dataset (a ``drop_last`` pass sees fewer)."""
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``: its order depends only on (seed, epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches in one pass."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        gen = epoch_generator(self.seed, epoch)  # a CPU generator: the same stream on any device
        n = self.num_samples
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(_data_device(self.dataset))  # one copy per epoch, not one per batch
        labels = self.dataset.labels
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.dataset.images_at(idx).to(self.device, non_blocking=True)
            if self.augment:
                images = random_crop_flip(images, self.padding, gen)
            yield normalize(images, self.info.mean, self.info.std), labels[idx].to(self.device, non_blocking=True)

    def __repr__(self) -> str:
        return (f"Loader({self.info.name}, samples={self.num_samples}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"augment={self.augment}, seed={self.seed}, device={self.device})")


def _canonical(device) -> torch.device:
    """``cuda`` and ``cuda:N`` of the current GPU are one device (one cached copy, not two)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _data_device(dataset) -> torch.device:
    """Where a dataset's tensors are: a `TensorDataset`'s device, the CPU for a lazily decoded one."""
    return torch.device(getattr(dataset, "device", "cpu"))
