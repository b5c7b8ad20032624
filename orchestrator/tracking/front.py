"""What a sweep records once its trials have ended: the front's tags, the parent run's files (the front, the
trials table, the hypervolume curve), a loadable model in each front point's run, the registry's versions
and aliases (`register`), and what tracking cost."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.core.objectives import Objectives
from orchestrator.io.storage import fetch
from orchestrator.tracking.sweep_runs import SweepRuns

log = logging.getLogger("orchestrator")


def tag_front(runs: SweepRuns, trials: pd.DataFrame) -> None:
    """`pareto` and `feasible` tags: true on the front's runs; false on a resumed sweep's earlier runs that
    are not (they may have been before), and `feasible=false` on completed trials outside the constraints."""
    tracker, done = runs.tracker, trials["status"] == "COMPLETED"
    for run_id in trials.loc[trials["pareto"] & trials["run_id"].notna(), "run_id"]:
        tracker.log(run_id, tags={"pareto": "true"})
    earlier = ~trials["trial_id"].isin(list(runs.child_ids)) & done
    for run_id in trials.loc[earlier & ~trials["pareto"] & trials["run_id"].notna(), "run_id"]:
        tracker.log(run_id, tags={"pareto": "false"})
    for run_id in trials.loc[done & ~trials["feasible"] & trials["run_id"].notna(), "run_id"]:
        tracker.log(run_id, tags={"feasible": "false"})


def log_front_models(runs: SweepRuns, trials: pd.DataFrame, example: Any, *, task: Any = None) -> dict[str, str]:
    """A loadable model in every front point's run; trial id -> its URI. A model the store cannot take costs
    the sweep that model, never its results."""
    models: dict[str, str] = {}
    try:
        for _, row in trials[trials["pareto"] & trials["run_id"].notna()].iterrows():
            uri = runs.tracker.log_model(row["run_id"], row["artifact"], np.asarray(example), task=task)
            if uri is not None:
                models[row["trial_id"]] = uri
            onnx_file = row.get("export_onnx")
            if isinstance(onnx_file, str) and onnx_file:  # `export.formats: [onnx]`: also the onnx flavour
                runs.tracker.log_onnx_model(row["run_id"], fetch(onnx_file), np.asarray(example))
    except Exception as e:
        runs.tracker.failed(f"the front's models were not logged ({type(e).__name__}: {e}); each trial keeps its packed artifact")
    return models


def register_front(runs: SweepRuns, name: str, trials: pd.DataFrame, models: Mapping[str, str], *, objectives: Objectives,
                   recommended: str | None) -> dict[str, str]:
    """Every front model a version of `name`, tagged with its measured figures, and the aliases `recommended`
    (the knee), `smallest`, `fastest` and `most-accurate` (the best of the sweep's first held-out objective)
    pointed at theirs; returns alias -> version."""
    rows = trials.set_index("trial_id")
    figures = [*objectives.registered, *(f"test_{o.name}" for o in objectives.held_out()), "compression_ratio"]
    versions: dict[str, str] = {}
    for trial_id, uri in models.items():
        row = rows.loc[trial_id]
        tags = {k: f"{row[k]:.6g}" for k in dict.fromkeys(figures) if k in row and pd.notna(row[k])}
        version = runs.tracker.register(name, uri, run_id=row["run_id"], description=f"sweep {runs.sweep_id}, {row['run_name']}",
                                        tags={**tags, "sweep_id": runs.sweep_id, "trial": str(row["run_name"]),
                                              "objectives": ",".join(objectives.names)})
        if version is not None:
            versions[trial_id] = version
    held = objectives.held_out()
    best = {"smallest": ("size_mb", "min"), "fastest": ("latency_ms", "min"),
            "most-accurate": (held[0].name, held[0].direction) if held else ("accuracy", "max")}
    candidates = rows.loc[list(versions)]
    aliases = {"recommended": versions[recommended]} if recommended in versions else {}
    for alias, (column, direction) in best.items():
        if column in candidates and candidates[column].notna().any():
            aliases[alias] = versions[candidates[column].idxmin() if direction == "min" else candidates[column].idxmax()]
        elif not candidates.empty:
            log.info("registry: no `%s` alias: this sweep did not measure %s", alias, column)
    for alias, version in aliases.items():
        runs.tracker.set_alias(name, alias, version)
    return aliases


def record_front(runs: SweepRuns, trials: pd.DataFrame, *, objectives: Objectives, files: Sequence[Path], example: Any,
                 recommended: str | None, register: str | None, out_dir: Path, task: Any = None) -> dict[str, str]:
    """After the trials (see the module docstring). Returns trial id -> model URI."""
    tracker, parent = runs.tracker, runs.parent_id
    tag_front(runs, trials)
    table = out_dir / "trials.csv"
    trials.to_csv(table, index=False)
    for path in [*files, table]:
        tracker.log_artifact(parent, path)
    started = len(runs.child_ids)
    # what the trials cost: their runs, params, metrics, curves, tags, artifacts and the parent's per-trial
    # hypervolume, front tags and files (not the sweep run's own start, once per sweep; not the front's models)
    per_trial = 1000 * (tracker.seconds - runs.setup_seconds) / started if started else None
    t = time.perf_counter()
    models = log_front_models(runs, trials, example, task=task)
    run_ids = trials.set_index("trial_id")["run_id"]
    for trial_id in {*models, *([recommended] if isinstance(run_ids.get(recommended), str) else [])}:
        tracker.log(run_ids[trial_id], tags={**({"model_uri": models[trial_id]} if trial_id in models else {}),
                                             **({"recommended": "true"} if trial_id == recommended else {})})
    if recommended is not None:
        runs.log(tags={"recommended_trial": trials.set_index("trial_id")["run_name"].get(recommended) or recommended})
    if register and models:
        aliases = register_front(runs, register, trials, models, objectives=objectives, recommended=recommended)
        runs.log(tags={f"registered.{alias}": f"models:/{register}/{version}" for alias, version in aliases.items()})
        log.info("registered %d front models as %s (aliases: %s)", len(models), register,
                 ", ".join(f"{a} -> v{v}" for a, v in aliases.items()))
    runs.log({"tracking_seconds": tracker.seconds, "front_models_seconds": time.perf_counter() - t,
              **({"tracking_ms_per_trial": per_trial} if per_trial is not None else {}), "tracking_failures": len(tracker.failures),
              "tracking_journaled": tracker.journaled})
    cost = out_dir / "tracking.json"  # where the tracking time went, by kind of call, and what failed
    cost.write_text(json.dumps({"seconds_by_call": tracker.seconds_by_call, "failures": tracker.failures}, indent=1))
    tracker.log_artifact(parent, cost)
    return models
