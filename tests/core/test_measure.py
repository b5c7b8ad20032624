import math

import torch
from torch.nn import functional as F

from orchestrator.core.measure import count_params, measure_latency, score_lm
from orchestrator.models.gpt import GPT, GPTConfig


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=7, context=5, layers=1, width=8, heads=2)).eval()


def test_score_lm_matches_a_direct_computation():
    model = _model()
    tokens = torch.randint(7, (53,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    score = score_lm(model, tokens, context=5, max_positions=1000, batch_size=3)
    windows = torch.stack([tokens[i * 5 : i * 5 + 6] for i in range(10)]).long()  # (52 // 5) windows
    with torch.no_grad():
        logits = model(windows[:, :-1])[0]
    y = windows[:, 1:]
    assert score.positions == 50
    assert score.accuracy == (logits.argmax(-1) == y).sum().item() / 50
    assert math.isclose(score.perplexity, math.exp(F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1)).item()), rel_tol=1e-5)


def test_score_lm_caps_positions():
    tokens = torch.zeros(1000, dtype=torch.uint8)
    assert score_lm(_model(), tokens, context=5, max_positions=12).positions == 15  # 3 whole windows


def test_latency_is_measured_with_the_requested_threads_and_restores_them():
    model = _model()
    before = torch.get_num_threads()
    lat = measure_latency(model, torch.zeros(1, 5, dtype=torch.long), threads=1, warmup=2, repeats=10, reference=_model())
    assert torch.get_num_threads() == before
    assert 0 < lat.p50_ms <= lat.p95_ms
    assert lat.reference_p50_ms is not None and lat.reference_p50_ms > 0
    assert lat.throughput > 0 and lat.threads == 1


def test_count_params_counts_zeros_separately():
    model = _model()
    total, nonzero = count_params(model)
    with torch.no_grad():
        model.head.weight.zero_()
    assert count_params(model) == (total, nonzero - model.head.weight.numel())


def test_decode_speed_is_measured_for_a_model_without_a_cache():
    from orchestrator.core.measure import measure_decode
    from orchestrator.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context=16, layers=1, width=16, heads=2))
    speed = measure_decode(model, torch.randint(20, (1, 16)), new_tokens=4, threads=1)
    assert 0 < speed < 1e6
