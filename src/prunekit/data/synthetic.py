"""A small, deterministic, learnable dataset for tests that must not touch the disk.

Ten classes; each class is a fixed random template (a black-and-white 7x7 pattern blown up to
28x28 in 4x4 blocks) and every sample is its class's template plus Gaussian pixel noise. The
classes are far apart relative to the noise: in one epoch at batch size 128, LeNet-300-100
(SGD or Adam) and LeNet-5 with Adam reach about 100% test accuracy, a linear model too;
LeNet-5 with plain SGD needs a few epochs to leave its initial plateau.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import DataSplits, DatasetInfo, TensorDataset, register_dataset

NUM_CLASSES = 10
IMAGE_SIZE = 28
TRAIN_SIZE = 2048
TEST_SIZE = 512
SEED = 20240601  # fixed: the dataset is part of the test fixtures
NOISE_STD = 40.0  # in pixel units (0..255)


def _templates(gen: torch.Generator) -> torch.Tensor:
    # High contrast (0 or 255 per block) makes the class signal large from the first step.
    coarse = (torch.rand(NUM_CLASSES, 1, 7, 7, generator=gen) < 0.5).float()
    return F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="nearest") * 255.0


def _samples(templates: torch.Tensor, n: int, gen: torch.Generator) -> TensorDataset:
    # Balanced classes in a shuffled order.
    labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=gen)]
    noise = torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * NOISE_STD
    images = (templates[labels] + noise).round().clamp(0, 255).to(torch.uint8)
    return TensorDataset(images, labels.long())


def make_synthetic() -> DataSplits:
    """Build the synthetic dataset (2,048 train / 512 test, 1x28x28, 10 classes)."""
    gen = torch.Generator().manual_seed(SEED)
    templates = _templates(gen)
    train = _samples(templates, TRAIN_SIZE, gen)
    test = _samples(templates, TEST_SIZE, gen)
    pixels = train.images.double() / 255.0
    info = DatasetInfo("synthetic", NUM_CLASSES, 1, (IMAGE_SIZE, IMAGE_SIZE),
                       (round(pixels.mean().item(), 4),), (round(pixels.std().item(), 4),))
    return DataSplits(train=train, test=test, info=info)


@register_dataset("synthetic")
def synthetic(data_dir: Optional[str] = None, download: bool = True) -> DataSplits:
    """The synthetic dataset; ``data_dir`` and ``download`` are ignored (nothing on disk)."""
    return make_synthetic()
