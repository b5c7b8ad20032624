"""The teacher is trained once per storage; its measurements are redone whenever a setting they depend
on changes (evaluation positions, context, timing), and reused otherwise."""

import os
from pathlib import Path

import pytest

from orchestrator import Sweep, load_config
from orchestrator.engine.prepare import build_teacher, measure_teacher, prepare_data
from orchestrator.engine.service import start_service, stop_service
from orchestrator.io.artifact import ARTIFACT
from orchestrator.io.checkpoints import load_frozen

pytestmark = pytest.mark.slow


def test_a_cached_teacher_is_measured_again_when_the_evaluation_or_timing_settings_change(ray_session, tmp_path):
    base = {"storage": str(tmp_path), "task.chars": 100_000, "task.context": 16, "task.eval_tokens": 512,
            "teacher.layers": 1, "teacher.width": 16, "teacher.heads": 2, "teacher.steps": 20, "teacher.batch_size": 8,
            "measure.warmup": 1, "measure.repeats": 5}

    def teacher(**changes):
        sweep = Sweep(load_config(None, overrides={**base, **changes}))
        ctx, task = sweep.context, sweep.task
        data = prepare_data(ctx, task)
        key, entry, hit = build_teacher(ctx, task, data)
        service = start_service(ctx, task, data.path, ctx.storage.located(entry / ARTIFACT))
        try:
            return measure_teacher(ctx, task, data, key, entry, hit, service), task, data
        finally:
            stop_service(service)

    first, _, _ = teacher()
    assert not first.cache_hit and not first.measure_cache_hit and first.seconds_now > 0
    again, _, _ = teacher()
    assert again.cache_hit and again.measure_cache_hit and again.accuracy == first.accuracy and again.seconds_now == 0
    more, task, data = teacher(**{"task.eval_tokens": 2048})
    assert more.cache_hit and not more.measure_cache_hit and more.key == first.key != "" and more.measure_key != first.measure_key
    # what it reports is the cached weights scored on the new number of positions
    model, loaded = load_frozen(more.path, task.build_model), task.load_data(data.path)
    scored = task.evaluate(model, loaded, "val")
    assert more.accuracy == scored["accuracy"] and more.metrics["perplexity"] == scored["perplexity"] and scored["eval_positions"] == 2048
    assert more.test_accuracy == task.evaluate(model, loaded, "test")["accuracy"]
    timed, _, _ = teacher(**{"measure.repeats": 7})
    assert timed.cache_hit and not timed.measure_cache_hit and timed.seconds_now == pytest.approx(timed.measurement.measure_seconds)
    # a figure asked for only on demand is measured then, with the rest
    assert "peak_memory_mb" not in first.metrics
    memory, _, _ = teacher(**{"measure.repeats": 7, "objectives": ["accuracy", "peak_memory_mb"]})
    assert not memory.measure_cache_hit and memory.metrics["peak_memory_mb"] > 0


def test_the_measurement_service_scratch_is_in_the_node_cache_and_a_dead_services_is_removed(tmp_path, monkeypatch):
    """A sweep killed with its Ray never closes its service: the next service on the node removes what it left."""
    import subprocess
    import sys

    from orchestrator.engine.service import _scratch
    from orchestrator.tracking.models import package_copy

    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / "measure" / f"{gone.stdout.strip()}-abc"  # a process that has ended
    (left / "x").mkdir(parents=True)
    mine = Path(_scratch())
    assert mine.parent == tmp_path / "measure" and mine.name.startswith(f"{os.getpid()}-") and not left.exists()
    assert Path(_scratch()).exists() and mine.exists()  # a live service's is kept
    code = package_copy()  # the package's copy for MLflow models: made once per version, in the node cache
    assert code == package_copy() and (code / "tracking" / "pyfunc.py").is_file() and code.is_relative_to(tmp_path / "code")
