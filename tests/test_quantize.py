import pytest
import torch

from orchestrator.stages.quantize import dequantize, quantize_, quantize_minmax, quantizable_weights
from orchestrator.tasks.gpt import GPT, GPTConfig


def test_8_bit_matches_torch_fake_quantize_per_channel_affine():
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(0))
    qt = quantize_minmax(w, 8)
    lo, hi = w.amin(1), w.amax(1)
    scale = (hi - lo) / 255
    zero_point = -lo / scale  # a float zero point puts torch's grid on min + k·scale, as in DESIGN.md
    ref = torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, 0, 255)
    torch.testing.assert_close(dequantize(qt), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_each_value_lands_on_its_nearest_level(bits):
    w = torch.randn(6, 50, generator=torch.Generator().manual_seed(bits))
    got = dequantize(quantize_minmax(w, bits))
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    levels = lo + torch.arange(2**bits) * (hi - lo) / (2**bits - 1)  # (rows, 2^b): brute force
    nearest = levels.gather(1, (w[:, :, None] - levels[:, None, :]).abs().argmin(-1))
    torch.testing.assert_close(got, nearest, atol=1e-6, rtol=0)
    assert all(len(torch.unique(row)) <= 2**bits for row in got)
    # the ends of each row are representable exactly
    torch.testing.assert_close(got.amin(1), w.amin(1))
    torch.testing.assert_close(got.amax(1), w.amax(1))


def test_constant_row_is_kept_exactly():
    w = torch.full((2, 5), 0.3)
    torch.testing.assert_close(dequantize(quantize_minmax(w, 3)), w)


def test_quantize_keeps_pruned_entries_zero_and_skips_16_and_32_bits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=9, context=4, layers=1, width=8, heads=2))
    name = "blocks.0.fc.weight"
    mask = torch.rand_like(model.blocks[0].fc.weight) > 0.5
    with torch.no_grad():
        model.blocks[0].fc.weight.mul_(mask)
    q = quantize_(model, 3, {name: mask})
    assert set(q) == set(quantizable_weights(model))
    assert torch.all(model.blocks[0].fc.weight[~mask] == 0)
    before = model.blocks[0].fc.weight.clone()
    assert quantize_(model, 32) == {}
    assert torch.equal(model.blocks[0].fc.weight, before)
    assert quantize_(model, 16) == {}
    assert model.blocks[0].fc.weight.dtype == torch.float32


def test_bits_outside_2_to_8_are_refused():
    with pytest.raises(ValueError, match="bits"):
        quantize_minmax(torch.randn(2, 2), 9)
