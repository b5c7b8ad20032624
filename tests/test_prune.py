import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from orchestrator.stages.prune import global_magnitude_masks, prunable_weights, prune_
from orchestrator.tasks.gpt import GPT, GPTConfig


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=13, context=8, layers=2, width=16, heads=2))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_masks_match_torch_global_unstructured(sparsity):
    ours, ref = _model(), _model()
    masks = prune_(ours, sparsity)
    params = [(m, "weight") for m in ref.modules() if isinstance(m, nn.Linear)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    ref_masks = {f"{n}.weight": m.weight_mask.bool() for n, m in ref.named_modules() if isinstance(m, nn.Linear)}
    assert masks.keys() == ref_masks.keys()
    for name in masks:
        assert torch.equal(masks[name], ref_masks[name]), name


@pytest.mark.parametrize("sparsity", [0.25, 0.6])
def test_masks_match_a_sort_based_threshold(sparsity):
    weights = {k: v.detach().clone() for k, v in prunable_weights(_model(3)).items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()]).sort().values
    n = round(sparsity * len(flat))
    threshold = flat[n - 1]  # the largest pruned magnitude (no ties in random floats)
    masks = global_magnitude_masks(weights, sparsity)
    for name, w in weights.items():
        assert torch.equal(masks[name], w.abs() > threshold)
    assert sum(int((~m).sum()) for m in masks.values()) == n


def test_prune_zeroes_exactly_the_masked_weights_and_leaves_embeddings():
    model = _model()
    emb = model.tok.weight.detach().clone()
    masks = prune_(model, 0.5)
    for name, w in prunable_weights(model).items():
        assert torch.all(w[~masks[name]] == 0)
        assert torch.all(w[masks[name]] != 0)
    assert torch.equal(model.tok.weight, emb)


def test_zero_sparsity_prunes_nothing():
    assert prune_(_model(), 0.0) == {}
