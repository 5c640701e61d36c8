"""export.sparse kernels and decisions (issue #17, item 1): the one-row matrix-vector path, the
compacted-input form, int32 indices, state_dict round trips, and the per-layer choice taken
with an injected timer (no real timing in tests)."""
import importlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import prunekit as pk
from prunekit.export import SparseLinear, decisions, sparse

sparse_module = importlib.import_module("prunekit.export.sparse")  # the module (the package exports the function)


def _masked_linear(n_in=12, n_out=7, keep=0.3, dead_inputs=(), bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) > keep] = 0
        lin.weight[:, list(dead_inputs)] = 0
    return lin.eval()


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


SHAPES = [(12,), (1, 12), (5, 12), (1, 1, 12), (3, 5, 12), (2, 3, 5, 12)]


@pytest.mark.parametrize("options", [{}, {"compact": True}, {"per_sequence": True},
                                     {"compact": True, "per_sequence": True}, {"transposed_output": True}])
def test_every_form_matches_linear_with_int32_indices(options):
    lin = _masked_linear(dead_inputs=(0, 3, 4, 9))
    sp = SparseLinear.from_dense(lin, **options)
    assert sp.weight.crow_indices().dtype == torch.int32 and sp.weight.col_indices().dtype == torch.int32
    if options.get("compact"):
        used = [c for c in range(12) if lin.weight[:, c].any()]
        assert sp.input_columns.tolist() == used and not {0, 3, 4, 9} & set(used)
        assert tuple(sp.weight.shape) == (7, len(used)) and f"input_columns={len(used)}" in repr(sp)
    for shape in SHAPES:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-6)
            if len(shape) >= 2:  # a transposed input (what a feeding sparse layer hands on)
                xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
                torch.testing.assert_close(sp(xt), lin(x), rtol=1e-5, atol=1e-6)


def test_one_row_runs_the_matrix_vector_product_several_rows_the_matrix_product():
    sp = SparseLinear.from_dense(_masked_linear())
    for shape, op in [((1, 12), "addmv"), ((12,), "addmv"), ((1, 1, 12), "addmv"), ((4, 12), "addmm")]:
        with torch.no_grad(), _Ops() as ops:
            sp(torch.randn(*shape))
        assert op in ops.names and ({"addmv", "addmm"} - {op}).isdisjoint(ops.names), (shape, ops.names)


def test_empty_and_bias_free_layers():
    for lin in (_masked_linear(keep=0.0), _masked_linear(bias=False)):
        for options in ({}, {"compact": True}):
            sp = SparseLinear.from_dense(lin, **options)
            for shape in SHAPES:
                x = torch.randn(*shape)
                with torch.no_grad():
                    torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-6)


def test_compacted_state_dict_round_trip_and_full_weight_loading():
    a, b = _masked_linear(dead_inputs=(1, 2)), _masked_linear(dead_inputs=(5,), seed=1)
    source, target = SparseLinear.from_dense(a, compact=True), SparseLinear.from_dense(b, compact=True)
    state = source.state_dict()
    assert set(state) == {"weight", "bias", "input_columns"}
    target.load_state_dict(state)
    x = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(target(x), a(x), rtol=1e-5, atol=1e-6)
        target.load_state_dict(b.state_dict())  # a full dense weight: compacted on loading
        assert len(target.input_columns) == int(b.weight.ne(0).any(0).sum())
        torch.testing.assert_close(target(x), b(x), rtol=1e-5, atol=1e-6)
        plain = SparseLinear.from_dense(b)
        plain.load_state_dict(state)  # a compacted state brings its columns along
        assert plain.input_columns.tolist() == source.input_columns.tolist()
        torch.testing.assert_close(plain(x), a(x), rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match="size mismatch"):
            plain.load_state_dict({"weight": torch.zeros(7, 5), "bias": torch.zeros(7)})


class _Timer:
    """Fake timer: seconds per candidate name (and per layer width), recording its calls."""

    def __init__(self, layer_seconds, model_seconds=None):
        self.layer_seconds, self.model_seconds, self.calls = layer_seconds, model_seconds, []

    def __call__(self, fns, repeats):
        self.calls.append(sorted(fns))
        if "sparse" in fns:  # the whole model
            return dict(self.model_seconds or {"dense": 1.0, "sparse": 0.5})
        width = fns["dense"].func.in_features
        return {name: self.layer_seconds(width, name) for name in fns}


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4))
    pk.prune(model, 0.9, score="magnitude", allocation="uniform")
    with torch.no_grad():
        model[0].weight[:, :10] = 0  # 10 of the 32 inputs unused: the compacted form is a candidate
    return model.eval()


def test_a_layer_not_measured_faster_stays_dense():
    model = _mlp()
    # Layer 0: CSR only 3% faster (within the noise margin) -> dense; layer 2: 2x faster -> CSR;
    # layer 4: slower -> dense.
    table = {32: {"dense": 1.0, "csr": 0.97, "csr_compact": 0.99}, 48: {"dense": 1.0, "csr": 0.5},
             16: {"dense": 1.0, "csr": 1.2}}
    timer = _Timer(lambda width, name: table[width].get(name, 9.0))
    fast = sparse(model, torch.randn(8, 32), timer=timer)
    rows = {d["layer"]: d for d in decisions(fast)}
    assert [rows[n]["form"] for n in ("0", "2", "4")] == ["dense", "csr", "dense"]
    assert "measured slower" in rows["0"]["reason"] and rows["0"]["dense_s"] == 1.0 and rows["0"]["sparse_s"] == 0.97
    assert isinstance(fast[2], SparseLinear) and type(fast[0]) is nn.Linear and type(fast[4]) is nn.Linear
    assert rows["2"]["kernel"] == "mm" and rows["2"]["candidates_s"]["csr"] == 0.5
    x = torch.randn(8, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_the_fastest_candidate_wins_dense_is_timed_once_and_each_weight_built_once(monkeypatch):
    model = _mlp()
    built = []
    real = sparse_module._to_csr
    monkeypatch.setattr(sparse_module, "_to_csr", lambda w: built.append(tuple(w.shape)) or real(w))
    timer = _Timer(lambda width, name: {"dense": 1.0, "csr": 0.4, "csr_compact": 0.2}.get(name, 9.0))
    fast = sparse(model, torch.randn(1, 32), timer=timer)
    # One timing run per layer (dense beside every candidate) and one for the whole model.
    assert len(timer.calls) == 4 and timer.calls[0] == ["csr", "csr_compact", "csr_native", "dense"]
    assert timer.calls[-1] == ["dense", "sparse"]
    # The full CSR of each layer once, the compacted one where some inputs are unused once;
    # none rebuilt for the layout trial or for the chosen module.
    compacted = {(n, int(model[i].weight.ne(0).any(0).sum())) for i, n in ((0, 48), (2, 16), (4, 4))
                 if model[i].weight.ne(0).any(0).sum() <= 0.9 * model[i].in_features}
    assert sorted(built) == sorted([(48, 32), (16, 48), (4, 16)] + list(compacted)) and (48, 22) in compacted
    rows = {d["layer"]: d for d in decisions(fast)}
    assert rows["0"]["input_columns"] == 22 and fast[0].input_columns is not None and rows["0"]["kernel"] == "mv"
    assert rows["0"]["candidates_s"] == {"csr": 0.4, "csr_compact": 0.2, "csr_native": 9.0}
    x = torch.randn(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_per_sequence_is_a_candidate_for_several_sequences_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24))
    pk.prune(model, 0.9, score="magnitude", allocation="uniform")
    timer = _Timer(lambda width, name: {"dense": 1.0, "csr": 0.6, "csr_per_sequence": 0.3}.get(name, 9.0))
    fast = sparse(model.eval(), torch.randn(1, 10, 16), batch_size=3, timer=timer)
    assert timer.calls[0] == ["csr", "csr_native", "csr_per_sequence", "dense"]
    assert fast[0].per_sequence and decisions(fast)[0]["kernel"] == "per_sequence"
    timer = _Timer(lambda width, name: {"dense": 1.0, "csr": 0.6}.get(name, 9.0))
    sparse(model, torch.randn(1, 10, 16), timer=timer)  # one sequence: no per-sequence form
    assert timer.calls[0] == ["csr", "csr_native", "dense"]


def test_a_whole_model_measured_no_faster_goes_back_to_dense():
    model = _mlp()
    timer = _Timer(lambda width, name: 0.1 if name != "dense" else 1.0, {"dense": 1.0, "sparse": 0.98})
    fast = sparse(model, torch.randn(4, 32), timer=timer)
    assert all(d["form"] == "dense" for d in decisions(fast))
    assert all("no faster" in d["reason"] for d in decisions(fast) if d["sparsity"] >= 0.5)
    assert not any(isinstance(m, SparseLinear) for m in fast.modules())
