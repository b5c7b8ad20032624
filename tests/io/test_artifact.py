import dataclasses
import itertools

import numpy as np
import pytest
import torch

from orchestrator.core.bits import pack_bits, unpack_bits
from orchestrator.core.measure import artifact_bytes
from orchestrator.engine.compress import compress
from orchestrator.io.artifact import export, load_artifact, read_manifest
from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.techniques.base import TECHNIQUES
from orchestrator.techniques.codebook import CodebookQuantization
from orchestrator.techniques.gptq import GPTQQuantization
from orchestrator.techniques.magnitude import MagnitudePruning
from orchestrator.techniques.nm import SemiStructuredPruning
from orchestrator.techniques.pipeline import Pipeline
from orchestrator.techniques.quantize import Calibration, QuantSpec
from orchestrator.techniques.rounding import AffineQuantization, SymmetricQuantization
from orchestrator.techniques.structured import StructuredPruning

CFG = GPTConfig(vocab_size=11, context=8, layers=2, width=16, heads=2)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_and_density(bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, size=1001).astype(np.uint8)
    packed = pack_bits(values, bits)
    assert len(packed) == -(-1001 * bits // 8)  # ceil: dense, no padding per value
    np.testing.assert_array_equal(unpack_bits(packed, bits, 1001), values)


def test_eight_3_bit_values_take_three_bytes():
    assert len(pack_bits(np.arange(8, dtype=np.uint8), 3)) == 3


def _compressed(bits, sparsity, scheme="affine"):
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    masks = MagnitudePruning().prune(model, sparsity).masks
    quantized = _quantize(model, QuantSpec(method=TECHNIQUES['quantize'][scheme](), bits=bits, group_size=8), masks)
    return model, masks, quantized


@pytest.mark.parametrize("bits,sparsity", list(itertools.product([2, 3, 4, 8, 16, 32], [0.0, 0.5])))
def test_reload_is_bit_exact(tmp_path, bits, sparsity):
    model, masks, quantized = _compressed(bits, sparsity)
    path = tmp_path / "m.orc"
    size = export(model, path, float16=bits == 16, masks=masks, quantized=quantized, meta={"vocab": "abc"})
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
        sizes[bits, sparsity] = export(model, tmp_path / f"{bits}-{sparsity}.orc", float16=bits == 16, masks=masks, quantized=quantized)
    assert sizes[32, 0.0] > sizes[16, 0.0] > sizes[8, 0.0] > sizes[4, 0.0] > sizes[2, 0.0]
    assert sizes[32, 0.5] < sizes[32, 0.0]
    assert sizes[4, 0.5] < sizes[4, 0.0]
    n = sum(p.numel() for p in GPT(CFG).parameters())
    assert sizes[32, 0.0] > 4 * n  # every float32 value is stored, plus the manifest


def test_very_sparse_weights_are_stored_by_index_and_that_is_smaller(tmp_path):
    model, masks, _ = _compressed(32, 0.97)
    path = tmp_path / "s.orc"
    export(model, path, masks=masks)
    big = [e for e in read_manifest(path)["tensors"] if e["name"] == "head.weight"][0]
    assert "index" in big and "mask" not in big  # 3% kept: 2-byte indices beat a 1-bit-per-weight mask
    kept = int(masks["head.weight"].sum())
    assert big["index"][1] == 2 * kept < -(-masks["head.weight"].numel() // 8)
    loaded, _ = load_artifact(path)
    assert torch.equal(loaded.head.weight, model.head.weight)
    half_model, half_masks, _ = _compressed(32, 0.5)
    export(half_model, tmp_path / "h.orc", masks=half_masks)
    half = [e for e in read_manifest(tmp_path / "h.orc")["tensors"] if e["name"] == "head.weight"][0]
    assert "mask" in half and "index" not in half  # 50% kept: the bitmask is smaller


PIPELINES = {
    "magnitude": MagnitudePruning(),
    "layer": MagnitudePruning(scope="layer"),
    "2:4": SemiStructuredPruning(),
    "structured": StructuredPruning(target="both"),
    None: None,
}
QUANTS = {
    "affine-channel": AffineQuantization(),
    "symmetric-channel": SymmetricQuantization(),
    "affine-tensor": AffineQuantization(granularity="tensor"),
    "symmetric-group": SymmetricQuantization(granularity="group"),
    "affine-group-dequantized": AffineQuantization(granularity="group", kernel="dequantized"),
    "gptq-group": GPTQQuantization(granularity="group"),
    "codebook-tensor": CodebookQuantization(),
    "codebook-channel": CodebookQuantization(granularity="channel"),
    None: None,
}


def _quantize(model, spec, masks=None):
    return spec.method.quantize(model, spec, masks or {}, None)


CALIBRATION = Calibration(inputs=lambda n: torch.randint(11, (n, 8), generator=torch.Generator().manual_seed(2)),
                          cached=lambda key, build: build())  # GPTQ calibrated on random windows, uncached


@pytest.mark.parametrize("entropy", ["none", "zstd"])
@pytest.mark.parametrize("prune_name,quant_name,bits", [
    (p, q, b) for p in PIPELINES for q in QUANTS for b in ([3, 8] if q else [32])
])
def test_every_technique_and_combination_reloads_bit_exact(tmp_path, prune_name, quant_name, bits, entropy):
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(CFG, width=32, heads=4)).eval()
    pipeline = Pipeline(prune=PIPELINES[prune_name], quantize=QUANTS[quant_name])
    c = compress(model, pipeline, {"sparsity": 0.5, "bits": bits, "group_size": 8}, artifact=tmp_path / "m.orc", meta={},
                 calibration=CALIBRATION, entropy=entropy)
    loaded, _ = load_artifact(tmp_path / "m.orc")
    assert c.size_bytes == artifact_bytes(tmp_path / "m.orc")
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in c.model.modules()]
    x = torch.randint(11, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(c.model(x)[0], loaded(x)[0])
    if quant_name == "symmetric-channel" and bits == 8:
        assert len(c.int8_layers) == 2 * 4 + 1  # every Linear: qkv, proj, fc, fc_out per block, and the head
    else:
        assert c.int8_layers == []


def test_not_an_artifact_is_refused(tmp_path):
    bad = tmp_path / "x.orc"
    bad.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an orchestrator packed artifact"):
        load_artifact(bad)


def test_an_older_format_is_refused_with_the_fix(tmp_path):
    old = tmp_path / "old.orc"
    old.write_bytes(b"ORCHPK01" + bytes(8))
    with pytest.raises(ValueError, match="older orchestrator format"):
        load_artifact(old)


FORMATS = {  # (bits, prune sparsity, quantize method): every way a tensor can be stored
    "float32": (32, 0.0, None), "float16": (16, 0.0, AffineQuantization()), "float32 masked": (32, 0.5, None),
    "float32 by index": (32, 0.97, None), **{f"affine {b}-bit": (b, 0.0, AffineQuantization()) for b in range(2, 9)},
    "symmetric 4-bit": (4, 0.0, SymmetricQuantization()), "affine 3-bit masked": (3, 0.5, AffineQuantization()),
    "group-8 3-bit": (3, 0.0, AffineQuantization(granularity="group")),
    **{f"codebook {b}-bit": (b, 0.0, CodebookQuantization()) for b in (2, 3, 4)},
    "codebook 3-bit masked": (3, 0.5, CodebookQuantization(granularity="channel")),
}


@pytest.mark.parametrize("name", FORMATS)
def test_entropy_coding_is_lossless_and_never_larger_for_every_format(tmp_path, name):
    bits, sparsity, method = FORMATS[name]
    torch.manual_seed(0)
    sizes, outputs = {}, {}
    for entropy in ("none", "zstd"):
        pipeline = Pipeline(distill=False, prune=MagnitudePruning() if sparsity else None, quantize=method)
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(CFG, width=32, heads=4)).eval()
        c = compress(model, pipeline, {"sparsity": sparsity, "bits": bits, "group_size": 8}, artifact=tmp_path / f"{entropy}.orc",
                     meta={}, entropy=entropy)
        loaded, _ = load_artifact(tmp_path / f"{entropy}.orc")
        for (key, a), b in zip(c.model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), key
        sizes[entropy], outputs[entropy] = c.size_bytes, loaded.state_dict()
    assert sizes["zstd"] <= sizes["none"]
    for key, value in outputs["none"].items():
        assert torch.equal(value, outputs["zstd"][key]), key  # the same model either way
    coded = [e for e in read_manifest(tmp_path / "zstd.orc")["tensors"] if len(e.get("values", [])) > 2]
    assert coded, "nothing was entropy-coded"


def test_scales_are_stored_as_float16_unless_float16_cannot_hold_them(tmp_path):
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    with torch.no_grad():
        model.blocks[0].fc.weight.mul_(1e-7)  # scales below float16's smallest value: kept float32
    quantized = _quantize(model, QuantSpec(method=AffineQuantization(granularity="group"), bits=4, group_size=8))
    export(model, tmp_path / "m.orc", quantized=quantized)
    dtypes = {e["name"]: e["scale_dtype"] for e in read_manifest(tmp_path / "m.orc")["tensors"] if "scale_dtype" in e}
    assert dtypes.pop("blocks.0.fc.weight") == "<f4" and set(dtypes.values()) == {"<f2"}
    loaded, _ = load_artifact(tmp_path / "m.orc")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
