"""Registry-wide contracts: every registered score, allocation, channel score, channel
selection, dataset and model is checked by being registered.

Each entry must run on a tiny input and give a well-formed result, give the same result for
the same seed, and reject bad parameters with a clear ValueError / KeyError. Entries that
need example arguments take them from EXAMPLES (one table, keyed by registry then name); a
registered name without an example fails ``test_every_registered_name_has_an_example``.
(During-training methods, pipelines and baselines have their own tests.)
"""
import pytest
import torch

import prunekit.data as D
import prunekit.models as M
from prunekit.core import ALLOCATIONS, SCORES, PrunableTensor, prune
from prunekit.core.allocation import kept_total
from prunekit.structured import CHANNEL_SCORES, by_ratios, select_channels
from prunekit.structured.reconstruct import SELECTIONS, normal_equations

from test_data import write_fake_cifar, write_fake_idx_dataset

from conftest import TinyNet


def _image_folder(tmp_path):
    """A two-class, two-split folder of 8x8 PNGs: imagefolder's data, made offline."""
    Image = pytest.importorskip("PIL.Image", reason="imagefolder decodes images with Pillow")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / label / f"{i}.png")
    return {"data_dir": str(tmp_path), "image_size": 8}


# registry kind -> name -> example arguments. A new entry needs one here.
def _fake_mnist(tmp_path):
    folder = tmp_path / "mnist"
    write_fake_idx_dataset(folder, label=3)
    return folder


EXAMPLES = {
    # The TinyNet layer to score (bn_scale needs a layer followed by a BatchNorm).
    "channel score": {"l1_filter": "conv", "bn_scale": "depthwise", "random": "conv"},
    # tmp_path -> options for prunekit.data.load; datasets whose files are absent are skipped.
    "dataset": {
        "synthetic": lambda tmp_path: {},
        "fashion_mnist": lambda tmp_path: {},
        # tiny files in the real formats (the loaders are the same as for the full datasets)
        "mnist": lambda tmp_path: {"data_dir": str(_fake_mnist(tmp_path))},
        "cifar10": lambda tmp_path: {"data_dir": str(write_fake_cifar(tmp_path, n=8))},
        "cifar100": lambda tmp_path: {"data_dir": str(write_fake_cifar(tmp_path, n=8, hundred=True))},
        "imagefolder": _image_folder,
    },
    # Keyword arguments for prunekit.models.get: narrow, so that a forward pass is cheap.
    "model": {
        "lenet_300_100": {"width": 0.25}, "lenet5": {"width": 0.5},
        "conv2": {"width": 0.125}, "conv4": {"width": 0.125}, "conv6": {"width": 0.125},
        "vgg11": {"width": 0.125}, "vgg13": {"width": 0.125}, "vgg16": {"width": 0.125},
        "vgg19": {"width": 0.125},
        "resnet20": {"width": 0.25}, "resnet32": {"width": 0.25}, "resnet44": {"width": 0.25},
        "resnet56": {"width": 0.25}, "resnet110": {"width": 0.25},
        "preresnet110": {"width": 0.25}, "preresnet164": {"width": 0.25},
        "wrn": {"width": 0.125}, "densenet40": {"width": 0.25}, "mobilenetv2_cifar": {"width": 0.25},
    },
}
REGISTRIES = {"channel score": CHANNEL_SCORES, "dataset": D.DATASETS, "model": M.MODELS}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registered_name_has_an_example(kind):
    missing = [n for n in REGISTRIES[kind].names() if n not in EXAMPLES[kind]]
    assert not missing, (f"add example arguments for the new {kind}(s) {missing} to "
                         f"EXAMPLES[{kind!r}] in tests/test_contracts.py")


@pytest.mark.parametrize("registry", [SCORES, ALLOCATIONS, CHANNEL_SCORES, SELECTIONS, D.DATASETS, M.MODELS],
                         ids=lambda r: r.kind)
def test_an_unknown_name_is_a_key_error_listing_the_choices(registry):
    with pytest.raises(KeyError) as info:
        registry.get("no-such-thing")
    message = str(info.value)
    assert registry.kind in message and "no-such-thing" in message
    assert all(name in message for name in registry.names())


# ---------------------------------------------------------------------------- scores


def _weight(seed=0, shape=(6, 4, 3, 3)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", SCORES.names())
def test_score_has_the_weights_shape_is_finite_and_seeded(name):
    score = SCORES.get(name)
    weight = _weight()
    weight[0] = 0.0  # already-pruned weights are exact zeros
    s = score(weight, generator=torch.Generator().manual_seed(1))
    assert s.shape == weight.shape and s.dtype in (torch.float32, torch.float64)
    assert torch.isfinite(s).all()
    again = score(weight.clone(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(s, again)


def _pruned(sparsity, seed, **kwargs):
    torch.manual_seed(0)  # the same TinyNet every time
    return prune(TinyNet(), sparsity, seed=seed, **kwargs)


def _same(a, b):
    return set(a.keys()) == set(b.keys()) and all(torch.equal(a[k], b[k]) for k in a.keys())


@pytest.mark.parametrize("name", SCORES.names())
def test_prune_by_a_score_keeps_the_exact_count_is_seeded_and_rejects_bad_sparsity(name):
    mask = _pruned(0.75, 1, score=name)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.25 * total)
    assert _same(mask, _pruned(0.75, 1, score=name))
    for bad in (1.5, -0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="sparsity must be a number in"):
            prune(TinyNet(), bad, score=name)


# ---------------------------------------------------------------------------- allocations


def _tensors(seed=0):
    torch.manual_seed(0)
    params = [p for n, p in TinyNet().named_parameters() if n.endswith("weight") and p.dim() > 1]
    g = torch.Generator().manual_seed(seed)
    return [PrunableTensor(f"t{i}", tuple(p.shape), torch.rand(p.shape, generator=g)) for i, p in enumerate(params)]


@pytest.mark.parametrize("density", [0.5, 0.2, 0.07])
@pytest.mark.parametrize("name", ALLOCATIONS.names())
def test_allocation_counts_are_exact_ints_within_each_layer(name, density):
    tensors = _tensors()
    try:
        counts = ALLOCATIONS.get(name)(tensors, density)
    except ValueError as err:  # a small budget an allocation cannot meet is refused, saying why
        assert density < 0.5 and ("density" in str(err) or "sparsity" in str(err)), err
        return
    assert len(counts) == len(tensors)
    assert all(isinstance(c, int) and 0 <= c <= t.numel for c, t in zip(counts, tensors)), counts
    assert sum(counts) == kept_total(tensors, density) == round(density * sum(t.numel for t in tensors))
    assert ALLOCATIONS.get(name)(_tensors(), density) == counts  # same input, same counts


@pytest.mark.parametrize("name", ALLOCATIONS.names())
def test_prune_by_an_allocation_is_seeded_and_rejects_bad_sparsity(name):
    mask = _pruned(0.5, 3, score="random", allocation=name)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.5 * total)
    assert _same(mask, _pruned(0.5, 3, score="random", allocation=name))
    for bad in (1.5, -0.5, "0.5", True):
        with pytest.raises(ValueError, match="sparsity must be a number in"):
            prune(TinyNet(), bad, allocation=name)


# ---------------------------------------------------------------------------- channel scores


def _scored(name, seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    return model, CHANNEL_SCORES.get(name)(model, EXAMPLES["channel score"][name])


@pytest.mark.parametrize("name", CHANNEL_SCORES.names())
def test_channel_score_gives_one_finite_value_per_channel_and_is_seeded(name):
    layer = EXAMPLES["channel score"][name]
    model, s = _scored(name)
    channels = dict(model.named_modules())[layer].weight.shape[0]
    assert s.shape == (channels,) and s.is_floating_point() and torch.isfinite(s).all()
    assert torch.equal(s, _scored(name)[1])
    plan = by_ratios(model, {layer: 0.5}, score=name)  # the selection these scores feed
    assert len(plan[layer]) == len(set(plan[layer])) == channels // 2
    assert all(0 <= c < channels for c in plan[layer])
    with pytest.raises(KeyError, match="no module named 'nope'"):
        CHANNEL_SCORES.get(name)(model, "nope")
    with pytest.raises(ValueError, match=r"ratio: must be a fraction removed, in \[0, 1\)"):
        by_ratios(model, {layer: 1.5}, score=name)


# ---------------------------------------------------------------------------- channel selections


def _pair(seed=0):
    """conv "0" (8 channels) -> conv "2": the layer pair ThiNet / LASSO reconstruct."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3, padding=1))


@pytest.mark.parametrize("name", SELECTIONS.names())
def test_selection_removes_the_asked_count_refits_the_next_layer_and_is_seeded(name):
    z = torch.randn(50, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zz, zy = normal_equations(z)
    removed = SELECTIONS.get(name)(zz, zy, 3)
    assert removed == sorted(set(removed)) and len(removed) == 3 and all(0 <= c < 8 for c in removed)
    assert SELECTIONS.get(name)(zz.clone(), zy.clone(), 3) == removed

    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    removed, weight = select_channels(_pair(), "0", "2", images, 0.5, method=name, samples=200, seed=2)
    assert len(removed) == 4 and all(0 <= c < 8 for c in removed)
    assert weight.shape == (6, 4, 3, 3) and torch.isfinite(weight).all()
    again = select_channels(_pair(), "0", "2", images, 0.5, method=name, samples=200, seed=2)
    assert again[0] == removed and torch.equal(again[1], weight)
    for bad in (1.5, -0.2, 1.0):
        with pytest.raises(ValueError, match=r"ratio: must be a fraction removed, in \[0, 1\)"):
            select_channels(_pair(), "0", "2", images, bad, method=name)


def test_select_channels_names_every_selection_for_an_unknown_one():
    with pytest.raises(KeyError) as info:
        select_channels(_pair(), "0", "2", torch.randn(2, 3, 8, 8), 0.5, method="nope")
    assert all(n in str(info.value) for n in ["l1_filter"] + SELECTIONS.names())


# ---------------------------------------------------------------------------- datasets


def _load(name, tmp_path):
    options = EXAMPLES["dataset"][name](tmp_path)
    try:
        return D.load(name, download=False, **options)  # never the network in a test
    except D.DataNotFoundError:
        pytest.skip(f"{name}: its files are absent from this machine and tests never download; "
                    "put them under $PRUNEKIT_DATA to test it")


@pytest.mark.parametrize("name", D.names())
def test_dataset_loads_well_formed_seeded_splits(name, tmp_path):
    splits = _load(name, tmp_path)
    info = splits.info
    assert info.name == name and info.num_classes >= 2 and info.in_channels >= 1
    for split in (splits.train, splits.test):
        assert len(split) > 0
        idx = torch.arange(min(4, len(split)))
        images = split.images_at(idx)
        assert images.dtype == torch.uint8 and tuple(images.shape) == (len(idx), info.in_channels, *info.image_size)
        assert split.labels.dtype == torch.int64 and len(split.labels) == len(split)
        assert 0 <= int(split.labels.min()) and int(split.labels.max()) < info.num_classes
    n = min(6, len(splits.train))
    a, b = splits.train.subset(n, seed=5), splits.train.subset(n, seed=5)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images_at(torch.arange(n)), b.images_at(torch.arange(n)))
    again = _load(name, tmp_path / "again")
    assert torch.equal(again.train.labels, splits.train.labels)
    assert torch.equal(again.test.images_at(torch.arange(2)), splits.test.images_at(torch.arange(2)))
    with pytest.raises(ValueError, match="subset size"):
        splits.train.subset(len(splits.train) + 1, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        D.Loader(splits.train, info, batch_size=0)


# ---------------------------------------------------------------------------- models


def _model(name, seed):
    torch.manual_seed(seed)
    return M.get(name, **EXAMPLES["model"][name]).eval()


@pytest.mark.parametrize("name", M.names())
def test_model_builds_runs_and_is_seeded(name):
    model = _model(name, seed=0)
    x = torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        same = _model(name, seed=0)
        assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), same.state_dict().values()))
        assert torch.equal(same(x), out)
    other = _model(name, seed=1)  # the seed does matter
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))
    for bad in ({"width": 0}, {"num_classes": 0}, {"in_channels": -1}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive"):
            M.get(name, **bad)
    with pytest.raises(ValueError, match="unexpected argument"):
        M.get(name, no_such_argument=1)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_model_builds_and_runs(name):
    pytest.importorskip("torchvision", reason="torchvision is optional: its models are built only when installed")
    torch.manual_seed(0)
    model = M.get(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *model.input_shape))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
