"""The front as files a person opens: pareto.csv, an interactive pareto.html and a static pareto.png."""

from __future__ import annotations

from pathlib import Path

import pandas as pd



def write_front_files(trials: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write the front (rows with ``pareto`` true) and the dominated trials behind it; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.express as px

    out_dir.mkdir(parents=True, exist_ok=True)
    done = trials[trials["status"] == "COMPLETED"].copy()
    front = done[done["pareto"]].sort_values("size_mb")
    csv = out_dir / "pareto.csv"
    front.to_csv(csv, index=False)
    if done.empty:  # nothing to plot; the empty table still says so
        return [csv]

    done["on front"] = done["pareto"].map({True: "front", False: "dominated"})
    hover = [c for c in done.columns if c not in ("artifact", "on front")]
    fig = px.scatter(
        done, x="size_mb", y="accuracy", color="on front", size=done["latency_ms"].clip(lower=1e-3),
        hover_data=hover, log_x=True, title="Pareto front: accuracy vs size (marker size = batch-1 latency)",
        labels={"size_mb": "artifact size (MB)", "accuracy": "validation accuracy"},
    )
    html = out_dir / "pareto.html"
    fig.write_html(html, include_plotlyjs=True)  # self-contained: opens offline from the MLflow UI

    png = out_dir / "pareto.png"
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, x, label in ((axes[0], "size_mb", "artifact size (MB)"), (axes[1], "latency_ms", "batch-1 latency p50 (ms)")):
        rest = done[~done["pareto"]]
        ax.scatter(rest[x], rest["accuracy"], c="0.7", label="dominated")
        ax.scatter(front[x], front["accuracy"], c="C3", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"{len(front)} front points of {len(done)} completed trials (front over accuracy, size and latency)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return [csv, html, png]
