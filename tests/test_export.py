import itertools

import numpy as np
import pytest
import torch

from orchestrator.measure import artifact_bytes
from orchestrator.stages.export import export, load_artifact, pack_bits, unpack_bits
from orchestrator.stages.prune import prune_
from orchestrator.stages.quantize import quantize_
from orchestrator.tasks.gpt import GPT, GPTConfig

CFG = GPTConfig(vocab_size=11, context=8, layers=2, width=16, heads=2)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_and_density(bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, size=1001).astype(np.uint8)
    packed = pack_bits(values, bits)
    assert len(packed) == -(-1001 * bits // 8)  # ceil: dense, no padding per value
    np.testing.assert_array_equal(unpack_bits(packed, bits, 1001), values)


def test_eight_3_bit_values_take_three_bytes():
    assert len(pack_bits(np.arange(8, dtype=np.uint8), 3)) == 3


def _compressed(bits, sparsity):
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    masks = prune_(model, sparsity)
    quantized = quantize_(model, bits, masks)
    return model, masks, quantized


@pytest.mark.parametrize("bits,sparsity", list(itertools.product([2, 3, 4, 8, 16, 32], [0.0, 0.5])))
def test_reload_is_bit_exact(tmp_path, bits, sparsity):
    model, masks, quantized = _compressed(bits, sparsity)
    path = tmp_path / "m.orc"
    size = export(model, path, bits=bits, masks=masks, quantized=quantized, meta={"vocab": "abc"})
    assert size == artifact_bytes(path)
    loaded, meta = load_artifact(path)
    assert meta == {"vocab": "abc"}
    x = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_size_shrinks_with_bits_and_sparsity(tmp_path):
    sizes = {}
    for bits, sparsity in [(32, 0.0), (16, 0.0), (8, 0.0), (4, 0.0), (2, 0.0), (32, 0.5), (4, 0.5)]:
        model, masks, quantized = _compressed(bits, sparsity)
        sizes[bits, sparsity] = export(model, tmp_path / f"{bits}-{sparsity}.orc", bits=bits, masks=masks, quantized=quantized)
    assert sizes[32, 0.0] > sizes[16, 0.0] > sizes[8, 0.0] > sizes[4, 0.0] > sizes[2, 0.0]
    assert sizes[32, 0.5] < sizes[32, 0.0]
    assert sizes[4, 0.5] < sizes[4, 0.0]
    n = sum(p.numel() for p in GPT(CFG).parameters())
    assert sizes[32, 0.0] > 4 * n  # every float32 value is stored, plus the manifest


def test_not_an_artifact_is_refused(tmp_path):
    bad = tmp_path / "x.orc"
    bad.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an orchestrator packed artifact"):
        load_artifact(bad)
