"""Compression techniques as plugins: one registered class per method (`base.register_technique`), with its
config, checks, application, training hooks and artifact encoding (see `base`).

Built in: pruning by `magnitude` (one-shot or gradual), `nm` (N:M) and `structured` (neurons and heads);
quantization by `affine` and `symmetric` rounding, `gptq` and `codebook` (trained weight sharing), each with
quantization-aware training or recovery fine-tuning; `int8` kernels for 8-bit symmetric weights. Importing
this package registers them.
"""

# each module registers its methods; this order is the order errors and docs list them in
from orchestrator.techniques import magnitude, structured, nm  # noqa: F401,I001
from orchestrator.techniques import rounding, gptq, codebook  # noqa: F401,I001
from orchestrator.techniques.base import STAGES, TECHNIQUES, PruneMethod, PruneResult, Technique, TrainingHook, register_technique
from orchestrator.techniques.pipeline import Pipeline
from orchestrator.techniques.quantize import ENCODINGS, EncodedTensor, QuantizeMethod, QuantSpec, register_encoding

__all__ = ["ENCODINGS", "STAGES", "TECHNIQUES", "EncodedTensor", "Pipeline", "PruneMethod", "PruneResult", "QuantSpec",
           "QuantizeMethod", "Technique", "TrainingHook", "register_encoding", "register_technique"]
