"""What a sweep costs: this product against the plain Optuna loop a user would write (issues 6 and 25).

    python bench/cost.py [--space bench/cost.yaml] [--out bench/results/cost.json] [--teacher-storage DIR] [--seeds N]
                         [--variants a,b] [--no-diy] [--no-pool-check] [--cpu-account] [--isolation-check]

The same job for every contestant (bench/cost.yaml: the same space, sampler, seed and number of trials),
from the same teacher, trained before any clock starts; with `--seeds N`, every contestant runs N times, with
sampler seeds 0 to N-1 (`sampler_seed`: the search varies, the teacher and the training seed do not), and
the figures are means over the seeds beside each seed's own (12 trials of TPE are mostly its 10 random
start-up trials: one run's hypervolume is largely the luck of its draws):
  (a) the hand-written loop: one process, no Ray, `optuna.Study.optimize`; every trial distils from scratch
      with the teacher run live in every step, then prunes, quantizes, exports and times the model in its
      own process (torch on every core);
  (b) this product on its defaults (`Sweep.run()`: trials side by side, the measurement service pausing
      training while it times, teacher outputs computed once);
  (c) this product with `fanout: 4` (each new student compressed four ways);
  (d) this product with `fidelity.enabled` (successive halving), with both, with `fanout: 6` and fidelity,
      and with both on a Ray started before the clock (as on a cluster: its start and shutdown not timed);
  a `step` on beta and lambda and T among three values (close proposals could share a student);
  (e) this product with `measure.isolation: reserve` (the service holding a core: the default before).
Each product run starts from a storage holding only the teacher, its measurements and the data. Hypervolumes are over test
accuracy, size and latency, with the teacher as reference. Also measured: one student distilled with the
teacher live, from the default pool of teacher outputs, from that pool computed in float32 and from a pool of 2,048
windows. With `--cpu-account`, where each product run's CPU time went (`CpuAccount`). Prints the figures and
writes them as JSON. Not a test: the machine's load moves these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
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
    """(a): the loop a user writes with Optuna alone (its sampler seeded as the sweep's: `sampler_seed`, else
    `seed`). Returns each trial's ending time and (test accuracy, size, latency)."""
    data = CharData.load(data_path)
    task, ctx = CharLMTask(cfg.task), resolve(cfg)
    threads = os.cpu_count() or 1
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=make_sampler(cfg.sampler, seed=cfg.search_seed, grid=searched_grid(cfg.params)))
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


ON_RAY = {"product_fanout4_fidelity_on_ray"}  # variants that join a Ray started before their clock


def product(cfg: SweepConfig, on_ray: bool = False,
            account: bool = False) -> tuple[list[tuple[float, tuple]], "orchestrator.SweepResult", float, dict | None]:
    """(b) and (c): this product, from a storage where the teacher already is; `on_ray`: on a local Ray started
    before the clock (the sweep joins it, and leaves it running), else on the Ray it starts itself. `account`: also
    where the CPU time of its clock went (`CpuAccount`)."""
    import ray

    from orchestrator.engine.cluster import RAY_ENV

    if on_ray:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": RAY_ENV})
        time.sleep(5)  # its start-up settled (workers prestarted) before the clock
    try:
        if not account:
            return (*_product(cfg), None)
        with CpuAccount() as cpu:
            events, result, wall = _product(cfg)
        return events, result, wall, cpu.figures()
    finally:
        if on_ray:
            ray.shutdown()


def _product(cfg: SweepConfig) -> tuple[list[tuple[float, tuple]], "orchestrator.SweepResult", float]:
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
    "product_fanout6_fidelity": {"fanout": 6, "fidelity.enabled": True},  # fewer students still: 2 or 3 for 12 trials
    # (d2) on a Ray started before the clock, as on a cluster where `ray start` ran first: its start and shutdown not timed
    "product_fanout4_fidelity_on_ray": {"fanout": 4, "fidelity.enabled": True},
    # beta and lambda in steps of 0.5 and T among 3 values: close proposals share a student (the space is coarser)
    "product_step": {"params.beta": {"low": 0.0, "high": 1.0, "step": 0.5}, "params.lambda": {"low": 0.0, "high": 1.0, "step": 0.5},
                     "params.temperature": {"choices": [1.0, 2.0, 4.0]}},
    "product_reserve": {"measure.isolation": "reserve"},  # the measurement service holding a core (the default before)
}


# the sweep's own clock, logged on its MLflow run: before the trials (Ray, storage, MLflow), the teacher phase (the
# pool of teacher outputs in it), Tune (its start, the trials, its end) and the whole sweep
PHASES = ("setup_seconds", "teacher_seconds", "teacher_outputs_seconds", "trials_seconds", "wall_seconds")


class CpuAccount:
    """Where a run's CPU time goes (Linux): every `every` seconds, each process's CPU time from /proc; at the end,
    the core-seconds the run used, by kind of process, and the machine's idle core-seconds. A process that started
    before counts from its first sample, one that starts after in full; one that ends between two samples loses
    its last interval. Kinds: this process (the sweep's driver: Tune, MLflow, the pool of teacher outputs; the
    sampling itself, a few ms each time, counts here too), the trials' processes, the measurement service, Ray's
    own (its daemons, agents and idle workers), other."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.tick = every, os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[str, str], list] = {}  # (pid, start) -> [kind, CPU seconds at the first sample, the latest]
        self._stop = threading.Event()

    def __enter__(self) -> "CpuAccount":
        with open("/proc/uptime") as f:
            self.boot_s = float(f.read().split()[0])  # processes started after this started during the run
        self.machine = self._machine()
        self._thread = threading.Thread(target=self._sample_every, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        total, idle = (b - a for a, b in zip(self.machine, self._machine()))
        self.busy_s, self.idle_s = total - idle, idle

    def _machine(self) -> tuple[float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v[:8]) / self.tick, (v[3] + v[4]) / self.tick  # all, idle + iowait

    def _sample_every(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline") as f:
                    cmd = f.read().replace("\0", " ")
            except OSError:  # ended meanwhile
                continue
            cpu, start = (int(fields[11]) + int(fields[12])) / self.tick, fields[19]
            entry = self.seen.setdefault((pid, start), [None, 0.0 if int(start) / self.tick >= self.boot_s else cpu, cpu])
            entry[0], entry[2] = self._kind(int(pid), cmd) or entry[0], cpu

    @staticmethod
    def _kind(pid: int, cmd: str) -> str | None:
        if pid == os.getpid():
            return "driver"
        if cmd.startswith("ray::ImplicitFunc"):
            return "trials"
        if cmd.startswith("ray::MeasurementService"):
            return "measurement service"
        if cmd.startswith("ray::IDLE") or "/ray/" in cmd:
            return None if "setup_worker.py" in cmd else "ray"  # a worker not yet titled: its title decides
        return "other" if cmd else None

    def figures(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, first, last in self.seen.values():
            out[kind or "ray"] = out.get(kind or "ray", 0.0) + last - first
        return {**{k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.05},
                "machine_busy": round(self.busy_s, 1), "machine_idle": round(self.idle_s, 1)}


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
    parser.add_argument("--seeds", type=int, default=1, help="run every contestant with sampler seeds 0 to N-1 (default 1)")
    parser.add_argument("--no-pool-check", action="store_true",
                        help="skip the one student distilled four ways (teacher live, three pools)")
    parser.add_argument("--cpu-account", action="store_true",
                        help="also sample where each product run's CPU time goes (/proc every 0.5 s; it costs a little CPU)")
    parser.add_argument("--isolation-check", action="store_true",
                        help="also run pause against reserve on the same 8 random configurations")
    args = parser.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants {','.join(unknown)}: no such run; choose among {', '.join(VARIANTS)}")
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: give 1 or more")

    with tempfile.TemporaryDirectory() as tmp:
        base = args.teacher_storage or f"{tmp}/teacher"
        cfg = orchestrator.load_config(args.space, overrides={"storage": base, "tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
        teacher, data_path = prepare_teacher(cfg)  # before any clock, for every contestant
        figures: dict = {"space": args.space, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                         "date": time.strftime("%Y-%m-%d"), "trials": cfg.trials, "sampler_seeds": list(range(args.seeds)),
                         "teacher": {"test_accuracy": round(teacher.metrics["test_accuracy"], 4),
                                     "size_mb": round(teacher.size_bytes / 1e6, 3), "latency_ms": round(teacher.latency_ms, 3)}}
        runs: dict[str, list[dict]] = {}  # contestant -> its run with each sampler seed
        curves: dict[str, list] = {}
        for seed in range(args.seeds):  # seed by seed, every contestant in turn: the machine's drift hits them alike
            if not args.no_diy:
                workdir = Path(tmp) / f"diy-{seed}"
                workdir.mkdir()
                seeded = orchestrator.load_config(args.space, overrides={"storage": base, "sampler_seed": seed})
                t = time.perf_counter()
                events = diy(seeded, teacher, data_path, workdir)
                wall = time.perf_counter() - t
                c = curve(events, teacher)
                curves.setdefault("diy", []).append(c)
                runs.setdefault("diy", []).append({"wall_s": round(wall, 1), "test_hypervolume": round(c[-1][1], 4)})
                shutil.rmtree(workdir)
            for name in args.variants.split(","):
                storage = fresh_storage(base, Path(tmp) / f"{name}-{seed}")
                run_cfg = orchestrator.load_config(args.space, overrides={
                    "storage": str(storage), "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": f"{name}-{seed}",
                    "sampler_seed": seed, **VARIANTS[name]})
                events, result, wall, cpu = product(run_cfg, on_ray=name in ON_RAY, account=args.cpu_account)
                done = result.trials[result.trials["status"] == "COMPLETED"]
                c = curve(events, teacher)
                curves.setdefault(name, []).append(c)
                sweep_run = MlflowClient(run_cfg.tracking_uri).get_run(result.run_id).data.metrics  # where the wall time went
                runs.setdefault(name, []).append({
                    "wall_s": round(wall, 1), "test_hypervolume": round(c[-1][1], 4) if c else 0.0,
                    "overhead": round(result.overhead, 3), "distillations": int((done["cache_hit_distill"] == 0).sum()),
                    "trials_completed": len(done), "distill_saved_s": round(float(done.get("distill_saved_s", 0).sum()), 1),
                    "measure_pause_wait_s_median": round(float(done["measure_pause_wait_s"].median()), 3) if "measure_pause_wait_s" in done else None,
                    "trials_stopped": int((result.trials["status"] == "STOPPED").sum()),
                    "phases_s": {k: round(sweep_run[k], 1) for k in PHASES if k in sweep_run},
                    **({"core_seconds": cpu} if cpu else {}),
                })
                shutil.rmtree(storage)  # its pool of teacher outputs is hundreds of MB
                print(f"seed {seed} {name}: {runs[name][-1]['wall_s']} s, hypervolume {runs[name][-1]['test_hypervolume']}", flush=True)
        for name, seeds in runs.items():
            figures[name] = summary(seeds, runs.get("diy"))
        if "diy" in runs:  # the keys of the one-seed reports
            figures["diy_wall_s"], figures["diy_test_hypervolume"] = figures["diy"]["wall_s"], figures["diy"]["test_hypervolume"]
        if args.isolation_check:
            figures["isolation_check"] = isolation_check(args.space, base, tmp)
        if not args.no_pool_check:
            (Path(tmp) / "saving").mkdir()
            figures["teacher_outputs"] = teacher_output_saving(cfg, teacher, data_path, Path(tmp) / "saving")
    figures["curves"] = {k: [[[round(t, 1), round(hv, 4)] for t, hv in c] for c in per_seed] for k, per_seed in curves.items()}
    for k, v in figures.items():
        if k != "curves":
            print(f"{k:>24}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


def summary(seeds: list[dict], diy_seeds: list[dict] | None) -> dict:
    """A contestant's figures over its seeds: the mean of each number, each seed's run, and against the hand loop
    the ratio of mean walls and of mean hypervolumes, with each seed's own (same sampler seed on both sides)."""
    digits = {"test_hypervolume": 4, "overhead": 3, "measure_pause_wait_s_median": 3}
    out = {k: round(float(np.mean([s[k] for s in seeds])), digits.get(k, 1))
           for k, v in seeds[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
           and all(s[k] is not None for s in seeds)}
    out["seeds"] = seeds
    if diy_seeds and seeds is not diy_seeds:
        out["wall_ratio_vs_diy"] = round(float(np.mean([d["wall_s"] for d in diy_seeds]) / np.mean([s["wall_s"] for s in seeds])), 2)
        out["hypervolume_vs_diy"] = round(float(np.mean([s["test_hypervolume"] for s in seeds])
                                                / np.mean([d["test_hypervolume"] for d in diy_seeds])), 3)
        out["wall_ratio_vs_diy_per_seed"] = [round(d["wall_s"] / s["wall_s"], 2) for d, s in zip(diy_seeds, seeds)]
        out["hypervolume_vs_diy_per_seed"] = [round(s["test_hypervolume"] / d["test_hypervolume"], 3) for d, s in zip(diy_seeds, seeds)]
    return out


if __name__ == "__main__":
    main()
