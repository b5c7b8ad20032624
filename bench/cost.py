"""What a sweep costs: this product against the plain Optuna loop a user would write (issues 6 and 25).

    python bench/cost.py [--space bench/cost.yaml] [--out bench/results/cost.json] [--teacher-storage DIR]

The same job for every contestant (bench/cost.yaml: the same space, sampler, seed and number of trials),
from the same teacher, trained before any clock starts:
  (a) the hand-written loop: one process, no Ray, `optuna.Study.optimize`; every trial distils from scratch
      with the teacher run live in every step, then prunes, quantizes, exports and times the model in its
      own process (torch on every core);
  (b) this product on its defaults (`Sweep.run()`: trials side by side, the measurement service pausing
      training while it times, teacher outputs computed once);
  (c) this product with `fanout: 4` (each new student compressed four ways);
  (d) this product with `fidelity.enabled` (successive halving), and with both;
  (e) this product with `measure.isolation: reserve` (the service holding a core: the default before).
Each product run starts from a storage holding only the teacher, its measurements and the data. Hypervolumes are over test
accuracy, size and latency, with the teacher as reference. Also measured: one student distilled with the
teacher live, from the default pool of teacher outputs, from that pool computed in float32 and from a pool of 2,048
windows. Prints the figures and writes them as JSON. Not a test: the machine's load moves these numbers.
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
from mlflow.tracking import MlflowClient

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
from orchestrator.training.teacher_outputs import compute_teacher_outputs, pool_precision


def normalized_hv(points: list[tuple[float, float, float]], teacher: TeacherRecord) -> float:
    """Hypervolume of (test accuracy, size, latency) points with the teacher as reference (accuracy 0, its size
    and latency), normalised by the teacher's size x latency."""
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


def diy(cfg: SweepConfig, teacher: TeacherRecord, data_path: str, workdir: Path) -> list[tuple[float, tuple]]:
    """(a): the loop a user writes with Optuna alone. Returns each trial's ending time and (test accuracy, size, latency)."""
    data = CharData.load(data_path)
    task, ctx = CharLMTask(cfg.task), resolve(cfg)
    threads = os.cpu_count() or 1
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=make_sampler(cfg.sampler, seed=cfg.seed, grid=searched_grid(cfg.params)))
    space = DefineByRun(cfg.params)
    events: list[tuple[float, tuple]] = []
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
        values = (m["accuracy"], m["size_mb"], m["latency_ms"])  # the search reads validation, as the product's does
        events.append((time.perf_counter() - started, (m["test_accuracy"], m["size_mb"], m["latency_ms"])))
        return values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=cfg.trials)
    return events


def product(cfg: SweepConfig) -> tuple[list[tuple[float, tuple]], "orchestrator.SweepResult", float]:
    """(b) and (c): this product, from a storage where the teacher already is."""
    events: list[tuple[float, tuple]] = []
    started = time.perf_counter()

    def progress(p: orchestrator.SweepProgress) -> None:
        if p.status == "COMPLETED":
            m = p.outcome.metrics
            events.append((time.perf_counter() - started, (m["test_accuracy"], m["size_mb"], m["latency_ms"])))

    result = orchestrator.Sweep(cfg).run(progress=progress)
    return events, result, time.perf_counter() - started


def teacher_output_saving(cfg: SweepConfig, teacher: TeacherRecord, data_path: str, workdir: Path) -> dict:
    """One student (2 x 64, beta 0.5) distilled with the teacher live, from the default pool (as many windows as
    it draws, computed in `distill.pool_precision`'s choice here), from the same pool computed in float32, and from
    a pool of 2,048 windows (the default before); one thread each. Validation and test accuracy."""
    data = CharData.load(data_path)
    task = CharLMTask(cfg.task)
    model_cfg = {"architecture": "gpt", "config": {"vocab_size": len(data.vocab), "context": cfg.task.context,
                 "layers": 2, "width": 64, "heads": 2, "mlp": None, "head_dim": None}}
    base = dict(task=task, data_path=data_path, model=model_cfg, steps=cfg.distill.steps, batch_size=cfg.distill.batch_size,
                warmup=cfg.distill.warmup, lr=3e-3, optimizer="adamw", seed=cfg.seed,
                weights=LossWeights(2.0, 0.5, 0.5), val_tokens=cfg.distill.val_tokens, threads=1)
    out: dict = {}
    jobs = {"live": DistillJob(teacher_path=teacher.path, teacher_outputs_path=None, **base)}
    auto = pool_precision(cfg.distill.pool_precision, "cpu")  # what a sweep here computes its pool in
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.teacher.cpus_per_worker or 1))  # as the sweep builds it
    for name, blocks, precision in (("pool_default", cfg.pool_examples, auto), ("pool_fp32", cfg.pool_examples, "fp32"),
                                    ("pool_2048", 2048, auto)):
        t = time.perf_counter()
        pool = task.pool(data, blocks, torch.Generator().manual_seed(cfg.seed))
        outputs = compute_teacher_outputs(load_frozen(teacher.path, task.build_model), *pool, hidden=True, top_k=None,
                                          precision=precision)
        outputs.save(workdir / f"{name}.pt")
        out[f"{name}_examples"], out[f"{name}_precision"] = blocks, precision
        out[f"{name}_build_s"] = round(time.perf_counter() - t, 2)
        out[f"{name}_mb"] = round((workdir / f"{name}.pt").stat().st_size / 1e6, 1)
        jobs[name] = DistillJob(teacher_path=None, teacher_outputs_path=str(workdir / f"{name}.pt"), **base)
    torch.set_num_threads(threads)
    ctx = resolve(cfg)
    for name, job in jobs.items():
        r = run_distill(job, name=name, storage_path=str(workdir), num_workers=1, use_gpu=False, cpus_per_worker=1,
                        in_process=True)
        student = build_model(len(data.vocab), cfg.task.context, layers=2, width=64, heads=2)
        student.load_state_dict(r.state_dict)
        m = held_out_metrics(task, student, data, ctx).metrics
        out[f"{name}_train_s"] = round(r.record.train_seconds, 2)
        out[f"{name}_val_accuracy"] = round(m["accuracy"], 4)
        out[f"{name}_test_accuracy"] = round(m["test_accuracy"], 4)
    return out


VARIANTS = {  # the product's runs: overrides of the space's settings
    "product": {},  # its defaults: isolation pause, fanout 1
    "product_fanout4": {"fanout": 4},
    "product_fidelity": {"fidelity.enabled": True},  # successive halving: eta 3, rungs at 33 and 100 of 300 steps
    "product_fanout4_fidelity": {"fanout": 4, "fidelity.enabled": True},
    # beta and lambda in steps of 0.5 and T among 3 values: close proposals share a student (the space is coarser)
    "product_step": {"params.beta": {"low": 0.0, "high": 1.0, "step": 0.5}, "params.lambda": {"low": 0.0, "high": 1.0, "step": 0.5},
                     "params.temperature": {"choices": [1.0, 2.0, 4.0]}},
    "product_reserve": {"measure.isolation": "reserve"},  # the measurement service holding a core (the default before)
}


# the sweep's own clock, logged on its MLflow run: before the trials (Ray, storage, MLflow), the teacher phase (the
# pool of teacher outputs in it), Tune (its start, the trials, its end) and the whole sweep
PHASES = ("setup_seconds", "teacher_seconds", "teacher_outputs_seconds", "trials_seconds", "wall_seconds")


def fresh_storage(base: str, path: Path) -> Path:
    """A storage at `path` holding only `base`'s teacher, its measurements (one latency scale, the teacher's timing,
    for every run) and the data: nothing of another run is reused."""
    for part in ("teachers", "teacher_measurements", "data"):
        shutil.copytree(Path(base) / part, path / part)
    return path


def isolation_check(space: str, base: str, tmp: str, trials: int = 8) -> dict:
    """Pause against reserve on the same configurations (random sampler, same seed): what each isolation does to
    the figures themselves, apart from the search. Per run: wall time and hypervolume; per configuration: the
    latency ratio pause / reserve."""
    out, rows = {}, {}
    for name, over in (("pause", {}), ("reserve", {"measure.isolation": "reserve"})):
        storage = fresh_storage(base, Path(tmp) / f"isolation-{name}")
        cfg = orchestrator.load_config(space, overrides={"storage": str(storage), "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                                                         "experiment": f"isolation-{name}", "sampler": "random", "trials": trials, **over})
        t = time.perf_counter()
        result = orchestrator.Sweep(cfg).run()
        out[name] = {"wall_s": round(time.perf_counter() - t, 1), "hypervolume": round(result.hypervolume, 4)}
        rows[name] = result.trials.set_index(cfg.searched)  # the same seed: the same configurations in both runs
    both = rows["pause"].join(rows["reserve"], how="inner", rsuffix="_reserve")
    out["same_configurations"] = len(both)
    out["same_accuracies"] = bool((both["accuracy"] == both["accuracy_reserve"]).all())
    out["latency_pause_over_reserve_median"] = round(float(np.median(both["latency_ms"] / both["latency_ms_reserve"])), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="bench/cost.yaml")
    parser.add_argument("--out", default="bench/results/cost.json")
    parser.add_argument("--teacher-storage", default=None,
                        help="a storage that keeps the trained teacher between runs of this bench (default: a temporary one)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"the product's runs, among {', '.join(VARIANTS)}")
    parser.add_argument("--no-diy", action="store_true", help="skip the hand-written loop (its figures are then missing)")
    parser.add_argument("--isolation-check", action="store_true",
                        help="also run pause against reserve on the same 8 random configurations")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = args.teacher_storage or f"{tmp}/teacher"
        cfg = orchestrator.load_config(args.space, overrides={"storage": base, "tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
        teacher, data_path = prepare_teacher(cfg)  # before any clock, for every contestant
        figures: dict = {"space": args.space, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                         "date": time.strftime("%Y-%m-%d"), "trials": cfg.trials,
                         "teacher": {"test_accuracy": round(teacher.metrics["test_accuracy"], 4),
                                     "size_mb": round(teacher.size_bytes / 1e6, 3), "latency_ms": round(teacher.latency_ms, 3)}}
        curves = {}
        if not args.no_diy:
            (Path(tmp) / "diy").mkdir()
            t = time.perf_counter()
            events = diy(cfg, teacher, data_path, Path(tmp) / "diy")
            figures["diy_wall_s"] = round(time.perf_counter() - t, 1)
            curves["diy"] = curve(events, teacher)
            figures["diy_test_hypervolume"] = round(curves["diy"][-1][1], 4)
        for name in args.variants.split(","):
            storage = fresh_storage(base, Path(tmp) / name)
            run_cfg = orchestrator.load_config(args.space, overrides={"storage": str(storage), "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                                                                      "experiment": name, **VARIANTS[name]})
            events, result, wall = product(run_cfg)
            done = result.trials[result.trials["status"] == "COMPLETED"]
            curves[name] = curve(events, teacher)
            figures[name] = {
                "wall_s": round(wall, 1), "test_hypervolume": round(curves[name][-1][1], 4) if curves[name] else 0.0,
                "overhead": round(result.overhead, 3), "distillations": int((done["cache_hit_distill"] == 0).sum()),
                "trials_completed": len(done), "distill_saved_s": round(float(done.get("distill_saved_s", 0).sum()), 1),
                "measure_pause_wait_s_median": round(float(done["measure_pause_wait_s"].median()), 3) if "measure_pause_wait_s" in done else None,
                "trials_stopped": int((result.trials["status"] == "STOPPED").sum()),
            }
            sweep_run = MlflowClient(run_cfg.tracking_uri).get_run(result.run_id).data.metrics  # where the wall time went
            figures[name]["phases_s"] = {k: round(sweep_run[k], 1) for k in PHASES if k in sweep_run}
            if "diy_wall_s" in figures:
                figures[name]["wall_ratio_vs_diy"] = round(figures["diy_wall_s"] / wall, 2)
                figures[name]["hypervolume_vs_diy"] = round(figures[name]["test_hypervolume"] / figures["diy_test_hypervolume"], 3)
        if args.isolation_check:
            figures["isolation_check"] = isolation_check(args.space, base, tmp)
        (Path(tmp) / "saving").mkdir()
        figures["teacher_outputs"] = teacher_output_saving(cfg, teacher, data_path, Path(tmp) / "saving")
    figures["curves"] = {k: [[round(t, 1), round(hv, 4)] for t, hv in c] for k, c in curves.items()}
    for k, v in figures.items():
        if k != "curves":
            print(f"{k:>24}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
