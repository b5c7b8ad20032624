import math

import pytest
import torch
from torch.nn import functional as F

from orchestrator.core.losses import (
    HiddenProjection,
    LossWeights,
    distillation_loss,
    hard_loss,
    layer_map,
    soft_loss,
    soft_loss_topk,
)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 8.0])
def test_soft_loss_is_t_squared_kl_divergence(T):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    ref = F.kl_div(F.log_softmax(zs.view(-1, 11) / T, -1), F.softmax(zt.view(-1, 11) / T, -1), reduction="batchmean")
    torch.testing.assert_close(soft_loss(zs, zt, T), T**2 * ref)


def test_soft_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 7)
    assert soft_loss(z, z, 2.0).abs() < 1e-6
    assert soft_loss(z, z.flip(-1), 2.0) > 0


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_top_k_soft_loss_against_a_direct_formula(T):
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(6, 13, generator=g), torch.randn(6, 13, generator=g)
    top, idx = zt.topk(4, dim=-1)
    expected = 0.0
    for n in range(6):  # position by position: teacher renormalised over its k ids, student's full softmax
        p_t = [math.exp(top[n, i] / T) for i in range(4)]
        p_t = [p / sum(p_t) for p in p_t]
        z = sum(math.exp(zs[n, v] / T) for v in range(13))
        expected += sum(p_t[i] * (math.log(p_t[i]) - math.log(math.exp(zs[n, idx[n, i]] / T) / z)) for i in range(4))
    assert soft_loss_topk(zs, top, idx, T).item() == pytest.approx(T**2 * expected / 6, rel=1e-5)
    full_top, full_idx = zt.topk(13, dim=-1)
    torch.testing.assert_close(soft_loss_topk(zs, full_top, full_idx, T), soft_loss(zs, zt, T))
    w = LossWeights(temperature=T, lam=0.0, beta=0.0)
    torch.testing.assert_close(distillation_loss(zs, top, idx[:, 0], w, teacher_indices=idx), soft_loss_topk(zs, top, idx, T))


def test_distillation_loss_weights_each_term():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(2, 3, 9, generator=g), torch.randn(2, 3, 9, generator=g)
    y = torch.randint(9, (2, 3), generator=g)
    hidden = torch.tensor(0.7)
    w = LossWeights(temperature=3.0, lam=0.4, beta=2.5)
    expected = soft_loss(zs, zt, 3.0) + 0.4 * F.cross_entropy(zs.view(-1, 9), y.view(-1)) + 2.5 * 0.7
    torch.testing.assert_close(distillation_loss(zs, zt, y, w, hidden=hidden), expected)
    torch.testing.assert_close(hard_loss(zs, y), F.cross_entropy(zs.view(-1, 9), y.view(-1)))


def test_layer_map_spreads_student_layers_over_the_teacher():
    assert layer_map(2, 4) == [(0, 1), (1, 3)]
    assert layer_map(1, 4) == [(0, 3)]
    assert layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert layer_map(3, 12)[-1] == (2, 11)


def test_hidden_projection_is_mse_of_projected_states_and_learns():
    torch.manual_seed(0)
    proj = HiddenProjection([(0, 1), (1, 3)], student_width=4, teacher_width=6)
    hs = [torch.randn(2, 3, 4) for _ in range(2)]
    ht = [torch.randn(2, 3, 6) for _ in range(4)]
    expected = (F.mse_loss(proj.maps[0](hs[0]), ht[1]) + F.mse_loss(proj.maps[1](hs[1]), ht[3])) / 2
    torch.testing.assert_close(proj(hs, ht), expected)
    proj(hs, ht).backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in proj.maps)


def test_hidden_projection_is_identity_for_equal_widths():
    proj = HiddenProjection([(0, 0)], 5, 5)
    h = torch.randn(1, 2, 5)
    assert proj([h], [h]) == 0
