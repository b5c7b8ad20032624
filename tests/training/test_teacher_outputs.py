"""Teacher outputs computed once: they must be what the teacher says on those windows."""

import pytest
import torch

from orchestrator.training.teacher_outputs import Passes, TeacherOutputs, compute_teacher_outputs
from orchestrator.tasks.char_lm import build_model
from orchestrator.tasks.lm import sample_windows


def _compute(teacher, train, *, blocks, seed, **kw):
    """The pool as the built-in tasks draw it: `blocks` windows of the teacher's context, seeded."""
    x, y = sample_windows(train, blocks, teacher.cfg.context, torch.Generator().manual_seed(seed))
    return compute_teacher_outputs(teacher, x, y, **kw)


def _teacher():
    torch.manual_seed(0)
    return build_model(20, 12, layers=3, width=16, heads=2).eval()


def test_outputs_match_a_teacher_forward_on_the_stored_windows(tmp_path):
    teacher = _teacher()
    train = torch.randint(20, (5000,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    out = _compute(teacher, train, blocks=70, seed=3, hidden=True, top_k=None, batch_size=32)
    blocks = torch.cat([out.inputs, out.targets[:, -1:]], 1)
    assert blocks.shape == (70, 13) and out.logits.shape == (70, 12, 20) and out.hidden.shape == (3, 70, 12, 16)
    # every window is a real slice of the training split
    for row in blocks[:5]:
        starts = [s for s in range(len(train) - 12) if torch.equal(train[s : s + 13].long(), row)]
        assert starts
    with torch.no_grad():
        logits, states = teacher(out.inputs, hidden=True)
    torch.testing.assert_close(out.logits.float(), logits, atol=1e-2, rtol=1e-3)  # float16 storage
    torch.testing.assert_close(out.hidden.float(), torch.stack(states), atol=1e-2, rtol=1e-3)

    out.save(tmp_path / "o.pt")
    back = TeacherOutputs.load(tmp_path / "o.pt")
    assert torch.equal(back.logits, out.logits) and torch.equal(back.inputs, out.inputs)
    passes = Passes(len(back.inputs), seed=0)
    first = passes.take(4)
    x, y, t_logits, idx, states = back.batch(first, hidden_layers=[0, 2])
    assert x.shape == y.shape == (4, 12) and t_logits.dtype == torch.float32 and idx is None
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert [s.shape for s in states] == [(4, 12, 16)] * 2
    drawn = torch.cat([first, *(passes.take(4) for _ in range(17))])  # 72 rows of a pool of 70
    assert sorted(drawn[:70].tolist()) == list(range(70))  # a student takes every window once per pass ...
    assert len(set(drawn[70:].tolist())) == 2  # ... then a new pass begins


def test_top_k_keeps_the_k_largest_logits_and_their_ids():
    teacher = _teacher()
    train = torch.randint(20, (2000,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    full = _compute(teacher, train, blocks=16, seed=0, hidden=False, top_k=None)
    top = _compute(teacher, train, blocks=16, seed=0, hidden=False, top_k=4)
    assert top.hidden is None and top.logits.shape == (16, 12, 4)
    assert torch.equal(full.logits.gather(-1, top.indices), top.logits)
    assert (full.logits.sort(-1, descending=True).values[..., :4] == top.logits).all()


def test_same_seed_same_windows():
    teacher = _teacher()
    train = torch.randint(20, (2000,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    a = _compute(teacher, train, blocks=8, seed=5, hidden=False, top_k=None)
    b = _compute(teacher, train, blocks=8, seed=5, hidden=False, top_k=None)
    c = _compute(teacher, train, blocks=8, seed=6, hidden=False, top_k=None)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)


def test_a_pool_keeps_only_the_teacher_layers_its_students_are_mapped_to():
    teacher = _teacher()
    train = torch.randint(20, (3000,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    every = _compute(teacher, train, blocks=16, seed=3, hidden=True, top_k=None, batch_size=8)
    some = _compute(teacher, train, blocks=16, seed=3, hidden=True, top_k=None, batch_size=8, layers=(0, 2))
    assert some.hidden.shape[0] == 2 and some.kept == (0, 2) and some.teacher_layers == every.teacher_layers == 3
    rows = torch.arange(4)
    assert torch.equal(some.batch(rows, hidden_layers=[2])[4][0], every.batch(rows, hidden_layers=[2])[4][0])
    with pytest.raises(ValueError, match=r"keep the hidden states of teacher layers \[0, 2\], not \[1\]"):
        some.batch(rows, hidden_layers=[1, 2])


def test_a_bf16_pool_is_the_teachers_forward_under_bfloat16_autocast_and_close_to_fp32():
    teacher = _teacher()
    train = torch.randint(20, (3000,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    fp32 = _compute(teacher, train, blocks=40, seed=2, hidden=True, top_k=None)
    bf16 = _compute(teacher, train, blocks=40, seed=2, hidden=True, top_k=None, precision="bf16")
    assert torch.equal(bf16.inputs, fp32.inputs) and bf16.logits.dtype == bf16.hidden.dtype == torch.float16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, states = teacher(bf16.inputs, hidden=True)
    assert torch.equal(bf16.logits, logits.to(torch.float16)) and torch.equal(bf16.hidden, torch.stack(states).to(torch.float16))
    assert not torch.equal(bf16.logits, fp32.logits)  # it did run in bfloat16 ...
    p, q = fp32.logits.float().softmax(-1), bf16.logits.float().softmax(-1)
    assert (p - q).abs().sum(-1).max() / 2 < 0.02  # ... and says nearly what float32 says
    with pytest.raises(ValueError, match="precision 'fp16'"):
        _compute(teacher, train, blocks=4, seed=2, hidden=False, top_k=None, precision="fp16")


def test_auto_pool_precision_is_bf16_only_where_the_device_multiplies_bfloat16_natively(monkeypatch):
    from orchestrator.training import teacher_outputs as t

    assert t.pool_precision("fp32", "cuda") == "fp32" and t.pool_precision("bf16", "cpu") == "bf16"
    for amx, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(t.torch.cpu, "get_capabilities", lambda amx=amx: {"amx_bf16": amx, "avx512_bf16": True})
        assert t.pool_precision("auto", "cpu") == want
    monkeypatch.delattr(t.torch.cpu, "get_capabilities")  # a torch before 2.8 cannot say: float32
    assert t.pool_precision("auto", "cpu") == "fp32"
    for supported, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(t.torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert t.pool_precision("auto", torch.device("cuda")) == want
