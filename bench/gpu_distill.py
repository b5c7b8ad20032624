"""Distillation speed of the product against the loop a user would write by hand, on the same model, batch
and teacher outputs, in one run (on a GPU: `--device cuda`; `--device cpu` runs the same comparison on CPUs).

    python bench/gpu_distill.py --device cuda [--text kjv.txt] [--steps 2000] [--batch 64] [--out bench/results/gpu_distill.json]

1. The product: a sweep of `--trials` trials (local Ray; `resources.use_gpu` with cuda, so each trial holds
   the GPU and distils there with its cached teacher outputs), a 2 x 64 student searched over lr,
   temperature and lambda (beta 0: no hidden-state term), no pruning or quantization. Its distillation
   tokens/s = steps x batch x context / the trial's distillation stage time (`time_distill_s`: data and
   teacher-output loading, the loop and the final validation); the sweep's orchestration overhead as it
   reports it.
2. The hand-written loop: the same GPT class and shape, the same teacher-output pool (the sweep's cached
   file) moved to the device once, AdamW, T^2 KL + lambda CE, the same steps and batch; timed from the
   first step to the last one's synchronisation.

Prints the figures and writes them as JSON. Not a test: the machine's load moves them.
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

import torch
import torch.nn.functional as F

import orchestrator
from orchestrator.training.teacher_outputs import TeacherOutputs
from orchestrator.tasks.char_lm import build_model

SHAPE = {"layers": 2, "width": 64, "heads": 2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_written(outputs: TeacherOutputs, *, device: torch.device, steps: int, batch: int, T: float = 2.0,
                 lam: float = 0.5) -> float:
    """Tokens per second of the plain PyTorch distillation loop on the same pool and model shape."""
    x, y = outputs.inputs.to(device), outputs.targets.to(device)
    t_logits = outputs.logits.to(device).float()
    torch.manual_seed(0)
    model = build_model(int(t_logits.shape[-1]), x.shape[1], **SHAPE).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator(device=device).manual_seed(0)
    for warm in (True, False):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(10 if warm else steps):
            idx = torch.randint(len(x), (batch,), device=device, generator=g)
            logits, _ = model(x[idx])
            V = logits.shape[-1]
            log_p_s = F.log_softmax(logits.reshape(-1, V) / T, -1)
            log_p_t = F.log_softmax(t_logits[idx].reshape(-1, V) / T, -1)
            loss = T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() + lam * F.cross_entropy(logits.reshape(-1, V), y[idx].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
    return steps * batch * x.shape[1] / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--text", help="a .txt corpus instead of the built-in KJV package (the GPU machine lacks it)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", default="bench/results/gpu_distill.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "trials": args.trials, "max_concurrent_trials": 1, "storage": f"{tmp}/runs", "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
            "resources.use_gpu": device.type == "cuda", "distill.steps": args.steps, "distill.batch_size": args.batch,
            "distill.warmup": 20, "pipeline": ["distill"], "teacher.steps": 300,
            **{f"params.{k}": v for k, v in SHAPE.items()}, "params.beta": 0.0, "params.optimizer": "adamw",
            "params.sparsity": 0.0, "params.bits": 32,
            **({"task.files": args.text, "task.chars": 2_000_000} if args.text else {}),
        }
        result = orchestrator.Sweep.from_yaml("search_spaces/smoke.yaml", **overrides).run()
        trained = result.trials[(result.trials["status"] == "COMPLETED") & (result.trials["cache_hit_distill"] == 0)]
        context = result.config.task.context
        product = [args.steps * args.batch * context / s for s in trained["time_distill_s"]]
        from mlflow.tracking import MlflowClient

        key = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags["teacher_outputs_key"]
        pool = TeacherOutputs.load(Path(tmp) / "runs" / "teacher_outputs" / key / "teacher_outputs.pt")
        torch.set_num_threads(int(result.config.resources.cpus_per_worker))  # the trial's threads
        bare = hand_written(pool, device=device, steps=args.steps, batch=args.batch)
    figures = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)",
        "product_tokens_per_s": statistics.median(product), "product_tokens_per_s_each": product,
        "hand_written_tokens_per_s": bare, "hand_written_over_product": bare / statistics.median(product),
        "orchestration_overhead": result.overhead, "wall_seconds": result.wall_seconds,
        "steps": args.steps, "batch": args.batch, "context": context, "shape": SHAPE, "trials": args.trials,
        "torch": torch.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
    }
    print(f"{figures['device']}: product {figures['product_tokens_per_s']:.0f} tokens/s (median of {len(product)} trials), "
          f"hand-written loop {bare:.0f} tokens/s: {figures['hand_written_over_product']:.2f}x; "
          f"orchestration overhead {result.overhead:.1%} of {result.wall_seconds:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
