"""prunekit's own CSR kernel (export/_native.py, csr_linear.cpp) behind SparseLinear(kernel="native").

The kernel must be built on this project's machines (a C++ compiler is part of the set-up), so
a failed build fails here rather than skipping: elsewhere sparse() falls back to MKL, tested below.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.export import SparseLinear, _native, decisions, sparse


def _sparse_weight(rows, cols, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    weight[torch.rand(rows, cols, generator=g) > density] = 0
    if rows > 2:
        weight[1] = 0  # a row with no kept weight: its output is the bias alone
    return weight


def test_the_kernel_builds_on_this_machine():
    assert _native.load() is not None, _native.reason()


# Token counts around the 128-token tile and the 16-row output blocks, odd widths, both input layouts.
@pytest.mark.parametrize("tokens", [1, 2, 17, 128, 130, 300])
@pytest.mark.parametrize("rows,cols", [(1, 3), (7, 17), (33, 40), (64, 384)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed_output", [False, True])
def test_native_layer_equals_the_dense_linear(tokens, rows, cols, bias, transposed_output):
    weight = _sparse_weight(rows, cols, 0.2)
    b = torch.randn(rows) if bias else None
    layer = SparseLinear(cols, rows, weight, b, transposed_output=transposed_output, kernel="native")
    x = torch.randn(tokens, cols)
    want = F.linear(x, weight, b)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    # the transposed product a sparse layer hands on is read as it is (no copy)
    fed = x.t().contiguous().t()
    torch.testing.assert_close(layer(fed), want, rtol=1e-5, atol=1e-5)


# The kernel transposes x in 8 x 8 blocks and skips column blocks no kept weight reads: unused
# blocks at the start, middle and ragged end, token counts on and off the 8-row blocks.
@pytest.mark.parametrize("tokens", [1, 8, 9, 16, 130])
def test_native_layer_skips_input_blocks_no_weight_reads(tokens):
    weight = _sparse_weight(20, 45, 0.5)
    weight[:, :8] = 0
    weight[:, 16:32] = 0
    weight[:, 41:] = 0
    layer = SparseLinear(45, 20, weight, torch.randn(20), kernel="native")
    x = torch.randn(tokens, 45)
    torch.testing.assert_close(layer(x), F.linear(x, weight, layer.bias), rtol=1e-5, atol=1e-5)
    x[:, 16:32] = float("nan")  # never read: the skipped block's values cannot reach the output
    assert torch.isfinite(layer(x)).all()


def test_native_layer_takes_any_leading_dimensions_and_a_fed_transposed_3d_input():
    weight = _sparse_weight(24, 16, 0.1)
    layer = SparseLinear(16, 24, weight, torch.randn(24), kernel="native")
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(layer(x), F.linear(x, weight, layer.bias), rtol=1e-5, atol=1e-5)
    feeder = SparseLinear(8, 16, _sparse_weight(16, 8, 0.3, seed=1), None, transposed_output=True, kernel="native")
    h = feeder(torch.randn(2, 130, 8))
    assert h.shape == (2, 130, 16) and not h.is_contiguous()  # the product stays transposed
    torch.testing.assert_close(layer(h), F.linear(h.contiguous(), weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert "kernel='native'" in repr(layer)


def test_a_chain_of_native_layers_exported_by_sparse_equals_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    pk.prune(model, 0.9, score="magnitude", allocation="uniform")
    example = torch.randn(2, 140, 32)

    def prefer_native(fns, repeats):  # the whole model stays sparse, every layer takes the kernel
        return {name: 0.1 if name in ("csr_native", "sparse") else 1.0 for name in fns}

    fast = sparse(model, example, timer=prefer_native)
    rows = {d["layer"]: d for d in decisions(fast)}
    assert [rows[n]["kernel"] for n in ("0", "2")] == ["native", "native"]
    assert fast[0].transposed_output and not fast[2].transposed_output  # 0 feeds 2 through GELU
    with torch.inference_mode():
        torch.testing.assert_close(fast(example), model(example), rtol=1e-4, atol=1e-5)


def test_a_native_layer_reads_a_loaded_state_dict():
    weight = _sparse_weight(20, 12, 0.25)
    layer = SparseLinear(12, 20, weight, torch.randn(20), kernel="native")
    x = torch.randn(9, 12)
    want = F.linear(x, weight, layer.bias)
    fresh = SparseLinear(12, 20, torch.zeros(20, 12), torch.zeros(20), kernel="native")
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), want, rtol=1e-5, atol=1e-5)  # the kernel reads the loaded weight


def test_without_the_kernel_native_layers_fall_back_and_sparse_does_not_offer_it(monkeypatch):
    monkeypatch.setattr(_native.KERNEL, "_state", {"reason": "no compiler here"})
    weight = _sparse_weight(10, 6, 0.3)
    layer = SparseLinear(6, 10, weight, torch.randn(10), kernel="native")
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(x), F.linear(x, weight, layer.bias), rtol=1e-5, atol=1e-5)
    names = []
    sparse(_pruned_linear(), torch.randn(4, 6),
           timer=lambda fns, repeats: names.append(sorted(fns)) or {k: 1.0 for k in fns})
    assert "csr" in names[0] and "csr_native" not in names[0]


def _pruned_linear():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 10)).eval()
    pk.prune(model, 0.9, score="magnitude", allocation="uniform")
    return model


def test_float64_inputs_and_int64_weights_take_mkl():
    weight = _sparse_weight(10, 6, 0.3).double()
    layer = SparseLinear(6, 10, weight, None, kernel="native")
    assert layer._native_args is None  # float64 values: the kernel is float32 only
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, weight))


def test_the_env_switch_disables_the_kernel_with_a_reason(monkeypatch):
    monkeypatch.setattr(_native.KERNEL, "_state", {})
    monkeypatch.setenv(_native.ENV, "0")
    assert _native.load() is None and _native.ENV in _native.reason()


def test_an_unknown_kernel_is_one_clear_error():
    with pytest.raises(ValueError, match="kernel must be one of mkl, native, got 'cuda'"):
        SparseLinear(4, 4, torch.eye(4), kernel="cuda")


def test_no_compiler_is_one_line_and_mkl(monkeypatch):
    monkeypatch.setattr(_native.KERNEL, "_state", {})
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler \\(no-such-compiler-here\\) on PATH"):
        assert _native.load() is None


@pytest.mark.parametrize("kernel", ["mkl", "native"])
def test_an_exported_model_deepcopies_and_pickles(kernel):
    # torch itself cannot deepcopy or pickle CSR tensors: the layers carry them as their parts
    import copy
    import io

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    pk.prune(model, 0.9, score="magnitude", allocation="uniform")
    x = torch.randn(2, 3, 6, 6)
    exported = nn.Sequential(pk.export.SparseConv2d(model[0]), nn.ReLU(), nn.Flatten(),
                             SparseLinear.from_dense(model[3], kernel=kernel))
    want = model(x)
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(exported), torch.load(buffer, weights_only=False)):
        assert other[0].weight.layout == torch.sparse_csr and other[3].kernel == kernel
        torch.testing.assert_close(other(x), want, rtol=1e-4, atol=1e-5)
    again = sparse(exported, x, measure=False)  # sparse() copies its input: an exported model is fine
    torch.testing.assert_close(again(x), want, rtol=1e-4, atol=1e-5)
