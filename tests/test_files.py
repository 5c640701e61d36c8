"""File-backed data through torch's DataLoader: worker processes, (seed, epoch)-determined
batches and augmentation whatever the workers, DistributedSampler shards that add up to the
one-process batch, ImageNet transforms (torchvision.transforms.v2 and the plain-torch twin),
and corrupt files skipped and reported."""
import warnings

import pytest
import torch

import prunekit.data as D
from prunekit.data import transforms as T
from prunekit.data.files import FileLoader


def make_folder(root, per_class=6, classes=("a", "b"), size=(40, 30), corrupt=False):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.jpg", quality=90)
    if corrupt:
        (root / "train" / "a" / "zz_garbage.jpg").write_bytes(b"not a jpeg at all" * 10)
        good = (root / "train" / "b" / "0.jpg").read_bytes()
        (root / "train" / "b" / "zz_truncated.jpg").write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path)


def _loader(folder, **kw):
    splits = D.load("imagefolder", data_dir=str(folder), image_size=16)
    kw.setdefault("batch_size", 4)
    return FileLoader(splits.train, splits.info, **kw)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_batches_depend_on_seed_and_epoch_only_not_on_workers_or_resuming(folder):
    inproc = _loader(folder, workers=0, seed=3)
    pooled = _loader(folder, workers=2, seed=3)
    first = _epoch(inproc, 1)
    assert first[0][0].shape == (4, 3, 16, 16) and first[0][0].dtype == torch.float32
    assert len(first) == len(inproc) == 3
    assert _same(first, _epoch(pooled, 1))           # worker processes: the same batches
    assert _same(_epoch(pooled, 1), first)           # persistent workers, second pass: same
    fresh = _loader(folder, workers=0, seed=3)       # a resumed run jumping to epoch 1
    assert _same(_epoch(fresh, 1), first)
    assert not _same(_epoch(inproc, 2), first)       # another epoch: other order / crops
    assert not _same(_epoch(_loader(folder, workers=0, seed=4), 1), first)


def test_distributed_sampler_shards_add_up_to_the_one_process_batch(folder):
    one = _epoch(_loader(folder, seed=0, augment=False, batch_size=4), 0)
    ranks = [_epoch(_loader(folder, seed=0, augment=False, batch_size=4, world=2, rank=r), 0) for r in (0, 1)]
    assert all(len(r) == len(one) for r in ranks)
    for k, (x, y) in enumerate(one):
        parts = torch.cat([ranks[0][k][0], ranks[1][k][0]])
        assert sorted(parts.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(x.sum((1, 2, 3)).tolist()))
        assert sorted(torch.cat([ranks[0][k][1], ranks[1][k][1]]).tolist()) == sorted(y.tolist())
    with pytest.raises(ValueError, match="batch size 5 cannot be split over 2 processes"):
        _loader(folder, batch_size=5, world=2, rank=0)


def test_corrupt_files_are_skipped_and_reported_never_a_hang(tmp_path):
    make_folder(tmp_path, corrupt=True)
    loader = _loader(tmp_path, workers=2, batch_size=7)
    with pytest.warns(RuntimeWarning, match="skipped an unreadable image"):
        seen = sum(len(y) for _, y in _epoch(loader, 0))
    assert seen == 12  # 14 files, 2 unreadable
    assert len(loader.skipped) == 2
    assert any("zz_garbage.jpg" in s for s in loader.skipped) and any("zz_truncated.jpg" in s for s in loader.skipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once per file, not every epoch
        _epoch(loader, 1)


def test_eval_transforms_of_both_backends_agree_and_fallback_crops_like_torchvision():
    if T.torchvision_v2() is None:
        pytest.skip("torchvision.transforms.v2 not importable")
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 75, 100), generator=g, dtype=torch.uint8)
    a = T.eval_transform(32, backend="torchvision")(image, None)
    b = T.eval_transform(32, backend="torch")(image, None)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == b.dtype == torch.uint8
    assert (a.int() - b.int()).abs().max() <= 1
    # The fallback's crop box follows RandomResizedCrop.get_params' algorithm and bounds.
    for seed in range(50):
        top, left, h, w = T.random_resized_crop_box(75, 100, torch.Generator().manual_seed(seed))
        assert 0 <= top and top + h <= 75 and 0 <= left and left + w <= 100
        assert 0.08 * 7500 * 0.8 <= h * w <= 7500 and 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    out = T.train_transform(16, backend="torch")(image, torch.Generator().manual_seed(1))
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    tv = T.train_transform(16, backend="torchvision")
    assert torch.equal(tv(image, torch.Generator().manual_seed(1)), tv(image, torch.Generator().manual_seed(1)))


def test_without_torchvision_the_plain_torch_transforms_are_used(folder, monkeypatch):
    monkeypatch.setattr(T, "_V2", False)
    loader = _loader(folder)
    assert loader.backend == "torch"
    assert _epoch(loader, 0)[0][0].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="cannot be imported here"):
        _loader(folder, backend="torchvision")


def test_loaders_with_workers_train_a_model_through_fit(folder):
    from prunekit.training import fit

    train, test, info = D.loaders("imagefolder", batch_size=4, test_batch_size=6, data_dir=str(folder),
                                  workers=1, image_size=16)
    assert isinstance(train, FileLoader) and isinstance(test, FileLoader) and train.augment and not test.augment
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    hist = fit(model, train, test, epochs=2, lr=0.01, progress=False, seed=0)
    assert len(hist) == 2 and hist[-1]["test_top1"] is not None
    plain, _, _ = D.loaders("imagefolder", batch_size=4, data_dir=str(folder), image_size=16)
    assert isinstance(plain, D.Loader)  # without workers: the in-process loader as before


def test_in_process_loader_stops_at_a_corrupt_file_with_one_clear_error(tmp_path):
    from prunekit.training import fit

    make_folder(tmp_path, corrupt=True)
    train, _, _ = D.loaders("imagefolder", batch_size=14, data_dir=str(tmp_path), image_size=16)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(ValueError, match="zz_.*cannot decode this image.*FileLoader"):
        fit(model, train, epochs=1, progress=False)


def test_workers_are_not_forked_and_the_transforms_travel_pickled(folder):
    """A worker forked from a process with threads (gloo's, the other loader's queue feeders)
    can hang for ever in PyOS_AfterFork_Child (seen under torchrun): workers start from the
    forkserver, so everything they need is pickled, the transforms of both backends included."""
    import pickle

    assert _loader(folder, workers=1).loader.multiprocessing_context.get_start_method() == "forkserver"
    assert _loader(folder, workers=0).loader.multiprocessing_context is None  # no workers, nothing started
    image = torch.randint(0, 256, (3, 40, 30), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for backend in ("torch", "torchvision"):
        for transform in (T.train_transform(16, backend=backend), T.eval_transform(16, backend=backend)):
            copy = pickle.loads(pickle.dumps(transform))
            assert torch.equal(copy(image, torch.Generator().manual_seed(2)),
                               transform(image, torch.Generator().manual_seed(2)))
