"""A compressed model's held-out scores: validation under their own names, test as `test_<name>`."""

import torch

from orchestrator import load_config
from orchestrator.engine.context import resolve
from orchestrator.engine.evaluation import held_out_metrics
from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.tasks.char_lm import CharData, CharLMTask


def test_held_out_scores_on_fewer_positions_than_asked_carry_a_warning():
    cfg = load_config(None, overrides={"task.context": 8, "task.eval_tokens": 64})
    g = torch.Generator().manual_seed(0)
    data = CharData("abcdefgh", *(torch.randint(8, (n,), generator=g, dtype=torch.uint8) for n in (200, 200, 41)))
    model = GPT(GPTConfig(vocab_size=8, context=8, layers=1, width=8, heads=2))
    m = held_out_metrics(CharLMTask(cfg.task), model, data, resolve(cfg))
    assert m.metrics["eval_positions"] == 64 and m.metrics["test_eval_positions"] == 40  # 5 windows of 8 fit in 41
    assert m.warnings == ["the test split scored 40 positions, fewer than task.eval_tokens = 64"]
    assert "loss" not in m.metrics and 0 <= m.metrics["test_accuracy"] <= 1
