import itertools

import pytest
import torch
from torch import nn

from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.techniques.int8 import Int8Linear, int8_layers, to_int8_kernels
from orchestrator.techniques.quantize import QuantSpec, add_fake_quant, fake_quantize, remove_fake_quant
from orchestrator.techniques.rounding import AffineQuantization, SymmetricQuantization
from orchestrator.techniques.weights import quantizable_weights

SCHEMES = {"affine": AffineQuantization, "symmetric": SymmetricQuantization}


def spec(bits, scheme="affine", granularity="channel", group_size=16, **kw):
    return QuantSpec(method=SCHEMES[scheme](granularity=granularity, **kw), bits=bits, group_size=group_size)


def _q(w, qs, mask=None):
    """One weight in integer form, by the spec's method."""
    return qs.method.quantize_tensor(w, qs, mask)


def _quantize(model, qs, masks=None):
    """Every quantizable weight of `model`, in place, by the spec's method."""
    return qs.method.quantize(model, qs, masks or {}, None)


def _w(rows=12, cols=40, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_8_bit_affine_per_channel_matches_torch_fake_quantize_per_channel_affine():
    w = _w()
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)  # the range, widened to hold 0
    scale = ((hi - lo) / 255).half().float()  # scales are stored, and used, as float16
    zero_point = torch.round(-lo / scale).int()
    ref = torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, 0, 255)
    assert torch.equal(_q(w, spec(8)).dequantize(), ref)


def test_8_bit_symmetric_per_tensor_matches_torch_fake_quantize_per_tensor_affine():
    w = _w(seed=1)
    scale = float((w.abs().max() / 127).half())
    ref = torch.fake_quantize_per_tensor_affine(w, scale, 128, 0, 255)
    assert torch.equal(_q(w, spec(8, "symmetric", "tensor")).dequantize(), ref)


def _levels(w, qs):
    """Brute force: every value each weight's group can take, (rows, cols, 2^b)."""
    qt = qs.method.quantize_tensor(w, qs)
    rows, cols = w.shape
    g = {"tensor": rows * cols, "channel": cols, "group": qt.group_size}[qt.granularity]
    # the group of each element, by index arithmetic independent of the quantizer's reshapes
    if qt.granularity == "tensor":
        scale, zp = qt.scale.expand(rows, cols), qt.zero_point.expand(rows, cols)
    else:
        col_group = torch.arange(cols) // g
        scale, zp = qt.scale[:, col_group], qt.zero_point[:, col_group]
    q = torch.arange(2**qs.bits)
    return (q - zp[..., None].float()) * scale[..., None], qt


@pytest.mark.parametrize("bits,scheme,granularity", list(itertools.product(
    [2, 3, 4, 5, 6, 7], ["affine", "symmetric"], ["tensor", "channel", "group"])))
def test_each_value_lands_on_its_nearest_level(bits, scheme, granularity):
    w = _w(6, 50, seed=bits)  # 50 columns: groups of 16 leave a ragged last group of 2
    qs = spec(bits, scheme, granularity)
    levels, qt = _levels(w, qs)
    got = qt.dequantize()
    nearest_gap = (w[..., None] - levels).abs().min(-1).values
    assert torch.all((got - w).abs() <= nearest_gap + 1e-6)
    assert torch.all((got[..., None] - levels).abs().min(-1).values <= 1e-6)  # on a level
    zero = torch.zeros(3, 50)
    assert torch.equal(qs.method.quantize_tensor(zero, qs).dequantize(), zero)


def test_group_granularity_has_one_scale_per_group_and_beats_per_channel():
    w = _w(8, 64, seed=3)
    w[:, :8] *= 20  # an outlier block hurts only its own group
    qt = _q(w, spec(4, granularity="group", group_size=16))
    assert qt.scale.shape == (8, 4)
    err_group = (qt.dequantize() - w).pow(2).mean()
    err_channel = (_q(w, spec(4)).dequantize() - w).pow(2).mean()
    assert err_group < err_channel


def test_quantize_keeps_pruned_entries_zero_and_skips_16_and_32_bits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=9, context=4, layers=1, width=8, heads=2))
    name = "blocks.0.fc.weight"
    mask = torch.rand_like(model.blocks[0].fc.weight) > 0.5
    with torch.no_grad():
        model.blocks[0].fc.weight.mul_(mask)
    q = _quantize(model, spec(3), {name: mask})
    assert set(q) == set(quantizable_weights(model))
    assert torch.all(model.blocks[0].fc.weight[~mask] == 0)
    before = model.blocks[0].fc.weight.clone()
    assert _quantize(model, spec(32)) == {}
    assert torch.equal(model.blocks[0].fc.weight, before)
    assert _quantize(model, spec(16)) == {}
    assert model.blocks[0].fc.weight.dtype == torch.float32
    assert set(_quantize(model, spec(4, embeddings=False))) == {n for n in q if not n.startswith(("tok", "pos"))}


def test_bits_outside_2_to_8_are_refused():
    with pytest.raises(ValueError, match="bits"):
        _q(torch.randn(2, 2), spec(9))


def test_fake_quantize_is_the_quantizer_forward_and_identity_backward():
    w = _w(4, 16).requires_grad_()
    qs = spec(3, "symmetric")
    out = fake_quantize(w, qs)
    assert torch.equal(out.detach(), qs.method.quantize_tensor(w, qs).dequantize())
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_qat_gradients_reach_the_latent_weights_and_ptq_reproduces_the_last_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=9, context=4, layers=1, width=8, heads=2))
    qs = spec(4, granularity="group", group_size=4)
    add_fake_quant(model, qs)
    x = torch.randint(9, (2, 4))
    logits = model(x)[0]
    logits.sum().backward()
    latent = model.blocks[0].fc.parametrizations.weight.original
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    remove_fake_quant(model)
    assert not any("parametrizations" in k for k in model.state_dict())
    _quantize(model, qs)
    with torch.no_grad():
        assert torch.equal(model(x)[0], logits.detach())


def test_int8_kernels_run_the_stored_levels():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=9, context=8, layers=1, width=16, heads=2)).eval()
    quantized = _quantize(model, spec(8, "symmetric"))
    layers = int8_layers(model, quantized)
    assert set(layers) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert int8_layers(model, _quantize(GPT(model.cfg), spec(8))) == []  # affine: no int8 kernel
    assert int8_layers(model, _quantize(GPT(model.cfg), spec(4, "symmetric"))) == []
    x = torch.randint(9, (1, 8))
    with torch.no_grad():
        before = model(x)[0]
        to_int8_kernels(model, quantized, layers)
        after = model(x)[0]
    assert isinstance(model.blocks[0].fc, Int8Linear)
    w = model.blocks[0].fc.inner.weight()
    assert torch.equal(w.dequantize(), quantized["blocks.0.fc.weight"].dequantize())
    assert (after - before).abs().max() < 0.05 * before.abs().max()  # activations quantized per batch
