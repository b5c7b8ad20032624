"""GPTQ (`techniques/gptq.py`): the blocked, Cholesky form against the textbook one-column-at-a-time update,
against brute force on a tiny layer, and on whole models (the built-in GPT and a Hugging Face Llama)."""

import copy
import itertools

import pytest
import torch

from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.techniques.gptq import GPTQQuantization, _Hessian, gptq_quantize_, gptq_tensor
from orchestrator.techniques.magnitude import magnitude_masks
from orchestrator.techniques.quantize import QuantSpec
from orchestrator.techniques.rounding import AffineQuantization, QuantizedTensor


def _layer(rows, cols, seed):
    """A weight and the Hessian of correlated inputs (what makes error compensation pay)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) * 0.5 + torch.eye(cols)
    x = torch.randn(256, cols, generator=g) @ mix
    return w, 2 * x.T.double() @ x.double() / x.shape[0], x


def _output_error(w, q, x):
    return ((x @ (w - q).T) ** 2).sum().item()


def _textbook(w, H, spec, damping=0.01):
    """Optimal Brain Quantization one column at a time, in order, with the full inverse Hessian updated by
    Gaussian elimination after each column (no Cholesky, no blocks): GPTQ must choose the same levels."""
    W = w.clone().double()
    H = H.clone() + damping * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    static = spec.method.quantize_tensor(w, spec)
    s, z = static.scale[:, 0].double(), static.zero_point[:, 0].double()
    levels = torch.zeros_like(W)
    for j in range(W.shape[1]):
        lvl = (torch.round(W[:, j] / s) + z).clamp(0, 2**spec.bits - 1)
        levels[:, j] = lvl
        err = (W[:, j] - (lvl - z) * s) / Hinv[j, j]
        W[:, j + 1 :] -= err[:, None] * Hinv[j, j + 1 :][None, :]
        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1, :] / Hinv[j, j]
    return levels.to(torch.uint8)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_takes_the_same_levels_as_the_textbook_update(bits):
    w, H, _ = _layer(6, 300, seed=bits)  # more columns than a block: the lazy updates across blocks count
    spec = QuantSpec(GPTQQuantization(granularity="channel"), bits, 64)
    qt = gptq_tensor(w, H, spec, act_order=False)
    assert torch.equal(qt.q, _textbook(w, H, spec))


def test_gptq_beats_rounding_and_is_not_beaten_by_brute_force_by_much():
    """Brute force tries every level of every weight of a tiny layer (per row: 4^6 combinations at 2 bits)."""
    for seed in range(5):
        w, H, x = _layer(3, 6, seed)
        spec = QuantSpec(GPTQQuantization(granularity="channel"), 2, 64)
        rtn = spec.method.quantize_tensor(w, spec)
        gptq = gptq_tensor(w, H, spec, act_order=True, damping=1e-6)
        assert torch.equal(gptq.scale, rtn.scale)  # the same grid: only the rounding differs
        s, z = rtn.scale[:, 0], rtn.zero_point[:, 0].float()
        best = 0.0
        for r in range(3):
            combos = torch.tensor(list(itertools.product(range(4), repeat=6)), dtype=torch.float32)
            values = (combos - z[r]) * s[r]  # (4096, 6)
            errors = ((x @ (w[r] - values).T) ** 2).sum(0)
            best += errors.min().item()
        e_gptq, e_rtn = _output_error(w, gptq.dequantize(), x), _output_error(w, rtn.dequantize(), x)
        assert best <= e_gptq + 1e-3 and e_gptq <= e_rtn, (seed, best, e_gptq, e_rtn)


@pytest.mark.parametrize("granularity,act_order", [("channel", True), ("group", False), ("group", True), ("tensor", True)])
def test_gptq_keeps_the_grid_and_pruned_weights_at_zero(granularity, act_order):
    w, H, x = _layer(8, 96, seed=1)
    mask = torch.rand(8, 96, generator=torch.Generator().manual_seed(2)) > 0.5
    spec = QuantSpec(GPTQQuantization(granularity=granularity), 3, 32)
    qt = gptq_tensor(w * mask, H, spec, mask=mask, act_order=act_order)
    out = qt.dequantize(mask)
    assert isinstance(qt, QuantizedTensor) and qt.q.max() <= 7
    assert (out[~mask] == 0).all() and torch.equal(qt.dequantize()[~mask], out[~mask])  # the zero level
    rtn = spec.method.quantize_tensor(w * mask, spec).dequantize(mask)
    assert _output_error(w * mask, out, x) < _output_error(w * mask, rtn, x)


def _gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context=16, layers=2, width=64, heads=4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the tiny init, where every weight rounds alike
    return model


@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_gptq_on_a_gpt_beats_round_to_nearest_on_held_out_inputs(granularity):
    model = _gpt()
    calibration = list(torch.randint(40, (64, 16), generator=torch.Generator().manual_seed(1)).split(16))
    held_out = torch.randint(40, (32, 16), generator=torch.Generator().manual_seed(2))
    reference = model(held_out)[0]
    spec = QuantSpec(GPTQQuantization(granularity=granularity), 3, 16)
    gptq, rtn = copy.deepcopy(model), copy.deepcopy(model)
    quantized = gptq_quantize_(gptq, spec, calibration)
    rtn_spec = QuantSpec(AffineQuantization(granularity=granularity), 3, 16)
    rtn_spec.method.quantize(rtn, rtn_spec, {}, None)
    assert set(quantized) == {n for n, p in model.named_parameters() if p.dim() == 2}  # every matrix, head too
    for name, p in gptq.named_parameters():
        if name in quantized:
            assert torch.equal(p, quantized[name].dequantize())  # the model runs on exactly the stored levels
    e_gptq = ((gptq(held_out)[0] - reference) ** 2).mean()
    e_rtn = ((rtn(held_out)[0] - reference) ** 2).mean()
    assert e_gptq < 0.6 * e_rtn


def test_gptq_follows_pruning_masks_through_a_model():
    model = _gpt()
    masks = magnitude_masks(model, "global", 0.5, lm_head=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    calibration = list(torch.randint(40, (32, 16), generator=torch.Generator().manual_seed(1)).split(16))
    gptq_quantize_(model, QuantSpec(GPTQQuantization(), 4, 64), calibration, masks)
    for name, p in model.named_parameters():
        if name in masks:
            assert (p[~masks[name]] == 0).all(), name


def test_hessian_hook_averages_over_every_input_row():
    layer = torch.nn.Linear(5, 3)
    stats = _Hessian(layer)
    a, b = torch.randn(2, 7, 5), torch.randn(4, 5)
    layer(a), layer(b)
    x = torch.cat([a.reshape(-1, 5), b]).double()
    torch.testing.assert_close(stats.H, 2 * x.T @ x / x.shape[0])
    stats.handle.remove()


def test_gptq_on_a_hugging_face_llama_processes_its_decoder_layers():
    from transformers import LlamaConfig, LlamaForCausalLM

    from orchestrator.models.hf import HFCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True))
    model = HFCausalLM.wrap(lm).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    calibration = list(torch.randint(64, (32, 16), generator=torch.Generator().manual_seed(1)).split(8))
    held_out = torch.randint(64, (16, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(held_out)[0]
    spec = QuantSpec(GPTQQuantization(granularity="group"), 3, 16)
    gptq, rtn = copy.deepcopy(model), copy.deepcopy(model)
    quantized = gptq_quantize_(gptq, spec, calibration)
    rtn_spec = QuantSpec(AffineQuantization(granularity="group"), 3, 16)
    rtn_spec.method.quantize(rtn, rtn_spec, {}, None)
    linears = [n for n in quantized if ".layers." in n]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down in each decoder layer
    assert "lm.model.embed_tokens.weight" in quantized and "lm.lm_head.weight" not in quantized  # tied: once, as the head
    assert gptq.lm.lm_head.weight is gptq.lm.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        e_gptq = ((gptq(held_out)[0] - reference) ** 2).mean()
        e_rtn = ((rtn(held_out)[0] - reference) ** 2).mean()
    assert e_gptq < e_rtn
