"""What a trial does to a trained model, in order: prune [-> recover] -> quantize [-> recover] -> export -> kernels.

`compress` runs the pipeline's prune and quantize stages with the trial's strengths, writes the packed
artifact (its byte length is `size_mb`) and returns the model as it runs: with 8-bit symmetric Linear
layers on int8 kernels where the pipeline allows, otherwise on its dequantized float weights. What needs
training data or a cache (recovery fine-tuning, GPTQ's calibration) comes in as callables from the trial.
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
from orchestrator.config.techniques import CodebookQuantization, GPTQQuantization, Pipeline
from orchestrator.measure import count_params
from orchestrator.stages.export import export
from orchestrator.stages.prune import PruneResult, measured_sparsity, prune
from orchestrator.stages.codebook import refit_centroids
from orchestrator.stages.quantize import CodebookTensor, QuantizedTensor, QuantSpec, dequantize, int8_layers, quantize_, to_int8_kernels

Quantized = dict[str, QuantizedTensor | CodebookTensor]


@dataclass
class Compressed:
    model: nn.Module  # as it runs
    masks: dict[str, torch.Tensor]
    quantized: Quantized
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
    gptq: Callable[[nn.Module, QuantSpec, dict[str, torch.Tensor]], Quantized] | None = None,
    tune: Callable[[nn.Module, QuantSpec, dict[str, torch.Tensor], Quantized], nn.Module] | None = None,
    entropy: str = "zstd",
    timings: dict[str, float] | None = None,
) -> Compressed:
    """Prune, recover, quantize, recover `model` (in place where the shape allows), export it to `artifact`.

    Args:
        recover: fine-tunes a one-shot pruned model (`prune.recovery_steps` > 0); returns it with its masks.
        gptq: quantizes with GPTQ (calibrated, cached) in place; without it a GPTQ pipeline rounds to the
            nearest level of the same grid (what an untrained model's size is measured with).
        tune: fine-tunes the quantized model (`quantize.recovery_steps` > 0) and returns it trained: QAT's
            latent weights (quantized again here with the same grid) or, for a codebook, the trained
            centroids in place of each weight (the assignments kept).
        entropy: the artifact's entropy coding (`export.entropy`).
        timings: receives time_prune_s, time_recover_s, time_quantize_s, time_quantize_recover_s, time_export_s.
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
    quantized: Quantized = {}
    if spec is not None and spec.integer and isinstance(pipeline.quantize, GPTQQuantization) and gptq is not None:
        quantized = gptq(model, spec, masks)
    elif spec is not None:
        quantized = quantize_(model, spec, masks)
    timings["time_quantize_s"] = time.perf_counter() - t
    if quantized and tune is not None and pipeline.quantize.recovery_steps > 0:
        t = time.perf_counter()
        model = tune(model, spec, masks, quantized)
        quantized = _requantize(model, spec, masks, quantized)
        timings["time_quantize_recover_s"] = time.perf_counter() - t
    kernels = int8_layers(model, quantized) if pipeline.quantize is not None and pipeline.quantize.kernel == "auto" else []
    params, nonzero = count_params(model)
    t = time.perf_counter()
    float16 = spec is not None and spec.float16
    size = export(model, artifact, float16=float16, masks=masks, quantized=quantized, meta=meta, int8_layers=kernels,
                  entropy=entropy)
    timings["time_export_s"] = time.perf_counter() - t
    to_int8_kernels(model, quantized, kernels)
    return Compressed(model=model.eval(), masks=masks, quantized=quantized, int8_layers=kernels, size_bytes=size,
                      params=params, nonzero_params=nonzero, sparsity=sparsity_measured)


@torch.no_grad()
def _requantize(model: nn.Module, spec: QuantSpec, masks: dict[str, torch.Tensor], before: Quantized) -> Quantized:
    """The fine-tuned model on the grid again: a codebook keeps its assignments and takes the trained
    centroids; other methods round the latent weights to the nearest level (the quantizer QAT trained
    against)."""
    if not isinstance(spec.method, CodebookQuantization):
        return quantize_(model, spec, masks)
    weights = dict(model.named_parameters())
    out: Quantized = {}
    for name, ct in before.items():
        assert isinstance(ct, CodebookTensor)
        out[name] = refit_centroids(ct, weights[name], masks.get(name))
        weights[name].copy_(dequantize(out[name], masks.get(name)))
    return out
