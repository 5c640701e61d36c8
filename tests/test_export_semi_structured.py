"""2:4 export to torch's semi-structured sparse tensors: the decisions, the CPU message."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.export import semi_structured as ss


def _pruned_2_4():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32))
    return model, pk.prune(model, 0.5, pattern="2:4")


def test_cpu_refuses_with_one_line_saying_what_is_needed():
    model, mask = _pruned_2_4()
    with pytest.raises(RuntimeError) as err:
        ss.to_semi_structured(model, mask)
    message = str(err.value)
    assert "\n" not in message
    assert "CUDA GPU of compute capability >= 8.0" in message and "on cpu" in message
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.layout == torch.strided


@pytest.mark.parametrize("capability, dtype, shape, expected", [
    ((8, 0), torch.float16, (32, 64), None),
    ((9, 0), torch.bfloat16, (64, 128), None),
    ((8, 6), torch.int8, (16, 128), None),
    ((7, 5), torch.float16, (32, 64), "this GPU has capability 7.5"),
    ((8, 0), torch.float64, (32, 64), "must be one of"),
    ((8, 0), torch.float16, (32, 48), "columns by 64"),
    ((8, 0), torch.float16, (24, 64), "rows divisible by 32"),
])
def test_cuda_decisions_with_a_faked_capability(capability, dtype, shape, expected):
    reason = ss.unsupported_reason("cuda", capability=capability, dtype=dtype, shape=shape)
    if expected is None:
        assert reason is None
    else:
        assert expected in reason


def test_which_linears_follow_2_4():
    model, mask = _pruned_2_4()
    assert list(ss.two_four_linears(model, mask)) == ["0", "2"]
    assert list(ss.two_four_linears(model)) == ["0", "2"]     # read off the zeros
    torch.manual_seed(1)
    dense = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="no Linear weight follows the 2:4 pattern"):
        ss.to_semi_structured(dense)
    assert not ss.is_2_4(torch.ones(2, 6, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a CUDA GPU of capability >= 8.0")
def test_conversion_on_a_capable_gpu():
    model, mask = _pruned_2_4()
    model = model.half().cuda()
    x = torch.randn(32, 64, dtype=torch.float16, device="cuda")
    expected = model(x)
    assert ss.to_semi_structured(model, mask) == ["0", "2"]
    assert torch.allclose(model(x), expected, atol=1e-2, rtol=1e-2)
