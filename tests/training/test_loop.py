"""Distillation through a real Ray Train V2 TorchTrainer (gloo DDP on CPU), and in the caller's process."""

import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from orchestrator.config import TaskConfig
from orchestrator.core.losses import LossWeights
from orchestrator.core.measure import score_lm
from orchestrator.io.checkpoints import load_frozen
from orchestrator.tasks.char_lm import CharData, CharLMTask, build_data, build_model, load_corpus
from orchestrator.tasks.lm import sample_windows
from orchestrator.techniques.magnitude import MagnitudePruning
from orchestrator.techniques.quantize import QAT, QuantSpec
from orchestrator.techniques.rounding import AffineQuantization
from orchestrator.techniques.weights import HoldMasks, measured_sparsity
from orchestrator.training.job import DistillJob
from orchestrator.training.launch import run_distill
from orchestrator.training.loop import lr_factor, make_optimizer
from orchestrator.training.teacher_outputs import compute_teacher_outputs
from tests import harness

TASK = CharLMTask(TaskConfig(context=16))


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.pt"
    build_data(load_corpus("kjv")[:100_000]).save(path)
    return str(path)


def _model(data_path, **kw):
    gpt = dict(vocab_size=len(CharData.load(data_path).vocab), context=16, layers=1, width=16, heads=2, mlp=None,
               head_dim=None)
    return {"architecture": "gpt", "config": {**gpt, **kw}}


def _outputs(data_path, teacher_path, blocks, **kw):
    x, y = sample_windows(CharData.load(data_path).train, blocks, 16, torch.Generator().manual_seed(0))
    return compute_teacher_outputs(load_frozen(teacher_path, TASK.build_model), x, y, **kw)


def _job(data_path, **kw):
    base = dict(
        task=TASK, data_path=data_path, teacher_path=None, teacher_outputs_path=None, model=_model(data_path),
        steps=30, batch_size=8, warmup=2, lr=3e-3, optimizer="adamw", seed=0, weights=None, val_tokens=512, threads=1,
    )
    return DistillJob(**{**base, **kw})


@pytest.mark.slow
def test_ddp_distillation_with_two_workers_learns_and_returns_rank0_model(ray_session, data_path, tmp_path):
    teacher = run_distill(_job(data_path, steps=40), name="t", storage_path=str(tmp_path), num_workers=1,
                          use_gpu=False, cpus_per_worker=0.5)
    torch.save({"config": _job(data_path).model, "state_dict": teacher.state_dict}, tmp_path / "teacher.pt")
    job = _job(data_path, teacher_path=str(tmp_path / "teacher.pt"), model=_model(data_path, width=8),
               weights=LossWeights(temperature=2.0, lam=0.5, beta=1.0))
    done, windows = threading.Event(), []

    def measure():  # the node's measurement gate shut now and then: the ranks pause together (no deadlock in a collective)
        from orchestrator.io.gate import Gate

        while not done.is_set():
            with Gate().measuring(deadline_s=30) as window:
                time.sleep(0.05)
            windows.append(window)
            time.sleep(0.05)

    shutter = threading.Thread(target=measure)
    shutter.start()
    try:
        result = run_distill(job, name="s", storage_path=str(tmp_path), num_workers=2, use_gpu=False, cpus_per_worker=0.5)
    finally:
        done.set()
        shutter.join()
    data = CharData.load(data_path)
    student = build_model(len(data.vocab), 16, layers=1, width=8, heads=2)
    student.load_state_dict(result.state_dict)  # the projection is not part of the student
    untrained = build_model(len(data.vocab), 16, layers=1, width=8, heads=2)
    after = score_lm(student, data.val, context=16, max_positions=512)
    before = score_lm(untrained, data.val, context=16, max_positions=512)
    assert after.perplexity < before.perplexity
    assert result.record.val_accuracy == pytest.approx(after.accuracy)
    assert 0 < result.record.train_seconds < result.fit_seconds
    assert result.record.paused_seconds > 0
    assert windows and all(w.isolated for w in windows)  # every window found both ranks between steps in time


@pytest.fixture(scope="module")
def teacher_path(data_path, tmp_path_factory):
    """A small teacher trained in this process (in-process `fit`: no Ray)."""
    tmp = tmp_path_factory.mktemp("teacher")
    result = run_distill(_job(data_path, steps=60), name="t", storage_path=str(tmp), num_workers=1, use_gpu=False,
                         cpus_per_worker=1, in_process=True)
    torch.save({"config": _job(data_path).model, "state_dict": result.state_dict}, tmp / "teacher.pt")
    return str(tmp / "teacher.pt")


def _student_job(data_path, **kw):
    kw.setdefault("model", _model(data_path, width=8))
    return _job(data_path, weights=LossWeights(temperature=2.0, lam=0.5, beta=1.0), **kw)


def _perplexities(data_path, state_dict):
    data = CharData.load(data_path)
    student = build_model(len(data.vocab), 16, layers=1, width=8, heads=2)
    student.load_state_dict(state_dict)
    untrained = build_model(len(data.vocab), 16, layers=1, width=8, heads=2)
    return (score_lm(student, data.val, context=16, max_positions=512).perplexity,
            score_lm(untrained, data.val, context=16, max_positions=512).perplexity)


@pytest.mark.parametrize("top_k", [None, 5])
def test_distillation_from_cached_teacher_outputs_learns_in_process(data_path, teacher_path, tmp_path, top_k):
    outputs = _outputs(data_path, teacher_path, 64, hidden=True, top_k=top_k)
    outputs.save(tmp_path / "outputs.pt")
    job = _student_job(data_path, teacher_outputs_path=str(tmp_path / "outputs.pt"))
    result = run_distill(job, name="s", storage_path=str(tmp_path), num_workers=1, use_gpu=False,
                         cpus_per_worker=1, in_process=True)
    after, before = _perplexities(data_path, result.state_dict)
    assert after < before


def test_cached_outputs_without_hidden_states_refuse_beta(data_path, teacher_path, tmp_path):
    outputs = _outputs(data_path, teacher_path, 8, hidden=False, top_k=None)
    outputs.save(tmp_path / "outputs.pt")
    job = _student_job(data_path, teacher_outputs_path=str(tmp_path / "outputs.pt"))
    with pytest.raises(ValueError, match="hidden states"):
        run_distill(job, name="s", storage_path=str(tmp_path), num_workers=1, use_gpu=False, cpus_per_worker=1,
                    in_process=True)


def test_in_process_distillation_takes_one_worker(data_path, tmp_path):
    with pytest.raises(ValueError, match="num_workers=2"):
        run_distill(_job(data_path), name="s", storage_path=str(tmp_path), num_workers=2, use_gpu=False,
                    cpus_per_worker=1, in_process=True)


@pytest.mark.slow
def test_one_ray_train_worker_and_in_process_train_the_same_weights(ray_session, data_path, teacher_path, tmp_path):
    """The student cache does not key on the launcher: both must train identically."""
    job = _student_job(data_path, teacher_path=teacher_path)
    kw = dict(storage_path=str(tmp_path), num_workers=1, use_gpu=False, cpus_per_worker=1)
    on_ray = run_distill(job, name="s", **kw)
    local = run_distill(job, name="s-local", in_process=True, **kw)
    assert on_ray.state_dict.keys() == local.state_dict.keys()
    for k, v in on_ray.state_dict.items():
        assert torch.equal(v, local.state_dict[k]), k
    assert on_ray.record.val_accuracy == local.record.val_accuracy


@pytest.mark.parametrize("name", ["adamw", "adam", "rmsprop", "sgd", "adagrad"])
def test_every_optimizer_builds(name):
    opt = make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], 0.1)
    assert opt.param_groups[0]["lr"] == 0.1
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    assert lr_factor(0, warmup=10, steps=100) == pytest.approx(0.1)
    assert lr_factor(9, warmup=10, steps=100) == pytest.approx(1.0)
    assert lr_factor(10, warmup=10, steps=100) == pytest.approx(1.0)
    assert lr_factor(100, warmup=10, steps=100) == pytest.approx(0.1)


def _fit(job):
    return run_distill(job, name="x", storage_path="unused", num_workers=1, use_gpu=False, cpus_per_worker=1,
                       in_process=True)


def _hooks(sparsity, qat):
    """What the techniques do during distillation: gradual magnitude pruning to `sparsity`, and QAT."""
    gradual = MagnitudePruning(schedule="gradual", start=0.1, end=0.6, every=3).distill_hook({"sparsity": sparsity})
    return gradual, QAT(qat)


def test_gradual_pruning_and_qat_during_distillation(data_path, teacher_path):
    qat = QuantSpec(AffineQuantization(mode="qat"), bits=3, group_size=8)
    result = _fit(_student_job(data_path, teacher_path=teacher_path, hooks=_hooks(0.6, qat)))
    assert not any("parametrizations" in k for k in result.state_dict)  # plain latent weights come back
    student = build_model(CharData.load(data_path).vocab.__len__(), 16, layers=1, width=8, heads=2)
    student.load_state_dict(result.state_dict)
    assert measured_sparsity(student) == pytest.approx(0.6, abs=1e-3)
    qat.method.quantize(student, qat, {}, None)  # PTQ of the latent weights: the model validation scored
    data = CharData.load(data_path)
    assert score_lm(student, data.val, context=16, max_positions=512).accuracy == pytest.approx(result.record.val_accuracy)


def test_recovery_from_a_checkpoint_holds_pruned_weights_at_zero(data_path, teacher_path, tmp_path):
    data = CharData.load(data_path)
    student = build_model(len(data.vocab), 16, layers=1, width=8, heads=2)
    pruned = MagnitudePruning().prune(student, 0.7)
    model = _model(data_path, width=8)
    torch.save({"config": model, "state_dict": student.state_dict(), "masks": pruned.masks}, tmp_path / "init.pt")
    before = score_lm(student, data.val, context=16, max_positions=512).perplexity
    result = _fit(_student_job(data_path, teacher_path=teacher_path, model=model, init_path=str(tmp_path / "init.pt"),
                               hooks=(HoldMasks(),)))
    student.load_state_dict(result.state_dict)
    for name, mask in pruned.masks.items():
        assert torch.all(student.state_dict()[name][~mask] == 0), name
    assert score_lm(student, data.val, context=16, max_positions=512).perplexity < before


def test_a_temperature_schedule_and_weight_decay_change_training(data_path, teacher_path):
    base = _fit(_student_job(data_path, teacher_path=teacher_path))
    annealed = _fit(_student_job(data_path, teacher_path=teacher_path, temperature_end=0.5))
    decayed = _fit(_student_job(data_path, teacher_path=teacher_path, weight_decay=0.5))
    w = "blocks.0.fc.weight"
    assert not torch.equal(base.state_dict[w], annealed.state_dict[w])
    assert decayed.state_dict[w].norm() < base.state_dict[w].norm()


@pytest.mark.slow
def test_qat_switched_on_mid_training_and_gradual_pruning_under_ddp(ray_session, data_path, teacher_path, tmp_path):
    qat = QuantSpec(AffineQuantization(mode="qat"), bits=4, group_size=8)
    job = _student_job(data_path, teacher_path=teacher_path, hooks=_hooks(0.5, qat))
    result = run_distill(job, name="qat-ddp", storage_path=str(tmp_path), num_workers=2, use_gpu=False, cpus_per_worker=0.5)
    assert not any("parametrizations" in k for k in result.state_dict)
    student = build_model(len(CharData.load(data_path).vocab), 16, layers=1, width=8, heads=2)
    student.load_state_dict(result.state_dict)
    assert measured_sparsity(student) == pytest.approx(0.5, abs=1e-3)


def test_bf16_autocast_trains_a_different_float32_student(data_path, teacher_path):
    """`distill.precision: bf16` runs the forward pass and loss in bfloat16 (CPU autocast here, CUDA on a GPU):
    it learns, its weights stay float32, and it is not the float32 run under another name."""
    job = _student_job(data_path, teacher_path=teacher_path)
    fp32, bf16 = _fit(job), _fit(dataclasses.replace(job, precision="bf16"))
    assert all(v.dtype == torch.float32 for v in bf16.state_dict.values())
    assert any(not torch.equal(v, bf16.state_dict[k]) for k, v in fp32.state_dict.items())
    assert bf16.record.val_accuracy > 0.5 * fp32.record.val_accuracy and math.isfinite(bf16.record.val_loss)


@pytest.mark.slow
def test_a_ddp_worker_killed_mid_distillation_resumes_from_its_last_checkpoint(ray_session, data_path, tmp_path):
    job = _job(data_path, steps=300, checkpoint_every=25, batch_size=16)
    killed: list[int] = []

    def kill_one_worker() -> None:  # once checkpoints exist, SIGKILL one of the two DDP workers
        deadline, seen = time.monotonic() + 180, set()
        while time.monotonic() < deadline and not killed:
            workers = harness.train_workers()
            seen |= {p.parent.name for p in (tmp_path / "k").glob("**/checkpoint_*/training.pt")}
            # the third written (two are kept): the controller has taken in an earlier one as it polled
            if len(workers) == 2 and len(seen) >= 3:
                os.kill(workers[-1], signal.SIGKILL)
                killed.append(workers[-1])
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one_worker, daemon=True)
    watcher.start()
    result = run_distill(job, name="k", storage_path=str(tmp_path), num_workers=2, use_gpu=False, cpus_per_worker=0.5)
    watcher.join(timeout=1)
    assert killed, "no worker was killed: the run ended before its first checkpoint"
    # resumed from a checkpoint (a multiple of 25 steps in), not restarted from step 0, and trained to the end
    record = result.record
    assert record.resumed_from > 0 and record.resumed_from % 25 == 0, record.resumed_from
    assert record.steps == 300 and len(set(record.worker_weights)) == 1
    loss = record.curves["distill_loss"]
    assert loss[-1][0] == 300 and loss[-1][1] < loss[0][1]  # the curve spans the whole run, before and after the kill
    # and it ends where a run never interrupted ends: the data order is a function of seed, rank and step
    whole = run_distill(job, name="whole", storage_path=str(tmp_path), num_workers=2, use_gpu=False, cpus_per_worker=0.5)
    assert whole.record.resumed_from == 0 and whole.record.worker_weights == record.worker_weights


def test_the_loop_pauses_between_steps_while_the_nodes_gate_is_shut(data_path, teacher_path, tmp_path, monkeypatch):
    """`fit` holds the node's gate (`io.gate`) as a worker: no step, and no validation inside one, runs inside a
    measurement window, and the time paused is recorded."""
    from orchestrator.io.gate import GATE_ENV, Gate
    from orchestrator.training.loop import Check

    monkeypatch.setenv(GATE_ENV, str(tmp_path / "gate"))
    gate, stamps, windows, result = Gate(), [], [], {}
    check = Check(every=1, val_tokens=64, callback=lambda step, scores: stamps.append(time.time()))
    job = _student_job(data_path, teacher_path=teacher_path, steps=80)
    thread = threading.Thread(target=lambda: result.update(r=run_distill(
        job, name="x", storage_path="unused", num_workers=1, use_gpu=False, cpus_per_worker=1, in_process=True, check=check)))
    thread.start()
    while thread.is_alive():
        with gate.measuring():
            started = time.time()
            time.sleep(0.05)
            windows.append((started, time.time()))
        time.sleep(0.05)
    thread.join()
    assert len(stamps) == 79 and len(windows) >= 3
    assert [t for t in stamps for w in windows if w[0] <= t <= w[1]] == []
    assert result["r"].record.paused_seconds > 0


_KILLED_FIT = """
import sys, torch
from orchestrator.training.launch import run_distill
from tests.training.test_loop import _job
job = _job(sys.argv[1], steps=int(sys.argv[3]), checkpoint_every=int(sys.argv[4]))
from pathlib import Path
result = run_distill(job, name="x", storage_path="unused", num_workers=1, use_gpu=False, cpus_per_worker=1, in_process=True,
                     checkpoints=Path(sys.argv[2]))
from orchestrator.core.keys import tensors_digest
print("digest", tensors_digest(result.state_dict), result.record.resumed_from)
"""


@pytest.mark.slow
def test_in_process_distillation_killed_mid_way_resumes_bit_identical(data_path, tmp_path):
    """SIGKILL of the process that distils in-process, once it has checkpointed; the same run started again goes
    on from the checkpoint (its data order a function of seed and step) and ends with the weights of a run that was
    never interrupted."""
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    steps, every = "600", "50"
    args = [sys.executable, "-c", _KILLED_FIT, data_path, str(tmp_path / "ck"), steps, every]
    proc = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ck" / "training.pt").exists():  # the first checkpoint: kill it now, mid-way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert torch.load(tmp_path / "ck" / "training.pt", weights_only=False)["step"] < int(steps)
    resumed = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300)
    whole = subprocess.run([*args[:4], str(tmp_path / "whole"), steps, every], cwd=root, capture_output=True, text=True,
                           timeout=300)
    (digest, start), (expected, zero) = (r.stdout.split()[1:] for r in (resumed, whole))
    assert int(start) > 0 and int(start) % int(every) == 0 and zero == "0", (resumed.stderr[-2000:], whole.stderr[-2000:])
    assert digest == expected  # bit-identical to the uninterrupted run
    assert not (tmp_path / "ck").exists()  # a finished run leaves no checkpoint behind
