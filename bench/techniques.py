"""Each compression technique alone at several strengths, and combinations, on the built-in task (issue 3).

    python bench/techniques.py [--space search_spaces/quickstart.yaml] [--out bench/results/techniques.json]

Every row is one trial of the product (`engine.trial.run_pipeline`, in this process: distil or reuse, prune,
recover, quantize, export, measure) with the row's `pipeline` and fixed parameters, on the space's teacher
and task. Students, recoveries and teacher outputs are cached in a temporary storage, so rows that share a
student train it once. Columns: size as a fraction of the teacher's artifact, accuracy retained (student /
teacher), batch-1 latency relative to the teacher (timed interleaved with it, robust to machine noise),
and the accuracy change in points against the row's float baseline. Not a test: prints and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import orchestrator
from orchestrator.io.artifact import read_manifest
from orchestrator.io.storage import fetch
from orchestrator.core.space import Fixed
from orchestrator.engine.trial import TrialContext, run_pipeline
from orchestrator.io.records import TeacherRecord
from orchestrator.tasks import TrialParams

STUDENT = {"layers": 2, "width": 96, "heads": 4, "beta": 0.0, "lambda": 0.5, "temperature": 2.0,
           "optimizer": "adamw", "lr": 5e-3, "weight_decay": 0.0, "sparsity": 0.0, "bits": 32}
TEACHER = {**STUDENT, "layers": 2, "width": 64, "heads": 2}  # the defaults: a teacher-only row has no student shape
GROUP = 32  # group size of the granularity-group rows
D = "distill"


def q(method: str = "affine", **kw: Any) -> dict:
    return {"quantize": {"method": method, **kw}}


def p(method: str = "magnitude", **kw: Any) -> dict:
    return {"prune": {"method": method, **kw}}


# (name, baseline row, pipeline, params): the baseline is the float model the row compresses.
ROWS: list[tuple[str, str, list, dict]] = [
    ("student float32", "student float32", [D], {}),
    ("PTQ affine/channel 8-bit", "student float32", [D, q()], {"bits": 8}),
    ("PTQ symmetric/channel 8-bit, int8 kernels", "student float32", [D, q("symmetric")], {"bits": 8}),
    ("PTQ symmetric/channel 8-bit, dequantized", "student float32", [D, q("symmetric", kernel="dequantized")], {"bits": 8}),
    ("PTQ affine/channel 4-bit", "student float32", [D, q()], {"bits": 4}),
    ("PTQ affine/channel 3-bit", "student float32", [D, q()], {"bits": 3}),
    ("PTQ affine/channel 2-bit", "student float32", [D, q()], {"bits": 2}),
    ("PTQ affine/tensor 4-bit", "student float32", [D, q(granularity="tensor")], {"bits": 4}),
    ("PTQ symmetric/channel 4-bit", "student float32", [D, q("symmetric")], {"bits": 4}),
    ("PTQ affine/group-32 4-bit", "student float32", [D, q(granularity="group")], {"bits": 4}),
    ("PTQ affine/group-32 3-bit", "student float32", [D, q(granularity="group")], {"bits": 3}),
    ("PTQ affine/group-32 2-bit", "student float32", [D, q(granularity="group")], {"bits": 2}),
    ("QAT affine/channel 4-bit", "student float32", [D, q(mode="qat")], {"bits": 4}),
    ("QAT affine/group-32 3-bit", "student float32", [D, q(granularity="group", mode="qat")], {"bits": 3}),
    ("QAT affine/group-32 2-bit", "student float32", [D, q(granularity="group", mode="qat")], {"bits": 2}),
    ("QAT affine/channel 4-bit from step 0", "student float32", [D, q(mode="qat", qat_start=0.0)], {"bits": 4}),
    ("QAT affine/group-32 3-bit from step 0", "student float32", [D, q(granularity="group", mode="qat", qat_start=0.0)], {"bits": 3}),
    ("QAT affine/group-32 2-bit from step 0", "student float32", [D, q(granularity="group", mode="qat", qat_start=0.0)], {"bits": 2}),
    ("magnitude global 50%", "student float32", [D, p()], {"sparsity": 0.5}),
    ("magnitude global 70%", "student float32", [D, p()], {"sparsity": 0.7}),
    ("magnitude global 90%", "student float32", [D, p()], {"sparsity": 0.9}),
    ("magnitude per-layer 70%", "student float32", [D, p(scope="layer")], {"sparsity": 0.7}),
    ("magnitude global 70% + 100 recovery", "student float32", [D, p(recovery_steps=100)], {"sparsity": 0.7}),
    ("magnitude gradual 70%", "student float32", [D, p(schedule="gradual")], {"sparsity": 0.7}),
    ("magnitude gradual 90%", "student float32", [D, p(schedule="gradual")], {"sparsity": 0.9}),
    ("2:4", "student float32", [D, p("nm")], {}),
    ("2:4 + 100 recovery", "student float32", [D, p("nm", recovery_steps=100)], {}),
    ("structured MLP 50%", "student float32", [D, p("structured")], {"sparsity": 0.5}),
    ("structured MLP 50% + 100 recovery", "student float32", [D, p("structured", recovery_steps=100)], {"sparsity": 0.5}),
    ("structured MLP+heads 50% + 100 recovery", "student float32", [D, p("structured", target="both", recovery_steps=100)], {"sparsity": 0.5}),
    ("structured MLP+heads 75% + 100 recovery", "student float32", [D, p("structured", target="both", recovery_steps=100)], {"sparsity": 0.75}),
    ("teacher float32", "teacher float32", [], {}),
    ("teacher PTQ symmetric 8-bit, int8 kernels", "teacher float32", [q("symmetric")], {"bits": 8}),
    ("teacher PTQ affine/channel 4-bit", "teacher float32", [q()], {"bits": 4}),
    ("teacher PTQ affine/group-32 3-bit", "teacher float32", [q(granularity="group")], {"bits": 3}),
    ("teacher PTQ affine/group-32 2-bit", "teacher float32", [q(granularity="group")], {"bits": 2}),
    ("teacher structured MLP 50% + 200 recovery", "teacher float32", [p("structured", recovery_steps=200)], {"sparsity": 0.5}),
    ("combo: student gradual 50% + QAT group-32 3-bit", "student float32",
     [D, p(schedule="gradual"), q(granularity="group", mode="qat")], {"sparsity": 0.5, "bits": 3}),
    ("combo: teacher 50% + 200 recovery + group-32 3-bit", "teacher float32",
     [p(recovery_steps=200), q(granularity="group")], {"sparsity": 0.5, "bits": 3}),
    ("combo: teacher 2:4 + 200 recovery + group-32 4-bit", "teacher float32",
     [p("nm", recovery_steps=200), q(granularity="group")], {"bits": 4}),
    ("combo: structured MLP+heads 50% + 100 recovery + QAT group-32 3-bit", "student float32",
     [D, p("structured", target="both", recovery_steps=100), q(granularity="group", mode="qat")], {"sparsity": 0.5, "bits": 3}),
    ("combo: 2:4 + 100 recovery + QAT group-32 3-bit", "student float32",
     [D, p("nm", recovery_steps=100), q(granularity="group", mode="qat")], {"bits": 3}),
    ("combo: 2:4 + 100 recovery + QAT group-32 3-bit from step 0", "student float32",
     [D, p("nm", recovery_steps=100), q(granularity="group", mode="qat", qat_start=0.0)], {"bits": 3}),
    ("combo: structured MLP+heads 50% + 100 recovery + QAT group-32 3-bit from step 0", "student float32",
     [D, p("structured", target="both", recovery_steps=100), q(granularity="group", mode="qat", qat_start=0.0)],
     {"sparsity": 0.5, "bits": 3}),
]


def run_rows(
    space: str, rows: list[tuple[str, str, list, dict]], *, student: dict, teacher_params: dict, group_size: int,
    overrides: dict[str, Any], extra: Callable[[TrialContext], dict] | None = None, storage: str | None = None,
) -> tuple[TeacherRecord, list[dict], dict]:
    """Run each row as one trial (`run_pipeline`) in a storage (a temporary one unless given: a kept one
    reuses its teacher); returns the teacher, the rows and what `extra(ctx)` measured afterwards.

    `student` / `teacher_params` are the fixed params of rows with and without a distill stage;
    `overrides` apply to the space for every row (e.g. fewer distillation steps). Rows are timed
    everything included (a reused student's or recovery's training is not repeated)."""
    import ray

    from orchestrator.engine.cluster import RAY_ENV
    from orchestrator.engine.prepare import prepared

    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        common = {"storage": storage or f"{tmp}/runs", "resources.cpus_per_worker": os.cpu_count() or 1, **overrides}
        base = orchestrator.load_config(space, overrides={**common, "params.beta": 0.0})  # logits-only teacher outputs
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": RAY_ENV})
        try:
            sweep = orchestrator.Sweep(base)
            task = sweep.task
            with prepared(sweep.context, task) as ready:  # data, teacher (measured on the service), its outputs
                teacher = ready.teacher
                print(f"teacher: test accuracy {teacher.test_accuracy:.4f}, perplexity {teacher.test_perplexity:.2f}, "
                      f"{teacher.size_bytes / 1e6:.3f} MB, {teacher.latency_ms:.2f} ms", flush=True)
                ctx = TrialContext(ctx=sweep.context, task=task, data=ready.data, teacher=teacher, teacher_outputs=ready.outputs,
                                   sweep_id="bench", service=ready.service)
                by_name: dict[str, dict] = {}
                for i, (name, baseline, pipeline, fixed) in enumerate(rows):
                    fixed = _resolved(fixed, by_name)
                    row = _row(space, common, ctx, i, name, pipeline, fixed, student, teacher_params, group_size)
                    ref = by_name.get(baseline)
                    if ref is not None:
                        row["accuracy_points_vs_baseline"] = round(100 * (row["accuracy"] - ref["accuracy"]), 2)
                        row["latency_speedup_vs_baseline"] = round(ref["latency_vs_teacher"] / row["latency_vs_teacher"], 2)
                    by_name[name] = row
                    results.append(row)
                    print(f"{name:<58} size {row['size_vs_teacher']:7.2%}  acc {row['accuracy']:.4f} "
                          f"({row['accuracy_retained']:6.1%})  ppl {row['perplexity']:9.2f}  lat x{row['latency_vs_teacher']:.2f}  "
                          f"d_acc {row.get('accuracy_points_vs_baseline', 0):+6.2f} pt  {row['seconds']:5.1f} s", flush=True)
                measured = extra(ctx) if extra is not None else {}
        finally:
            ray.shutdown()
    return teacher, results, measured


def _row(space: str, common: dict, ctx: TrialContext, i: int, name: str, pipeline: list, fixed: dict, student: dict,
         teacher_params: dict, group_size: int) -> dict:
    params = {**(student if D in pipeline else teacher_params), **fixed}
    if "'group'" in str(pipeline) and "group_size" not in fixed:
        params["group_size"] = group_size
    cfg = orchestrator.load_config(space, overrides={**common, "pipeline": pipeline, "params": params})
    t = time.perf_counter()
    row_ctx = dataclasses.replace(ctx, ctx=dataclasses.replace(ctx.ctx, config=cfg))
    m = run_pipeline(TrialParams.from_config(cfg_params(cfg)), row_ctx, trial_id=f"row{i}").row()
    teacher = ctx.teacher
    return {
        "name": name, "pipeline": cfg.pipeline.label, **fixed,
        "size_vs_teacher": round(m["size_bytes"] / teacher.size_bytes, 4),
        # reported on the test split, as before validation became what the search reads
        "accuracy": round(m["test_accuracy"], 4), "perplexity": round(m["test_perplexity"], 3),
        "accuracy_retained": round(m["test_accuracy_retained"], 4),
        "val_accuracy_retained": round(m["accuracy"] / teacher.accuracy, 4),
        "latency_vs_teacher": round(m["latency_vs_teacher"], 3),
        "size_mb": round(m["size_mb"], 4), "bits_per_weight": round(m["bits_per_weight"], 2),
        "params": int(m["params"]), "sparsity_measured": round(m["sparsity_measured"], 3),
        "int8_layers": int(m["int8_layers"]), "latency_ms": round(m["latency_ms"], 3),
        "decode_tokens_per_s": round(m["decode_tokens_per_s"], 2),
        **({"distill_steps": int(m["distill_steps"])} if not math.isnan(m.get("distill_steps", math.nan)) else {}),
        **_allocation(m),
        "seconds": round(time.perf_counter() - t, 1),
        # stages read from storage instead of computed (their build time is not in `seconds`)
        "reused": sorted(k[len("cache_hit_"):] for k, v in m.items() if k.startswith("cache_hit_") and v == 1
                         and k not in ("cache_hit_teacher", "cache_hit_teacher_outputs")),
    }


def _resolved(fixed: dict, by_name: dict[str, dict]) -> dict:
    """`effective_bits: "=NAME"`: the bits per weight row NAME measured (rounded down to 0.001), so that a mixed
    row is compared with a uniform one at equal (or fewer) bytes."""
    ref = fixed.get("effective_bits")
    if isinstance(ref, str) and ref.startswith("="):
        return {**fixed, "effective_bits": math.floor(by_name[ref[1:]]["effective_bits_exact"] * 1000) / 1000}
    return fixed


def _allocation(m: dict) -> dict:
    """A quantized row's measured effective bits and, mixed, how its allocation spread the widths (tensors per
    width, the token embedding's width) and what allocating took."""
    if math.isnan(m.get("effective_bits", math.nan)):
        return {}
    out = {"effective_bits": round(m["effective_bits"], 3), "effective_bits_exact": m["effective_bits"]}
    allocation = read_manifest(fetch(m["artifact"])).get("allocation")
    if allocation:
        widths = [row[1] for row in allocation["data"]]
        out["tensors_per_width"] = {str(b): widths.count(b) for b in sorted(set(widths))}
        out["embedding_bits"] = next((row[1] for row in allocation["data"] if "emb" in row[0] or row[0].startswith("tok.")), None)
        out["estimate"] = allocation["estimate"]
        out["allocate_s"] = round(m.get("time_allocate_s", 0.0), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/quickstart.yaml")
    parser.add_argument("--out", default="bench/results/techniques.json")
    parser.add_argument("--only", default=None, help="run rows whose name contains this text (and their baselines)")
    args = parser.parse_args()
    rows = [r for r in ROWS if args.only is None or args.only in r[0] or any(args.only in o[0] and o[1] == r[0] for o in ROWS)]
    started = time.perf_counter()
    teacher, results, _ = run_rows(args.space, rows, student=STUDENT, teacher_params=TEACHER, group_size=GROUP, overrides={})
    write(args.out, args.space, teacher, STUDENT, results, started)


def write(out: str, space: str, teacher: TeacherRecord, student: dict, results: list[dict], started: float,
          **more: Any) -> None:
    figures = {
        "space": space, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
        "teacher": {"accuracy": round(teacher.test_accuracy, 4), "perplexity": round(teacher.test_perplexity, 3),
                    "size_mb": round(teacher.size_bytes / 1e6, 4), "latency_ms": round(teacher.latency_ms, 3),
                    "params": teacher.params},
        "student": student, "wall_s": round(time.perf_counter() - started, 1), "rows": results, **more,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {out} in {figures['wall_s']} s")


def cfg_params(cfg: orchestrator.SweepConfig) -> dict[str, Any]:
    """Every row fixes all its params: their values, as Tune would pass them."""
    assert all(isinstance(s, Fixed) for s in cfg.params.values())
    return {name: spec.value for name, spec in cfg.params.items()}


if __name__ == "__main__":
    main()
