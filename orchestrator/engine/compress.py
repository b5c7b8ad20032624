"""What a trial does to a trained model, in order: prune [-> recover] -> [allocate widths ->] quantize [-> recover] ->
export -> kernels.

`compress` runs the pipeline's techniques with the trial's strengths, writes the packed artifact (its byte
length is `size_mb`) and returns the model as it runs: with 8-bit symmetric Linear layers on int8 kernels
where the pipeline allows, otherwise on its dequantized float weights. What needs training data or a cache
(recovery fine-tuning, a calibrating quantizer) comes in from the trial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from orchestrator.core.measure import count_params
from orchestrator.io.artifact import effective_bits, export
from orchestrator.techniques.allocation import Allocation, allocate_widths
from orchestrator.techniques.base import PruneResult
from orchestrator.techniques.int8 import int8_layers, to_int8_kernels
from orchestrator.techniques.pipeline import Pipeline
from orchestrator.techniques.quantize import Calibration, EncodedTensor, Quantized, QuantSpec
from orchestrator.techniques.weights import measured_sparsity, quantizable_weights

Recover = Callable[[PruneResult], PruneResult]  # fine-tunes a one-shot pruned model; returns it with its masks
Tune = Callable[[nn.Module, QuantSpec, dict[str, torch.Tensor], Quantized], nn.Module]  # fine-tunes a quantized model


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
    effective_bits: float | None = None  # bits per weight of the quantized tensors, read from the artifact (a quantize stage)
    allocation: Allocation | None = None  # `allocation: sensitivity`: each tensor's width and why


def compress(
    model: nn.Module, pipeline: Pipeline, params: Mapping[str, Any], *, artifact: str | os.PathLike[str],
    meta: dict[str, Any], entropy: str = "zstd", recover: Recover | None = None, tune: Tune | None = None,
    calibration: Calibration | None = None, timings: dict[str, float] | None = None,
    encodings: Mapping[str, type[EncodedTensor]] | None = None,
) -> Compressed:
    """Prune, recover, quantize, recover `model` (in place where the shape allows) with the trial's `params`
    (YAML names: sparsity, bits, group_size), export it to `artifact`.

    Args:
        recover: fine-tunes a one-shot pruned model (`prune.recovery_steps` > 0).
        tune: fine-tunes the quantized model (`quantize.recovery_steps` > 0) and returns it trained; the method
            puts it on its grid again (`QuantizeMethod.requantize`).
        calibration: training inputs and a cache for a method that calibrates (GPTQ); without it such a method
            rounds to the nearest level of its grid (what an untrained model's size is measured with).
        entropy: the artifact's entropy coding (`export.entropy`).
        timings: receives time_prune_s, time_recover_s, time_allocate_s, time_quantize_s, time_quantize_recover_s,
            time_export_s.
        encodings: how the artifact's integer forms are read back (to measure `effective_bits`): the sweep's
            (`SweepContext.encodings`, which ship the driver's to its workers); default this process's.
    """
    timings = timings if timings is not None else {}
    masks: dict[str, torch.Tensor] = {}
    if pipeline.prune is not None:
        t = time.perf_counter()
        with torch.no_grad():
            result = pipeline.prune.prune(model, float(params["sparsity"]))
        timings["time_prune_s"] = time.perf_counter() - t
        if recover is not None and pipeline.prune.recovery_steps > 0:
            t = time.perf_counter()
            result = recover(result)
            timings["time_recover_s"] = time.perf_counter() - t
        model, masks = result.model, result.masks
    sparsity = measured_sparsity(model)  # before quantization, which rounds more weights to zero
    model, spec, quantized, allocation = _quantize(model, pipeline, params, masks, tune=tune, calibration=calibration,
                                                  timings=timings)
    kernels = int8_layers(model, quantized) if pipeline.quantize is not None and pipeline.quantize.kernel == "auto" else []
    count, nonzero = count_params(model)
    names = list(quantizable_weights(model, embeddings=pipeline.quantize.embeddings)) if spec is not None else []
    t = time.perf_counter()
    float16: bool | set[str] = spec.float16_names() if spec is not None and spec.widths else spec is not None and spec.float16
    size = export(model, artifact, float16=float16, masks=masks, quantized=quantized, meta=meta, int8_layers=kernels,
                  entropy=entropy, allocation=allocation.to_json() if allocation is not None else None)
    timings["time_export_s"] = time.perf_counter() - t
    bits = effective_bits(artifact, names, encodings) if names else None
    to_int8_kernels(model, quantized, kernels)
    return Compressed(model=model.eval(), masks=masks, quantized=quantized, int8_layers=kernels, size_bytes=size,
                      params=count, nonzero_params=nonzero, sparsity=sparsity, effective_bits=bits, allocation=allocation)


def _quantize(model: nn.Module, pipeline: Pipeline, params: Mapping[str, Any], masks: dict[str, torch.Tensor], *,
              tune: Tune | None, calibration: Calibration | None, timings: dict[str, float],
              ) -> tuple[nn.Module, QuantSpec | None, Quantized, Allocation | None]:
    """The quantize stage and its recovery: the model as it runs, the spec it was quantized with (widths
    allocated), its integer weights and, mixed, its allocation."""
    spec, method = pipeline.quant_spec(params), pipeline.quantize
    allocation = None
    if spec is not None and not spec.allocated:
        t = time.perf_counter()
        spec, allocation = allocate_widths(model, spec, masks, calibration)
        timings["time_allocate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    quantized: Quantized = method.quantize(model, spec, masks, calibration) if spec is not None else {}
    timings["time_quantize_s"] = time.perf_counter() - t
    if quantized and tune is not None and method.recovery_steps > 0:
        t = time.perf_counter()
        model = tune(model, spec, masks, quantized)
        quantized = method.requantize(model, spec, masks, quantized)
        timings["time_quantize_recover_s"] = time.perf_counter() - t
    return model, spec, quantized, allocation
