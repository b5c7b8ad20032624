"""ONNX Runtime export: every grid ONNX Runtime's MatMulNBits takes runs exactly the product's dequantized weights
(the built-in GPT, a Hugging Face Llama, a model of a task of your own), what it cannot take is refused in one
line before a sweep starts, or runs as float when the user allows it and says so."""

import numpy as np
import pytest
import torch
from torch import nn

import orchestrator
from orchestrator import ConfigError
from orchestrator.engine.compress import compress
from orchestrator.io.artifact import load_encoded
from orchestrator.models.registry import build
from orchestrator.runtimes.onnx import NBitsWeight, OrtModel, block_size, export_onnx
from orchestrator.tasks.char_lm import build_model
from orchestrator.techniques.gptq import GPTQQuantization as GPTQ
from orchestrator.techniques.magnitude import MagnitudePruning
from orchestrator.techniques.pipeline import Pipeline
from orchestrator.techniques.quantize import QuantSpec
from orchestrator.techniques.rounding import AffineQuantization, SymmetricQuantization

TOLERANCE = 1e-5  # max |ONNX Runtime's logits - torch's|, relative to the largest |logit|: float32 summation order only


def _exact(path, reference: nn.Module, inputs: list[torch.Tensor]) -> None:
    session = OrtModel(path, threads=1)
    for x in inputs:
        with torch.no_grad():
            want = reference(x)[0]
        got = session(x)[0]
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= TOLERANCE * want.abs().max().item()


@pytest.mark.parametrize("method,granularity,bits,group_size", [
    (AffineQuantization, "group", 4, 32), (AffineQuantization, "group", 2, 16), (AffineQuantization, "channel", 8, 32),
    (AffineQuantization, "tensor", 4, 32), (SymmetricQuantization, "channel", 8, 32), (SymmetricQuantization, "group", 4, 64),
    (SymmetricQuantization, "channel", 2, 32),
])
def test_a_gpt_runs_its_own_levels_on_matmulnbits(tmp_path, method, granularity, bits, group_size):
    torch.manual_seed(bits)
    model = build_model(70, 64, layers=2, width=96, heads=2)  # K = 96 and 384: ragged groups and padded rows
    compress(model, Pipeline(prune=MagnitudePruning(), quantize=method(granularity=granularity)),
             {"sparsity": 0.3, "bits": bits, "group_size": group_size}, artifact=tmp_path / "m.orc", meta={})
    e = export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", torch.randint(70, (1, 64)), build=build)
    float_model, _, _ = load_encoded(tmp_path / "m.orc")  # the product's weights, dequantized (no int8 kernels)
    linear = [n for n, m in float_model.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(e.kernels) == sorted([f"{n}.weight" for n in linear] + ["pos.weight", "tok.weight"])
    assert all(e.kernels[f"{n}.weight"].startswith(f"MatMulNBits {bits}-bit") for n in linear) and not e.dequantized
    import onnx

    graph = onnx.load(str(e.path)).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == len(linear)
    assert not any(n.op_type in ("MatMul", "Gemm") for n in graph.node if n.input[1:2] and n.input[1] in {t.name for t in graph.initializer})
    _exact(e.path, float_model, [torch.randint(70, (1, 64)), torch.randint(70, (3, 17))])


def test_the_packed_form_dequantizes_to_the_products_weights():
    for method, granularity, bits, gs, cols in [(AffineQuantization, "group", 4, 32, 100), (AffineQuantization, "channel", 2, 32, 300),
                                                (SymmetricQuantization, "group", 8, 256, 600), (AffineQuantization, "tensor", 4, 32, 40)]:
        w = torch.randn(24, cols)
        spec = QuantSpec(method(granularity=granularity), bits, gs)
        qt = spec.method.quantize_tensor(w, spec)
        form = NBitsWeight.of(qt, block_size(qt))
        assert form.block <= 128 and form.b.shape == (24, -(-cols // form.block), form.block * bits // 8)
        assert np.array_equal(form.dequantize(), qt.dequantize().numpy())


def test_gptq_levels_export_exactly(tmp_path):
    torch.manual_seed(0)
    model = build_model(40, 32, layers=1, width=32, heads=2)
    inputs = torch.randint(40, (16, 32))
    from orchestrator.techniques.quantize import Calibration

    calibration = Calibration(inputs=lambda n: inputs[:n], cached=lambda parts, make: make())
    compress(model, Pipeline(prune=None, quantize=GPTQ(granularity="group")), {"bits": 4, "group_size": 16},
             artifact=tmp_path / "m.orc", meta={}, calibration=calibration)
    e = export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", inputs[:1], build=build)
    assert e.kernels["blocks.0.fc.weight"] == "MatMulNBits 4-bit, block 16"
    _exact(e.path, load_encoded(tmp_path / "m.orc")[0], [inputs[:4]])


class OwnMLP(nn.Module):
    """A model of a task of your own: not a registered architecture, rebuilt by its task."""

    architecture = "own-mlp"

    def __init__(self, inputs: int = 40, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.shape = {"inputs": inputs, "hidden": hidden, "classes": classes}
        self.fc1, self.fc2 = nn.Linear(inputs, hidden), nn.Linear(hidden, classes)

    def config_dict(self):
        return dict(self.shape)

    def forward(self, x, *, hidden=False):
        h = torch.relu(self.fc1(x))
        return self.fc2(h), [h] if hidden else []


def test_a_model_of_your_own_exports_with_its_task_builder(tmp_path):
    torch.manual_seed(0)
    model = OwnMLP()
    compress(model, Pipeline(prune=None, quantize=AffineQuantization(granularity="group")), {"bits": 4, "group_size": 16},
             artifact=tmp_path / "m.orc", meta={})
    e = export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", torch.randn(1, 40),
                    build=lambda d: OwnMLP(**d["config"]))
    # fc1 (K = 40) in blocks of 16 with a padded last block; fc2 (K = 64): the exporter writes Gemm or MatMul
    assert e.kernels == {"fc1.weight": "MatMulNBits 4-bit, block 16", "fc2.weight": "MatMulNBits 4-bit, block 16"}
    _exact(e.path, load_encoded(tmp_path / "m.orc", lambda d: OwnMLP(**d["config"]))[0], [torch.randn(1, 40), torch.randn(7, 40)])


def test_a_hugging_face_llama_exports_with_its_tied_embedding_as_a_table(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    from orchestrator.models.hf import HFCausalLM

    model = HFCausalLM.wrap(LlamaForCausalLM(cfg).eval())
    compress(model, Pipeline(prune=None, quantize=AffineQuantization(granularity="group")), {"bits": 4, "group_size": 32},
             artifact=tmp_path / "m.orc", meta={})
    e = export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", torch.randint(96, (1, 16)), build=build)
    assert e.kernels["lm.model.layers.0.self_attn.q_proj.weight"] == "MatMulNBits 4-bit, block 32"
    assert e.kernels["lm.model.embed_tokens.weight"] == "float32 table (Gather)"  # looked up in float
    assert e.kernels["lm.lm_head.weight"] == "MatMulNBits 4-bit, block 32"  # the tied head: the table's own levels
    _exact(e.path, load_encoded(tmp_path / "m.orc")[0], [torch.randint(96, (1, 16)), torch.randint(96, (2, 9))])


def test_weights_without_a_kernel_are_refused_or_run_as_float_when_allowed(tmp_path):
    torch.manual_seed(0)
    model = build_model(30, 16, layers=1, width=32, heads=2)
    compress(model, Pipeline(prune=None, quantize=AffineQuantization()), {"bits": 3, "group_size": 32},
             artifact=tmp_path / "m.orc", meta={})
    x = torch.randint(30, (1, 16))
    with pytest.raises(ConfigError) as e:
        export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", x, build=build)
    assert "\n" not in str(e.value) and "3-bit levels" in str(e.value) and "export.fallback: dequantized" in str(e.value)
    assert not (tmp_path / "m.onnx").exists()
    done = export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", x, build=build, dequantized=True)
    assert set(done.dequantized) == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.fc.weight",
                                     "blocks.0.fc_out.weight", "head.weight"}
    _exact(done.path, load_encoded(tmp_path / "m.orc")[0], [x])  # float MatMuls of the same dequantized weights


@pytest.mark.parametrize("overrides,needle", [
    ({"measure.runtime": "onnxruntime"}, "`params.bits` can be 3"),
    ({"export.formats": ["onnx"], "params.bits": {"choices": [4, 5]}}, "`params.bits` can be 5"),
    ({"measure.runtime": "onnxruntime", "params.bits": 4,
      "pipeline": ["distill", {"prune": {"method": "magnitude"}}, {"quantize": {"method": "codebook"}}]},
     "quantize method codebook stores no uniform grid"),
    ({"measure.runtime": "onnxruntime", "params.bits": 4, "params.group_size": {"choices": [32, 48]},
      "pipeline": ["distill", {"prune": {"method": "magnitude"}}, {"quantize": {"method": "affine", "granularity": "group"}}]},
     "`params.group_size` can be 48"),
])
def test_a_sweep_a_runtime_cannot_run_is_refused_in_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        orchestrator.load_config("search_spaces/smoke.yaml", overrides=overrides)
    assert "\n" not in str(e.value) and needle in str(e.value) and "export.fallback: dequantized" in str(e.value)
    allowed = orchestrator.load_config("search_spaces/smoke.yaml", overrides={**overrides, "export.fallback": "dequantized"})
    assert allowed.export.fallback == "dequantized"


def test_unknown_runtimes_and_formats_are_refused():
    for overrides, needle in [({"measure.runtime": "onnxruntime", "measure.device": "cuda", "params.bits": 4}, "measures on CPU here"),
                              ({"measure.runtime": "tvm"}, "registered runtime (torch, llama_cpp, onnxruntime)"),
                              ({"export.formats": ["tflite"]}, "a list among gguf, onnx"), ({"export.formats": "onnx"}, "must be a list")]:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            orchestrator.load_config("search_spaces/smoke.yaml", overrides=overrides)


def test_export_settings_round_trip_through_the_configs_yaml_form():
    cfg = orchestrator.load_config("search_spaces/smoke.yaml", overrides={"measure.runtime": "onnxruntime", "export.fallback": "dequantized"})
    assert cfg.to_dict()["export"] == {"entropy": "zstd", "formats": [], "fallback": "dequantized"}
    cfg = orchestrator.load_config("search_spaces/smoke.yaml", overrides={"export.formats": ["onnx"], "params.bits": {"choices": [4, 8, 32]}})
    assert cfg.to_dict()["export"]["formats"] == ["onnx"] and cfg.export.formats == ("onnx",)


def test_weights_of_equal_values_share_one_kernel(tmp_path):
    torch.manual_seed(0)
    model = build_model(30, 16, layers=2, width=32, heads=2)
    with torch.no_grad():
        model.blocks[1].fc.weight.copy_(model.blocks[0].fc.weight)  # the exporter may keep one initializer for both
    compress(model, Pipeline(prune=None, quantize=AffineQuantization(granularity="group")), {"bits": 4, "group_size": 16},
             artifact=tmp_path / "m.orc", meta={})
    x = torch.randint(30, (2, 16))
    e = export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", x, build=build)
    assert e.kernels["blocks.0.fc.weight"].startswith("MatMulNBits 4-bit") and e.kernels["blocks.1.fc.weight"].startswith("MatMulNBits 4-bit")
    _exact(e.path, load_encoded(tmp_path / "m.orc")[0], [x])


def test_a_mixed_model_runs_each_tensor_at_its_own_width(tmp_path):
    """Mixed precision: each integer tensor on MatMulNBits at its allocated width, 16- and 32-bit tensors as float
    MatMuls, outputs exact."""
    torch.manual_seed(5)
    model = build_model(70, 64, layers=2, width=96, heads=2)
    method = AffineQuantization(granularity="group", allocation="sensitivity", candidate_bits=(2, 4, 16, 32))
    c = compress(model, Pipeline(prune=None, quantize=method), {"effective_bits": 9.0, "group_size": 32}, artifact=tmp_path / "m.orc",
                 meta={})
    widths = dict(c.allocation.widths)
    assert {b for b in widths.values() if b <= 8} and {b for b in widths.values() if b > 8}  # some of each
    e = export_onnx(tmp_path / "m.orc", tmp_path / "m.onnx", torch.randint(70, (1, 64)), build=build)
    for tensor, bits in widths.items():
        if tensor in ("tok.weight", "pos.weight"):  # tables: looked up in float32 (Gather) at any width
            assert e.kernels.get(tensor, "float32 table (Gather)") == "float32 table (Gather)"
        elif bits <= 8:
            assert e.kernels[tensor].startswith(f"MatMulNBits {bits}-bit"), tensor
        else:
            assert tensor not in e.kernels
    float_model, _, _ = load_encoded(tmp_path / "m.orc")
    _exact(e.path, float_model, [torch.randint(70, (1, 64)), torch.randint(70, (2, 9))])
