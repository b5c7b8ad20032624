"""A small GPT (nanoGPT-shaped) that can also return its per-layer hidden states for distillation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from orchestrator.core.compressible import UnitGroup, UnitKind, UnitSlice, unit_index
from orchestrator.models.registry import register_architecture


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int  # distinct symbols; the LM head predicts one of them
    context: int  # longest sequence the position table covers
    layers: int  # transformer blocks
    width: int  # residual stream width (n_embd)
    heads: int  # attention heads; width must divide evenly among them unless head_dim is given
    mlp: int | None = None  # MLP hidden size (null: 4 x width); structured pruning narrows it
    head_dim: int | None = None  # per-head size (null: width / heads); kept when heads are pruned away

    @property
    def mlp_size(self) -> int:
        return self.mlp if self.mlp is not None else 4 * self.width

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.width // self.heads


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_size
        inner = cfg.heads * cfg.head_size  # = width unless heads were pruned
        self.qkv = nn.Linear(cfg.width, 3 * inner)
        self.proj = nn.Linear(inner, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        inner = self.heads * self.head_dim
        q, k, v = self.qkv(x).split(inner, dim=2)  # 3 x (B, T, inner)
        # (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, inner))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.fc = nn.Linear(cfg.width, cfg.mlp_size)
        self.fc_out = nn.Linear(cfg.mlp_size, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


@register_architecture("gpt")
class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        # Not tied to `tok`: pruning and quantization then treat every matrix alike.
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("proj.weight", "fc_out.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.layers))

    @property
    def num_layers(self) -> int:
        return self.cfg.layers

    @property
    def hidden_size(self) -> int:
        return self.cfg.width

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> "GPT":
        return cls(GPTConfig(**config))

    def output_layer(self) -> nn.Module:
        return self.head

    def structured_units(self, kind: UnitKind) -> list[UnitGroup]:
        """mlp: neuron k is fc row k, its bias and fc_out column k; heads: head h is its q, k and v rows of
        the fused qkv projection (and their biases) and its columns of proj."""
        cfg, d = self.cfg, self.cfg.head_size
        inner = cfg.heads * d
        groups = []
        for i in range(cfg.layers):
            p = f"blocks.{i}."
            if kind == "mlp":
                neuron = unit_index(cfg.mlp_size, 1)
                slices = (UnitSlice(p + "fc.weight", 0, neuron), UnitSlice(p + "fc.bias", 0, neuron),
                          UnitSlice(p + "fc_out.weight", 1, neuron))
            else:
                qkv = unit_index(cfg.heads, d, offsets=(0, inner, 2 * inner))
                slices = (UnitSlice(p + "attn.qkv.weight", 0, qkv), UnitSlice(p + "attn.qkv.bias", 0, qkv),
                          UnitSlice(p + "attn.proj.weight", 1, unit_index(cfg.heads, d)))
            groups.append(UnitGroup(slices))
        return groups

    def resized(self, kind: UnitKind, n: int) -> "GPT":
        """A fresh GPT with `n` MLP neurons (or heads, each keeping its size) in every block."""
        shape = {"mlp": self.cfg.mlp_size, "head_dim": self.cfg.head_size, ("mlp" if kind == "mlp" else "heads"): n}
        return GPT(dataclasses.replace(self.cfg, **shape))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self, idx: torch.Tensor, *, hidden: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns logits (B, T, V) and, if `hidden`, each block's output (B, T, width)."""
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, C)
        states: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            if hidden:
                states.append(x)
        return self.head(self.ln_f(x)), states
