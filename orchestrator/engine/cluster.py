"""The sweep's Ray: the local one it starts (on the loopback only) or the cluster it joins, what each trial
holds in it, how many trials fit at once beside the measurement service, and the task's code sent to Ray's
workers by value when they cannot import it."""

from __future__ import annotations

import _thread
import contextlib
import inspect
import os
import sys
import sysconfig
import threading
from collections.abc import Iterator
from typing import Any

from orchestrator.config.schema import SweepConfig
from orchestrator.core.environ import environ
from orchestrator.core.errors import ConfigError, show
from orchestrator.engine.client import connect, is_client
from orchestrator.engine.context import SweepContext
from orchestrator.io.storage import cache_root
from orchestrator.tasks.base import Task

TRIAL_MEMORY_BYTES = 512 * 1024**2  # logical memory each trial's driver reserves in Ray
# Ray Train settings for every process of a Ray the sweep starts (pass them too when you start your own):
# a faster health-check poll saves ~2 s per trial; worker start-up on a loaded 2-core machine can near the
# 60 s default timeout.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180"}
# The Ray a sweep starts for itself listens on this machine's loopback only (its GCS, raylet, workers and agents;
# Ray's own single-machine mode, which it resolves `_node_ip_address="127.0.0.1"` away from): no other machine
# reaches it. A cluster's nodes are set up by `ray start` (cluster.yaml), not here.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextlib.contextmanager
def loopback_only(on: bool) -> Iterator[None]:
    """While a local Ray starts: Ray's single-machine mode, in this process (Ray read the variable when it was
    imported) and in the processes it starts (they inherit it)."""
    if not on:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with environ(**LOCAL_RAY_ENV):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def start_ray(cfg: SweepConfig, address: str | None, *, ray_logs: bool) -> None:
    """Join the cluster at `address` (Ray Client for ray://), or start a local Ray on the loopback with
    `resources.local_cpus` CPUs; a refused token or a port that is no Ray is one `ConfigError` line."""
    import ray

    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if address is None:  # a local sweep writes only to its storage, its tracking store and the node cache: torch's
        # compiler cache (a directory torch makes in the temp directory when its optimizers first import torch._dynamo)
        # goes to the node cache, in this process and the workers that inherit its environment
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "torchinductor"))
    init = dict(include_dashboard=False, log_to_driver=ray_logs, runtime_env={"env_vars": RAY_ENV})
    try:
        if is_client(address):
            connect(address, **init)
        else:  # "local": never a cluster that a `ray start` on this machine left running or behind
            with loopback_only(address is None):
                ray.init(address=address or "local", num_cpus=cfg.resources.local_cpus if address is None else None, **init)
    except ray.exceptions.AuthenticationError as e:  # token authentication on, and no (or another) token here
        ray.shutdown()
        raise ConfigError(f"address {show(address)}: the Ray cluster refused this process's token "
                          f"({' '.join(str(e).split())[:160]}); set RAY_AUTH_TOKEN to its token (`ray get-auth-token` "
                          "on the head)") from None
    except ConnectionError as e:  # a port that answered the check but is no Ray, or a cluster that went away
        ray.shutdown()
        raise ConfigError(f"address {show(address)}: Ray could not connect ({' '.join(str(e).split())[:200]}); give the "
                          "address `ray start --head` printed (a cluster with token authentication also needs its token "
                          "in RAY_AUTH_TOKEN)") from None


class RayletWatch:
    """The raylet of the Ray this process started, watched from a thread: when it ends (killed from outside, e.g. by
    another shell's `ray stop` that ends every Ray of the machine), the main thread is interrupted as by Ctrl-C, so
    the sweep winds down while it still can (Ray's core worker would end the process within seconds of its next
    call to the dead raylet) and `died` says what happened."""

    def __init__(self) -> None:
        import ray
        from ray._private import ray_constants

        node = ray._private.worker.global_worker.node
        self.process = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        self.died: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="orchestrator-raylet-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            if self.process.poll() is not None:
                self.died = f"the sweep's Ray stopped under it: its raylet (pid {self.process.pid}) ended with code " \
                            f"{self.process.returncode}"
                _thread.interrupt_main()
                return

    def stop(self) -> None:
        self._stop.set()


def ship_by_value(task: Task, ctx: SweepContext) -> None:
    """Let Ray's workers unpickle what a sweep brings of your own from modules they cannot import (a script, a
    test file, a module run by path): the modules of the task's class and of what it holds (your builder,
    metric, teacher class), of the pipeline's techniques and the artifact encodings, and of the objectives'
    functions are pickled by value, as cloudpickle does for `__main__`. Installed packages and this package
    are left to import."""
    from ray import cloudpickle

    installed = tuple({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    objectives = [getattr(ctx.objectives[name], f) for name in ctx.objectives.registered for f in ("measure", "reference", "optimistic")]
    for obj in (task, *vars(task).values(), *ctx.config.pipeline.techniques, *ctx.encodings.values(), *objectives):
        owner = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
        name = getattr(owner, "__module__", None) or ""
        module, file = sys.modules.get(name), getattr(sys.modules.get(name), "__file__", None)
        if module is None or file is None or name == "__main__" or name.split(".")[0] == "orchestrator" \
                or os.path.abspath(file).startswith(installed):
            continue
        cloudpickle.register_pickle_by_value(module)


def _trial_needs(cfg: SweepConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds while it trains: its driver's and its Ray Train workers'."""
    r = cfg.resources
    trial = trial_resources(cfg)
    cpus = trial["cpu"] + (0.0 if cfg.distill_in_trial else r.num_workers * r.cpus_per_worker)
    gpus = trial.get("gpu", 0) + (0 if cfg.distill_in_trial or not r.use_gpu else r.num_workers)
    return cpus, gpus


def service_cpus(cfg: SweepConfig) -> float:
    """Logical CPUs the measurement service holds from trials: none unless `measure.isolation` is reserve (with
    pause, the node's training pauses while it times instead: `io.gate`)."""
    m = cfg.measure
    if m.isolation != "reserve":
        return 0.0
    return m.cpus if m.cpus is not None else float(m.threads)


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
            f"(`measure.isolation`, `measure.cpus`), but this Ray has {have_cpus:g}; lower `resources.num_workers` / `resources.cpus_per_worker`, "
            "or raise `resources.local_cpus`"
        )
    if strict and gpus + held_gpus > have_gpus:
        raise ConfigError(f"{cfg.source}: a trial and the measurement service need {gpus + held_gpus:g} GPUs together "
                          f"(`resources.use_gpu`, `measure.device`), but this Ray has {have_gpus:g}")
    return int(max(1, min(wanted, *fit)))


def trial_resources(cfg: SweepConfig) -> dict[str, Any]:
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
