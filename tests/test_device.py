"""Device choice: --device / $PRUNEKIT_DEVICE reach the runner and the CLI, bad names fail clearly."""
import pytest
import torch

from prunekit.cli.main import main
from prunekit.device import resolve


def test_resolve_defaults_to_cpu_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("PRUNEKIT_DEVICE", raising=False)
    assert resolve() == torch.device("cpu")
    monkeypatch.setenv("PRUNEKIT_DEVICE", "cpu")
    assert resolve() == torch.device("cpu")
    assert resolve("auto").type in ("cpu", "cuda", "mps")
    assert resolve(torch.device("cpu")) == torch.device("cpu")


def test_bad_or_missing_devices_are_refused_with_what_is_accepted():
    with pytest.raises(ValueError, match="accepted: cpu, auto"):
        resolve("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve("cuda")


def test_cli_rejects_an_unknown_device(capsys):
    assert main(["--device", "tpu", "list"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_runner_trains_on_the_device_the_environment_names(tmp_path, monkeypatch):
    """The run context builds, trains and evaluates on $PRUNEKIT_DEVICE (here: the CPU, named
    explicitly; on a GPU machine the same test with "auto" runs on CUDA)."""
    from prunekit.experiments.spec import Sweep
    from prunekit.experiments.sweep import run_sweep

    seen = []
    import prunekit.training.loop as loop

    real_fit = loop.fit

    def spy(model, *a, **kw):
        seen.append(kw.get("device"))
        return real_fit(model, *a, **kw)

    monkeypatch.setattr("prunekit.training.fit", spy)
    monkeypatch.setenv("PRUNEKIT_DEVICE", "auto")
    sweep = Sweep.from_yaml("""
name: device_tiny
data: {name: synthetic, train_subset: 64}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1, lr: 0.05}
method: {name: oneshot, params: {sparsity: 0.5, finetune_epochs: 1}}
seeds: [0]
""")
    summary = run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed, summary
    assert seen and all(d == resolve("auto") for d in seen), seen


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line_before_any_run(tmp_path, monkeypatch, capsys):
    """Issue #14's bad input: `--device cuda` (or $PRUNEKIT_DEVICE=cuda) where there is no CUDA
    ends in one line and exit 2 before a run folder or a database row exists, never a hang."""
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndata: {name: synthetic, train_subset: 64}\nmodel: {name: lenet_300_100}\n"
                    "method: {name: oneshot, params: {sparsity: 0.5}}\n")
    monkeypatch.delenv("PRUNEKIT_DEVICE", raising=False)
    for argv, env in ((["--device", "cuda", "run", str(spec), "--dir", str(tmp_path / "a")], None),
                      (["--device", "cuda:1", "train", "--model", "lenet5", "--data", "synthetic",
                        "--out", str(tmp_path / "b")], None),
                      (["sweep", str(spec), "--dir", str(tmp_path / "c")], "cuda")):
        if env:
            monkeypatch.setenv("PRUNEKIT_DEVICE", env)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "CUDA is not available here; use cpu or auto" in err, err
        assert ("$PRUNEKIT_DEVICE" in err) == bool(env)
    assert not any((tmp_path / d / "runs").exists() for d in "ac") and not (tmp_path / "b" / "model.pt").exists()
    assert main(["list"]) == 0  # listing needs no device
