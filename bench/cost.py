"""What a sweep costs: this product against the plain Optuna loop a user would write (issue 6).

    python bench/cost.py [--space bench/cost.yaml] [--out bench/results/cost.json]

Same search space, sampler, seed and number of trials for all:
  (a) do-it-yourself: one process, no Ray, `optuna.Study.optimize`; every trial distils from scratch with the
      teacher run live in every step, then prunes, quantizes, exports and measures (torch uses every core);
  (b) this product: `Sweep.run()` (Ray Tune trials side by side, teacher outputs computed once, students
      reused across trials that differ only in sparsity/bits);
  (c) this product one trial at a time: the savings of reuse alone, and latencies measured on a quiet machine
      as in (a) (in (b) each trial's latency is timed while the other trial trains on the other core).
Both use the same teacher (trained once, before the clock starts) and the same stage and measurement code,
so the difference is orchestration. Also measured: one distillation with the teacher live vs from cached
outputs. Prints the figures and writes them as JSON. Not a test: the machine's load moves these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

import orchestrator
from orchestrator.config import SweepConfig
from orchestrator.config.samplers import make_sampler
from orchestrator.core.losses import LossWeights
from orchestrator.core.measure import measure_latency
from orchestrator.core.objectives import DEFAULT_OBJECTIVES as OBJECTIVES
from orchestrator.core.objectives import Objectives
from orchestrator.core.pareto import hypervolume
from orchestrator.core.space import searched_grid
from orchestrator.engine.compress import compress
from orchestrator.engine.context import resolve
from orchestrator.engine.evaluation import held_out_metrics
from orchestrator.engine.search import DefineByRun
from orchestrator.io.checkpoints import load_frozen
from orchestrator.io.records import TeacherRecord
from orchestrator.tasks import TrialParams
from orchestrator.tasks.char_lm import CharData, CharLMTask, build_model
from orchestrator.training.job import DistillJob
from orchestrator.training.launch import run_distill
from orchestrator.training.teacher_outputs import compute_teacher_outputs


ROW_METRICS = ("accuracy", "size_mb", "latency_ms", "latency_vs_teacher")
CONFIG = ("layers", "width", "beta", "sparsity", "bits")


def matched(a: list[dict], b: list[dict]) -> dict:
    """Trials of `a` and `b` with the same config: how their accuracy and latency compare."""
    index = {tuple(r[k] for k in CONFIG): r for r in b}
    pairs = [(r, index[tuple(r[k] for k in CONFIG)]) for r in a if tuple(r[k] for k in CONFIG) in index]
    if not pairs:
        return {"pairs": 0}
    return {
        "pairs": len(pairs),
        "max_abs_accuracy_diff": round(max(abs(x["accuracy"] - y["accuracy"]) for x, y in pairs), 4),
        "median_latency_ratio": round(float(np.median([y["latency_ms"] / x["latency_ms"] for x, y in pairs])), 3),
        "median_latency_vs_teacher_ratio": round(float(np.median(
            [y["latency_vs_teacher"] / x["latency_vs_teacher"] for x, y in pairs])), 3),
    }


def normalized_hv(points: list[tuple[float, float, float]], teacher: TeacherRecord) -> float:
    """Hypervolume with the teacher as reference (accuracy 0, its size and latency), as the product logs it."""
    if not points:
        return 0.0
    size, latency = teacher.size_bytes / 1e6, teacher.latency_ms
    return hypervolume(np.array(points), Objectives(OBJECTIVES).directions(), [0.0, size, latency]) / (size * latency)


def curve(events: list[tuple[float, tuple[float, float, float]]], teacher: TeacherRecord) -> list[tuple[float, float]]:
    """[(seconds since start, hypervolume of the trials ended by then)] in order of ending."""
    out, points = [], []
    for t, p in sorted(events):
        points.append(p)
        out.append((t, normalized_hv(points, teacher)))
    return out


def time_to(target: float, hv_curve: list[tuple[float, float]]) -> float | None:
    return next((t for t, hv in hv_curve if hv >= target), None)


def prepare_teacher(cfg: SweepConfig) -> tuple[TeacherRecord, str]:
    """Train (or reuse) the sweep's teacher in its storage and measure it, exactly as a sweep does, before any
    clock starts."""
    import ray

    from orchestrator.engine.cluster import RAY_ENV
    from orchestrator.engine.prepare import prepared

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": RAY_ENV})
    try:
        sweep = orchestrator.Sweep(cfg)
        with prepared(sweep.context, sweep.task) as prep:
            return prep.teacher, prep.data.path
    finally:
        ray.shutdown()


def diy(cfg: SweepConfig, teacher: TeacherRecord, data_path: str, workdir: Path) -> tuple[list[tuple[float, tuple]], list[dict]]:
    """(a): the loop a user writes with Optuna alone. Returns (ending times and objectives, trial rows)."""
    data = CharData.load(data_path)
    task, ctx = CharLMTask(cfg.task), resolve(cfg)
    threads = os.cpu_count() or 1
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=make_sampler(cfg.sampler, seed=cfg.seed, grid=searched_grid(cfg.params)))
    space = DefineByRun(cfg.params)
    events: list[tuple[float, tuple]] = []
    rows: list[dict] = []
    started = time.perf_counter()

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        fixed = space(trial)
        p = TrialParams.from_config({**trial.params, **fixed})
        shape = {k: p.shape[k] for k in ("layers", "width", "heads")}
        model_cfg = {"architecture": "gpt", "config": {"vocab_size": len(data.vocab), "context": cfg.task.context,
                     **shape, "mlp": None, "head_dim": None}}
        job = DistillJob(
            task=task, data_path=data_path, teacher_path=teacher.path, teacher_outputs_path=None, model=model_cfg,
            steps=cfg.distill.steps, batch_size=cfg.distill.batch_size, warmup=cfg.distill.warmup, lr=p.lr,
            optimizer=p.optimizer, seed=cfg.seed, weights=LossWeights(p.temperature, p.lam, p.beta),
            val_tokens=cfg.distill.val_tokens, threads=threads,
        )
        result = run_distill(job, name="diy", storage_path=str(workdir), num_workers=1, use_gpu=False,
                             cpus_per_worker=threads, in_process=True)
        student = build_model(len(data.vocab), cfg.task.context, **shape)
        student.load_state_dict(result.state_dict)
        c = compress(student, cfg.pipeline, {"sparsity": p.sparsity, "bits": p.bits, "group_size": p.group_size},
                     artifact=workdir / f"{trial.number}.orc", meta={"vocab": data.vocab})
        # timed in the loop's own process, beside whatever else runs: what a hand-written loop does
        ms = cfg.measure
        lat = measure_latency(c.model, task.example(data), threads=ms.threads, warmup=ms.warmup, repeats=ms.repeats,
                              reference=load_frozen(teacher.path, task.build_model))
        m = {**held_out_metrics(task, c.model, data, ctx).metrics, "size_mb": c.size_bytes / 1e6, "latency_ms": lat.p50_ms,
             "latency_vs_teacher": lat.p50_ms / lat.reference_p50_ms}
        values = (m["accuracy"], m["size_mb"], m["latency_ms"])
        events.append((time.perf_counter() - started, values))
        rows.append({**trial.params, **fixed, **{k: m[k] for k in ROW_METRICS}})
        return values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=cfg.trials)
    return events, rows


def product(cfg: SweepConfig) -> tuple[list[tuple[float, tuple]], "orchestrator.SweepResult", float]:
    """(b) and (c): this product, from a storage where the teacher already is."""
    events: list[tuple[float, tuple]] = []
    started = time.perf_counter()

    def progress(p: orchestrator.SweepProgress) -> None:
        if p.status == "COMPLETED":
            events.append((time.perf_counter() - started, tuple(p.outcome.metrics[k] for k in OBJECTIVES)))

    result = orchestrator.Sweep(cfg).run(progress=progress)
    return events, result, time.perf_counter() - started


def teacher_output_saving(cfg: SweepConfig, teacher: TeacherRecord, data_path: str, workdir: Path) -> dict:
    """One student (2 x 64, beta 0.5) distilled with the teacher live, then from cached outputs; one thread."""
    data = CharData.load(data_path)
    t = time.perf_counter()
    task = CharLMTask(cfg.task)
    pool = task.batch(data, "train", cfg.distill.cache_blocks, torch.Generator().manual_seed(cfg.seed))
    with_hidden = compute_teacher_outputs(load_frozen(teacher.path, task.build_model), *pool, hidden=True, top_k=None)
    build_s = time.perf_counter() - t
    with_hidden.save(workdir / "outputs.pt")
    model_cfg = {"architecture": "gpt", "config": {"vocab_size": len(data.vocab), "context": cfg.task.context,
                 "layers": 2, "width": 64, "heads": 2, "mlp": None, "head_dim": None}}
    base = dict(task=task, data_path=data_path, model=model_cfg, steps=cfg.distill.steps, batch_size=cfg.distill.batch_size,
                warmup=cfg.distill.warmup, lr=3e-3, optimizer="adamw", seed=cfg.seed,
                weights=LossWeights(2.0, 0.5, 0.5), val_tokens=cfg.distill.val_tokens, threads=1)
    out = {"cache_build_s": round(build_s, 2), "cache_mb": round((workdir / "outputs.pt").stat().st_size / 1e6, 1),
           "cache_blocks": cfg.distill.cache_blocks}
    for name, job in {
        "live": DistillJob(teacher_path=teacher.path, teacher_outputs_path=None, **base),
        "cached": DistillJob(teacher_path=None, teacher_outputs_path=str(workdir / "outputs.pt"), **base),
    }.items():
        r = run_distill(job, name=name, storage_path=str(workdir), num_workers=1, use_gpu=False, cpus_per_worker=1,
                        in_process=True)
        out[f"{name}_train_s"] = round(r.record.train_seconds, 2)
        out[f"{name}_val_accuracy"] = round(r.record.val_accuracy, 4)
    out["speedup"] = round(out["live_train_s"] / out["cached_train_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="bench/cost.yaml")
    parser.add_argument("--out", default="bench/results/cost.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = orchestrator.load_config(args.space, overrides={"storage": f"{tmp}/runs",
                                                               "tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
        teacher, data_path = prepare_teacher(cfg)
        (Path(tmp) / "diy").mkdir()
        (Path(tmp) / "saving").mkdir()

        t = time.perf_counter()
        diy_events, diy_rows = diy(cfg, teacher, data_path, Path(tmp) / "diy")
        diy_wall = time.perf_counter() - t
        ours_events, result, ours_wall = product(cfg)
        # (c) in a fresh storage holding only the teacher: nothing of (b) is reused
        serial_cfg = orchestrator.load_config(args.space, overrides={
            "storage": f"{tmp}/serial", "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "max_concurrent_trials": 1})
        shutil.copytree(Path(tmp) / "runs" / "teachers", Path(tmp) / "serial" / "teachers")
        shutil.copytree(Path(tmp) / "runs" / "data", Path(tmp) / "serial" / "data")
        serial_events, serial, serial_wall = product(serial_cfg)
        saving = teacher_output_saving(cfg, teacher, data_path, Path(tmp) / "saving")

    diy_curve, ours_curve, serial_curve = (curve(e, teacher) for e in (diy_events, ours_events, serial_events))
    target = 0.95 * diy_curve[-1][1]
    done = result.trials[result.trials["status"] == "COMPLETED"]

    def rows_of(r: orchestrator.SweepResult) -> list[dict]:
        t = r.trials[r.trials["status"] == "COMPLETED"]
        return t[[*CONFIG, *ROW_METRICS]].to_dict(orient="records")

    def hv_at(curve_: list[tuple[float, float]]) -> float:
        return round(curve_[-1][1], 4) if curve_ else 0.0

    def s_to(curve_: list[tuple[float, float]]) -> float | None:
        s = time_to(target, curve_)
        return round(s, 1) if s is not None else None

    figures = {
        "space": args.space,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "trials": cfg.trials,
        "diy_wall_s": round(diy_wall, 1),
        "product_wall_s": round(ours_wall, 1),
        "product_serial_wall_s": round(serial_wall, 1),
        "wall_ratio": round(diy_wall / ours_wall, 2),
        "wall_ratio_serial": round(diy_wall / serial_wall, 2),
        "diy_hypervolume": hv_at(diy_curve),
        "product_hypervolume": hv_at(ours_curve),
        "product_serial_hypervolume": hv_at(serial_curve),
        "diy_s_to_95pct_of_diy_hv": s_to(diy_curve),
        "product_s_to_95pct_of_diy_hv": s_to(ours_curve),
        "product_serial_s_to_95pct_of_diy_hv": s_to(serial_curve),
        "product_overhead": round(result.overhead, 3),
        "product_serial_overhead": round(serial.overhead, 3),
        "same_config_product_vs_diy": matched(diy_rows, rows_of(result)),
        "same_config_serial_vs_diy": matched(diy_rows, rows_of(serial)),
        "product_distillations": int((done["cache_hit_distill"] == 0).sum()),
        "product_students_reused": int((done["cache_hit_distill"] == 1).sum()),
        "teacher_outputs": saving,
        "diy_curve": [[round(t, 1), round(hv, 4)] for t, hv in diy_curve],
        "product_curve": [[round(t, 1), round(hv, 4)] for t, hv in ours_curve],
        "product_serial_curve": [[round(t, 1), round(hv, 4)] for t, hv in serial_curve],
        "torch_threads_diy": os.cpu_count(),
    }
    for k, v in figures.items():
        if not k.endswith("_curve"):
            print(f"{k:>30}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
