"""ONNX Runtime: a compressed model as an ONNX graph whose quantized Linear weights run on ONNX Runtime's
low-bit kernels (`com.microsoft::MatMulNBits`), with the levels, scales and zero points the product chose.

How a model is written (`export_onnx`):

1. its artifact is read back in float (`io.artifact.load_encoded`): every quantized weight dequantized, and
   its integer form (`techniques.rounding.QuantizedTensor`) kept beside it;
2. torch's ONNX exporter (`torch.onnx.export(dynamo=True)`) writes the float model, its batch and sequence
   axes dynamic, its first output (the logits) as the graph's output;
3. every MatMul (or Gemm) whose weight is a quantized Linear weight is found by the weight's content (the
   exported initializer equals the dequantized weight or its transpose, bit for bit, whatever the exporter
   named it) and replaced by `MatMulNBits` on that weight's levels: B packed low bits first, a float32
   scale and a packed uint8 zero point per block of `block_size` inputs, so ONNX Runtime dequantizes
   exactly what the product's model runs: (q − z) · s.

A grid maps onto MatMulNBits when its bits are among `NBITS` and its groups are blocks: one group per row
(per channel or per tensor: one block as wide as the row, rounded up to a power of two, padded with the zero
point; split into blocks of at most 128 that repeat its scale) or groups of a power of two of at least 16
inputs. Any other weight (3, 5, 6 or 7 bits; groups of 48;
a codebook) has no ONNX Runtime kernel: the export refuses it in one line, or with `dequantized=True` keeps
it as a float MatMul and names it in `Exported.dequantized`. Embedding tables are looked up (Gather), not
multiplied: they stay float in the graph, their values the dequantized ones (`Exported.kernels` says so).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.core.bits import pack_bits, unpack_bits
from orchestrator.io.artifact import load_encoded
from orchestrator.io.files import replaced
from orchestrator.runtimes.base import Exported, Runtime, integer_widths, refuse, register_runtime
from orchestrator.techniques.quantize import EncodedTensor, layout
from orchestrator.techniques.rounding import GridQuantization, QuantizedTensor

NBITS = (2, 4, 8)  # the bit widths ONNX Runtime's CPU MatMulNBits kernel takes
MIN_BLOCK = 16  # its smallest block (a power of two)
MAX_BLOCK = 128  # the block a wider group is split into (2-bit blocks may not exceed 256): each part repeats its scale
OPSET = 18
MS_DOMAIN = "com.microsoft"


def block_size(qt: EncodedTensor) -> int | None:
    """The MatMulNBits block that holds `qt`'s groups exactly, or None when none does."""
    if not isinstance(qt, QuantizedTensor) or qt.bits not in NBITS:
        return None
    rows, cols = qt.q.shape
    _, groups, g = layout(qt.q.shape, qt.granularity, qt.group_size)
    if groups == 1:  # one scale per row (or per tensor): the row in blocks that repeat it
        return min(MAX_BLOCK, max(MIN_BLOCK, 1 << (cols - 1).bit_length()))
    return min(g, MAX_BLOCK) if g >= MIN_BLOCK and g & (g - 1) == 0 else None


def why_not(qt: EncodedTensor) -> str:
    """Why `qt` has no MatMulNBits form, in words."""
    if not isinstance(qt, QuantizedTensor):
        return f"its {qt.encoding!r} encoding is not a uniform grid"
    if qt.bits not in NBITS:
        return f"{qt.bits}-bit levels (MatMulNBits takes {', '.join(map(str, NBITS))} bits)"
    return (f"groups of {qt.group_size} inputs (MatMulNBits blocks are powers of two of at least {MIN_BLOCK}, or one group per "
            "row)")


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """(..., n) levels < 2^bits -> (..., n·bits/8) bytes, low bits first (n·bits a multiple of 8): the artifact's own
    dense packing (`core.bits`), row by row."""
    return np.frombuffer(pack_bits(values, bits), dtype=np.uint8).reshape(*values.shape[:-1], -1)


@dataclass(frozen=True)
class NBitsWeight:
    """One weight in MatMulNBits' form: Y = A · dequant(B)ᵀ, dequant = (q − z) · s per block along K."""

    b: np.ndarray  # (N, k_blocks, block·bits/8) uint8
    scales: np.ndarray  # (N, k_blocks) float32
    zero_points: np.ndarray  # (N, ceil(k_blocks·bits/8)) uint8
    k: int
    n: int
    bits: int
    block: int

    @classmethod
    def of(cls, qt: QuantizedTensor, block: int) -> "NBitsWeight":
        n, k = qt.q.shape
        blocks = -(-k // block)
        R, G, g = layout(qt.q.shape, qt.granularity, qt.group_size)
        scale = qt.scale.reshape(R, G).expand(n, G).numpy().astype(np.float32)
        zero = qt.zero_point.reshape(R, G).expand(n, G).numpy().astype(np.uint8)
        parts = blocks if G == 1 else g // block  # blocks per group, each with the group's scale and zero point
        scale, zero = np.repeat(scale, parts, axis=1)[:, :blocks], np.repeat(zero, parts, axis=1)[:, :blocks]
        levels = np.repeat(zero, block, axis=1)[:, : blocks * block].copy()  # the padding dequantizes to 0
        levels[:, :k] = qt.q.numpy()
        b = _pack(levels.reshape(n, blocks, block), qt.bits)
        per_row = -(-blocks * qt.bits // 8) * 8 // qt.bits  # zero points padded to whole bytes per row
        zp = np.full((n, per_row), 0, dtype=np.uint8)
        zp[:, :blocks] = zero
        return cls(b=b, scales=np.ascontiguousarray(scale), zero_points=_pack(zp, qt.bits), k=k, n=n, bits=qt.bits, block=block)

    def dequantize(self) -> np.ndarray:
        """(N, K) float32: what ONNX Runtime computes with (for checks)."""
        blocks = self.scales.shape[1]
        q = unpack_bits(self.b.tobytes(), self.bits, self.b.size * 8 // self.bits).reshape(self.n, blocks, self.block)
        z = unpack_bits(self.zero_points.tobytes(), self.bits, self.zero_points.size * 8 // self.bits).reshape(self.n, -1)
        w = (q.astype(np.float32) - z[:, :blocks, None]) * self.scales[..., None]
        return w.reshape(self.n, -1)[:, : self.k]


class _Logits(nn.Module):
    """The model's first output only (every task's model returns (outputs, hidden states))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def _fingerprint(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes() + str(a.shape).encode()).hexdigest()


def linear_weights(model: nn.Module) -> set[str]:
    """The parameter names of the model's Linear weights (what MatMulNBits can run)."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _linear_forms(state: Mapping[str, torch.Tensor], quantized: Mapping[str, EncodedTensor], linear: set[str]) -> dict[str, EncodedTensor]:
    """The integer form of every Linear weight that has one, by the Linear's name: its own, or that of the tensor it
    is tied to (a Hugging Face LM head shares the token embedding's levels, stored under the embedding's name)."""
    by_storage = {state[name].data_ptr(): qt for name, qt in quantized.items()}
    return {name: by_storage[state[name].data_ptr()] for name in sorted(linear) if state[name].data_ptr() in by_storage}


def refusals(forms: Mapping[str, EncodedTensor]) -> dict[str, str]:
    """{weight: why it has no MatMulNBits form} for the quantized Linear weights (`_linear_forms`)."""
    return {name: why_not(qt) for name, qt in forms.items() if block_size(qt) is None}


def export_onnx(
    artifact: str | os.PathLike[str], out: str | os.PathLike[str], example: torch.Tensor, *,
    build: Callable[[dict[str, Any]], nn.Module], encodings: Mapping[str, type[EncodedTensor]] | None = None,
    dequantized: bool = False,
) -> Exported:
    """Write the model of `artifact` to `out` (a `.onnx` file) for ONNX Runtime (see the module docstring).

    Args:
        example: an input the model takes (batch and sequence axes become dynamic).
        build: makes the empty model from its description (the task's `build_model`).
        dequantized: weights with no MatMulNBits form run as float MatMuls (named in the result) instead of
            refusing the export.
    """
    import onnx
    from onnx import helper, numpy_helper

    model, _, quantized = load_encoded(artifact, build, encodings)
    state, linear = model.state_dict(), linear_weights(model)
    forms_of = _linear_forms(state, quantized, linear)  # tied heads included, under their own names
    refused = refusals(forms_of)
    if not dequantized:
        refuse(refused, f"{artifact}: ONNX Runtime has no kernel for",
               f"quantize to {', '.join(map(str, NBITS))} bits in power-of-two groups, or allow a float fallback "
               "(`export.fallback: dequantized`)")
    proto = _torch_export(model, example)

    wanted: dict[str, tuple[str, bool]] = {}  # fingerprint -> (weight, transposed)
    prints: dict[str, str] = {}  # weight -> the fingerprint of its transpose (weights of equal values share one)
    for name in set(forms_of) - set(refused):
        w = state[name].numpy()
        prints[name] = _fingerprint(w.T)
        wanted[prints[name]] = (name, True)  # MatMul(x, Wᵀ)
        wanted.setdefault(_fingerprint(w), (name, False))  # Gemm(x, W, transB=1)
    graph = proto.graph
    found: dict[str, tuple[str, bool]] = {}
    for t in graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2:
            hit = wanted.get(_fingerprint(numpy_helper.to_array(t)))
            if hit is not None:
                found[t.name] = hit

    for node in graph.node:  # a weight the exporter did not fold into a transposed constant (a large tied embedding)
        if node.op_type == "Transpose" and node.input[0] in found and not found[node.input[0]][1]:
            perm = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [1, 0])
            if perm == [1, 0]:
                found[node.output[0]] = (found[node.input[0]][0], True)
    result = Exported(Path(out), dequantized=dict(refused))
    forms: dict[str, NBitsWeight] = {}
    nodes = []
    for node in graph.node:
        swapped = _replace(node, found, forms_of, forms, helper)
        if swapped is None:
            nodes.append(node)
            continue
        nodes.extend(swapped)
    if forms:
        del graph.node[:]
        graph.node.extend(nodes)
        for name, form in forms.items():
            graph.initializer.extend([
                numpy_helper.from_array(form.b, f"{name}.nbits_B"),
                numpy_helper.from_array(form.scales, f"{name}.nbits_scales"),
                numpy_helper.from_array(form.zero_points, f"{name}.nbits_zero_points"),
            ])
            result.kernels[name] = f"MatMulNBits {form.bits}-bit, block {form.block}"
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in found and n.output[0] not in used]
        for n in dead:  # the transposes that fed the replaced MatMuls
            graph.node.remove(n)
        used = {i for n in graph.node for i in n.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    done = {prints[n]: n for n in result.kernels}
    for name in set(prints) - set(result.kernels):  # its values equal another weight's, whose MatMulNBits serves both
        if prints[name] in done:
            result.kernels[name] = f"{result.kernels[done[prints[name]]]} (equal to {done[prints[name]]})"
    missing = sorted(set(prints) - set(result.kernels))
    result.kernels.update({n: "float32 table (Gather)" for n in quantized if n not in linear})  # tied: its head above
    if missing:
        raise RuntimeError(f"{artifact}: the exported graph has no MatMul on quantized weight(s) {', '.join(missing)}; "
                           "the exporter changed them (please report this)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with replaced(out) as tmp:
        onnx.save(proto, str(tmp))
    return result


def _replace(node: Any, found: Mapping[str, tuple[str, bool]], quantized: Mapping[str, EncodedTensor],
             forms: dict[str, NBitsWeight], helper: Any) -> list[Any] | None:
    """MatMulNBits (plus an Add for a Gemm's bias) in place of `node`, when it multiplies by a quantized weight."""
    if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in found:
        name, transposed = found[node.input[1]]
        if not transposed:
            return None
        bias = None
    elif node.op_type == "Gemm" and node.input[1] in found:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        name, transposed = found[node.input[1]]
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        if bool(attrs.get("transB", 0)) == transposed:  # the weight as Gemm reads it must be W with transB, Wᵀ without
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    else:
        return None
    qt = quantized[name]
    form = forms.get(name) or NBitsWeight.of(qt, block_size(qt))  # type: ignore[arg-type]
    forms[name] = form
    y = node.output[0] if bias is None else f"{node.output[0]}.nbits"
    out = [helper.make_node("MatMulNBits", [node.input[0], f"{name}.nbits_B", f"{name}.nbits_scales", f"{name}.nbits_zero_points"],
                            [y], name=f"{node.name or name}.nbits", domain=MS_DOMAIN, K=form.k, N=form.n, bits=form.bits,
                            block_size=form.block, accuracy_level=0)]
    if bias is not None:
        out.append(helper.make_node("Add", [y, bias], [node.output[0]], name=f"{node.name or name}.bias"))
    return out


def _torch_export(model: nn.Module, example: torch.Tensor) -> Any:
    """The float model's ONNX graph (its ModelProto), from torch's exporter, batch and sequence dynamic."""
    import warnings

    wrapper = _Logits(model).eval()
    example = example[:1].expand(2, *example.shape[1:]).contiguous()  # batch 2: torch.export specializes a size of 1
    dims = {0: torch.export.Dim.AUTO}
    if example.dim() >= 2 and not example.is_floating_point():  # token ids: the sequence axis too
        dims[1] = torch.export.Dim.AUTO
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, (example,), dynamo=True, dynamic_shapes=(dims,), input_names=["input"],
                                    output_names=["output"], opset_version=OPSET, verbose=False, optimize=True,
                                    external_data=False)
    return program.model_proto


class OrtModel:
    """An ONNX Runtime session that a task's `evaluate` and the latency timer call like one of its models:
    `model(x)` returns (output, []) as torch tensors."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int, device: str = "cpu") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"ONNX Runtime here has no CUDA execution provider ({', '.join(ort.get_available_providers())}); "
                               "install onnxruntime-gpu or measure on cpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.training = False

    def eval(self) -> "OrtModel":
        return self

    def parameters(self) -> Any:
        """Where callers look for the model's device: inputs go to ONNX Runtime as CPU arrays."""
        yield torch.zeros(0)

    def __call__(self, x: torch.Tensor, *, hidden: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        (y,) = self.session.run(None, {self.input: x.detach().cpu().numpy()})
        return torch.from_numpy(y), []


@register_runtime
class OnnxRuntime(Runtime):
    """ONNX Runtime on an `.onnx` graph exported from the artifact (`export_onnx`)."""

    name = "onnxruntime"
    format = "onnx"
    fallback = True

    def export(self, artifact: Path, out: Path, example: torch.Tensor, *, build: Callable[[dict[str, Any]], nn.Module],
               encodings: Mapping[str, type[EncodedTensor]], dequantized: bool) -> Exported:
        return export_onnx(artifact, out, example, build=build, encodings=encodings, dequantized=dequantized)

    def load(self, path: Path, *, build: Callable[[dict[str, Any]], nn.Module],
             encodings: Mapping[str, type[EncodedTensor]] | None, threads: int, device: str) -> Any:
        return OrtModel(path, threads=threads, device=device)

    def cannot_run(self, quantize: Any, values: Mapping[str, list[Any] | None], *, task: str) -> str | None:
        bits, named = integer_widths(quantize, values)
        if quantize is None or not bits:
            return None
        if not isinstance(quantize, GridQuantization):
            return (f"quantize method {quantize.method} stores no uniform grid, and ONNX Runtime's low-bit kernel "
                    "(MatMulNBits) runs only those; use affine, symmetric or gptq")
        odd = [b for b in bits if int(b) not in NBITS]
        if odd:
            return (f"{named} can be {odd[0]}, which ONNX Runtime's MatMulNBits cannot run (it takes "
                    f"{', '.join(map(str, NBITS))} bits); drop {odd[0]}")
        if quantize.granularity == "group":
            sizes = values.get("group_size")
            odd = [g for g in sizes or [] if not (int(g) >= MIN_BLOCK and int(g) & (int(g) - 1) == 0)]
            if sizes is None or odd:
                shown = odd[0] if odd else "any size in a range"
                return (f"`params.group_size` can be {shown}, and MatMulNBits blocks are powers of two of at least "
                        f"{MIN_BLOCK}; give group sizes among 16, 32, 64, 128")
        return None
