"""One trial, top to bottom: [premeasure ->] distill -> prune [-> recover] -> quantize -> export -> measure.

`tune_trial` is the Ray Tune function (the driver). It distils in its own process (one worker) or starts
a Ray Train run (DDP), unless an earlier trial already distilled the same student; then it does the cheap
stages itself and reports measured metrics. `build_teacher` and `build_teacher_outputs` are what the sweep
runs once, before the trials, each cached in storage.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator import cache
from orchestrator.config import Fixed, SweepConfig
from orchestrator.losses import LossWeights
from orchestrator.measure import count_params, measure_decode, measure_latency, score_lm
from orchestrator.space import ObjectiveConstraints
from orchestrator.stages.compress import Compressed, compress
from orchestrator.stages.distill import Check, DistillJob, DistillResult, load_teacher, run_distill
from orchestrator.stages.export import export
from orchestrator.stages.prune import PruneResult
from orchestrator.stages.teacher_outputs import compute_teacher_outputs
from orchestrator.stopping import EarlyStopped, read_front, stop_reason
from orchestrator.tasks import LMData, build_model_from, load_data, model_config
from orchestrator.tasks.char_lm import build_model
from orchestrator.tasks.hf_lm import derive_student, load_pretrained, named_student, source_fingerprint

ARTIFACT = "model.orc"


@dataclass(frozen=True)
class TeacherInfo:
    key: str  # content hash of the teacher's config and data: its cache entry
    path: str  # checkpoint (config + state_dict) in storage
    cache_hit: bool  # reused from an earlier sweep
    accuracy: float
    perplexity: float
    size_bytes: int  # its exported float32 artifact
    latency_ms: float
    params: int
    train_seconds: float  # time inside its training loop when it was built
    build_seconds: float  # time inside its stages then: training loop, export and measurement


@dataclass(frozen=True)
class TeacherOutputsInfo:
    key: str  # content hash of the teacher, the pool of windows and what is kept: its cache entry
    path: str  # `TeacherOutputs` file in storage
    cache_hit: bool  # reused from an earlier sweep
    seconds: float  # time the teacher took to produce them when they were built
    size_bytes: int


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares: small, picklable; big things are paths into storage."""

    config: SweepConfig
    data_path: str
    teacher: TeacherInfo
    teacher_outputs: TeacherOutputsInfo | None  # None: distillation runs the teacher live (`distill.teacher_outputs`)
    sweep_dir: str  # <storage>/sweeps/<sweep id>


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space (names as in the YAML's `params`)."""

    layers: int
    width: int
    heads: int
    beta: float
    lam: float
    temperature: float
    sparsity: float
    bits: int
    optimizer: str
    lr: float
    weight_decay: float = 0.0
    group_size: int = 64

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> "TrialParams":
        values = dict(params)
        values["lam"] = values.pop("lambda")
        return cls(**values)


def measure_model(
    model: nn.Module, size: int, data: LMData, cfg: SweepConfig, *, reference: nn.Module | None,
    counts: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Held-out accuracy/perplexity, artifact size, batch-1 latency and decoding speed of a model as it runs.

    `counts` (parameters, non-zero) of the compressed shape, when int8 layers hide them from torch."""
    test = score_lm(model, data.test, context=cfg.task.context, max_positions=cfg.task.eval_tokens)
    example = data.test[: cfg.task.context].long()[None]  # (1, T): a fixed held-out prompt
    m = cfg.measure
    lat = measure_latency(model, example, threads=m.threads, warmup=m.warmup, repeats=m.repeats, reference=reference)
    decode = measure_decode(model, example, new_tokens=cfg.task.decode_tokens, threads=m.threads)
    total, nonzero = counts or count_params(model)
    out = {
        "accuracy": test.accuracy,
        "perplexity": test.perplexity,
        "size_bytes": float(size),
        "size_mb": size / 1e6,
        "bits_per_weight": 8 * size / total,
        "latency_ms": lat.p50_ms,
        "latency_p95_ms": lat.p95_ms,
        "throughput_tokens_per_s": lat.throughput,
        "decode_tokens_per_s": decode,
        "measure_threads": float(lat.threads),
        "params": float(total),
        "nonzero_params": float(nonzero),
    }
    if lat.reference_p50_ms is not None:
        out["latency_vs_teacher"] = lat.p50_ms / lat.reference_p50_ms
    return out


def _model_cfg(cfg: SweepConfig, vocab_size: int, *, layers: int, width: int, heads: int) -> dict[str, int]:
    return {"vocab_size": vocab_size, "context": cfg.task.context, "layers": layers, "width": width, "heads": heads}


def _train(
    cfg: SweepConfig, job: DistillJob, *, name: str, cpus_per_worker: float, in_process: bool, check: Check | None = None
) -> DistillResult:
    r = cfg.resources
    return run_distill(
        job, name=name, storage_path=str(cfg.storage_path / "train"), num_workers=r.num_workers,
        use_gpu=r.use_gpu, cpus_per_worker=cpus_per_worker, placement_strategy=r.placement_strategy,
        in_process=in_process, check=check,
    )


def _train_in_task(cfg: SweepConfig, job: DistillJob, *, cpus: float) -> DistillResult:
    """`run_distill` in-process, inside a Ray task that reserves the worker's resources (the sweep's own
    process holds none): what `launcher: in_trial` means for the teacher, trained before any trial."""
    import ray

    gpus = 1 if cfg.resources.use_gpu else 0
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_distill)
    return ray.get(task.remote(
        job, name="teacher", storage_path=str(cfg.storage_path / "train"), num_workers=1,
        use_gpu=cfg.resources.use_gpu, cpus_per_worker=cpus, in_process=True,
    ))


def build_teacher(cfg: SweepConfig, data: LMData, data_path: str, data_key: str) -> TeacherInfo:
    """Train the teacher once per storage (keyed by its config, data and seed) and measure it."""
    t = cfg.teacher
    if cfg.task.name == "hf_causal_lm":
        return _pretrained_teacher(cfg, data, data_key)
    model_cfg = _model_cfg(cfg, data.vocab_size, layers=t.layers, width=t.width, heads=t.heads)
    # What determines the teacher's weights: its recipe, data, seed and DDP world size (not its thread count).
    recipe = {k: v for k, v in dataclasses.asdict(t).items() if k != "cpus_per_worker"}
    key = cache.content_key("teacher", recipe, model_cfg, data_key, cfg.seed, cfg.resources.num_workers)

    def build(tmp: Path) -> None:
        cpus = t.cpus_per_worker or cfg.resources.cpus_per_worker
        job = DistillJob(
            data_path=data_path, teacher_path=None, teacher_outputs_path=None, model=model_cfg, steps=t.steps, batch_size=t.batch_size,
            warmup=min(100, t.steps // 10), lr=t.lr, optimizer="adamw", seed=cfg.seed, weights=None,
            val_tokens=cfg.distill.val_tokens, threads=max(1, int(cpus)), weight_decay=0.01,
        )
        if cfg.distill_in_trial:  # one worker: a Ray task holding its CPUs (and GPU) runs the loop itself
            result = _train_in_task(cfg, job, cpus=cpus)
        else:
            result = _train(cfg, job, name=f"teacher-{key}", cpus_per_worker=cpus, in_process=False)
        torch.save({"config": model_cfg, "state_dict": result.state_dict}, tmp / "teacher.pt")
        teacher = load_teacher(tmp / "teacher.pt")
        t0 = time.perf_counter()
        size = export(teacher, tmp / ARTIFACT, bits=32, meta=data.meta)
        metrics = measure_model(teacher, size, data, cfg, reference=None)
        metrics["train_seconds"] = result.train_seconds
        metrics["build_seconds"] = result.train_seconds + time.perf_counter() - t0
        (tmp / "teacher.json").write_text(json.dumps(metrics, indent=1))

    return _teacher_info(cfg, key, build)


def _pretrained_teacher(cfg: SweepConfig, data: LMData, data_key: str) -> TeacherInfo:
    """hf_causal_lm: the pretrained model, loaded once per storage (keyed by its source), exported as
    float32 and measured on the task's test split like any student."""
    source = cfg.teacher.model
    key = cache.content_key("pretrained_teacher", source_fingerprint(source), data_key, dataclasses.asdict(cfg.measure))

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        teacher, _ = load_pretrained(source)
        torch.save({"config": model_config(teacher), "state_dict": teacher.state_dict()}, tmp / "teacher.pt")
        size = export(teacher, tmp / ARTIFACT, bits=32, meta=data.meta)
        metrics = measure_model(teacher, size, data, cfg, reference=None)
        metrics.update(train_seconds=0.0, build_seconds=time.perf_counter() - t0)
        (tmp / "teacher.json").write_text(json.dumps(metrics, indent=1))

    return _teacher_info(cfg, key, build)


def _teacher_info(cfg: SweepConfig, key: str, build: Callable[[Path], None]) -> TeacherInfo:
    entry, hit = cache.get_or_build(cfg.storage_path / "teachers", key, build)
    m = json.loads((entry / "teacher.json").read_text())
    return TeacherInfo(
        key=key, path=str(entry / "teacher.pt"), cache_hit=hit, accuracy=m["accuracy"], perplexity=m["perplexity"],
        size_bytes=int(m["size_bytes"]), latency_ms=m["latency_ms"], params=int(m["params"]),
        train_seconds=m["train_seconds"], build_seconds=m.get("build_seconds", m["train_seconds"]),
    )


def build_teacher_outputs(cfg: SweepConfig, teacher: TeacherInfo, data: LMData) -> TeacherOutputsInfo:
    """Run the teacher once over a pool of training windows and keep its outputs for every trial.

    Hidden states are kept only when some trial can weigh them (`params.beta` not fixed at 0).
    """
    d = cfg.distill
    hidden = cfg.params["beta"] != Fixed(0.0)
    top_k = d.top_k if d.top_k is not None and d.top_k < data.vocab_size else None  # k >= V: all logits
    key = cache.content_key("teacher_outputs", teacher.key, d.cache_blocks, cfg.seed, hidden, top_k, cfg.task.context)

    def build(tmp: Path) -> None:
        t, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(max(1, int(cfg.teacher.cpus_per_worker or cfg.resources.cpus_per_worker)))
        try:
            outputs = compute_teacher_outputs(
                load_teacher(teacher.path), data.train, blocks=d.cache_blocks, seed=cfg.seed, hidden=hidden, top_k=top_k,
                context=cfg.task.context,
            )
        finally:
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - t
        outputs.save(tmp / "teacher_outputs.pt")
        (tmp / "teacher_outputs.json").write_text(json.dumps({"seconds": seconds}))  # read back on every hit

    entry, hit = cache.get_or_build(cfg.storage_path / "teacher_outputs", key, build)
    path = entry / "teacher_outputs.pt"
    seconds = json.loads((entry / "teacher_outputs.json").read_text())["seconds"]
    return TeacherOutputsInfo(key=key, path=str(path), cache_hit=hit, seconds=seconds, size_bytes=path.stat().st_size)


def distill_job(
    cfg: SweepConfig, p: TrialParams, ctx: TrialContext, model: dict[str, Any], *, steps: int, warmup: int,
    init_path: str | None = None, gradual: dict[str, Any] | None = None,
) -> DistillJob:
    """A distillation job from the teacher (its cached outputs, or live) with `p`'s recipe."""
    outputs, pipe = ctx.teacher_outputs, cfg.pipeline
    qat = None
    if pipe.qat and p.bits <= 8:
        qat = {"method": pipe.quantize.method, **dataclasses.asdict(pipe.quantize), "bits": p.bits, "group_size": p.group_size}
    return DistillJob(
        data_path=ctx.data_path, teacher_path=None if outputs else ctx.teacher.path,
        teacher_outputs_path=outputs.path if outputs else None, model=model, steps=steps,
        batch_size=cfg.distill.batch_size, warmup=warmup, lr=p.lr, optimizer=p.optimizer, seed=cfg.seed,
        weights=LossWeights(temperature=p.temperature, lam=p.lam, beta=p.beta), val_tokens=cfg.distill.val_tokens,
        threads=max(1, int(cfg.resources.cpus_per_worker)), weight_decay=p.weight_decay, context=cfg.task.context,
        temperature_end=cfg.distill.temperature_end, layer_map=cfg.distill.layer_map, init_path=init_path,
        gradual=gradual, qat=qat,
    )


def _job_key(kind: str, source: str, job: DistillJob, cfg: SweepConfig, *extra: Any) -> str:
    """Everything that determines a trained model: what it learns from (the teacher, or its cached outputs;
    both keys cover the data), the job, the world size. Not where it runs: both launchers train alike."""
    recipe = {k: v for k, v in dataclasses.asdict(job).items()
              if k not in ("data_path", "teacher_path", "teacher_outputs_path", "threads", "init_path")}
    return cache.content_key(kind, source, recipe, cfg.resources.num_workers, *extra)


def _save(path: Path, model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> None:
    blob: dict[str, Any] = {"config": model_config(model), "state_dict": model.state_dict()}
    if masks:
        blob["masks"] = masks
    torch.save(blob, path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A student checkpoint: the model and the keep-masks held while it trained (empty if none)."""
    blob = torch.load(path, weights_only=True)
    model = build_model_from(blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model, blob.get("masks", {})


def distill_student(
    cfg: SweepConfig, p: TrialParams, ctx: TrialContext, vocab_size: int, teacher: nn.Module, *, trial_id: str,
    check: Check | None = None,
) -> tuple[Path, bool]:
    """The distilled (float) student for `p`, trained now or reused: a later trial that differs only in
    post-training parameters (sparsity, bits) gets the earlier trial's student without training. Gradual
    pruning and QAT happen here, so then sparsity or bits are part of the student.
    A `check` that stops training (`EarlyStopped`) leaves no cache entry behind.

    Returns (cache entry holding student.pt and distill.json, hit).
    """
    gradual = None
    if cfg.pipeline.gradual_pruning:
        gradual = {**dataclasses.asdict(cfg.pipeline.prune), "sparsity": p.sparsity}
        gradual.pop("recovery_steps")
    derived = None
    if cfg.task.name == "hf_causal_lm":  # a subset of the teacher's layers, or a named config
        derived = untrained_student(cfg, p, None, teacher)
        model = model_config(derived)
    else:
        model = _model_cfg(cfg, vocab_size, layers=p.layers, width=p.width, heads=p.heads)
    job = distill_job(cfg, p, ctx, model, steps=cfg.distill.steps, warmup=cfg.distill.warmup, gradual=gradual)
    source = ctx.teacher_outputs.key if ctx.teacher_outputs else ctx.teacher.key
    key = _job_key("student", source, job, cfg, ctx.teacher.key if derived is not None else None)

    def build(tmp: Path) -> None:
        run = job
        if derived is not None:
            _save(tmp / "init.pt", derived)
            run = dataclasses.replace(job, init_path=str(tmp / "init.pt"))
        result = _train(cfg, run, name=f"distill-{trial_id}", cpus_per_worker=cfg.resources.cpus_per_worker,
                        in_process=cfg.distill_in_trial, check=check)
        if derived is not None:
            (tmp / "init.pt").unlink()
        torch.save({"config": job.model, "state_dict": result.state_dict}, tmp / "student.pt")
        info = {"train_seconds": result.train_seconds, "val_accuracy": result.val_accuracy, "val_loss": result.val_loss}
        (tmp / "distill.json").write_text(json.dumps(info))

    return cache.get_or_build(cfg.storage_path / "students", key, build)


def recover_student(
    cfg: SweepConfig, p: TrialParams, ctx: TrialContext, pruned: PruneResult, source: str, *, trial_id: str
) -> tuple[PruneResult, bool]:
    """Recovery fine-tuning after one-shot pruning: `prune.recovery_steps` of distillation from the pruned
    model, pruned weights held at zero (structured: the smaller shape kept). Cached like students, keyed
    by the model it starts from (`source`: the student's or teacher's key, the prune method, sparsity)."""
    method = cfg.pipeline.prune
    assert method is not None
    steps = method.recovery_steps
    model_cfg = model_config(pruned.model)
    probe = distill_job(cfg, p, ctx, model_cfg, steps=steps, warmup=min(cfg.distill.warmup, steps // 10))
    start = {"method": method.method, **dataclasses.asdict(method), "sparsity": p.sparsity}
    key = _job_key("recovered", source, probe, cfg, start)

    def build(tmp: Path) -> None:
        _save(tmp / "pruned.pt", pruned.model, pruned.masks)
        job = dataclasses.replace(probe, init_path=str(tmp / "pruned.pt"))
        result = _train(cfg, job, name=f"recover-{trial_id}", cpus_per_worker=cfg.resources.cpus_per_worker,
                        in_process=cfg.distill_in_trial)
        (tmp / "pruned.pt").unlink()
        torch.save({"config": model_cfg, "state_dict": result.state_dict, "masks": pruned.masks}, tmp / "student.pt")
        info = {"train_seconds": result.train_seconds, "val_accuracy": result.val_accuracy, "val_loss": result.val_loss}
        (tmp / "distill.json").write_text(json.dumps(info))

    entry, hit = cache.get_or_build(cfg.storage_path / "students", key, build)
    model, masks = load_checkpoint(entry / "student.pt")
    return PruneResult(model.train(False), masks), hit


def untrained_student(cfg: SweepConfig, p: TrialParams, data: LMData | None, teacher: nn.Module) -> nn.Module:
    """A student of `p`'s shape before distillation (hf_causal_lm: the teacher layers it starts from, or
    the seeded random initialisation of `distill.student`'s config)."""
    if cfg.task.name == "hf_causal_lm":
        if cfg.distill.student is not None:
            return named_student(cfg.distill.student, teacher, cfg.seed)
        return derive_student(teacher, p.layers)
    assert data is not None
    torch.manual_seed(cfg.seed)
    return build_model(data.vocab_size, cfg.task.context, layers=p.layers, width=p.width, heads=p.heads)


def premeasure(cfg: SweepConfig, p: TrialParams, data: LMData, teacher: nn.Module, workdir: Path) -> dict[str, float]:
    """Size and latency of `p`'s compressed student before it is trained: they depend on its shape,
    sparsity and bits, not on its weights, so an untrained student of that shape, pruned, quantized and
    exported the same way, measures them (size to within the choice between mask and index encodings)."""
    model = untrained_student(cfg, p, data, teacher)
    c = compress(model, cfg.pipeline, sparsity=p.sparsity, bits=p.bits, group_size=p.group_size,
                 artifact=workdir / "untrained.orc", meta=data.meta)
    example = data.test[: cfg.task.context].long()[None]
    m = cfg.measure
    lat = measure_latency(c.model, example, threads=m.threads, warmup=m.warmup, repeats=m.repeats, reference=teacher)
    (workdir / "untrained.orc").unlink()
    return {"pre_size_mb": c.size_bytes / 1e6, "pre_latency_ms": lat.p50_ms}


def _early_stop_check(cfg: SweepConfig, ctx: TrialContext, pre: dict[str, float], report: Callable[[dict], None] | None) -> Check:
    """Every `early_stopping.every` steps: report validation accuracy, then stop if the front makes the
    student hopeless (`stopping.stop_reason`)."""
    es = cfg.early_stopping
    limits = ObjectiveConstraints(cfg.constraints)

    def callback(step: int, val_accuracy: float) -> None:
        if report is not None:
            report({"distill_step": step, "val_accuracy": val_accuracy, **pre})
        reason = stop_reason(val_accuracy, pre["pre_size_mb"], pre["pre_latency_ms"], margin=es.margin,
                             front=read_front(ctx.sweep_dir), constraints=limits)
        if reason is not None:
            raise EarlyStopped(step, val_accuracy, reason)

    return Check(every=es.every, val_tokens=es.val_tokens, callback=callback)


def run_pipeline(
    params: TrialParams, ctx: TrialContext, *, trial_id: str, report: Callable[[dict], None] | None = None
) -> dict[str, Any]:
    """Distill, prune, quantize, export and measure one student; returns its metrics (all measured).

    With `early_stopping` on, size and latency are measured first and distillation may stop early: the
    result then says `early_stopped` and why, and holds no test metrics. `report` receives the
    intermediate validation results.
    """
    cfg, p = ctx.config, params
    data = load_data(ctx.data_path)
    timings: dict[str, float] = {}
    workdir = Path(ctx.sweep_dir) / "trials" / trial_id
    workdir.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(ctx.teacher.path)
    common = {"cache_hit_teacher": float(ctx.teacher.cache_hit)}
    if ctx.teacher_outputs is not None:
        common["cache_hit_teacher_outputs"] = float(ctx.teacher_outputs.cache_hit)

    check, pre = None, {}
    if cfg.early_stopping.enabled:
        t = time.perf_counter()
        pre = premeasure(cfg, p, data, teacher, workdir)
        timings["time_premeasure_s"] = time.perf_counter() - t
        check = _early_stop_check(cfg, ctx, pre, report)

    t = time.perf_counter()
    if cfg.pipeline.distill:
        try:
            entry, hit = distill_student(cfg, p, ctx, data.vocab_size, teacher, trial_id=trial_id, check=check)
        except EarlyStopped as stop:
            timings["time_distill_s"] = time.perf_counter() - t
            return {
                "early_stopped": 1.0, "stop_reason": stop.reason, "stopped_at_step": stop.step,
                "val_accuracy": stop.val_accuracy, **pre, **common, "cache_hit_distill": 0.0, **timings,
                "time_stages_s": sum(timings.values()),
            }
        distilled = json.loads((entry / "distill.json").read_text())
        timings["time_distill_s"] = 0.0 if hit else distilled["train_seconds"]
        timings["time_distill_fit_s"] = time.perf_counter() - t  # includes Ray Train worker start-up
        student, _ = load_checkpoint(entry / "student.pt")
        source = entry.name
        common.update(val_accuracy=distilled["val_accuracy"], val_loss=distilled["val_loss"], cache_hit_distill=float(hit))
    else:  # the pipeline compresses the teacher itself
        student, source = copy.deepcopy(teacher), ctx.teacher.key  # `teacher` stays the uncompressed reference

    def recover(pruned: PruneResult) -> PruneResult:
        result, hit = recover_student(cfg, p, ctx, pruned, source, trial_id=trial_id)
        common["cache_hit_recover"] = float(hit)
        return result

    artifact = workdir / ARTIFACT
    c: Compressed = compress(
        student.eval(), cfg.pipeline, sparsity=p.sparsity, bits=p.bits, group_size=p.group_size, artifact=artifact,
        meta=data.meta, recover=recover, timings=timings,
    )

    t = time.perf_counter()
    metrics = measure_model(c.model, c.size_bytes, data, cfg, reference=teacher, counts=(c.params, c.nonzero_params))
    timings["time_measure_s"] = time.perf_counter() - t
    metrics["sparsity_measured"] = c.sparsity
    metrics["int8_layers"] = float(len(c.int8_layers))

    metrics.update(
        compression_ratio=ctx.teacher.size_bytes / c.size_bytes,
        accuracy_retained=metrics["accuracy"] / ctx.teacher.accuracy,
        **common,
        **pre,
        **timings,
    )
    # stage time: the recovery's training loop is not split out (its worker start-up is small in-process)
    metrics["time_stages_s"] = sum(v for k, v in timings.items() if k != "time_distill_fit_s")
    return {**metrics, "artifact": str(artifact)}


def tune_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Ray Tune function: one trial's driver."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    ray.tune.report(run_pipeline(TrialParams.from_config(config), ctx, trial_id=trial_id, report=ray.tune.report))
