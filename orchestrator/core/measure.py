"""Accuracy, perplexity, latency, decoding speed and parameter counts, measured: pure functions of a model and its data."""

from __future__ import annotations

import inspect
import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LMScore:
    accuracy: float  # argmax next-token accuracy
    perplexity: float  # exp(mean cross-entropy in nats)
    positions: int  # predictions scored


@torch.inference_mode()
def score_lm(model: nn.Module, tokens: torch.Tensor, *, context: int, max_positions: int, batch_size: int = 64) -> LMScore:
    """Score next-token predictions over the first `max_positions` positions of `tokens`.

    The split is cut into consecutive, non-overlapping windows of `context` inputs (each predicts its
    `context` next symbols), so every scored position is scored once, deterministically.

    Args:
        model: maps (B, T) token ids to (B, T, V) logits (first element of its output).
        tokens: (N,) held-out token ids.
    """
    windows = min((len(tokens) - 1) // context, math.ceil(max_positions / context))
    if windows < 1:
        raise ValueError(f"need more than {context} tokens to score, got {len(tokens)}")
    model.eval()
    device = next(model.parameters()).device
    idx = torch.arange(windows)[:, None] * context + torch.arange(context + 1)  # (W, T+1)
    data = tokens[idx].long()
    correct, nll, count = 0, 0.0, 0
    for start in range(0, windows, batch_size):
        chunk = data[start : start + batch_size].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]  # (B, T) each
        logits = model(x)[0]  # (B, T, V)
        correct += int((logits.argmax(-1) == y).sum())
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    return LMScore(accuracy=correct / count, perplexity=math.exp(nll / count), positions=count)


@dataclass(frozen=True)
class Latency:
    p50_ms: float  # median batch-1 forward time
    p95_ms: float
    reference_p50_ms: float | None  # the reference model's median, timed interleaved in the same process
    throughput: float  # examples per second at `throughput_batch`
    threads: int  # torch intra-op threads while timing
    ratio_p50: float | None = None  # median of each repeat's model time / the reference's time right after it
    ratio_p95: float | None = None


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _time_once(model: nn.Module, x: torch.Tensor) -> float:
    t = time.perf_counter()
    model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    threads: int,
    warmup: int,
    repeats: int,
    reference: nn.Module | None = None,
    throughput_batch: int = 32,
) -> Latency:
    """Time forward passes of `model` on `example` (a batch of 1) after warm-up, as the model really runs.

    With a `reference`, each repeat times the model and then the reference, so both see the same machine
    state; their ratio is robust to the process-wide speed swings of small models on shared CPUs.
    """
    model.eval()
    if reference is not None:
        reference.eval()
    with torch_threads(threads):
        for _ in range(warmup):
            model(example)
            if reference is not None:
                reference(example)
        ours, ref = [], []
        for _ in range(repeats):
            ours.append(_time_once(model, example))
            if reference is not None:
                ref.append(_time_once(reference, example))
        batch = example.expand(throughput_batch, *example.shape[1:]).contiguous()
        model(batch)
        rounds = max(3, repeats // 10)
        t = time.perf_counter()
        for _ in range(rounds):
            model(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        throughput = rounds * throughput_batch / (time.perf_counter() - t)
    ratios = sorted(m / r for m, r in zip(ours, ref))
    return Latency(
        p50_ms=statistics.median(ours),
        p95_ms=_p95(sorted(ours)),
        reference_p50_ms=statistics.median(ref) if ref else None,
        throughput=throughput,
        threads=threads,
        ratio_p50=statistics.median(ratios) if ratios else None,
        ratio_p95=_p95(ratios) if ratios else None,
    )


def _p95(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def artifact_bytes(path: str | os.PathLike[str]) -> int:
    """Size is the byte length of the exported artifact, nothing else."""
    return os.path.getsize(path)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters)."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return total, nonzero


@torch.inference_mode()
def measure_decode(model: nn.Module, prompt: torch.Tensor, *, new_tokens: int, threads: int, repeats: int = 3) -> float:
    """Greedy decoding speed after a (1, T) prompt, in new tokens per second, prefill excluded, as the model
    really decodes: a Hugging Face model (`.lm`) one token at a time from its KV cache; any other model
    (no cache) by a full forward pass over its last T tokens per new token. Median of `repeats` runs
    after one untimed run."""
    model.eval()
    lm = getattr(model, "lm", None)

    # transformers 5.2x calls the KV cache `cache`; earlier versions `past_key_values`
    cache_arg = "cache" if lm is not None and "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

    def run() -> float:
        if lm is not None:
            out = lm(input_ids=prompt, use_cache=True)  # prefill, not timed
            cache, nxt = getattr(out, cache_arg), out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(new_tokens):
                out = lm(input_ids=nxt, use_cache=True, **{cache_arg: cache})
                cache, nxt = getattr(out, cache_arg), out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - t
        seq = prompt
        t = time.perf_counter()
        for _ in range(new_tokens):
            nxt = model(seq[:, -prompt.shape[1]:])[0][:, -1:].argmax(-1)
            seq = torch.cat([seq, nxt], dim=1)
        return time.perf_counter() - t

    with torch_threads(threads):
        run()
        seconds = statistics.median(run() for _ in range(repeats))
    return new_tokens / seconds
