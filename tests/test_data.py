"""Tests for prunekit.data: IDX and CIFAR readers, look-up order, downloads, Loader."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from dataclasses import replace
from urllib.error import URLError

import numpy as np
import pytest
import torch

import prunekit.data as D
from prunekit.data import download, locate, mnist
from prunekit.data.idx import parse_idx, read_idx, write_idx
from prunekit.data.loader import normalize, random_crop_flip

FMNIST_SYSTEM = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the real $PRUNEKIT_DATA, system folders, cache or network."""
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "SYSTEM_DIRS", {})

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(download, "urlopen", no_network)


def write_fake_idx_dataset(folder, label, n_train=6, n_test=4, gz=True):
    """Four MNIST-style IDX files whose labels are all ``label`` (to tell copies apart)."""
    os.makedirs(folder, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.arange(n * 28 * 28, dtype=np.uint8).reshape(n, 28, 28)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{ext}"),
                  np.full(n, label, dtype=np.uint8))


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip_plain_and_gzip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    path = tmp_path / name
    write_idx(str(path), images)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(str(path))
    assert back.dtype == torch.uint8 and back.shape == (5, 3, 4)
    assert torch.equal(back, torch.from_numpy(images))


def test_idx_multibyte_big_endian(tmp_path):
    values = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(str(tmp_path / "v"), values)
    raw = (tmp_path / "v").read_bytes()
    assert raw[:4] == b"\x00\x00\x0c\x01" and raw[4:8] == (3).to_bytes(4, "big")
    assert read_idx(str(tmp_path / "v")).tolist() == [1, -2, 70000]


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    payload = b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x07\x09"
    (tmp_path / "plain.gz").write_bytes(payload)  # not really gzipped
    (tmp_path / "zipped").write_bytes(gzip.compress(payload))
    assert read_idx(str(tmp_path / "plain.gz")).tolist() == [7, 9]
    assert read_idx(str(tmp_path / "zipped")).tolist() == [7, 9]


def test_idx_bad_magic_and_bad_length_are_clear_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad: not an IDX file"):
        read_idx(str(bad))
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"")
    short = b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x00" * 5
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*5 bytes"):
        parse_idx(short)


# ----------------------------------------------------------------------------- look-up


def test_lookup_order_data_dir_then_env_then_system(tmp_path, monkeypatch):
    write_fake_idx_dataset(tmp_path / "explicit", label=1)
    write_fake_idx_dataset(tmp_path / "env" / "fashion-mnist", label=2)  # subfolder form
    write_fake_idx_dataset(tmp_path / "system", label=3, gz=False)
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion_mnist", [str(tmp_path / "system")])
    monkeypatch.setenv(locate.ENV_VAR, str(tmp_path / "env"))

    def label_of(**kw):
        return int(D.load("fashion_mnist", download=False, **kw).train.labels[0])

    assert label_of(data_dir=str(tmp_path / "explicit")) == 1
    assert label_of() == 2
    assert label_of(data_dir=str(tmp_path / "missing")) == 2  # falls through to the next
    monkeypatch.delenv(locate.ENV_VAR)
    assert label_of() == 3


def test_loaded_idx_dataset_has_expected_layout(tmp_path):
    write_fake_idx_dataset(tmp_path / "d", label=4, n_train=6, n_test=4)
    splits = D.load("mnist", data_dir=str(tmp_path / "d"), download=False)
    assert splits.train.images.shape == (6, 1, 28, 28)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    assert len(splits.test) == 4
    assert splits.info.num_classes == 10 and splits.info.mean == (0.1307,)


def test_offline_error_says_how_to_provide_the_data(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise URLError("no network")

    monkeypatch.setattr(download, "urlopen", offline)
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion_mnist", [str(tmp_path / "nosys")])
    with pytest.raises(D.DataNotFoundError) as err:
        D.load("fashion_mnist", data_dir=str(tmp_path / "empty"))
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert calls and "no network" in msg
    for needle in ("apt-get install dataset-fashion-mnist", "--data-dir", locate.ENV_VAR,
                   str(tmp_path / "empty"), str(tmp_path / "nosys")):
        assert needle in msg
    # No half-written files are left in the download folder.
    target = tmp_path / "empty" / "fashion_mnist"
    assert not target.exists() or os.listdir(target) == []

    with pytest.raises(D.DataNotFoundError, match="make_cifar10.py"):
        D.load("cifar10", data_dir=str(tmp_path / "empty"))


def test_download_false_never_touches_the_network(tmp_path):
    # The autouse fixture turns any urlopen call into an AssertionError.
    with pytest.raises(D.DataNotFoundError, match="download=False"):
        D.load("mnist", data_dir=str(tmp_path), download=False)


class FakeResponse(io.BytesIO):
    """What urlopen returns, enough for download_file."""


def test_checksum_mismatch_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "urlopen", lambda url, timeout=None: FakeResponse(b"evil"))
    dest = tmp_path / "dl" / "file.gz"
    with pytest.raises(download.ChecksumError, match="expected 0+"):
        download.download_file("http://example.invalid/file.gz", str(dest), "0" * 32)
    assert os.listdir(tmp_path / "dl") == []

    good = hashlib.md5(b"evil").hexdigest()
    download.download_file("http://example.invalid/file.gz", str(dest), good)
    assert dest.read_bytes() == b"evil" and os.listdir(tmp_path / "dl") == ["file.gz"]


def test_download_then_load_end_to_end(tmp_path, monkeypatch):
    served = tmp_path / "server"
    write_fake_idx_dataset(served, label=7)
    md5 = {n: hashlib.md5((served / n).read_bytes()).hexdigest() for n in os.listdir(served)}
    source = replace(mnist.SOURCES["mnist"], base_url="http://mirror.invalid/", md5=md5)
    monkeypatch.setitem(mnist.SOURCES, "mnist", source)
    monkeypatch.setattr(download, "urlopen", lambda url, timeout=None: FakeResponse(
        (served / url.rsplit("/", 1)[1]).read_bytes()))

    splits = D.load("mnist", data_dir=str(tmp_path / "data"))
    assert int(splits.train.labels[0]) == 7
    assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(md5)
    # Second time: found in the download folder, no network needed.
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("downloaded twice"))
    assert int(D.load("mnist", data_dir=str(tmp_path / "data")).test.labels[0]) == 7


# ----------------------------------------------------------------------------- CIFAR


def write_fake_cifar(root, n=4, protocol=4, bytes_keys=False, hundred=False):
    """A tiny cifar-10-batches-py (or cifar-100-python) folder; pixel value = sample index."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + [
        "test_batch"]
    for b, name in enumerate(names):
        data = np.zeros((n, 3072), dtype=np.uint8)
        data[:, :1024] = np.arange(n)[:, None] + 10 * b  # red channel
        data[:, 1024:2048] = 200  # green channel
        batch = {"data": data, label_key: [(i + b) % (100 if hundred else 10) for i in range(n)]}
        if bytes_keys:  # what the official Python 2 pickles give under encoding='bytes'
            batch = {k.encode(): v for k, v in batch.items()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_tiny_batches(tmp_path, protocol):
    folder = write_fake_cifar(tmp_path, protocol=protocol)
    for where in (tmp_path, folder):  # the parent or the batches folder itself
        splits = D.load("cifar10", data_dir=str(where), download=False)
        assert splits.train.images.shape == (20, 3, 32, 32) and len(splits.test) == 4
        assert splits.train.images.dtype == torch.uint8
        # channel-major rows: red plane first, then green
        assert int(splits.train.images[5, 0, 31, 31]) == 1 + 10 and int(
            splits.train.images[5, 1, 0, 0]) == 200
        assert splits.train.labels[:5].tolist() == [0, 1, 2, 3, 1]
        assert splits.info.num_classes == 10 and splits.info.in_channels == 3


def test_cifar100_fine_labels_and_bytes_keys(tmp_path):
    write_fake_cifar(tmp_path, hundred=True, bytes_keys=True, protocol=2)
    splits = D.load("cifar100", data_dir=str(tmp_path), download=False)
    assert splits.info.num_classes == 100
    assert splits.train.labels.tolist() == [0, 1, 2, 3] and splits.test.labels.tolist() == [
        1, 2, 3, 4]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_is_rejected_without_running(tmp_path):
    folder = write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": Evil(marker), "labels": []}, fh)
    with pytest.raises(D.UnsafePickleError, match=r"refusing to load (posix|os|nt)\.system"):
        D.load("cifar10", data_dir=str(tmp_path), download=False)
    assert not marker.exists()
    # Also a ValueError, so the CLI reports it as a bad input.
    assert issubclass(D.UnsafePickleError, ValueError)


def test_cifar_rejects_a_wrong_shape(tmp_path):
    folder = write_fake_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\)"):
        D.load("cifar10", data_dir=str(tmp_path), download=False)


# ----------------------------------------------------------------------------- Loader


@pytest.fixture(scope="module")
def synth():
    return D.load("synthetic")


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_same_seed_and_epoch_give_identical_batches(synth):
    def epoch_batches(epoch, loader=None):
        loader = loader or D.Loader(synth.train, synth.info, batch_size=100, augment=True, seed=3)
        loader.set_epoch(epoch)
        return loader, batches(loader)

    loader, first = epoch_batches(5)
    _, other = epoch_batches(5)
    epoch_batches(0, loader=loader)  # run another epoch in between
    _, resumed = epoch_batches(5, loader=loader)  # resuming at epoch 5 replays it exactly
    for run in (other, resumed):
        assert len(run) == len(first) == 21
        for (xa, ya), (xb, yb) in zip(first, run):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_epochs_and_seeds_change_the_order(synth):
    loader = D.Loader(synth.train, synth.info, batch_size=256, seed=0)
    loader.set_epoch(0)
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])  # no set_epoch: moves on to epoch 1
    loader.set_epoch(1)
    again = torch.cat([y for _, y in loader])
    other_seed = torch.cat([y for _, y in D.Loader(synth.train, synth.info, 256, seed=1)])
    assert not torch.equal(first, second)
    assert torch.equal(second, again)
    assert not torch.equal(first, other_seed)


def test_loader_len_and_each_sample_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).clone()
    ds = D.TensorDataset(images, torch.arange(10))
    info = D.DatasetInfo("tiny", 10, 1, (2, 2), (0.0,), (1.0 / 255,))
    loader = D.Loader(ds, info, batch_size=3, seed=0)
    assert len(loader) == 4 and loader.num_samples == 10
    seen = batches(loader)
    assert [len(y) for _, y in seen] == [3, 3, 3, 1]
    labels = torch.cat([y for _, y in seen])
    assert sorted(labels.tolist()) == list(range(10))
    # x is the normalised pixel (= index here, mean 0, std 1/255): it matches its label
    assert torch.allclose(torch.cat([x[:, 0, 0, 0] for x, _ in seen]), labels.float())
    drop = D.Loader(ds, info, batch_size=3, drop_last=True)
    assert len(drop) == 3 and sum(len(y) for _, y in drop) == 9
    plain = D.Loader(ds, info, batch_size=4, shuffle=False)
    assert torch.cat([y for _, y in plain]).tolist() == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        D.Loader(ds, info, batch_size=0)


def test_augment_keeps_shape_dtype_and_is_a_shifted_or_flipped_copy():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=gen)
    out = random_crop_flip(images, padding=2, gen=gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        options = [crop for t in range(5) for l in range(5)
                   for crop in (padded[i, :, t:t + 8, l:l + 8],
                                padded[i, :, t:t + 8, l:l + 8].flip(-1))]
        assert any(torch.equal(out[i], o) for o in options)
    assert not torch.equal(out, images)  # something moved


def test_loader_augment_shapes(synth):
    loader = D.Loader(synth.train, synth.info, batch_size=64, augment=True)
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_normalisation(synth):
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = normalize(x, (0.5, 0.2), (0.5, 0.1))
    assert torch.allclose(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]))
    xs = torch.cat([x for x, _ in D.Loader(synth.train, synth.info, 512)])
    assert abs(xs.mean().item()) < 0.01 and abs(xs.std().item() - 1) < 0.01


def test_loader_on_device_copies_the_data_once_and_augments_there(synth, monkeypatch):
    """Issue #14 B: an in-memory dataset crosses to the device once (``on_device``, called by
    ``fit`` / ``evaluate``); gathering, pad-crop-flip and normalising run there. The "meta"
    device stands in for a GPU on this CPU-only machine: every op it runs yields meta tensors,
    so meta batches prove no step of the pipeline went back to the CPU images."""
    copies = []
    real_to = D.TensorDataset.to
    monkeypatch.setattr(D.TensorDataset, "to", lambda self, d: copies.append(str(d)) or real_to(self, d))
    loader = D.Loader(synth.train, synth.info, batch_size=100, augment=True, seed=3)
    assert loader.device == torch.device("cpu") and loader.on_device("cpu") is loader
    view = loader.on_device("meta")
    for epoch in (0, 1):
        view.set_epoch(epoch)
        batches = list(view)
        assert len(batches) == 21
        assert all(x.device.type == y.device.type == "meta" and x.dtype == torch.float32 for x, y in batches)
        assert batches[0][0].shape == (100, 1, 28, 28) and batches[-1][1].shape == (48,)
    again = loader.on_device("meta")
    assert again.dataset is view.dataset and copies == ["meta"]  # one copy, reused
    # The caller's loader and the (cached) dataset it was given stay on the CPU.
    assert loader.dataset is synth.train and synth.train.images.device.type == "cpu"
    assert next(iter(loader))[0].device.type == "cpu"
    built = D.Loader(synth.train, synth.info, batch_size=100, device="meta")
    assert built.dataset.images.device.type == "meta" and next(iter(built))[0].device.type == "meta"


def test_device_augmentation_draws_the_cpu_generators_numbers():
    """The crop offsets and flips come from the (seed, epoch) CPU generator whatever the
    images' device, so a batch is the same on a GPU as on the CPU (and as before #14 B)."""
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    on_cpu, on_meta = D.loader.epoch_generator(5, 2), D.loader.epoch_generator(5, 2)
    out = random_crop_flip(images, 2, on_cpu)
    meta = random_crop_flip(images.to("meta"), 2, on_meta)
    assert meta.device.type == "meta" and meta.shape == out.shape and meta.dtype == out.dtype
    assert torch.equal(on_cpu.get_state(), on_meta.get_state())  # the same numbers were drawn


def test_fit_and_evaluate_iterate_the_loader_on_their_device(synth, monkeypatch):
    from prunekit.training import evaluate, fit

    seen = []
    real = D.Loader.on_device
    monkeypatch.setattr(D.Loader, "on_device", lambda self, d: seen.append((self.shuffle, str(d))) or real(self, d))
    train = D.Loader(synth.train.subset(200, 0), synth.info, batch_size=50, seed=0)
    test = D.Loader(synth.test, synth.info, batch_size=256, shuffle=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    fit(model, train, test, epochs=1, lr=0.05, progress=False, device="cpu")
    assert (True, "cpu") in seen and (False, "cpu") in seen
    seen.clear()
    evaluate(model, test, device="cpu")
    assert seen == [(False, "cpu")]


def test_fit_resumed_over_an_augmented_loader_matches_the_uninterrupted_run(synth, tmp_path):
    """Resume equality through ``fit`` with the in-memory loader (crop + flip on): a run killed
    after epoch 1 and resumed sees the same batches and ends with the same weights."""
    from prunekit.training import Callback, fit

    class Crash(Callback):  # dies in epoch 2, after epoch 1's checkpoint (5 steps per epoch)
        def __init__(self, armed=False):
            self.armed = armed

        def on_step_end(self, state):
            if self.armed and state.step == 7:
                raise KeyboardInterrupt

    def run(folder, armed=False):
        train = D.Loader(synth.train.subset(300, 0), synth.info, batch_size=64, augment=True, seed=4)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        fit(model, train, epochs=3, lr=0.05, schedule="cosine", progress=False, seed=4,
            checkpoint_dir=folder, callbacks=[Crash(armed)])
        return model

    reference = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", armed=True)
    from prunekit.training.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = run(tmp_path / "cut")
    assert torch.equal(resumed[1].weight, reference[1].weight) and torch.equal(resumed[1].bias, reference[1].bias)


def test_subset_is_stratified_seeded_and_bounded(synth):
    sub = synth.train.subset(100, seed=1)
    assert len(sub) == 100
    assert sub.labels.bincount().tolist() == [10] * 10
    assert torch.equal(sub.images, synth.train.subset(100, seed=1).images)
    assert not torch.equal(sub.images, synth.train.subset(100, seed=2).images)
    with pytest.raises(ValueError, match="larger than the dataset"):
        synth.train.subset(len(synth.train) + 1, seed=0)


def test_loaders_default_augmentation_and_subset(tmp_path):
    write_fake_cifar(tmp_path)
    train, test, info = D.loaders("cifar10", batch_size=8, data_dir=str(tmp_path),
                                  download=False)
    assert train.augment and not test.augment and not test.shuffle
    assert info.name == "cifar10" and train.padding == 4
    train, test, info = D.loaders("synthetic", train_subset=50, test_batch_size=128)
    assert not train.augment and train.num_samples == 50 and len(test) == 4


# ----------------------------------------------------------------------------- datasets


def test_registry_names_and_unknown_name():
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder",
            "synthetic"} <= set(D.names())
    with pytest.raises(KeyError, match="choose one of: .*fashion_mnist"):
        D.get("fashion")


def test_synthetic_is_deterministic_and_learnable():
    a, b = D.load("synthetic"), D.load("synthetic")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels,
                                                                       b.test.labels)
    assert (len(a.train), len(a.test)) == (2048, 512)
    assert a.train.images.shape[1:] == (1, 28, 28)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train, test, _ = D.loaders("synthetic")
    for x, y in train:  # one epoch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    assert correct / len(a.test) > 0.9


@pytest.mark.skipif(not os.path.isdir(FMNIST_SYSTEM), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion_mnist", [FMNIST_SYSTEM])
    splits = D.load("fashion_mnist", download=False)
    assert splits.train.images.shape == (60000, 1, 28, 28)
    assert splits.test.images.shape == (10000, 1, 28, 28)
    assert splits.info.num_classes == 10
    assert splits.train.labels.bincount().tolist() == [6000] * 10


def test_imagefolder_decodes_lazily(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    for split, per_class in (("train", 3), ("val", 2)):
        for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image_mod.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.png")
    (tmp_path / "train" / "class0" / "notes.txt").write_text("not an image")
    train, test, info = D.loaders("imagefolder", batch_size=4, data_dir=str(tmp_path),
                                  image_size=16)
    assert info.num_classes == 2 and info.image_size == (16, 16) and info.in_channels == 3
    assert train.num_samples == 6 and test.num_samples == 4
    xs, ys = zip(*test)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    assert (x[y == 0, 0] > x[y == 0, 2]).all() and (x[y == 1, 2] > x[y == 1, 0]).all()
    assert len(train.dataset.subset(2, seed=0)) == 2


def test_imagefolder_errors(tmp_path, monkeypatch):
    with pytest.raises(D.DataNotFoundError, match="train/<class>"):
        D.load("imagefolder", data_dir=str(tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)  # as if Pillow were missing
    with pytest.raises(ImportError, match="pip install Pillow"):
        D.load("imagefolder", data_dir=str(tmp_path))
