"""GGUF export of a Llama-family model: read back with the `gguf` reader, every quantized weight dequantizes to the
product's (exactly for Q8_0 and Q4_0, within the reported offset rounding for Q4_1); transformers loads the file
and computes the product's logits; other grids and architectures are refused in one line."""

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("transformers")

import gguf  # noqa: E402

from orchestrator import ConfigError  # noqa: E402
from orchestrator.engine.compress import compress  # noqa: E402
from orchestrator.io.artifact import load_encoded  # noqa: E402
from orchestrator.runtimes.gguf import _permute_rows, export_gguf  # noqa: E402
from orchestrator.tasks.char_lm import build_model  # noqa: E402
from orchestrator.techniques.pipeline import Pipeline  # noqa: E402
from orchestrator.techniques.rounding import AffineQuantization, SymmetricQuantization  # noqa: E402


def _compressed(tiny_llama_dir, tmp_path, method, bits):
    from orchestrator.tasks.hf_lm import load_pretrained

    model, _ = load_pretrained(str(tiny_llama_dir))
    compress(model, Pipeline(prune=None, quantize=method(granularity="group")), {"bits": bits, "group_size": 32},
             artifact=tmp_path / "m.orc", meta={"tokenizer": {"tokenizer": str(tiny_llama_dir), "gguf_file": None}})
    return tmp_path / "m.orc"


@pytest.mark.parametrize("method,bits,kind", [(SymmetricQuantization, 8, "Q8_0"), (SymmetricQuantization, 4, "Q4_0"),
                                              (AffineQuantization, 4, "Q4_1")])
def test_a_gguf_file_reads_back_to_the_products_weights_and_transformers_loads_it(tiny_llama_dir, tmp_path, method, bits, kind):
    from transformers import AutoModelForCausalLM

    artifact = _compressed(tiny_llama_dir, tmp_path, method, bits)
    e = export_gguf(artifact, tmp_path / "m.gguf")
    assert e.kernels["lm.model.layers.0.self_attn.q_proj.weight"].startswith(kind)
    assert e.kernels["lm.model.norm.weight"] == "F32" and "lm.lm_head.weight" not in e.kernels  # tied: token_embd serves
    model, _, quantized = load_encoded(artifact)
    state = model.state_dict()
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == model.vocab_size
    for hf, gg, heads in [("lm.model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 4),
                          ("lm.model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 2),
                          ("lm.model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", None),
                          ("lm.model.embed_tokens.weight", "token_embd.weight", None)]:
        t = tensors[gg]
        assert t.tensor_type == gguf.GGMLQuantizationType[kind]
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(state[hf].shape)
        want = state[hf].numpy()
        if heads:  # llama.cpp's rotary layout
            want = want[_permute_rows(want.shape[0], heads)]
        error = np.abs(back - want).max()
        assert error == 0 if kind != "Q4_1" else error <= 1e-3 * np.abs(want).max()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    x = torch.randint(model.vocab_size, (2, 24))
    with torch.no_grad():
        want, got = model(x)[0], loaded(input_ids=x).logits
    assert (got - want).abs().max() <= (1e-4 if kind != "Q4_1" else 2e-2) * want.abs().max()


def test_other_grids_and_models_are_refused_in_one_line(tiny_llama_dir, tmp_path):
    artifact = _compressed(tiny_llama_dir, tmp_path, AffineQuantization, 8)
    with pytest.raises(ConfigError) as e:
        export_gguf(artifact, tmp_path / "m.gguf")
    assert "\n" not in str(e.value) and "8-bit affine levels" in str(e.value) and not (tmp_path / "m.gguf").exists()
    gpt = build_model(40, 16, layers=1, width=32, heads=2)
    compress(gpt, Pipeline(prune=None, quantize=SymmetricQuantization(granularity="group")), {"bits": 4, "group_size": 32},
             artifact=tmp_path / "g.orc", meta={})
    with pytest.raises(ConfigError, match="Llama-family"):
        export_gguf(tmp_path / "g.orc", tmp_path / "g.gguf")


def test_a_mixed_model_gives_each_tensor_its_own_gguf_type(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from orchestrator.tasks.hf_lm import load_pretrained

    model, _ = load_pretrained(str(tiny_llama_dir))
    method = SymmetricQuantization(granularity="group", allocation="sensitivity", candidate_bits=(4, 8, 16))
    c = compress(model, Pipeline(prune=None, quantize=method), {"effective_bits": 7.0, "group_size": 32}, artifact=tmp_path / "m.orc",
                 meta={"tokenizer": {"tokenizer": str(tiny_llama_dir), "gguf_file": None}})
    widths = dict(c.allocation.widths)
    assert len(set(widths.values())) > 1
    e = export_gguf(tmp_path / "m.orc", tmp_path / "m.gguf")
    for tensor, bits in widths.items():
        if tensor != "lm.lm_head.weight":  # tied: token_embd serves
            assert e.kernels[tensor].startswith({4: "Q4_0", 8: "Q8_0", 16: "F16"}[bits]), (tensor, e.kernels[tensor])
    reloaded, _, _ = load_encoded(tmp_path / "m.orc")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    x = torch.randint(reloaded.vocab_size, (2, 24))
    with torch.no_grad():
        want, got = reloaded(x)[0], loaded(input_ids=x).logits
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()
