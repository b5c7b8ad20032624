"""What a sweep records in MLflow, start to end: the parent run (the config, the environment, the
teacher's figures), the callback that makes the trials' child runs, and after the trials the front:
tags, files and plots on the parent, models in the front points' runs, the registry, the tracking cost."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from orchestrator.objectives import OBJECTIVES
from orchestrator.results import reference_point
from orchestrator.tracking.runs import SweepTracker, TrialRunsCallback, environment_tags

if TYPE_CHECKING:
    from orchestrator.config import SweepConfig
    from orchestrator.prepare import Prepared
    from orchestrator.tasks import Task

log = logging.getLogger("orchestrator")


def _device(cfg: SweepConfig) -> str:
    if not cfg.resources.use_gpu:
        return "cpu"
    import torch

    return f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cuda"


def sweep_description(cfg: SweepConfig, task: Task) -> str:
    searched = cfg.searched
    return (f"Sweep `{cfg.name}`: {cfg.trials} trials of task {task.name}, pipeline {cfg.pipeline.label}, "
            f"sampler {cfg.sampler}, searching {', '.join(searched) or 'nothing'}; the front is over "
            f"{', '.join(cfg.objectives)}. Its files: pareto.csv, pareto.html, pareto.png, trials.csv, hypervolume.png, tracking.json.")


def start_sweep_run(cfg: SweepConfig, task: Task, sweep_id: str, prep: Prepared,
                    previous: Sequence[Mapping[str, Any]] | None) -> tuple[SweepTracker, str, dict[str, str]]:
    """The MLflow parent run: the whole config as params, what was reused and the environment as tags, the
    teacher's figures as metrics; for a resumed sweep (`previous`: its recorded trials) the same run, reopened
    (`SweepTracker.reopen`). Returns (tracker, parent run id, the environment tags)."""
    resumed = None if previous is None else len(previous)
    teacher, outputs = prep.teacher, prep.outputs
    tracker = SweepTracker(cfg.resolved_tracking_uri, cfg.experiment or cfg.name)
    env = environment_tags(device=_device(cfg), data_key=prep.data.key)
    parent = tracker.reopen(sweep_id, {row["trial_id"]: row for row in previous}) if previous is not None else None
    if parent is not None:  # the same parent run, finished again at the end (its params stay the first run's)
        tracker.set_tags(parent, {"resumed": "true", "previous_trials": str(resumed), "trials_total": str(cfg.trials),
                                  "stale_runs_closed": str(tracker.stale_closed)})
        log.info("MLflow: sweep run %s reopened%s", parent,
                 f"; {tracker.stale_closed} trial run(s) its driver left RUNNING closed KILLED" if tracker.stale_closed else "")
        tracker.setup_seconds = tracker.seconds
        return tracker, parent, env
    if resumed is not None:
        log.warning("MLflow: no run of sweep %s in experiment %s of %s; the resumed sweep gets a new one", sweep_id,
                    tracker.experiment_id, tracker.tracking_uri)
    parent = tracker.start(
        run_name=sweep_id,
        params=cfg.to_dict(),
        description=sweep_description(cfg, task),
        tags={"sweep_id": sweep_id, "task": task.name, "teacher_key": teacher.key,
              "teacher_cache_hit": str(teacher.cache_hit).lower(),
              "teacher_measurements_cache_hit": str(teacher.measure_cache_hit).lower(), "storage": cfg.store.where,
              "pipeline": cfg.pipeline.label, "objectives": ",".join(cfg.objectives), **env,
              "measure.node": prep.service_where["node"], "measure.device": prep.service_where["device"],
              "measure.cores": ",".join(map(str, prep.service_where["cores"])),
              **({"register": cfg.register} if cfg.register else {}),
              **({"warning": "; ".join(f"teacher: {w}" for w in teacher.warnings)} if teacher.warnings else {}),
              **({"resumed": "true", "previous_trials": str(resumed)} if resumed is not None else {}),
              **({"teacher_outputs_key": outputs.key, "teacher_outputs_cache_hit": str(outputs.cache_hit).lower()}
                 if outputs else {})},
    )
    tracker.log_metrics(parent, {
        "teacher_accuracy": teacher.accuracy, "teacher_perplexity": teacher.perplexity,
        "teacher_test_accuracy": teacher.test_accuracy,
        "teacher_size_mb": teacher.size_bytes / 1e6, "teacher_latency_ms": teacher.latency_ms,
        "teacher_params": teacher.params,
        **{f"teacher_{k}": v for k, v in teacher.metrics.items() if k in OBJECTIVES},
        **{f"hypervolume_ref_{k}": v for k, v in reference_point(cfg, teacher).items()},
        **({"teacher_outputs_mb": outputs.size_bytes / 1e6, "teacher_outputs_seconds": outputs.seconds} if outputs else {}),
    })
    tracker.call("save view (the runs table's)", tracker.client.set_experiment_tag, tracker.experiment_id,
                 VIEW_TAG + parent, json.dumps(runs_view(cfg, sweep_id)))
    tracker.setup_seconds = tracker.seconds
    return tracker, parent, env


VIEW_TAG = "mlflow.sharedViewState."  # an experiment tag the MLflow UI reads for ?viewStateShareKey=<key>


def runs_view(cfg: SweepConfig, sweep_id: str) -> dict[str, Any]:
    """The MLflow UI's runs table for one sweep (a shared view, keyed by the parent run id): its parent
    and trial runs, flat, best first in the first objective, with the objectives, their test scores, the
    searched params and the front tag as columns."""
    first = cfg.objectives[0]
    searched = cfg.searched
    columns = [f"metrics.`{name}`" for name in cfg.objectives]
    columns += [f"metrics.`test_{name}`" for name in cfg.objectives if OBJECTIVES[name].where == "held_out"]
    columns += [f"params.`{name}`" for name in searched] + ["tags.`pareto`", "tags.`recommended`"]
    return {"searchFilter": f"tags.sweep_id = '{sweep_id}'", "orderByKey": f"metrics.`{first}`",
            "orderByAsc": OBJECTIVES[first].direction == "min", "selectedColumns": columns}


def trial_runs(cfg: SweepConfig, task: Task, tracker: SweepTracker, env: dict[str, str], *, first_number: int) -> TrialRunsCallback:
    """The Tune callback that makes each trial's child run, tagged and described."""
    return TrialRunsCallback(tracker, tags={"pipeline": cfg.pipeline.label, "task": task.name, "sweep_id": tracker.sweep_id, **env},
                             first_number=first_number, describe=cfg.pipeline.describe)


def record_front(cfg: SweepConfig, task: Task, tracker: SweepTracker, parent: str, trials: pd.DataFrame, *,
                 files: Sequence[Path], hypervolumes: Sequence[tuple[int, float]], example: Any, recommended: str | None,
                 sweep_id: str, out_dir: Path) -> dict[str, str]:
    """After the trials: the front's tags, the parent's files (front files, trials table, hypervolume
    curve), an MLflow model in each front point's run, the registry (with `register`) and the tracking
    cost. Returns trial id -> model URI."""
    from orchestrator.plots import write_hypervolume_plot
    from orchestrator.tracking.models import log_front_models, register_front

    for run_id in trials.loc[trials["pareto"] & trials["run_id"].notna(), "run_id"]:
        tracker.set_tags(run_id, {"pareto": "true"})
    earlier = ~trials["trial_id"].isin(list(tracker.child_ids)) & (trials["status"] == "COMPLETED")  # a resumed sweep's
    for run_id in trials.loc[earlier & ~trials["pareto"] & trials["run_id"].notna(), "run_id"]:
        tracker.set_tags(run_id, {"pareto": "false"})  # on the front before, perhaps; not now
    for run_id in trials.loc[(trials["status"] == "COMPLETED") & ~trials["feasible"] & trials["run_id"].notna(), "run_id"]:
        tracker.set_tags(run_id, {"feasible": "false"})
    table = out_dir / "trials.csv"
    trials.to_csv(table, index=False)
    for path in [*files, table, write_hypervolume_plot(hypervolumes, out_dir)]:
        tracker.log_artifact(parent, path)
    started = len(tracker.child_ids)
    # what the trials cost: their runs, params, metrics, curves, tags, model.orc and the parent's per-trial
    # hypervolume, front tags and files (not the sweep run's own start, once per sweep; not the front's models)
    per_trial = 1000 * (tracker.seconds - tracker.setup_seconds) / started if started else None
    t = time.perf_counter()
    try:  # a model MLflow cannot take costs the sweep its MLflow model, never its results
        models = log_front_models(tracker, trials, np.asarray(example), task=task)
    except Exception as e:
        line = f"the front's MLflow models were not logged ({type(e).__name__}: {e}); each trial keeps its model.orc"
        log.warning("%s", line)
        tracker.failures.append(line)
        models = {}
    run_ids = trials.set_index("trial_id")["run_id"]
    for trial_id in {*models, *([recommended] if isinstance(run_ids.get(recommended), str) else [])}:
        tracker.set_tags(run_ids[trial_id], {**({"model_uri": models[trial_id]} if trial_id in models else {}),
                                             **({"recommended": "true"} if trial_id == recommended else {})})
    if recommended is not None:
        tracker.set_tags(parent, {"recommended_trial": trials.set_index("trial_id")["run_name"].get(recommended) or recommended})
    if cfg.register and models:
        aliases = register_front(tracker, cfg.register, trials, models, objectives=cfg.objectives,
                                 recommended=recommended, sweep_id=sweep_id)
        tracker.set_tags(parent, {f"registered.{alias}": f"models:/{cfg.register}/{version}" for alias, version in aliases.items()})
        log.info("registered %d front models as %s (aliases: %s)", len(models), cfg.register,
                 ", ".join(f"{a} -> v{v}" for a, v in aliases.items()))
    tracker.log_metrics(parent, {"tracking_seconds": tracker.seconds, "front_models_seconds": time.perf_counter() - t,
                                 **({"tracking_ms_per_trial": per_trial} if per_trial is not None else {}),
                                 "tracking_failures": len(tracker.failures)})
    cost = out_dir / "tracking.json"  # where the tracking time went, by kind of call, and what failed
    cost.write_text(json.dumps({"seconds_by_call": tracker.seconds_by_call, "failures": tracker.failures}, indent=1))
    tracker.log_artifact(parent, cost)
    return models


__all__ = ["VIEW_TAG", "record_front", "runs_view", "start_sweep_run", "sweep_description", "trial_runs"]
