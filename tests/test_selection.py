"""The fast exact selections (sampled band, top-down sources, LAMP tops) against a plain
sort-based reference, on random, tie-heavy, pruned (-inf) and periodic inputs, with the
fallback paths forced; and the numpy passes of core.arrays against their torch meaning."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import arrays, thresholds
from prunekit.core.allocation import apply_floors, clamp_exact
from prunekit.core.scores import LampTop, ranking_keys
from prunekit.core.thresholds import SortedTop, TensorTop, global_selection, sorted_top, topk_mask

SIZES = [70_000, 300_000, 5, 120_000]   # above the sampling sizes, and one tiny tensor


def reference(scores, k):
    """Counts and masks of the k highest scores over all tensors: a stable sort of the
    concatenation, so ties go to the earlier tensor, then the lower index."""
    flat = np.concatenate([s.reshape(-1).double().numpy() for s in scores])
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:k]] = True
    masks, start = [], 0
    for s in scores:
        masks.append(torch.from_numpy(keep[start:start + s.numel()].copy()).reshape(s.shape))
        start += s.numel()
    return [int(m.sum()) for m in masks], masks


def make(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in SIZES:
        x = torch.randn(n, generator=g).abs()
        if kind == "ties":
            x = torch.round(x * 4) / 4                    # a few values, each shared by thousands
        elif kind == "pruned":
            x[torch.rand(n, generator=g) < 0.6] = float("-inf")
        elif kind == "periodic":                          # every sampled position holds the same value
            x = (torch.arange(n) % 457 == 0).float() + torch.arange(n) % 13 / 100
        elif kind == "float64":
            x = x.double()
        out.append(x)
    return out


@pytest.fixture(params=["default", "narrow"])
def band(request, monkeypatch):
    """'narrow': a zero-width band, which misses the threshold on most inputs (the exact
    fallback then runs), and a tiny first read of SortedTop sources (they are read deeper)."""
    if request.param == "narrow":
        monkeypatch.setattr(thresholds, "BAND_SIGMAS", 0.0)
        monkeypatch.setattr(thresholds, "MIN_TOP", 1)
    return request.param


@pytest.mark.parametrize("kind", ["random", "ties", "pruned", "periodic", "float64"])
@pytest.mark.parametrize("fraction", [1e-5, 0.1, 0.5, 0.97])
def test_global_selection_equals_the_sorting_reference(kind, fraction, band):
    scores = make(kind)
    k = max(1, int(fraction * sum(SIZES)))
    counts, threshold = global_selection(scores, k)
    expected, masks = reference(scores, k)
    assert counts == expected
    for s, c, m in zip(scores, counts, masks):
        assert torch.equal(topk_mask(s, c, threshold=threshold), m)
        assert torch.equal(topk_mask(s, c), m)            # without the hint too
    # the same scores as top-down sources: same counts
    assert global_selection([TensorTop(s) for s in scores], k)[0] == expected


def test_a_band_that_misses_falls_back_to_the_exact_selection(monkeypatch):
    calls = []
    whole = thresholds._whole_selection
    monkeypatch.setattr(thresholds, "_whole_selection", lambda *a: calls.append(1) or whole(*a))
    n = 10 * thresholds.SAMPLE                  # strided sample: every 10th score, from index 0
    x = torch.rand(n, generator=torch.Generator().manual_seed(0))
    x[::10] += 1.0                              # the sample sees only the top tenth
    k = n // 2
    scores = [x, torch.rand(7)]
    assert global_selection(scores, k)[0] == reference(scores, k)[0]
    assert calls, "the sample is unrepresentative: the band must miss and fall back"


class Counting(SortedTop):
    def __init__(self, scores):
        self.inner, self.numel, self.reads = TensorTop(scores), scores.numel(), []

    def top(self, c):
        self.reads.append(c)
        return self.inner.top(c)


def test_a_source_holding_more_than_its_share_is_read_deeper():
    g = torch.Generator().manual_seed(1)
    scores = [torch.rand(200_000, generator=g), torch.rand(200_000, generator=g) + 1.0]  # 2nd wins all
    sources = [Counting(s) for s in scores]
    k = 150_000
    assert global_selection(sources, k)[0] == reference(scores, k)[0] == [0, k]
    assert len(sources[1].reads) > 1, "the second source holds every kept score: read deeper"


@pytest.mark.parametrize("kind", ["random", "ties", "pruned", "periodic"])
@pytest.mark.parametrize("c", [0, 1, 3000, 150_000, 299_999, 300_000, 10**7])
def test_sorted_top_keeps_at_least_c_highest_and_nothing_above_the_lowest_left_out(kind, c, band):
    values = make(kind)[1]
    top = sorted_top(values, c).numpy()
    everything = np.sort(values.numpy())
    assert top.size >= min(c, values.numel())
    assert np.array_equal(top, everything[everything.size - top.size:])   # the top, ascending


def test_lamp_tops_are_the_full_lamp_scores_read_from_the_top(band):
    from prunekit.core.scores import _lamp_of_sorted

    torch.manual_seed(0)
    w = torch.randn(300_000)
    w[:50_000] = 0.25                                  # ties
    keys = ranking_keys(w).reshape(-1)
    keys[torch.rand(keys.shape) < 0.2] = float("-inf")    # already pruned
    full_keys = torch.sort(keys).values
    pruned = int((full_keys == float("-inf")).sum())
    full = _lamp_of_sorted(full_keys.double().masked_fill(full_keys == float("-inf"), 0.0))
    full[:pruned] = float("-inf")
    source = LampTop(keys)
    for c in (10, 30_000, 300_000):
        top = source.top(c)
        assert top.numel() >= c and torch.equal(top, full[full.numel() - top.numel():])
    for k in (1, 1000, 250_000):
        assert source.kth_key(k) == float(full_keys[full_keys.numel() - k])


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
def test_lamp_fast_path_equals_per_weight_lamp_on_large_uneven_layers(monkeypatch, allocation, band):
    """Layers large enough for the sampled paths, one 30x larger in scale (it keeps far more
    than its share), ties and a second, iterative prune."""
    from prunekit.core import scores

    torch.manual_seed(2)
    base = nn.Sequential(nn.Linear(600, 500, bias=False), nn.Linear(500, 400, bias=False), nn.Linear(400, 10, bias=False))
    with torch.no_grad():
        base[1].weight.mul_(30.0)
        base[0].weight[:, :50] = 0.01
    masks = []
    for fast in (True, False):
        model = copy.deepcopy(base)
        if not fast:
            monkeypatch.delattr(scores.lamp, "top_scores")
        first = pk.prune(model, 0.7, score="lamp", allocation=allocation)
        masks.append((first, pk.prune(model, 0.97, score="lamp", allocation=allocation)))
    (f1, f2), (s1, s2) = masks
    for k in f1:
        assert torch.equal(f1[k], s1[k]) and torch.equal(f2[k], s2[k]), k


def test_clamp_exact_ceiling_and_floor_by_hand():
    # ceiling (pruning never regrows): 5 -> 3 and the 2 moved go to the one with room
    assert clamp_exact([5, 1, 4], [3, 10, 4], ceiling=True) == [3, 3, 4]
    # floor: the 10 needed come 50:10 from the two donors, in proportion to their margin
    assert clamp_exact([0, 60, 20], [10, 10, 10], ceiling=False) == [10, 52, 18]
    assert apply_floors([0, 60, 20], [10, 10, 10], 0.1) == [10, 52, 18]
    assert clamp_exact([1, 2], [5, 5], ceiling=True) == [1, 2]


def test_numpy_passes_mean_what_their_torch_forms_do():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.float16):
        w = torch.randn(40, 30).to(dtype)
        assert torch.equal(arrays.absolute(w), w.abs())
        assert torch.equal(arrays.square32(w), w.float().square())
        assert arrays.all_finite(w)
    big = torch.full((4,), 3e38)          # finite, but its float32 sum overflows
    assert arrays.all_finite(big)
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not arrays.all_finite(torch.tensor([1.0, bad, 2.0]))
    p = nn.Parameter(torch.randn(8, 8))
    keep = torch.rand(8, 8) > 0.5
    expected = p.detach() * keep
    version = p._version
    arrays.keep_only_(p, keep)
    assert torch.equal(p.detach(), expected) and p._version > version
    t = torch.randn(8, 8).t()            # not contiguous: the torch path
    expected = t * keep
    arrays.keep_only_(t, keep)
    assert torch.equal(t, expected)


def test_the_torch_paths_for_dtypes_numpy_lacks():
    """float16 scores (and any off-CPU tensor) take the torch forms of the same selections."""
    g = torch.Generator().manual_seed(3)
    x = (torch.round(torch.rand(5000, generator=g) * 20) / 20).half()   # ties everywhere
    for k in (1, 777, 2500, 4999):
        assert torch.equal(topk_mask(x, k), reference([x.float()], k)[1][0])
        assert float(thresholds.kth_largest(x, k)) == float(torch.sort(x.float(), descending=True).values[k - 1])
    top = sorted_top(x, 300)
    assert top.dtype == torch.float16 and torch.equal(top, torch.sort(x).values[-300:])
