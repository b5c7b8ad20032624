"""The front as files a person opens: pareto.csv, an interactive pareto.html and a static pareto.png,
over the sweep's objectives (one view of two objectives; every pair of them when there are more)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from orchestrator.core.objectives import Objectives


def write_front_files(trials: pd.DataFrame, out_dir: Path, objectives: Objectives) -> list[Path]:
    """Write the front (rows with ``pareto`` true) and the dominated trials behind it; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.express as px

    names = list(objectives.names)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = trials[trials["status"] == "COMPLETED"].copy()
    front = done[done["pareto"]].sort_values(names[-1])
    csv = out_dir / "pareto.csv"
    front.to_csv(csv, index=False)
    if done.empty:  # nothing to plot; the empty table still says so
        return [csv]

    done["on front"] = done["pareto"].map({True: "front", False: "dominated"})
    hover = [c for c in done.columns if c not in ("artifact", "on front")]
    labels = {n: objectives[n].label for n in names}
    title = f"Pareto front over {', '.join(names)}"
    if len(names) == 2:
        fig = px.scatter(done, x=names[1], y=names[0], color="on front", hover_data=hover, labels=labels, title=title)
    else:  # every pair: the front seen from each side
        fig = px.scatter_matrix(done, dimensions=names, color="on front", hover_data=hover, labels=labels, title=title)
        fig.update_traces(diagonal_visible=False)
    html = out_dir / "pareto.html"
    fig.write_html(html, include_plotlyjs=True)  # self-contained: opens offline from the MLflow UI

    png = out_dir / "pareto.png"
    pairs = list(itertools.combinations(names, 2))
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.0 * rows), squeeze=False)
    rest = done[~done["pareto"]]
    for ax, (y, x) in zip(axes.flat, pairs):
        ax.scatter(rest[x], rest[y], c="0.7", label="dominated")
        ax.scatter(front[x], front[y], c="C3", label="Pareto front")
        if objectives[x].where != "held_out" and (done[x] > 0).all():
            ax.set_xscale("log")
        ax.set_xlabel(objectives[x].label)
        ax.set_ylabel(objectives[y].label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    axes.flat[0].legend()
    figure.suptitle(f"{len(front)} front points of {len(done)} completed trials (front over {', '.join(names)})")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return [csv, html, png]


def write_hypervolume_plot(points: list[tuple[int, float]], out_dir: Path) -> Path:
    """hypervolume.png: the front's normalized hypervolume after each trial ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    figure, ax = plt.subplots(figsize=(5.5, 3.6))
    if points:
        ax.step([n for n, _ in points], [hv for _, hv in points], where="post", marker="o", c="C0")
    ax.set_xlabel("trials ended")
    ax.set_ylabel("hypervolume (fraction of the reference box)")
    ax.set_title("Hypervolume of the front as the sweep went on")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    path = out_dir / "hypervolume.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
