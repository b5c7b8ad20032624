"""What a trial does to a trained model, in order: prune [-> recover] -> quantize -> export -> kernels.

`compress` runs the pipeline's prune and quantize stages with the trial's strengths, writes the packed
artifact (its byte length is `size_mb`) and returns the model as it runs: with 8-bit symmetric Linear
layers on int8 kernels where the pipeline allows, otherwise on its dequantized float weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from orchestrator.config import FLOAT_BITS
from orchestrator.config.techniques import Pipeline
from orchestrator.measure import count_params
from orchestrator.stages.export import export
from orchestrator.stages.prune import PruneResult, measured_sparsity, prune
from orchestrator.stages.quantize import QuantizedTensor, QuantSpec, int8_layers, quantize_, to_int8_kernels


@dataclass
class Compressed:
    model: nn.Module  # as it runs
    masks: dict[str, torch.Tensor]
    quantized: dict[str, QuantizedTensor]
    int8_layers: list[str]  # Linear layers on int8 kernels
    size_bytes: int  # the artifact's byte length
    params: int  # parameters of the compressed shape (before the int8 swap, which hides them from torch)
    nonzero_params: int
    sparsity: float  # measured after pruning: fraction of prunable weights that are zero


def quant_spec(pipeline: Pipeline, bits: int, group_size: int) -> QuantSpec | None:
    """The trial's quantizer, or None when the pipeline has no quantize stage or `bits` keeps float32."""
    if pipeline.quantize is None or FLOAT_BITS.get(bits) == "float32":
        return None
    return QuantSpec(method=pipeline.quantize, bits=bits, group_size=group_size)


def compress(
    model: nn.Module,
    pipeline: Pipeline,
    *,
    sparsity: float,
    bits: int,
    group_size: int,
    artifact: str | os.PathLike[str],
    meta: dict[str, Any],
    recover: Callable[[PruneResult], PruneResult] | None = None,
    timings: dict[str, float] | None = None,
) -> Compressed:
    """Prune, recover, quantize `model` (in place where the shape allows), export it to `artifact`.

    Args:
        recover: fine-tunes a one-shot pruned model (`prune.recovery_steps` > 0); returns it with its masks.
        timings: receives time_prune_s, time_recover_s, time_quantize_s, time_export_s.
    """
    timings = timings if timings is not None else {}
    masks: dict[str, torch.Tensor] = {}
    if pipeline.prune is not None:
        t = time.perf_counter()
        result = prune(model, pipeline.prune, sparsity)
        timings["time_prune_s"] = time.perf_counter() - t
        if recover is not None and pipeline.prune.recovery_steps > 0:
            t = time.perf_counter()
            result = recover(result)
            timings["time_recover_s"] = time.perf_counter() - t
        model, masks = result.model, result.masks
    sparsity_measured = measured_sparsity(model)  # before quantization, which rounds more weights to zero
    spec = quant_spec(pipeline, bits, group_size)
    t = time.perf_counter()
    quantized = quantize_(model, spec, masks) if spec is not None else {}
    timings["time_quantize_s"] = time.perf_counter() - t
    kernels = int8_layers(model, quantized) if pipeline.quantize is not None and pipeline.quantize.kernel == "auto" else []
    params, nonzero = count_params(model)
    t = time.perf_counter()
    float16 = spec is not None and spec.float16
    size = export(model, artifact, float16=float16, masks=masks, quantized=quantized, meta=meta, int8_layers=kernels)
    timings["time_export_s"] = time.perf_counter() - t
    to_int8_kernels(model, quantized, kernels)
    return Compressed(model=model.eval(), masks=masks, quantized=quantized, int8_layers=kernels, size_bytes=size,
                      params=params, nonzero_params=nonzero, sparsity=sparsity_measured)
