"""Does the search beat random? Hypervolume against trials for tpe (Optuna's defaults, and tuned for a
short budget), nsga2 and random, 3 seeds each, at a fixed budget, and the exhaustive grid of the same space
as the best reachable (issue 5).

    python bench/search_efficiency.py [--space bench/search.yaml] [--seeds 3] [--population 8]
        [--tpe-options '{"n_startup_trials": 8, "multivariate": true, "constant_liar": true}']
        [--out bench/results/search_efficiency.json]

Every run shares one storage, so the teacher and the 8 distilled students are built once (by the grid, which
runs first) and the samplers differ only in which (shape, beta, sparsity, bits) points they pick. The
sampler seed varies (`sampler_seed`); the training seed does not. Writes the figures as JSON and a PNG of
hypervolume against trials. Not a test: latency measurements move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import orchestrator
from orchestrator.core.space import param_values


def run(cfg, label: str) -> dict:
    curve: list[float] = []

    def progress(p: orchestrator.SweepProgress) -> None:
        curve.append(p.hypervolume)

    started = time.perf_counter()
    result = orchestrator.Sweep(cfg).run(progress=progress)
    print(f"{label:>10}: {len(curve)} trials, hypervolume {curve[-1]:.4f}, {time.perf_counter() - started:.0f} s",
          flush=True)
    return {"label": label, "curve": curve, "wall_s": round(time.perf_counter() - started, 1),
            "failed": int((result.trials["status"] == "ERROR").sum())}


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, hv in enumerate(curve) if hv >= target), None)


def plot(runs: list[dict], grid: dict, budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"tpe": "tab:blue", "tpe_tuned": "tab:green", "nsga2": "tab:orange", "random": "tab:gray"}
    for r in runs:
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], color=colors[r["sampler"]], alpha=0.35, lw=1)
    for name, color in colors.items():
        curves = [r["curve"] for r in runs if r["sampler"] == name]
        median = [statistics.median(c[i] for c in curves) for i in range(budget)]
        ax.plot(range(1, budget + 1), median, color=color, lw=2.2, label=f"{name} (median of {len(curves)})")
    g = grid["curve"][-1]
    ax.axhline(g, color="black", ls="--", lw=1, label=f"grid, all {len(grid['curve'])} points")
    ax.axhline(0.95 * g, color="black", ls=":", lw=1, label="95% of the grid")
    ax.set_xlabel("trials")
    ax.set_ylabel("normalized hypervolume")
    ax.set_xlim(1, budget)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Hypervolume of the front against trials (char_lm, 2 CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="bench/search.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=8, help="NSGA-II population size")
    parser.add_argument("--tpe-options", default='{"n_startup_trials": 8, "multivariate": true, "constant_liar": true}',
                        help="sampler_options of the tuned TPE contestant (JSON)")
    parser.add_argument("--out", default="bench/results/search_efficiency.json")
    args = parser.parse_args()

    import ray

    from orchestrator.engine.cluster import RAY_ENV

    os.environ.update(RAY_ENV)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": RAY_ENV})
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = {"storage": f"{tmp}/runs", "tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
            budget = orchestrator.load_config(args.space).trials
            space = orchestrator.load_config(args.space, overrides=base).params
            points = 1
            for spec in space.values():
                points *= len(param_values(spec))
            grid = run(orchestrator.load_config(args.space, overrides={**base, "sampler": "grid", "trials": points}), "grid")
            runs = []
            contestants = {
                "tpe": {"sampler": "tpe"},
                "tpe_tuned": {"sampler": "tpe", "sampler_options": json.loads(args.tpe_options)},
                "nsga2": {"sampler": "nsga2", "population_size": args.population},
                "random": {"sampler": "random"},
            }
            for name, overrides in contestants.items():
                for seed in range(args.seeds):
                    cfg = orchestrator.load_config(args.space, overrides={**base, **overrides, "sampler_seed": seed})
                    runs.append({**run(cfg, f"{name}/{seed}"), "sampler": name, "seed": seed})
    finally:
        ray.shutdown()

    grid_hv = grid["curve"][-1]
    medians = {s: statistics.median(r["curve"][-1] for r in runs if r["sampler"] == s) for s in contestants}
    best = max((s for s in contestants if s != "random"), key=lambda s: medians[s])
    figures = {
        "space": args.space,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "grid_points": len(grid["curve"]),
        "budget": budget,
        "budget_share_of_grid": round(budget / len(grid["curve"]), 3),
        "grid_hypervolume": round(grid_hv, 4),
        "median_hypervolume": {s: round(v, 4) for s, v in medians.items()},
        "best_sampler": best,
        "best_over_random": round(medians[best] / medians["random"] - 1, 3) if medians["random"] else None,
        "best_share_of_grid": round(medians[best] / grid_hv, 3),
        "trials_to_95pct_of_grid": {r["label"]: first_reaching(r["curve"], 0.95 * grid_hv) for r in runs},
        "grid_trials_to_95pct_of_grid": first_reaching(grid["curve"], 0.95 * grid_hv),
        "final_hypervolume": {r["label"]: round(r["curve"][-1], 4) for r in runs},
        "nsga2_population": args.population,
        "tpe_tuned_options": json.loads(args.tpe_options),
        "failed_trials": grid["failed"] + sum(r["failed"] for r in runs),
        "wall_s": round(time.perf_counter() - started, 1),
        "curves": {r["label"]: [round(v, 4) for v in r["curve"]] for r in [grid, *runs]},
    }
    for k, v in figures.items():
        if k != "curves":
            print(f"{k:>28}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    plot(runs, grid, budget, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
