"""Where a distillation runs: in the calling process (one worker: a Tune trial, or a Ray task, that already
holds the resources), or on a Ray Train V2 `TorchTrainer` (DDP over N workers, each running `train_loop`),
whose student comes back through a Ray Train checkpoint. `run_distill` picks the path."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.core.keys import tensors_digest
from orchestrator.io.checkpoints import save_checkpoint
from orchestrator.io.records import DistillRecord, from_json, to_json
from orchestrator.training.job import DistillJob, DistillResult
from orchestrator.training.loop import Check, fit
from orchestrator.training.sessions import LocalSession, RayTrainSession

WORKER_RESTARTS = 1  # times a Ray Train worker group restarts (from its last checkpoint) before the trial fails


def train_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: `fit`, then rank 0 reports the model as a checkpoint."""
    import ray.train

    job: DistillJob = config["job"]
    session = RayTrainSession()
    record, student = fit(job, session)
    # every rank's node and a digest of its final weights: DDP must have left them identical
    ranks: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(ranks, (ray.get_runtime_context().get_node_id(), tensors_digest(student.state_dict())))
    record = dataclasses.replace(record, worker_nodes=tuple(n for n, _ in ranks), worker_weights=tuple(d for _, d in ranks))
    if session.rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp) / "model.pt", job.model, {k: v.detach() for k, v in student.state_dict().items()})
            ray.train.report({"record": to_json(record)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({"record": to_json(record)}, checkpoint=None)


def run_distill(
    job: DistillJob, *, name: str, storage_path: str, num_workers: int, use_gpu: bool, cpus_per_worker: float,
    placement_strategy: str = "PACK", in_process: bool = False, check: Check | None = None,
    checkpoints: Path | None = None,
) -> DistillResult:
    """Train with `num_workers` DDP workers and return the rank-0 model (blocking).

    Args:
        name: the Ray Train run name; derived from the trial id so that a restarted trial resumes.
        storage_path: where Ray Train keeps the run and its checkpoint: a directory every node sees, or a URI.
        in_process: run `fit` right here instead (one worker only): the caller's process must hold the
            resources, as a Tune trial does. Saves starting a worker group (seconds per trial).
        check: validation checks during training (in-process only).
        checkpoints: in-process only: a directory of this node for the training state (`LocalSession`): a run
            that finds one there goes on from it; removed when the run ends, however it ends, unless its process died.
    """
    t = time.perf_counter()
    if in_process:
        if num_workers != 1:
            raise ValueError(f"in-process distillation runs one worker, not num_workers={num_workers}")
        try:
            record, student = fit(job, LocalSession(torch.device("cuda" if use_gpu else "cpu"), checkpoints), check)
        finally:
            if checkpoints is not None:
                shutil.rmtree(checkpoints, ignore_errors=True)
        state = {k: v.detach() for k, v in student.state_dict().items()}
    elif check is not None:
        raise ValueError("validation checks during training need in_process=True")
    else:
        record, state = _fit_with_ray_train(job, name, storage_path, num_workers, use_gpu, cpus_per_worker, placement_strategy)
    return DistillResult(state_dict=state, record=record, fit_seconds=time.perf_counter() - t)


def _fit_with_ray_train(
    job: DistillJob, name: str, storage_path: str, num_workers: int, use_gpu: bool, cpus_per_worker: float,
    placement_strategy: str,
) -> tuple[DistillRecord, dict[str, torch.Tensor]]:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, placement_strategy=placement_strategy,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        # a worker lost (killed, out of memory, its node gone): the group restarts, from the last checkpoint
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=WORKER_RESTARTS),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"distillation run {name} reported no checkpoint")
    record = from_json(DistillRecord, result.metrics["record"])
    if len(set(record.worker_weights)) != 1:
        raise RuntimeError(f"distillation run {name}: its DDP ranks ended with different weights ({list(record.worker_weights)}); "
                           "gradients were not synchronised")
    with result.checkpoint.as_directory() as d:
        blob = torch.load(Path(d) / "model.pt", weights_only=True)
    return record, blob["state_dict"]
