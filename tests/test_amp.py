"""Mixed precision, channels_last and torch.compile in fit, on the CPU: bf16 autocast trains,
fp16 runs through torch.amp.GradScaler("cpu"), a step GradScaler skips changes no weight and
no optimizer state, and every registered Method keeps pruned weights and their moments at
exactly zero under fp16 (including across the skipped steps)."""
import pytest
import torch
from torch import nn

from prunekit.core.mask import Mask
from prunekit.methods import METHODS
from prunekit.methods.base import MethodCallback
from prunekit.pipelines.finetune import EnforceMask
from prunekit.training import Callback, fit

from conftest import TinyNet
from test_contracts_methods import method_params

MOMENTS = ("momentum_buffer", "exp_avg", "exp_avg_sq")
FORCED = {1, 4}  # steps whose gradients are made infinite: GradScaler must skip them


def batches(n=6, size=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def _state_copy(opt):
    return {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}


class Overflow(Callback):
    """On the steps in FORCED, adds a penalty with an infinite gradient; checks that such a step
    (and any other step GradScaler skips) changed no parameter and no optimizer state."""

    def __init__(self):
        self.skipped, self.checked = [], 0

    def penalty(self, state):
        opt = state.optimizer
        self.before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
        self.state_before = _state_copy(opt)
        if state.step in FORCED:
            return state.model.fc2.bias.sum() * float("inf")
        return None

    def on_step_end(self, state):  # listed first: runs before the method's step()
        if not state.skipped:
            return
        self.skipped.append(state.step - 1)
        opt = state.optimizer
        after = [p.detach() for g in opt.param_groups for p in g["params"]]
        assert all(torch.equal(a, b) for a, b in zip(self.before, after)), "a skipped step moved a weight"
        now = _state_copy(opt)
        assert now.keys() == self.state_before.keys()
        for pid, entry in now.items():
            for k, v in entry.items():
                assert torch.equal(v, self.state_before[pid][k]), f"a skipped step changed {k}"
        self.checked += 1


class PrunedStayZero(Callback):
    """After every step: pruned weights and their per-weight optimizer moments are exactly 0."""

    def __init__(self, mask: Mask):
        self.mask, self.steps = mask, 0

    def on_step_end(self, state):
        params = self.mask.parameters(state.model)
        for name, keep in self.mask.items():
            p = params[name]
            assert torch.all(p.detach()[~keep] == 0), f"pruned weight of {name} is not 0"
            for k, v in state.optimizer.state.get(p, {}).items():
                if k in MOMENTS and torch.is_tensor(v) and v.shape == p.shape:
                    assert torch.all(v[~keep] == 0), f"{k} of a pruned weight of {name} is not 0"
        self.steps += 1


def test_bf16_autocast_trains_and_records_no_skips():
    torch.manual_seed(0)
    model = TinyNet()
    hist = fit(model, batches(), epochs=2, lr=0.05, precision="bf16", progress=False, seed=0)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in hist)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert "skipped_steps" not in hist[-1]


def test_fp16_gradscaler_skips_exactly_the_overflowing_steps_and_checkpoints_its_scale(tmp_path):
    torch.manual_seed(0)
    model, spy = TinyNet(), Overflow()
    hist = fit(model, batches(), epochs=1, lr=0.05, precision="fp16", progress=False, seed=0,
               callbacks=[spy], checkpoint_dir=tmp_path)
    assert FORCED <= set(spy.skipped) and spy.checked == len(spy.skipped)
    assert hist[-1]["skipped_steps"] == len(spy.skipped)
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert saved["amp"]["scale"] < 65536.0  # lowered by the skipped steps, and saved
    # Resuming restores the scale (a finished run: nothing retrained, same history).
    again = fit(TinyNet(), batches(), epochs=1, lr=0.05, precision="fp16", progress=False, seed=0,
                callbacks=[Overflow()], checkpoint_dir=tmp_path)
    assert list(again) == list(hist)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_exact_under_fp16_gradscaler(name):
    torch.manual_seed(0)
    model = TinyNet()
    method = METHODS.get(name).from_params(method_params(name, **(
        {"end_step": 4, "prune_every": 2} if name == "gmp" else {})))
    spy = Overflow()
    fit(model, batches(), epochs=1, lr=0.05, precision="fp16", progress=False, seed=0,
        callbacks=[spy, MethodCallback(method)])
    assert FORCED <= set(spy.skipped)
    mask = method.finalize()
    params = mask.parameters(model)
    # (sss may prune nothing in 6 steps; the others do, so the fine-tune check below bites.)
    assert name == "sss" or any(not bool(m.all()) for m in mask.values()), "nothing pruned"
    for n, keep in mask.items():
        assert torch.all(params[n].detach()[~keep] == 0)
    # Fine-tuning the finalised mask under fp16 with skipped steps: pruned weights and their
    # momentum stay exactly zero on every step.
    spy, check = Overflow(), PrunedStayZero(mask)
    fit(model, batches(), epochs=1, lr=0.05, precision="fp16", progress=False, seed=1,
        callbacks=[spy, EnforceMask(mask), check])
    assert FORCED <= set(spy.skipped) and check.steps == 6


def test_gmp_masks_and_moments_exact_during_training_under_fp16():
    """GMP enforces its mask while it trains: after each step past its first pruning, the
    pruned weights and their momentum are exactly 0, skipped steps included."""
    from prunekit.methods.gmp import GMP

    class Check(Callback):
        def __init__(self, gmp):
            self.gmp, self.checked = gmp, 0

        def on_step_end(self, state):
            mask = getattr(self.gmp, "mask", None)
            if mask is None:
                return
            PrunedStayZero(mask).on_step_end(state)
            self.checked += 1

    torch.manual_seed(0)
    model, gmp = TinyNet(), GMP(0.8, start_step=0, end_step=4, prune_every=2)
    check = Check(gmp)
    fit(model, batches(), epochs=2, lr=0.05, precision="fp16", progress=False, seed=0,
        optimizer="adamw", callbacks=[Overflow(), MethodCallback(gmp), check])
    assert check.checked >= 8


def test_channels_last_converts_weights_and_inputs_and_matches_fp32():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyNet()

        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last))
            return self.net(x)

    torch.manual_seed(0)
    a = Spy()
    torch.manual_seed(0)
    b = Spy()
    fit(a, batches(), epochs=1, lr=0.05, progress=False, seed=0, channels_last=True)
    assert a.net.conv.weight.is_contiguous(memory_format=torch.channels_last) and all(seen)
    fit(b, batches(), epochs=1, lr=0.05, progress=False, seed=0)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-5), k


def test_compile_is_opt_in_and_trains_the_users_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    hist = fit(model, batches(2), epochs=1, lr=0.05, progress=False, seed=0, compile="eager")
    assert list(model.state_dict()) == ["1.weight", "1.bias"]  # no _orig_mod. prefix
    assert hist[-1]["train_loss"] is not None


def test_bad_precision_is_one_clear_error():
    with pytest.raises(ValueError, match="accepted: fp32, bf16, fp16"):
        fit(TinyNet(), batches(1), precision="fp8", progress=False)


def test_cli_flags_reach_fit_through_the_environment(monkeypatch):
    from prunekit import device
    from prunekit.cli.main import main

    for env in (device.PRECISION_ENV, device.CHANNELS_LAST_ENV, device.COMPILE_ENV):
        monkeypatch.setenv(env, "")  # recorded, so main()'s writes are undone after the test
        monkeypatch.delenv(env)
    assert main(["--precision", "bfloat16", "--channels-last", "list"]) == 0
    assert device.precision() == "bf16" and device.channels_last() and device.compile_backend() is None
    assert main(["--precision", "fp7", "list"]) == 2
    assert main(["--compile", "list"]) == 0 and device.compile_backend() == "inductor"
    assert main(["--compile-backend", "eager", "list"]) == 0 and device.compile_backend() == "eager"


def test_ray_gpus_flag_and_gpu_capacity(tmp_path, capsys):
    """--ray-gpus reserves GPUs per Ray task (capacity = min over CPUs and GPUs); without
    --executor ray it is one clear error; the execution settings reach Ray workers."""
    from prunekit.cli.main import main
    from prunekit.experiments import ray_executor

    class FakeRay:
        @staticmethod
        def cluster_resources():
            return {"CPU": 16.0, "GPU": 4.0}

    assert ray_executor._capacity(FakeRay, 1.0) == 16
    assert ray_executor._capacity(FakeRay, 1.0, 1.0) == 4
    assert ray_executor._capacity(FakeRay, 2.0, 0.5) == 8
    assert {"PRUNEKIT_PRECISION", "PRUNEKIT_CHANNELS_LAST", "PRUNEKIT_COMPILE"} <= set(ray_executor.FORWARDED_ENV)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndata: {name: synthetic}\nmodel: {name: lenet_300_100}\n"
                    "method: {name: oneshot, params: {sparsity: 0.5}}\n")
    assert main(["sweep", str(spec), "--dir", str(tmp_path / "p"), "--ray-gpus", "1"]) == 2
    assert "--ray-gpus needs --executor ray" in capsys.readouterr().err
    try:
        main(["sweep", str(spec), "--ray-gpus", "-1"])
    except SystemExit as exit_:
        assert exit_.code == 2


def test_fp16_registers_its_step_hook_once_per_fit_and_removes_it():
    """MixedPrecision learns whether GradScaler stepped from an optimizer step post-hook: one
    registration for the whole run (not one per step), gone when fit returns."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    registered = []
    original = opt.register_step_post_hook

    def counting(hook):
        registered.append(hook)
        return original(hook)

    opt.register_step_post_hook = counting
    spy = Overflow()
    hist = fit(model, batches(), epochs=2, lr=0.05, optimizer=opt, precision="fp16", progress=False,
               seed=0, callbacks=[spy])
    assert FORCED <= set(spy.skipped) and sum(r.get("skipped_steps", 0) for r in hist) == len(spy.skipped)
    assert len(registered) == 1
    assert not opt._optimizer_step_post_hooks  # removed when fit returned
