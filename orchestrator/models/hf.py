"""Hugging Face causal language models (Llama, GPT-2, Qwen, SmolLM families) as compressible models.

`HFCausalLM` wraps any `AutoModelForCausalLM`; its `cfg` (the transformers config as JSON) is what
checkpoints and the packed artifact store to rebuild it. transformers is imported only when one is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from orchestrator.core.compressible import UnitGroup, UnitKind, UnitSlice, unit_index
from orchestrator.models.registry import register_architecture


@dataclass(frozen=True)
class HFConfig:
    config: str  # the transformers config, `PretrainedConfig.to_json_string()`: model_type and every field

    def to_transformers(self) -> Any:
        from transformers import AutoConfig

        fields = json.loads(self.config)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


@register_architecture("hf_causal_lm")
class HFCausalLM(nn.Module):
    """An `AutoModelForCausalLM` as the stages see a model."""

    def __init__(self, cfg: HFConfig, lm: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        # an architecture transformers has: never code an artifact's config names (`auto_map`)
        self.lm = lm if lm is not None else AutoModelForCausalLM.from_config(cfg.to_transformers(), trust_remote_code=False)

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

    def config_dict(self) -> dict[str, Any]:
        return {"config": self.cfg.config}

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> "HFCausalLM":
        return cls(HFConfig(**config))

    def output_layer(self) -> nn.Module | None:
        return self.lm.get_output_embeddings()

    def _llama_layers(self, kind: UnitKind) -> list[nn.Module]:
        layers = getattr(getattr(self.lm, "model", None), "layers", None)
        part, probe = ("mlp", "gate_proj") if kind == "mlp" else ("self_attn", "q_proj")
        if layers is None or not all(hasattr(getattr(layer, part, None), probe) for layer in layers):
            what = "Llama-style MLPs (gate/up/down)" if kind == "mlp" else "Llama-style attention (q/k/v/o_proj)"
            raise TypeError(f"structured pruning knows {what}; {type(self.lm).__name__} has none")
        return list(layers)

    def _head_shape(self) -> tuple[int, int, int]:
        """(key/value heads, query heads per key/value head, head size)."""
        config = self.lm.config
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        return kv, heads // kv, int(getattr(config, "head_dim", None) or config.hidden_size // heads)

    def structured_units(self, kind: UnitKind) -> list[UnitGroup]:
        """mlp: neuron k is gate and up row k and down column k; heads: a key/value group (with grouped-
        query attention, a key/value head and the query heads that share it) is its q, k, v rows and o
        columns. Biases, where the model has them, go with their rows."""
        state = self.state_dict()
        groups = []
        for i, _ in enumerate(self._llama_layers(kind)):
            if kind == "mlp":
                p = f"lm.model.layers.{i}.mlp."
                neuron = unit_index(int(self.lm.config.intermediate_size), 1)
                rows = [(p + f"{n}.{w}", 0) for n in ("gate_proj", "up_proj") for w in ("weight", "bias")]
                slices = [UnitSlice(name, dim, neuron) for name, dim in rows + [(p + "down_proj.weight", 1)]]
            else:
                p = f"lm.model.layers.{i}.self_attn."
                kv, group, d = self._head_shape()
                q, k = unit_index(kv, group * d), unit_index(kv, d)
                slices = [UnitSlice(p + f"{n}.{w}", 0, q if n == "q_proj" else k)
                          for n in ("q_proj", "k_proj", "v_proj") for w in ("weight", "bias")]
                slices.append(UnitSlice(p + "o_proj.weight", 1, q))
            groups.append(UnitGroup(tuple(s for s in slices if s.param in state)))
        return groups

    def resized(self, kind: UnitKind, n: int) -> "HFCausalLM":
        """A fresh model with `n` MLP neurons (or `n` key/value groups, head size kept) in every layer."""
        fields = json.loads(self.cfg.config)
        if kind == "mlp":
            fields["intermediate_size"] = n
        else:
            kv, group, d = self._head_shape()
            fields.update(num_attention_heads=n * group, num_key_value_heads=n, head_dim=d)
        return HFCausalLM(HFConfig(json.dumps(fields, sort_keys=True)))
