"""prunekit.export: CSR-sparse modules equal the dense ones, thin exports load back without
prunekit internals (torch.export) and through artifacts.load_model, and `prunekit bench`."""
import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.artifacts import load_model, save_model
from prunekit.cli.main import main
from prunekit.export import SparseConv2d, SparseLinear, decisions, sparse, thin
from prunekit.structured import by_ratios, save_plan, shrink, uniform_ratios


def _pruned(name, sparsity, allocation="global", seed=0, **kwargs):
    torch.manual_seed(seed)
    model = pk.models.get(name, **kwargs).eval()
    mask = pk.prune(model, sparsity, score="magnitude", allocation=allocation)
    return model, mask


def _sparse_layers(model):
    return [n for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))]


def test_sparse_linear_matches_linear_any_leading_dims_and_no_bias():
    torch.manual_seed(0)
    for bias in (True, False):
        lin = nn.Linear(12, 7, bias=bias)
        with torch.no_grad():
            lin.weight[torch.rand_like(lin.weight) < 0.8] = 0
        sp = SparseLinear.from_dense(lin)
        for shape in [(12,), (5, 12), (2, 3, 12)]:
            x = torch.randn(*shape)
            with torch.no_grad():
                assert sp(x).shape == lin(x).shape
                torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-6)
        density = int((lin.weight != 0).sum()) / lin.weight.numel()
        assert f"SparseLinear(12, 7, density={density:.4g}, bias={bias})" == repr(sp)
        assert sp.weight.layout == torch.sparse_csr and sp.weight._nnz() == int((lin.weight != 0).sum())


def test_sparse_conv_unfold_path_matches_conv():
    torch.manual_seed(0)
    for conv in [nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 4, (3, 2), stride=2, dilation=(1, 2), bias=False)]:
        with torch.no_grad():
            conv.weight[torch.rand_like(conv.weight) < 0.7] = 0
        sp = SparseConv2d(conv)
        for x in [torch.randn(2, 3, 9, 11), torch.randn(3, 9, 11)]:
            with torch.no_grad():
                torch.testing.assert_close(sp(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="groups=1"):
        SparseConv2d(nn.Conv2d(4, 4, 3, groups=2))


def test_sparse_export_of_a_pruned_mlp_equals_the_dense_model():
    model, _ = _pruned("lenet_300_100", 0.97)
    # Threshold mode: every Linear layer at or above 90% sparsity goes CSR, deterministically.
    fast = sparse(model, measure=False, min_sparsity=0.9)
    expected = [d["layer"] for d in decisions(fast) if d["sparsity"] >= 0.9]
    assert expected and _sparse_layers(fast) == expected
    assert not _sparse_layers(model), "sparse() works on a copy"
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    # Measured mode: whatever it picks, the outputs are the same and every timing is recorded.
    measured = sparse(model, batch_size=32, repeats=2)
    assert all(d["dense_s"] is not None for d in decisions(measured) if d["sparsity"] >= 0.5)
    with torch.no_grad():
        torch.testing.assert_close(measured(x), model(x), rtol=1e-4, atol=1e-5)


def test_sparse_export_of_a_pruned_lenet5_conv_dense_or_correct():
    model, _ = _pruned("lenet5", 0.95, allocation="uniform")
    x = torch.randn(4, 1, 28, 28)
    for fast in (sparse(model, batch_size=4, repeats=2), sparse(model, measure=False, min_sparsity=0.5)):
        convs = [d for d in decisions(fast) if d["type"] == "Conv2d"]
        assert len(convs) == 2
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    # Convolutions only go sparse when measured faster; force the unfold path to check it too.
    forced = sparse(model, measure=False, min_sparsity=0.5)
    forced.features[3] = SparseConv2d(model.features[3])
    with torch.no_grad():
        torch.testing.assert_close(forced(x), model(x), rtol=1e-4, atol=1e-5)


def test_low_sparsity_layers_stay_dense():
    model, _ = _pruned("lenet_300_100", 0.3)
    fast = sparse(model, batch_size=1)  # below 50% nothing is even timed
    assert _sparse_layers(fast) == []
    assert all(d["form"] == "dense" and d["dense_s"] is None for d in decisions(fast))
    assert _sparse_layers(sparse(model, measure=False)) == []  # below the break-even threshold
    with pytest.raises(ValueError, match="min_sparsity"):
        sparse(model, min_sparsity=1.5)


def test_sparse_state_dict_round_trip(tmp_path):
    model, _ = _pruned("lenet_300_100", 0.97)
    fast = sparse(model, measure=False, min_sparsity=0.9)
    torch.save(fast.state_dict(), tmp_path / "sd.pt")
    other, _ = _pruned("lenet_300_100", 0.97, seed=1)  # different weights, same layout decisions
    target = sparse(other, measure=False, min_sparsity=0.9)
    assert _sparse_layers(target) == _sparse_layers(fast)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(target(x), fast(x))
        target.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
        torch.testing.assert_close(target(x), fast(x))
    name = _sparse_layers(fast)[0]
    assert target.get_submodule(name).weight.layout == torch.sparse_csr


@pytest.fixture(scope="module")
def shrunk_resnet20():
    torch.manual_seed(0)
    model = pk.models.get("resnet20", width=0.25, shortcut="B").eval()
    x = torch.randn(1, 3, 32, 32)
    plan = by_ratios(model, uniform_ratios(model, 0.5))
    return model, shrink(model, x, plan).eval(), plan


def test_thin_export_round_trip_torch_export_and_load_model(shrunk_resnet20, tmp_path):
    dense, small, plan = shrunk_resnet20
    kwargs = {"width": 0.25, "shortcut": "B"}
    result = thin(small, tmp_path / "thin", torch.randn(1, 3, 32, 32), model_name="resnet20", model_kwargs=kwargs,
                  structure={"plan": plan})
    assert {p.name for p in result.files.values()} == {"model.pt2", "state_dict.pt", "channels.json",
                                                        "structure.json", "model.pt"}
    x = torch.randn(5, 3, 32, 32)  # another batch size than the traced one
    with torch.no_grad():
        want = small(x)
        program = torch.export.load(tmp_path / "thin" / "model.pt2").module()
        torch.testing.assert_close(program(x), want, rtol=1e-5, atol=1e-5)
        loaded, data = load_model(tmp_path / "thin")  # the folder; structure.json is applied
        torch.testing.assert_close(loaded.eval()(x), want)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in dense.parameters())
    channels = json.loads((tmp_path / "thin" / "channels.json").read_text())
    assert channels["layer1.0.conv1"]["out_channels"] == small.layer1[0].conv1.out_channels
    assert channels["layer1.0.conv1"]["out_channels"] < dense.layer1[0].conv1.out_channels
    with pytest.raises(ValueError, match="structure"):
        thin(small, tmp_path / "bad", model_name="resnet20", model_kwargs=kwargs, structure={"plan": {}})


def test_load_model_reads_a_shrink_folder(shrunk_resnet20, tmp_path):
    _, small, plan = shrunk_resnet20
    # What `prunekit shrink` writes: model.pt with the original name + structure.json.
    save_plan(tmp_path, plan)
    save_model(tmp_path / "model.pt", small, model_name="resnet20", model_kwargs={"width": 0.25, "shortcut": "B"})
    model, _ = load_model(tmp_path / "model.pt")
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x))


def test_bench_cli_prints_rows_for_each_form(tmp_path, capsys):
    model, mask = _pruned("lenet_300_100", 0.95)
    save_model(tmp_path / "m.pt", model, model_name="lenet_300_100", mask=mask)
    out = tmp_path / "rows.json"
    assert main(["bench", str(tmp_path / "m.pt"), "--batch-sizes", "1", "4", "--repeats", "2", "--threads", "1",
                 "--no-memory", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for form in ("dense", "masked", "torch-prune", "sparse"):
        assert form in printed
    rows = json.loads(out.read_text())
    assert {(r["form"], r["batch_size"]) for r in rows} == {(f, b) for f in ("dense", "masked", "torch-prune", "sparse")
                                                              for b in (1, 4)}
    masked = next(r for r in rows if r["form"] == "masked")
    assert masked["flops_ratio"] == pytest.approx(1 / 0.05, rel=0.2)
    assert all(r["latency_ms"] > 0 and r["throughput"] > 0 for r in rows)


def test_bench_cli_bad_path_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert main(["bench", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunekit bench: error:") and "junk.pt" in err
