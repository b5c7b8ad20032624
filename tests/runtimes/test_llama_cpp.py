"""SmolLM2-135M in llama.cpp: quantized by the product in symmetric groups of 32 (GGUF's Q8_0 and Q4_0), exported
to GGUF with its tokenizer, loaded by llama-cpp-python, and scored there on the KJV test split: its perplexity is
the product's within `TOLERANCE` (llama.cpp's CPU kernels round the activations of a quantized matrix product to 8
bits; the product's torch model does not), and llama.cpp decodes."""

import pytest
import torch

pytestmark = pytest.mark.slow

TOLERANCE = 0.02  # relative difference of perplexities, product (torch) against llama.cpp, on the same windows


def test_smollm2_q8_0_and_q4_0_score_in_llama_cpp_what_they_score_in_the_product(tmp_path):
    from orchestrator.core.measure import score_lm
    from orchestrator.engine.compress import compress
    from orchestrator.io.artifact import load_artifact
    from orchestrator.runtimes.gguf import LlamaCppModel, export_gguf
    from orchestrator.tasks.corpora import builtin_text, tokenize
    from orchestrator.tasks.hf_lm import SMOLLM2, load_pretrained, tokenizer_source
    from orchestrator.techniques.pipeline import Pipeline
    from orchestrator.techniques.rounding import SymmetricQuantization

    source = tokenizer_source(SMOLLM2)
    model, tokenizer = load_pretrained(SMOLLM2)
    data = tokenize(builtin_text("kjv")[:200_000], tokenizer, vocab_size=model.vocab_size, meta={"tokenizer": source})
    for bits, kind in [(8, "Q8_0"), (4, "Q4_0")]:
        if bits != 8:
            model, _ = load_pretrained(SMOLLM2)
        artifact = tmp_path / f"m{bits}.orc"
        compress(model, Pipeline(distill=False, prune=None, quantize=SymmetricQuantization(granularity="group")),
                 {"bits": bits, "group_size": 32}, artifact=artifact, meta={"tokenizer": source})
        e = export_gguf(artifact, tmp_path / f"m{bits}.gguf")
        assert e.kernels["lm.model.layers.0.self_attn.q_proj.weight"] == kind
        with torch.inference_mode():
            ours = score_lm(load_artifact(artifact)[0], data.test, context=64, max_positions=1024, batch_size=8)
            llm = LlamaCppModel(e.path, threads=1)  # one core: the suite's other worker keeps the other
            theirs = score_lm(llm, data.test, context=64, max_positions=1024, batch_size=8)
        assert ours.positions == theirs.positions == 1024
        assert abs(theirs.perplexity - ours.perplexity) <= TOLERANCE * ours.perplexity, (bits, ours.perplexity, theirs.perplexity)
        llm.llm.reset()
        out = llm.llm.create_completion("In the beginning God created", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] > 0 and out["choices"][0]["text"].strip()
        print(f"SmolLM2 {kind}: perplexity {ours.perplexity:.3f} in the product, {theirs.perplexity:.3f} in llama.cpp")
        llm.close()
