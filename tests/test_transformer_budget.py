"""Head / FFN-channel importance, parameter and FLOPs counts of a shrunk transformer against
hand counts, and the FLOPs-budget selection (achieved within one unit of the request)."""
import copy

import pytest
import torch

from prunekit.core.accounting import flops_per_module
from prunekit.structured import (ffn_importance, head_importance, mask_transformer, select_for_flops,
                                 shrink_for_flops, shrink_transformer, unit_costs)
from _tiny_transformers import bert_input, tiny_bert, tiny_vit

E, H, D, FF, T = 64, 4, 16, 128, 8   # tiny BERT: hidden, heads, head size, intermediate, tokens


def _bert_flops(heads_per_layer, ffn_per_layer, tokens=T, batch=1):
    """Hand count, 2 FLOPs per multiply-add: q/k/v/o projections, QKᵀ and AV, FFN, pooler."""
    total = 2 * E * E  # pooler: one token
    for h, f in zip(heads_per_layer, ffn_per_layer):
        inner = h * D
        total += 4 * 2 * tokens * E * inner + 2 * 2 * tokens * tokens * inner + 2 * 2 * tokens * E * f
    return batch * total


def test_flops_and_params_match_hand_counts():
    model = tiny_bert()
    x = {"input_ids": torch.zeros(1, T, dtype=torch.long)}
    assert flops_per_module(model, example_input=x)[1] == _bert_flops([4, 4], [128, 128])
    small = shrink_transformer(model, x, heads={0: [0, 1, 2], 1: [3]}, ffn={1: range(100)})
    assert flops_per_module(small, example_input=x)[1] == _bert_flops([1, 3], [128, 28])
    per_head = 3 * (E * D + D) + D * E          # q, k, v rows and biases; output columns
    per_channel = E + 1 + E                     # expanding row and bias; contracting column
    removed = 4 * per_head + 100 * per_channel
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in model.parameters()) - removed


def test_unit_costs_are_exact():
    model = tiny_bert()
    x = {"input_ids": torch.zeros(1, T, dtype=torch.long)}
    head, channel, total = unit_costs(model, x)
    assert total == _bert_flops([4, 4], [128, 128])
    assert head[0] == head[1] == _bert_flops([4, 4], [128, 128]) - _bert_flops([3, 4], [128, 128])
    assert channel[1] == _bert_flops([4, 4], [128, 128]) - _bert_flops([4, 4], [128, 127])


def test_weight_scores_by_hand():
    model = tiny_bert()
    att = model.encoder.layer[1].attention
    rows = slice(2 * D, 3 * D)                  # head 2
    parts = [att.self.query, att.self.key, att.self.value]
    expected = sum(p.weight[rows].pow(2).sum() + p.bias[rows].pow(2).sum() for p in parts)
    expected = (expected + att.output.dense.weight[:, rows].pow(2).sum()).sqrt()
    torch.testing.assert_close(head_importance(model, "l2")[1][2], expected.detach())
    up, down = model.encoder.layer[0].intermediate.dense, model.encoder.layer[0].output.dense
    l1 = up.weight[5].abs().sum() + up.bias[5].abs() + down.weight[:, 5].abs().sum()
    torch.testing.assert_close(ffn_importance(model, "l1")[0][5], l1.detach())


def test_calibration_scores_see_masked_units_as_zero():
    model = mask_transformer(tiny_bert(), heads={0: [1]}, ffn={1: [7, 9]})
    calib = [bert_input(), bert_input()]
    heads = head_importance(model, "output", calib)
    ffn = ffn_importance(model, "activation", calib)
    assert heads[0][1] == 0 and bool((heads[0][[0, 2, 3]] > 0).all()) and bool((heads[1] > 0).all())
    assert ffn[1][7] == 0 and ffn[1][9] == 0 and int((ffn[1] > 0).sum()) == FF - 2


def test_vit_calibration_scores_leave_the_model_packed():
    model = tiny_vit()
    scores = head_importance(model, "output", [torch.randn(2, 3, 32, 32)])
    assert scores[0].shape == (4,) and isinstance(model.encoder.layers[0].self_attention, torch.nn.MultiheadAttention)
    torch.testing.assert_close(head_importance(model, "l1")[1].shape, torch.Size([4]))


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_bert_budget_within_one_unit(ratio):
    model = tiny_bert()
    x = {"input_ids": torch.zeros(1, T, dtype=torch.long)}
    small, plan, report = shrink_for_flops(model, x, ratio)
    assert report["achieved_ratio"] == pytest.approx(report["predicted_ratio"], abs=1e-9)
    assert abs(report["achieved_ratio"] - ratio) <= report["unit_step_ratio"]
    assert report["heads_removed"] > 0 and report["ffn_channels_removed"] > 0
    assert all(len(v) < H for v in plan.heads.values()) and all(len(v) < FF for v in plan.ffn.values())
    masked = mask_transformer(copy.deepcopy(model), heads=plan.heads, ffn=plan.ffn)
    xb = bert_input()
    with torch.no_grad():
        torch.testing.assert_close(small(**xb).last_hidden_state, masked(**xb).last_hidden_state, atol=1e-5, rtol=0)


def test_vit_budget_with_calibration_scores():
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    calib = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    small, plan, report = shrink_for_flops(model, x, 0.6, head_score="output", ffn_score="activation", calib=calib)
    assert report["achieved_ratio"] == pytest.approx(report["predicted_ratio"], abs=1e-9)
    assert abs(report["achieved_ratio"] - 0.6) <= report["unit_step_ratio"]


def test_budget_bad_input():
    model = tiny_bert()
    x = {"input_ids": torch.zeros(1, T, dtype=torch.long)}
    with pytest.raises(ValueError, match="flops_ratio must be in"):
        select_for_flops(model, x, 1.5)
    with pytest.raises(ValueError, match="unknown score 'l3'"):
        select_for_flops(model, x, 0.5, head_score="l3")
    with pytest.raises(ValueError, match="needs calibration batches"):
        head_importance(model, "output")


def test_calibration_scores_leave_padding_tokens_out():
    model, padded = tiny_bert(), bert_input()          # row 1: 5 real tokens, 3 padding
    ids = padded["input_ids"]
    unpadded = [{"input_ids": ids[:1]}, {"input_ids": ids[1:, :5]}]
    for score in (head_importance, ffn_importance):
        method = "output" if score is head_importance else "activation"
        a, b = score(model, method, [padded]), score(model, method, unpadded)
        for pos in a:
            torch.testing.assert_close(a[pos], b[pos], atol=1e-5, rtol=1e-5)


def test_vit_flops_and_params_match_hand_counts():
    model, x = tiny_vit(), torch.randn(1, 3, 32, 32)
    tokens = (32 // 8) ** 2 + 1                        # patches + class token

    def hand(heads_per_layer, mlp_per_layer):
        total = 2 * 16 * E * 3 * 8 * 8                 # patch embedding (conv_proj)
        for h, f in zip(heads_per_layer, mlp_per_layer):
            inner = h * D
            total += 4 * 2 * tokens * E * inner + 2 * 2 * tokens * tokens * inner + 2 * 2 * tokens * E * f
        return total

    assert flops_per_module(model, example_input=x)[1] == hand([4, 4], [128, 128])
    small = shrink_transformer(model, x, heads={1: [0, 3]}, ffn={0: range(28)})
    assert flops_per_module(small, example_input=x)[1] == hand([4, 2], [100, 128])
    removed = 2 * (3 * (E * D + D) + D * E) + 28 * (E + 1 + E)
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in model.parameters()) - removed
