"""The sweep's measurement service: every latency, throughput and memory figure of a sweep is measured
here, one model at a time, on the sweep's measurement target.

It is one Ray actor, pinned to its node for the whole sweep (a GPU with `measure.device: cuda`; on a cluster
one unit of the custom resource `measure.target` names, so it lands on a node type kept for timing), that
pins its torch threads (and, where the OS allows, its cores) and loads each model from its exported
artifact, so it times exactly what ships. A Ray actor runs one call at a time: trials queue for it, and
their measurements never overlap. How its timing gets the node to itself is `measure.isolation`:

- `pause` (the default): it holds no CPU; while it times a model, every training loop on its node pauses
  at its next step boundary and waits (`io.gate`), so trials use every core between measurements;
- `reserve`: it holds `measure.cpus` logical CPUs (default `threads`) from trials for the whole sweep;
- `none`: neither (timings then share the node with training: for a node of its own, `measure.target`).

Latency is corrected for drift: every timed forward pass of a model is followed by one of a fixed
reference model (the sweep's teacher), and the model's latency is the median of those paired ratios
times the reference's own latency, measured once, alone, when the teacher was measured (and cached with
its other measurements). A machine that is slower for a while slows both sides of every pair alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch

from orchestrator.config.schema import MeasureConfig
from orchestrator.core.measure import measure_latency
from orchestrator.core.objectives import Objectives
from orchestrator.engine.cluster import service_cpus
from orchestrator.engine.context import SweepContext
from orchestrator.runtimes import RUNTIMES
from orchestrator.io.gate import Gate, alive
from orchestrator.io.storage import cache_root, fetch
from orchestrator.tasks.base import Task
from orchestrator.techniques.quantize import EncodedTensor

log = logging.getLogger("orchestrator")


@dataclass(frozen=True)
class Timing:
    p50_ms: float  # drift-corrected batch-1 latency (raw when there is no reference latency yet)
    p95_ms: float
    raw_p50_ms: float  # the plain median of this model's timed passes
    vs_reference: float | None  # median paired ratio to the reference model


class _Probe:
    """What the `target` objectives read (`core.objectives`), each measured once, when first read."""

    def __init__(self, service: "MeasurementService", model: torch.nn.Module, artifact: str) -> None:
        self.service, self.model, self.artifact = service, model, artifact  # artifact: the file the runtime runs, local
        self.throughput_unit = service.task.throughput_unit()

    @cached_property
    def _latency(self) -> Any:
        s = self.service
        m = s.settings
        return measure_latency(self.model, s.example, threads=m.threads, warmup=m.warmup, repeats=m.repeats,
                               reference=s.reference if s.reference_ms is not None else None)

    @cached_property
    def timing(self) -> Timing:
        lat, ref = self._latency, self.service.reference_ms
        if ref is None or lat.ratio_p50 is None:
            return Timing(lat.p50_ms, lat.p95_ms, lat.p50_ms, None)
        return Timing(ref * lat.ratio_p50, ref * lat.ratio_p95, lat.p50_ms, lat.ratio_p50)

    @property
    def throughput_per_s(self) -> float:
        return self._latency.throughput * self.service.task.units_per_example(self.service.example)

    @cached_property
    def extra(self) -> dict[str, float]:
        s = self.service
        return s.task.measure_extra(self.model, s.data, threads=s.settings.threads)

    @cached_property
    def peak_memory_mb(self) -> float:
        return self.service.peak_memory_mb(self.artifact)


class MeasurementService:
    """The Ray actor's class (see the module's docstring); `start_service` creates it."""

    def __init__(self, task: Task, data_path: str, reference_artifact: str, settings: MeasureConfig, asked: list[str],
                 objectives: Objectives, encodings: Mapping[str, type[EncodedTensor]], dequantized: bool = False) -> None:
        self.task, self.settings, self.objectives = task, settings, objectives  # yours included: the sweep's snapshot
        self.encodings = encodings  # how artifacts decode, techniques of your own included
        self.dequantized = dequantized  # `export.fallback: dequantized`: a weight the runtime cannot run runs as float
        self.names = objectives.target_names(asked)
        self.device = torch.device(settings.device)
        torch.set_num_threads(settings.threads)
        self.cores = _pin_cores(settings.threads)
        self.data = task.load_data(fetch(data_path))
        self.example = task.example(self.data).to(self.device)
        self.runtime = RUNTIMES[settings.runtime]
        self.spec_dir = _scratch()  # removed by `close` (`stop_service`)
        self.reference = self._load(self._runnable(reference_artifact, None))
        self.reference_ms: float | None = None

    def _runnable(self, artifact: str, runnable: str | None) -> Path:
        """The local file the runtime runs: the artifact itself (torch), the file the trial exported beside it
        (`runnable`), or one this service exports now (the teacher's, once per sweep)."""
        if self.runtime.format is None:
            return fetch(artifact)
        if runnable is not None:
            return fetch(runnable)
        out = Path(self.spec_dir) / f"{zlib.crc32(artifact.encode()):08x}-{self.runtime.file_name(artifact)}"
        if not out.exists():
            self.runtime.export(fetch(artifact), out, self.example.cpu(), build=self.task.build_model, encodings=self.encodings,
                                dequantized=self.dequantized)
        return out

    def _load(self, path: Path) -> Any:
        return self.runtime.load(path, build=self.task.build_model, encodings=self.encodings, threads=self.settings.threads,
                                 device=str(self.device))

    def set_reference_ms(self, ms: float) -> None:
        """The reference model's own latency (alone, on this target): the scale of corrected latencies."""
        self.reference_ms = ms

    def measure(self, artifact: str, runnable: str | None = None) -> dict[str, Any]:
        """Every target figure of the model in `artifact` (run by `measure.runtime`: from `runnable`, the file a
        trial exported for it, when the runtime runs a file of its own): {"metrics", "started", "ended"} (unix
        seconds), the window in which the node's training paused (`measure.isolation: pause`)."""
        path = self._runnable(artifact, runnable)
        model = self._load(path)
        with self._isolated() as window:  # everything timed, inside the window
            started = time.time()
            probe = _Probe(self, model, str(path))
            metrics = self.objectives.measured("target", probe, self.names)
            lat = probe.timing
            metrics.update({
                f"throughput_{probe.throughput_unit}_per_s": probe.throughput_per_s,
                **probe.extra,
                "latency_raw_ms": lat.raw_p50_ms,
                "measure_threads": float(self.settings.threads),
            })
            ended = time.time()
        if window is not None:
            metrics.update({"measure_pause_wait_s": window.waited_s, "measure_isolated": float(window.isolated)})
        if lat.vs_reference is not None:
            metrics["latency_vs_teacher"] = lat.vs_reference
        return {"metrics": metrics, "started": started, "ended": ended}

    def _isolated(self) -> Any:
        """With `measure.isolation: pause`, the node's gate held shut (its window); else nothing to hold (None)."""
        return Gate().measuring() if self.settings.isolation == "pause" else contextlib.nullcontext()

    def peak_memory_mb(self, artifact: str) -> float:
        """Peak memory of a batch-1 inference of `artifact` in a fresh process: what the loaded model and
        its forward pass add to that process at their peak (resident set on CPU, CUDA's allocator on GPU)."""
        spec = Path(self.spec_dir)
        if not (spec / "task.pkl").exists():
            from ray import cloudpickle

            (spec / "task.pkl").write_bytes(cloudpickle.dumps(self.task))
            (spec / "encodings.pkl").write_bytes(cloudpickle.dumps(dict(self.encodings)))
            torch.save(self.example.cpu(), spec / "example.pt")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.engine.peak_memory", str(spec), artifact, self.settings.device, str(self.settings.threads),
             self.runtime.name],
            capture_output=True, text=True, env=env, timeout=600,
        )
        if out.returncode != 0:
            raise RuntimeError(f"peak memory of {artifact}: the measuring process failed: {out.stderr.strip()[-2000:]}")
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_memory_mb"])

    def close(self) -> None:
        """Remove what it wrote: the teacher's runnable export and the peak-memory process's inputs."""
        shutil.rmtree(self.spec_dir, ignore_errors=True)

    def where(self) -> dict[str, Any]:
        """The node, cores and device it measures on."""
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "cores": self.cores, "device": str(self.device)}


def _scratch() -> str:
    """The service's scratch directory in the node cache (`measure/<pid>-...`), made after removing the ones
    of services whose process is gone (a sweep killed with its Ray has no `close`)."""
    home = cache_root() / "measure"
    home.mkdir(parents=True, exist_ok=True)
    for old in home.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=home)


def _pin_cores(threads: int) -> list[int]:
    """Pin this process to the last `threads` of the cores it may use (Linux), so its timing always runs
    on the same cores; returns them (empty where the OS does not allow it)."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    allowed = sorted(os.sched_getaffinity(0))
    cores = allowed[-threads:] if threads <= len(allowed) else allowed
    os.sched_setaffinity(0, cores)
    return cores


@dataclass(frozen=True)
class Replicas:
    """The sweep's measurement service: `measure.replicas` actors, one per target node (each asks for one unit of
    `measure.target`'s resource). A trial's model goes to one of them, chosen by its artifact's location, so the
    models spread evenly; every replica scales its paired ratios by the same reference latency (the teacher's,
    measured on the first), so their figures compare on nodes of one type."""

    actors: tuple[Any, ...]
    options: dict[str, Any] = field(default_factory=dict)  # what each replica asked Ray for
    target: str = "local"  # `measure.target`

    def pick(self, artifact: str) -> Any:
        return self.actors[zlib.crc32(artifact.encode()) % len(self.actors)]

    def ready(self) -> "Replicas":
        """Wait until every replica is up; a one-line `RuntimeError` when they cannot start (see `start_service`)."""
        import ray

        try:
            ray.get([a.where.remote() for a in self.actors], timeout=START_TIMEOUT_S)  # raises here if one cannot start
        except ray.exceptions.ActorUnschedulableError:
            for a in self.actors:
                ray.kill(a)
            raise RuntimeError(
                f"the measurement service cannot run on this sweep's node (measure.target local) with "
                f"{self.options['num_cpus']:g} CPUs{' and a GPU' if self.options['num_gpus'] else ''}: that node cannot hold them. "
                "On a cluster, give a node type a custom resource (e.g. latency_target: 1) and set measure.target to its name"
            ) from None
        except ray.exceptions.GetTimeoutError:
            for a in self.actors:
                ray.kill(a)
            wanted = {k: v for k, v in self.options.items() if k in ("num_cpus", "num_gpus", "resources")}
            raise RuntimeError(
                f"the measurement service could not get {wanted} {len(self.actors)} time(s) (measure.target {self.target!r}, "
                f"measure.replicas {len(self.actors)}) within {START_TIMEOUT_S} s; free now: {ray.available_resources()}. Give the "
                "cluster a node with them for each replica, or change `measure.*`"
            ) from None
        return self

    def set_reference_ms(self, ms: float) -> None:
        import ray

        ray.get([a.set_reference_ms.remote(ms) for a in self.actors])

    def where(self) -> list[dict[str, Any]]:
        """Each replica's node, cores and device."""
        import ray

        return ray.get([a.where.remote() for a in self.actors])


def start_service(ctx: SweepContext, task: Task, data_path: str, reference_artifact: str, *, wait: bool = True) -> Replicas:
    """Create the sweep's measurement service (its replicas) on its target and (`wait`) wait until every replica
    is up; without `wait`, they start (a process each) while the caller goes on, and `Replicas.ready` waits."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cfg = ctx.config
    m = cfg.measure
    options: dict[str, Any] = {"num_cpus": service_cpus(cfg), "num_gpus": 1 if m.device == "cuda" else 0,
                               "max_restarts": 0}
    if m.target == "local":  # the node this sweep runs on
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    else:
        options["resources"] = {m.target: 1}
    actors = tuple(ray.remote(MeasurementService).options(**options).remote(
        task, data_path, reference_artifact, m, cfg.figures_asked, ctx.objectives, ctx.encodings,
        cfg.export.fallback == "dequantized") for _ in range(m.replicas))
    service = Replicas(actors, options, m.target)
    return service.ready() if wait else service


START_TIMEOUT_S = 300  # how long a sweep waits for its measurement service's resources


def stop_service(service: Replicas) -> None:
    """End the measurement service (it holds resources for as long as it lives), its files removed first."""
    import ray

    try:
        ray.get([a.close.remote() for a in service.actors], timeout=30)
    except Exception as e:  # noqa: BLE001 (a replica that died took nothing more to remove with it)
        log.debug("measurement service: closing failed (%s)", e)
    for actor in service.actors:
        ray.kill(actor, no_restart=True)


def measure_on_service(service: Replicas, artifact: str, runnable: str | None = None) -> tuple[dict[str, float], float]:
    """(the target figures of `artifact` (run from `runnable`, its export for `measure.runtime`, when given), seconds
    this caller waited in its replica's queue)."""
    import ray

    t = time.perf_counter()
    result = ray.get(service.pick(str(artifact)).measure.remote(str(artifact), runnable))
    took = time.perf_counter() - t
    busy = result["ended"] - result["started"]
    metrics = {**result["metrics"], "measure_started_at": result["started"], "measure_ended_at": result["ended"]}
    return metrics, max(0.0, took - busy)
