"""The frontier methods inside real trials (`engine.trial.run_pipeline`, in this process): GPTQ calibrated on the
training split and cached, QAT and codebook recovery after quantization (cached, also on the teacher
itself), entropy-coded artifacts, students that stop once converged."""

import dataclasses

import pytest
import torch

import orchestrator
from orchestrator.engine.context import resolve
from orchestrator.engine.prepare import prepared
from orchestrator.engine.trial import TrialContext, run_pipeline
from orchestrator.io.artifact import load_artifact, read_manifest
from orchestrator.io.storage import fetch
from orchestrator.tasks import TrialParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tc(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("frontier") / "runs"
    sweep = orchestrator.Sweep.from_yaml("search_spaces/smoke.yaml", storage=str(storage), **{"params.beta": 0.0})
    with prepared(sweep.context, sweep.task) as p:  # the data, the teacher and its outputs; the measurement service
        yield TrialContext(ctx=sweep.context, task=sweep.task, data=p.data, teacher=p.teacher, teacher_outputs=p.outputs,
                           sweep_id="t", service=p.service)


def _trial(tc, trial_id, pipeline, **params):
    shape = {"layers": 1, "width": 32} if "distill" in pipeline else {"layers": 2, "width": 64}  # the teacher's: defaults
    fixed = {**shape, "heads": 2, "beta": 0.0, "lambda": 0.5, "temperature": 2.0, "optimizer": "adamw", "lr": 5e-3,
             "sparsity": 0.0, "bits": 32}
    cfg = orchestrator.load_config("search_spaces/smoke.yaml", overrides={
        "storage": tc.ctx.config.storage, "pipeline": pipeline, "params": {**fixed, **params}})
    values = {name: spec.value for name, spec in cfg.params.items()}
    return run_pipeline(TrialParams.from_config(values), dataclasses.replace(tc, ctx=resolve(cfg)), trial_id=trial_id)


def _encodings(outcome):
    return {e["encoding"] for e in read_manifest(fetch(outcome.artifact))["tensors"] if "encoding" in e}


def test_gptq_with_recovery_is_calibrated_cached_and_reloads_exactly(tc):
    pipeline = ["distill", {"quantize": {"method": "gptq", "granularity": "group", "calibration_windows": 32, "recovery_steps": 10}}]
    first = _trial(tc, "g1", pipeline, bits=3, group_size=16)
    assert first.status == "COMPLETED" and first.cache_hits["gptq"] is False and first.cache_hits["quantize_recover"] is False
    assert _encodings(first) == {"quant", "float32"}
    again = _trial(tc, "g2", pipeline, bits=3, group_size=16)
    assert again.cache_hits == {**first.cache_hits, "gptq": True, "quantize_recover": True, "distill": True}
    assert again.metrics["accuracy"] == first.metrics["accuracy"] and again.metrics["size_mb"] == first.metrics["size_mb"]
    model, _ = load_artifact(fetch(first.artifact))
    x = tc.task.example(tc.task.load_data(fetch(tc.data.path)))
    reloaded, _ = load_artifact(fetch(again.artifact))
    with torch.no_grad():
        assert torch.equal(model(x)[0], reloaded(x)[0])


def test_the_teacher_fine_tunes_its_own_codebook_and_pruned_copy(tc):
    pipeline = [{"prune": {"method": "nm", "recovery_steps": 10}},
                {"quantize": {"method": "codebook", "granularity": "channel", "recovery_steps": 10}}]
    tuned = _trial(tc, "c1", pipeline, bits=2)
    plain = _trial(tc, "c0", [{"prune": {"method": "nm", "recovery_steps": 10}}, {"quantize": {"method": "codebook", "granularity": "channel"}}], bits=2)
    assert tuned.status == "COMPLETED" and "codebook" in _encodings(tuned)
    assert tuned.cache_hits["quantize_recover"] is False and tuned.cache_hits["recover"] is False
    assert plain.cache_hits["recover"] is True  # the same pruned teacher, recovered once
    # the same indices and layout, other centroid values (entropy coding: sizes equal to within the coded centroids)
    assert tuned.metrics["size_mb"] == pytest.approx(plain.metrics["size_mb"], rel=0.02)
    assert tuned.metrics["perplexity"] != plain.metrics["perplexity"]
    assert _trial(tc, "c2", pipeline, bits=2).cache_hits["quantize_recover"] is True


def test_a_converged_student_stops_and_says_how_many_steps_it_took(tc):
    cfg = orchestrator.load_config("search_spaces/smoke.yaml", overrides={
        "storage": tc.ctx.config.storage, "distill": {"steps": 300, "check_every": 10, "patience": 1, "warmup": 2},
        "pipeline": ["distill"], "params": {"layers": 1, "width": 16, "heads": 2, "beta": 0.0, "lambda": 0.5,
                                            "temperature": 2.0, "optimizer": "sgd", "lr": 1e-3, "sparsity": 0.0, "bits": 32}})
    values = {name: spec.value for name, spec in cfg.params.items()}
    outcome = run_pipeline(TrialParams.from_config(values), dataclasses.replace(tc, ctx=resolve(cfg)), trial_id="p")
    assert outcome.status == "COMPLETED"
    assert 20 <= outcome.metrics["distill_steps"] < 300


def test_searched_steps_set_each_students_training(tc):
    short = _trial(tc, "s1", ["distill"], steps=12)
    longer = _trial(tc, "s2", ["distill"], steps=24)
    assert (short.metrics["distill_steps"], longer.metrics["distill_steps"]) == (12, 24)
    assert short.cache_hits["distill"] is False and longer.cache_hits["distill"] is False  # steps are part of the student
