"""Class-per-folder image datasets (ImageNet layout), decoded lazily batch by batch.

Layout: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg`` (``test`` is accepted
for ``val``). Class ids follow the sorted names of the train folders. Images are decoded only
when a batch asks for them, resized so the shorter side is ``resize_size`` and
center-cropped to ``image_size`` (the usual evaluation transform); Pillow is imported only
here, and only when this dataset is used.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch

from . import locate
from .base import DataNotFoundError, DataSplits, DatasetInfo, register_dataset, stratified_indices

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
TEST_SPLITS = ("val", "test")


def _pillow():
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "the imagefolder dataset needs Pillow to decode images: pip install Pillow "
            "(or pip install 'prunekit[images]')"
        ) from err
    return Image


class ImageFolderDataset:
    """A lazily decoded image dataset with the `TensorDataset` reading protocol.

    ``len(ds)``, ``ds.labels`` (int64) and ``ds.images_at(indices)`` -> uint8
    (B, 3, image_size, image_size); ``subset(n, seed)`` as for `TensorDataset`.
    """

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, classes: Sequence[str],
                 image_size: int = 224, resize_size: Optional[int] = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels; they must match")
        self.paths = list(paths)
        self.labels = labels.long()
        self.classes = list(classes)
        self.image_size = int(image_size)
        # 256 for 224: the standard ImageNet ratio of 0.875 between crop and resize.
        self.resize_size = int(resize_size or round(self.image_size / 0.875))
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be at least image_size "
                             f"({self.image_size})")

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, path: str) -> torch.Tensor:
        """Decode one file to uint8 (3, S, S): RGB, shorter side resized, center crop."""
        image_mod = _pillow()
        try:
            with image_mod.open(path) as img:
                return self._crop(image_mod, img.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:  # what Pillow raises on a bad file
            raise ValueError(f"{path}: cannot decode this image ({type(err).__name__}: {err}); remove it, or "
                             "read the folder with DataLoader workers (data.workers / loaders(workers=N): "
                             "prunekit.data.FileLoader), which skip and report unreadable files") from err

    def _crop(self, image_mod, img) -> torch.Tensor:
        w, h = img.size
        scale = self.resize_size / min(w, h)
        new_w, new_h = max(self.resize_size, round(w * scale)), max(self.resize_size, round(h * scale))
        img = img.resize((new_w, new_h), image_mod.BILINEAR)
        left, top = (new_w - self.image_size) // 2, (new_h - self.image_size) // 2
        img = img.crop((left, top, left + self.image_size, top + self.image_size))
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return data.view(self.image_size, self.image_size, 3).permute(2, 0, 1)

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode the images at ``indices`` into one uint8 batch."""
        size = (0, 3, self.image_size, self.image_size)
        images = [self.load_image(self.paths[i]) for i in indices.tolist()]
        return torch.stack(images) if images else torch.empty(size, dtype=torch.uint8)

    def subset(self, n: int, seed: int) -> "ImageFolderDataset":
        """A seeded, class-stratified subset of ``n`` images."""
        idx = stratified_indices(self.labels, n, seed)
        return ImageFolderDataset([self.paths[i] for i in idx.tolist()], self.labels[idx],
                                  self.classes, self.image_size, self.resize_size)


def _list_split(folder: str, classes: List[str]) -> tuple[List[str], torch.Tensor]:
    paths, labels = [], []
    present = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"{folder}: class folders {unknown} do not exist in the train split")
    for cls in present:
        for dirpath, _, files in sorted(os.walk(os.path.join(folder, cls), followlinks=True)):
            for name in sorted(files):
                if name.lower().endswith(EXTENSIONS):
                    paths.append(os.path.join(dirpath, name))
                    labels.append(classes.index(cls))
    if not paths:
        raise ValueError(f"{folder}: no images with extensions {', '.join(EXTENSIONS)}")
    return paths, torch.tensor(labels, dtype=torch.int64)


def _root(data_dir: Optional[str]) -> str:
    """The folder holding train/ and val/: ``data_dir``, else ``$PRUNEKIT_DATA``[/imagefolder]."""
    tried = []
    roots = [data_dir] if data_dir else []
    env = os.environ.get(locate.ENV_VAR)
    if env:
        roots += [env, os.path.join(env, "imagefolder"), os.path.join(env, "imagenet")]
    for root in roots:
        root = os.path.expanduser(str(root))
        tried.append(root)
        if os.path.isdir(os.path.join(root, "train")) and any(
                os.path.isdir(os.path.join(root, s)) for s in TEST_SPLITS):
            return root
    where = ", ".join(tried) if tried else f"nowhere: no data_dir given and ${locate.ENV_VAR} unset"
    raise DataNotFoundError(
        f"imagefolder: no folder with train/<class>/ and val/<class>/ (or test/<class>/) found; "
        f"looked in {where}. Pass the dataset root as --data-dir FOLDER (data_dir=FOLDER in "
        f"Python) or set {locate.ENV_VAR}=FOLDER; there is no download for this dataset"
    )


def load_imagefolder(data_dir: Optional[str] = None, image_size: int = 224,
                     resize_size: Optional[int] = None) -> DataSplits:
    """Index a class-per-folder dataset; images are decoded later, one batch at a time."""
    _pillow()  # fail now, not at the first batch
    root = _root(data_dir)
    train_dir = os.path.join(root, "train")
    test_dir = next(os.path.join(root, s) for s in TEST_SPLITS
                    if os.path.isdir(os.path.join(root, s)))
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise ValueError(f"{train_dir}: no class folders (expected train/<class>/<image files>)")
    splits = []
    for folder in (train_dir, test_dir):
        paths, labels = _list_split(folder, classes)
        splits.append(ImageFolderDataset(paths, labels, classes, image_size, resize_size))
    info = DatasetInfo("imagefolder", len(classes), 3, (int(image_size), int(image_size)),
                       IMAGENET_MEAN, IMAGENET_STD)
    return DataSplits(train=splits[0], test=splits[1], info=info)


@register_dataset("imagefolder")
def imagefolder(data_dir: Optional[str] = None, download: bool = True, image_size: int = 224,
                resize_size: Optional[int] = None) -> DataSplits:
    """Class-per-folder images (ImageNet layout); ``download`` is ignored (no source)."""
    return load_imagefolder(data_dir, image_size, resize_size)
