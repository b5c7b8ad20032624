"""Fronts of several sweeps side by side, read back from MLflow (`orchestrator compare`, `orchestrator.compare`).

Each sweep's front is its parent run's `pareto.csv` (the latest parent run of that sweep id, so a
resumed sweep counts with all its trials). Hypervolumes are measured from one shared reference point:
per objective the worst of the sweeps' own reference points, so that every front counts in the same box.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from orchestrator.core.environ import tracking_uri as resolve_tracking_uri
from orchestrator.core.errors import ConfigError
from orchestrator.core.objectives import Objectives
from orchestrator.core.pareto import hypervolume
from orchestrator.tracking.mlflow_store import quiet_downloads


def find_sweep(client: MlflowClient, sweep_id: str) -> Any:
    """The latest parent run of `sweep_id` in any experiment of the store; ConfigError if there is none."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.sweep_id = '{sweep_id}' and tags.`orchestrator.role` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    if not runs:
        recent = client.search_runs(experiments, "tags.`orchestrator.role` = 'sweep'", order_by=["attributes.start_time DESC"],
                                    max_results=5) if experiments else []
        known = ", ".join(r.data.tags.get("sweep_id", r.info.run_name) for r in recent) or "none"
        raise ConfigError(f"compare: no sweep {sweep_id!r} in the MLflow store {client.tracking_uri}; recent sweeps there: "
                          f"{known} (give --tracking-uri of the store it ran with)")
    return runs[0]


def _front(client: MlflowClient, run: Any) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with quiet_downloads():
                path = client.download_artifacts(run.info.run_id, "pareto.csv", tmp)
        except Exception as e:
            raise ConfigError(f"compare: sweep {run.info.run_name} has no pareto.csv ({e}); it did not finish") from None
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()


def compare(sweep_ids: Sequence[str], *, tracking_uri: str | None = None, plot: str | Path | None = None) -> pd.DataFrame:
    """The front points of each sweep (one row each, column `sweep`), with each sweep's `hypervolume`
    measured from the shared reference point (`.attrs["reference"]`; `.attrs["hypervolumes"]` by sweep).
    `plot`: also write one plot of all fronts there (PNG).

    Example: ``orchestrator.compare(["smoke-20261130-101500-ab12cd", "smoke-20261130-103000-ef34ab"])``.
    """
    if len(sweep_ids) < 1:
        raise ConfigError("compare: give at least one sweep id")
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    runs = [find_sweep(client, sweep_id) for sweep_id in sweep_ids]
    objectives = [o for o in runs[0].data.tags.get("objectives", "").split(",") if o]
    for run in runs[1:]:
        theirs = set(run.data.tags.get("objectives", "").split(","))
        objectives = [o for o in objectives if o in theirs]
    if len(objectives) < 2:
        raise ConfigError(f"compare: sweeps {', '.join(sweep_ids)} share fewer than two objectives ({objectives}); "
                          "compare sweeps over the same objectives")
    chosen = Objectives(objectives)
    reference = {}
    for name in objectives:
        refs = [r.data.metrics.get(f"hypervolume_ref_{name}") for r in runs]
        refs = [v for v in refs if v is not None]
        if not refs:
            raise ConfigError(f"compare: no sweep recorded a reference point for {name}")
        reference[name] = min(refs) if chosen[name].direction == "max" else max(refs)
    box = math.prod(chosen[n].scale(reference[n]) for n in objectives)
    fronts, volumes = [], {}
    for sweep_id, run in zip(sweep_ids, runs):
        front = _front(client, run)
        front.insert(0, "sweep", sweep_id)
        values = front[objectives].to_numpy(dtype=float) if not front.empty else front.reindex(columns=objectives).to_numpy()
        volumes[sweep_id] = hypervolume(values, chosen.directions(), [reference[n] for n in objectives]) / box if len(values) else 0.0
        front["hypervolume"] = volumes[sweep_id]
        fronts.append(front)
    table = pd.concat(fronts, ignore_index=True)
    table.attrs.update(reference=reference, hypervolumes=volumes, objectives=objectives)
    if plot is not None:
        plot_fronts(table, chosen, Path(plot))
    return table


def plot_fronts(table: pd.DataFrame, objectives: Objectives, path: Path) -> Path:
    """One plot of every sweep's front over the first measured cost (x) and the first held-out objective (y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = [o.name for o in objectives.held_out()] or list(objectives.names)
    x, y = next(n for n in objectives.names if n != held[0]), held[0]
    figure, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (sweep, front) in enumerate(table.groupby("sweep", sort=False)):
        front = front.sort_values(x)
        hv = table.attrs.get("hypervolumes", {}).get(sweep, float("nan"))
        ax.step(front[x], front[y], where="post", c=f"C{i}", alpha=0.6)
        ax.scatter(front[x], front[y], c=f"C{i}", label=f"{sweep} (hypervolume {hv:.4f})")
    if objectives[x].where != "held_out" and (table[x] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(objectives[x].label)
    ax.set_ylabel(objectives[y].label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Fronts over {', '.join(objectives.names)}" + (" (plotted: first two)" if len(objectives) > 2 else ""))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = ["compare", "find_sweep", "plot_fronts"]
