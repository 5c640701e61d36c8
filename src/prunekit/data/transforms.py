"""The standard ImageNet transforms on one uint8 (C, H, W) image tensor, reproducibly seeded.

- training: ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` + horizontal flip
  with probability 1/2;
- evaluation: resize so the shorter side is ``resize_size`` (256 for 224), center crop
  ``size``.

With ``torchvision.transforms.v2`` importable they are torchvision's own (``backend="auto"``
or ``"torchvision"``). Otherwise (torchvision absent, or a wheel whose C operators do not load
next to this torch) a plain-torch implementation of the same algorithm is used: the same
10 tries at an area/aspect draw and the same center-crop fallback for RandomResizedCrop,
bilinear resizing with antialiasing (``F.interpolate(antialias=True)``, which is what
``v2.Resize`` on tensors does). Both take their randomness from a per-sample
``torch.Generator`` (torchvision's through a forked global RNG seeded from it), so a sample's
augmentation depends only on (seed, epoch, index), whatever the worker that decodes it.
The two backends draw differently, so the same seed gives other crops on the two.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torchvision", "torch")
_V2 = None  # torchvision.transforms.v2, False when it cannot be imported; looked up once


def torchvision_v2():
    """``torchvision.transforms.v2`` or None (absent, or failing to import here)."""
    global _V2
    if _V2 is None:
        try:
            from torchvision.transforms import v2
            _V2 = v2
        except Exception:  # ImportError, or RuntimeError from a wheel's broken C operators
            _V2 = False
    return _V2 or None


def resolve_backend(backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown transform backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "torchvision" if torchvision_v2() is not None else "torch"
    if backend == "torchvision" and torchvision_v2() is None:
        raise ValueError("transform backend 'torchvision' asked for, but torchvision.transforms.v2 "
                         "cannot be imported here; use 'auto' or 'torch'")
    return backend


def resize(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, *size), bilinear with antialiasing."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                        antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_resized_crop_box(height: int, width: int, gen: torch.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's ``RandomResizedCrop.get_params`` chooses them."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=gen)))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(torch.rand((), generator=gen)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    in_ratio = width / height  # fallback: the whole image's central crop within the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[..., top:top + size, left:left + size]


def shorter_side(image: torch.Tensor, side: int) -> Tuple[int, int]:
    h, w = image.shape[-2:]
    if h <= w:
        return side, max(side, int(side * w / h))
    return max(side, int(side * h / w)), side


def train_transform(size: int, backend: str = "auto") -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``f(image, generator)``: RandomResizedCrop(size) + RandomHorizontalFlip()."""
    if resolve_backend(backend) == "torchvision":
        return _TorchvisionTrain(size)
    return _TorchTrain(size)


def eval_transform(size: int, resize_size: Optional[int] = None,
                   backend: str = "auto") -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``f(image, generator)``: shorter side to ``resize_size`` (default size / 0.875), center
    crop ``size``; deterministic (the generator is unused)."""
    resize_size = int(resize_size or round(size / 0.875))
    if resolve_backend(backend) == "torchvision":
        return _TorchvisionEval(size, resize_size)
    return _TorchEval(size, resize_size)


# The transforms are small classes, not closures: DataLoader workers that are not forked
# (forkserver, spawn: prunekit.data.files.WORKER_START, macOS, Python 3.14's default) receive
# them pickled. torchvision's pipeline is built in the process that uses it.

class _TorchTrain:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], gen)
        out = resize(image[..., top:top + h, left:left + w], (self.size, self.size))
        if float(torch.rand((), generator=gen)) < 0.5:
            out = out.flip(-1)
        return out.contiguous()


class _TorchEval:
    def __init__(self, size: int, resize_size: int):
        self.size, self.resize_size = size, resize_size

    def __call__(self, image: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        return center_crop(resize(image, shorter_side(image, self.resize_size)), self.size).contiguous()


class _Torchvision:
    """torchvision's v2 pipeline from ``build()``, made on first use in each process."""

    def __init__(self):
        self._pipeline = None

    def __getstate__(self):
        return {**self.__dict__, "_pipeline": None}

    def pipeline(self):
        if self._pipeline is None:
            self._pipeline = self.build(torchvision_v2())
        return self._pipeline


class _TorchvisionTrain(_Torchvision):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def build(self, v2):
        return v2.Compose([v2.RandomResizedCrop(self.size, antialias=True), v2.RandomHorizontalFlip()])

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # torchvision draws from the global RNG: fork it, seeded from the sample's generator
        seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.pipeline()(image).contiguous()


class _TorchvisionEval(_Torchvision):
    def __init__(self, size: int, resize_size: int):
        super().__init__()
        self.size, self.resize_size = size, resize_size

    def build(self, v2):
        return v2.Compose([v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.size)])

    def __call__(self, image: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.pipeline()(image).contiguous()
