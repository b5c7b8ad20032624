"""What a sweep holds in Ray: each trial's resources, and how many trials fit at once beside the
sweep's measurement service."""

from __future__ import annotations

from orchestrator.config import ConfigError, SweepConfig

TRIAL_MEMORY_BYTES = 512 * 1024**2  # logical memory each trial's driver reserves in Ray


def _trial_needs(cfg: SweepConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds while it trains: its driver's and its Ray Train workers'."""
    r = cfg.resources
    trial = trial_resources(cfg)
    cpus = trial["cpu"] + (0.0 if cfg.distill_in_trial else r.num_workers * r.cpus_per_worker)
    gpus = trial.get("gpu", 0) + (0 if cfg.distill_in_trial or not r.use_gpu else r.num_workers)
    return cpus, gpus


def service_cpus(cfg: SweepConfig) -> float:
    """Logical CPUs the measurement service holds from trials."""
    return cfg.measure.cpus if cfg.measure.cpus is not None else float(cfg.measure.threads)


def check_fits(cfg: SweepConfig, available: dict[str, float], *, strict: bool = True) -> int:
    """How many trials run at once in a Ray with these resources beside the measurement service (at most
    `max_concurrent_trials`, or the trials' count when it is null); `ConfigError` when not even one fits
    (the sweep would wait forever). `strict=False` (a cluster, which may grow) gives at least 1 instead."""
    cpus, gpus = _trial_needs(cfg)
    held_cpus, held_gpus = service_cpus(cfg), 1 if cfg.measure.device == "cuda" else 0
    have_cpus, have_gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    wanted = min(cfg.max_concurrent_trials or cfg.trials, cfg.trials)
    fit = [(have_cpus - held_cpus) // cpus if cpus else wanted, (have_gpus - held_gpus) // gpus if gpus else wanted]
    if strict and cpus + held_cpus > have_cpus:
        raise ConfigError(
            f"{cfg.source}: a trial needs {cpus:g} CPUs and the measurement service holds {held_cpus:g} "
            f"(`measure.cpus`), but this Ray has {have_cpus:g}; lower `resources.num_workers` / `resources.cpus_per_worker`, "
            "or raise `resources.local_cpus`"
        )
    if strict and gpus + held_gpus > have_gpus:
        raise ConfigError(f"{cfg.source}: a trial and the measurement service need {gpus + held_gpus:g} GPUs together "
                          f"(`resources.use_gpu`, `measure.device`), but this Ray has {have_gpus:g}")
    return int(max(1, min(wanted, *fit)))


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What one trial's driver reserves in Ray.

    It always reserves memory (it loads models). When distillation runs in the trial's own process it holds
    that worker's CPUs (and GPU); when it only waits on a Ray Train worker group it holds `trial_cpus`,
    0 by default, so that two trials on a 2-CPU machine can each hold a 1-CPU worker instead of queueing
    behind each other's driver; with `driver_resource` it asks for a share of that custom resource, so
    that drivers run where it is (cluster.yaml's head node) and never take a training node's place.
    """
    r = cfg.resources
    if not cfg.distill_in_trial:
        where = {r.driver_resource: 0.001} if r.driver_resource else {}  # e.g. the head node, which never trains
        return {"cpu": r.trial_cpus, "memory": TRIAL_MEMORY_BYTES, **where}
    return {"cpu": max(r.trial_cpus, r.cpus_per_worker), "gpu": 1 if r.use_gpu else 0, "memory": TRIAL_MEMORY_BYTES}
