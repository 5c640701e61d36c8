"""Masks come from scores, not from zeros already in the model: a fresh prune of a dense
model scores every weight (a zero-initialised head trains), while a model a prunekit mask
was applied to keeps its pruned weights pruned."""
import torch
from torch import nn

import prunekit as pk


class ZeroHead(nn.Module):
    """A body and a zero-initialised classifier (as torchvision's ViT initialises its head)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 4)
        nn.init.zeros_(self.head.weight)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def _train(model, opt, steps=3):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 6)), torch.randint(0, 4, (16,))).backward()
        opt.step()


def test_fresh_prune_scores_zero_weights_too():
    model = ZeroHead()
    mask = pk.prune(model, 0.5, allocation="uniform")
    # the head keeps half its weights (ties among zeros go to the lower index), not none
    assert int(mask["head.weight"].sum()) == 16
    assert mask["head.weight"].reshape(-1).tolist() == [True] * 16 + [False] * 16
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    pk.enforce(mask, opt)
    _train(model, opt)
    assert int(torch.count_nonzero(model.head.weight)) == 16, "the kept head weights train; pruned stay 0"


def test_global_prune_of_a_zero_head_counts_it_as_weights():
    model = ZeroHead()
    mask = pk.prune(model, 0.25)
    assert mask.total() == 6 * 8 + 8 * 4 and mask.kept() == 60
    assert int(mask["body.weight"].sum()) == 48, "zeros score lowest: the body is kept first"


def test_pruned_model_keeps_its_zeros_pruned_without_passing_the_mask():
    model = ZeroHead()
    nn.init.normal_(model.head.weight)
    first = pk.prune(model, 0.5, score="random", seed=0)
    second = pk.prune(model, 0.7, score="random", seed=1)
    assert second.is_subset_of(first)


def test_gmp_at_zero_sparsity_lets_a_zero_head_train():
    model = ZeroHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gmp = pk.methods.get("gmp")(final_sparsity=0.5, start_step=0, end_step=20, prune_every=10)
    gmp.attach(model, opt)   # step 0: sparsity 0, nothing pruned
    _train(model, opt, steps=1)
    assert int(torch.count_nonzero(model.head.weight)) == 32


def test_torchvision_vit_zero_head_is_pruned_by_score():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16,
                              mlp_dim=32, num_classes=10)
    assert int(torch.count_nonzero(model.heads.head.weight)) == 0, "torchvision zero-initialises the head"
    mask = pk.prune(model, 0.5, allocation="uniform")
    assert int(mask["heads.head.weight"].sum()) == 80
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in mask
