"""Trained weight sharing (`techniques/codebook.py`): k-means codebooks, their export, centroid training."""

import pytest
import torch

from orchestrator.techniques.codebook import (
    CodebookQuantization,
    CodebookTensor,
    SharedWeights,
    codebook_state,
    fit_codebook,
    flat_index,
    refit_centroids,
    share_weights,
    unshare_weights,
)
from orchestrator.techniques.quantize import QuantSpec
from orchestrator.techniques.rounding import AffineQuantization


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_each_group_uses_at_most_2_to_the_b_float16_values(granularity, bits):
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(bits))
    ct = fit_codebook(w, QuantSpec(CodebookQuantization(granularity=granularity), bits, 16))
    out = ct.dequantize()
    assert ct.centroids.shape[-1] == 2**bits and torch.equal(ct.centroids, ct.centroids.half().float())
    groups = {"tensor": [out], "channel": list(out), "group": [c for row in out for c in row.split(16)]}[granularity]
    assert all(g.unique().numel() <= 2**bits for g in groups)
    # k-means places levels where the weights are: less error than an evenly spaced grid of as many levels
    grid = QuantSpec(AffineQuantization(granularity=granularity), bits, 16)
    affine = grid.method.quantize_tensor(w, grid).dequantize()
    assert ((out - w) ** 2).sum() < ((affine - w) ** 2).sum()


def test_pruned_weights_are_left_out_of_the_clustering_and_stay_zero():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    mask = w.abs() > 0.7
    ct = fit_codebook(w * mask, QuantSpec(CodebookQuantization(), 2, 16), mask)
    out = ct.dequantize(mask)
    assert (out[~mask] == 0).all()
    assert (ct.centroids.abs() > 0.5).all()  # no centroid spent on the zeros


def test_centroid_training_moves_centroids_not_assignments_and_refit_reads_them_back():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    mask = torch.rand(8, 16) > 0.3
    spec = QuantSpec(CodebookQuantization(granularity="channel"), 2, 16)
    ct = fit_codebook(layer.weight * mask, spec, mask)
    model = torch.nn.Sequential(layer)
    share_weights(model, codebook_state({"0.weight": ct}), {"0.weight": mask})
    parametrization = model[0].parametrizations.weight[0]
    assert isinstance(parametrization, SharedWeights)
    before = parametrization.centroids.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(64, 16), torch.randn(64, 8)
    for _ in range(5):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert not torch.equal(parametrization.centroids.detach(), before)
    unshare_weights(model)
    w = model[0].weight.detach()
    assert (w[~mask] == 0).all()
    tuned = refit_centroids(ct, w, mask)
    assert torch.equal(tuned.q, ct.q)  # assignments fixed
    torch.testing.assert_close(tuned.dequantize(mask), w, atol=2e-3, rtol=2e-3)  # up to the float16 rounding
    assert torch.equal(tuned.centroids, tuned.centroids.half().float())


def test_flat_index_points_each_weight_at_its_centroid():
    w = torch.randn(6, 20, generator=torch.Generator().manual_seed(3))
    ct = fit_codebook(w, QuantSpec(CodebookQuantization(granularity="group"), 3, 8))
    assert isinstance(ct, CodebookTensor)
    assert torch.equal(ct.centroids.reshape(-1)[flat_index(ct)], ct.dequantize())


def test_a_tied_weight_is_refused_for_centroid_training_with_the_fix():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    ct = fit_codebook(emb.weight, QuantSpec(CodebookQuantization(), 2, 16))
    with pytest.raises(ValueError, match="embeddings: false"):
        share_weights(model, codebook_state({"emb.weight": ct}), {})
