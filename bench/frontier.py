"""Fronts at the frontier (issue 14): error-compensating and trained quantization, entropy-coded export,
teacher-side compression, on a teacher trained to convergence.

    python bench/frontier.py rows      # every method alone and combined at 2, 3 and 4 bits (trials of the product)
    python bench/frontier.py entropy   # bytes each storage format takes with and without zstd
    python bench/frontier.py sweep     # a sweep of the product: its smallest points keeping 95% and 90%
    python bench/frontier.py smollm2   # SmolLM2-135M: GPTQ at 4 bits against round-to-nearest
    python bench/frontier.py mixed     # uniform against mixed widths at equal bytes (teacher and a student)
    python bench/frontier.py mixed_smollm2                       # the same on SmolLM2-135M at 3, 4 and 5 bits
    python bench/frontier.py sweep --space search_spaces/frontier_mixed.yaml   # a sweep over effective_bits
    [--storage DIR] (default /tmp/frontier/runs: the teacher, students and recoveries are reused between parts)

The teacher is `search_spaces/frontier.yaml`'s: the built-in 4 x 128 character GPT trained 3000 steps.
Every row is one trial of the product (`engine.trial.run_pipeline`; bench/techniques.py's `run_rows`), its
accuracy and perplexity measured on the test split, its size the artifact's byte length (zstd-coded, the
default), its wall time everything included. Each part adds its section to bench/results/frontier.json.
Not a test: prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from techniques import D, p, q, run_rows

SPACE = "search_spaces/frontier.yaml"
OUT = Path("bench/results/frontier.json")
STUDENT = {"heads": 4, "beta": 0.0, "lambda": 0.5, "temperature": 2.0, "optimizer": "adamw", "lr": 5e-3, "weight_decay": 0.0,
           "sparsity": 0.0, "bits": 32, "group_size": 64}  # every searched param of frontier.yaml fixed (64: the default)
TEACHER = {**STUDENT, "layers": 2, "width": 64, "heads": 2}  # the defaults: a teacher-only row has no student shape
T = "teacher float32"
R = 300  # recovery steps after pruning or quantization


def g(n: int, **kw: Any) -> dict:
    return {"group_size": n, **kw}


ROWS: list[tuple[str, str, list, dict]] = [
    (T, T, [], {}),
    *[(f"teacher RTN affine/group-32 {b}-bit", T, [q(granularity="group")], g(32, bits=b)) for b in (2, 3, 4)],
    ("teacher RTN affine/channel 3-bit", T, [q()], {"bits": 3}),
    *[(f"teacher GPTQ group-32 {b}-bit", T, [q("gptq", granularity="group")], g(32, bits=b)) for b in (2, 3, 4)],
    *[(f"teacher GPTQ group-128 {b}-bit", T, [q("gptq", granularity="group")], g(128, bits=b)) for b in (2, 3)],
    *[(f"teacher GPTQ channel {b}-bit", T, [q("gptq")], {"bits": b}) for b in (3, 4)],
    *[(f"teacher codebook/tensor {b}-bit", T, [q("codebook")], {"bits": b}) for b in (2, 3, 4)],
    *[(f"teacher codebook/channel {b}-bit", T, [q("codebook", granularity="channel")], {"bits": b}) for b in (2, 3)],
    *[(f"teacher RTN group-32 {b}-bit + {R} QAT recovery", T, [q(granularity="group", recovery_steps=R)], g(32, bits=b)) for b in (2, 3)],
    *[(f"teacher GPTQ group-32 {b}-bit + {R} QAT recovery", T, [q("gptq", granularity="group", recovery_steps=R)], g(32, bits=b))
      for b in (2, 3)],
    *[(f"teacher GPTQ group-128 {b}-bit + {R} QAT recovery", T, [q("gptq", granularity="group", recovery_steps=R)], g(128, bits=b))
      for b in (2, 3)],
    *[(f"teacher codebook/tensor {b}-bit + {R} centroid training", T, [q("codebook", recovery_steps=R)], {"bits": b}) for b in (2, 3)],
    ("teacher codebook/channel 2-bit + 300 centroid training", T, [q("codebook", granularity="channel", recovery_steps=R)], {"bits": 2}),
    ("teacher 2:4 + 300 recovery + GPTQ group-32 3-bit", T, [p("nm", recovery_steps=R), q("gptq", granularity="group")], g(32, bits=3)),
    ("teacher 50% magnitude + 300 recovery + codebook/tensor 3-bit + 300 training", T,
     [p(recovery_steps=R), q("codebook", recovery_steps=R)], {"sparsity": 0.5, "bits": 3}),
    ("teacher 30% magnitude + 300 recovery + GPTQ group-64 2-bit + 300 QAT", T,
     [p(recovery_steps=R), q("gptq", granularity="group", recovery_steps=R)], g(64, sparsity=0.3, bits=2)),
    ("student 3x128 float32 (to convergence)", T, [D], {"layers": 3, "width": 128}),
    ("student 3x128 + GPTQ group-32 3-bit", T, [D, q("gptq", granularity="group")], g(32, layers=3, width=128, bits=3)),
    ("student 3x128 + GPTQ group-32 3-bit + 300 QAT", T, [D, q("gptq", granularity="group", recovery_steps=R)],
     g(32, layers=3, width=128, bits=3)),
    ("student 3x128 + codebook/tensor 3-bit + 300 training", T, [D, q("codebook", recovery_steps=R)], {"layers": 3, "width": 128, "bits": 3}),
    ("student 2x128 float32 (to convergence)", T, [D], {"layers": 2, "width": 128}),
    ("student 2x128 + GPTQ group-32 3-bit + 300 QAT", T, [D, q("gptq", granularity="group", recovery_steps=R)],
     g(32, layers=2, width=128, bits=3)),
]


def _save(section: str, value: Any) -> None:
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data[section] = value
    data["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {section} to {OUT}")


def _teacher(t: Any) -> dict:
    return {"accuracy": round(t.test_accuracy, 4), "val_accuracy": round(t.accuracy, 4), "perplexity": round(t.test_perplexity, 3),
            "size_mb": round(t.size_bytes / 1e6, 4), "params": t.params, "train_seconds": round(t.train_seconds, 1)}


def rows(storage: str) -> None:
    _gpt_rows(storage, ROWS, "rows", group_size=32)


def _gpt_rows(storage: str, table: list, section: str, group_size: int) -> None:
    """`table`'s rows on frontier.yaml's converged teacher, saved as `section`."""
    started = time.perf_counter()
    teacher, results, _ = run_rows(SPACE, table, student=STUDENT, teacher_params=TEACHER, group_size=group_size, overrides={},
                                   storage=storage)
    _save(section, {"date": time.strftime("%Y-%m-%d"), "teacher": _teacher(teacher), "rows": results,
                    "wall_s": round(time.perf_counter() - started, 1)})


def entropy(storage: str) -> None:
    """Every storage format of the teacher's weights, exported with and without zstd (same model, same bytes
    decoded)."""
    from orchestrator.engine.compress import compress
    from orchestrator.io.checkpoints import load_frozen
    from orchestrator.techniques.codebook import CodebookQuantization
    from orchestrator.techniques.magnitude import MagnitudePruning
    from orchestrator.techniques.nm import SemiStructuredPruning
    from orchestrator.techniques.pipeline import Pipeline
    from orchestrator.techniques.rounding import AffineQuantization

    def work(ctx: Any) -> dict:
        formats = {
            "float32": (None, None, 32, 0.0), "float16": (None, AffineQuantization(), 16, 0.0),
            **{f"affine/channel {b}-bit": (None, AffineQuantization(), b, 0.0) for b in (8, 4, 3, 2)},
            **{f"affine/group-32 {b}-bit": (None, AffineQuantization(granularity="group"), b, 0.0) for b in (4, 3, 2)},
            **{f"codebook/tensor {b}-bit": (None, CodebookQuantization(), b, 0.0) for b in (4, 3, 2)},
            "50% magnitude, float32 (bitmask)": (MagnitudePruning(), None, 32, 0.5),
            "90% magnitude, float32 (indices)": (MagnitudePruning(), None, 32, 0.9),
            "2:4, affine/group-32 3-bit": (SemiStructuredPruning(), AffineQuantization(granularity="group"), 3, 0.0),
            "50% magnitude, codebook/tensor 3-bit": (MagnitudePruning(), CodebookQuantization(), 3, 0.5),
        }
        out = []
        for name, (prune, quantize, bits, sparsity) in formats.items():
            sizes = {}
            for coder in ("none", "zstd"):
                model = load_frozen(ctx.teacher.path, ctx.task.build_model)
                with tempfile.TemporaryDirectory() as tmp:
                    c = compress(model, Pipeline(distill=False, prune=prune, quantize=quantize),
                                 {"sparsity": sparsity, "bits": bits, "group_size": 32}, artifact=Path(tmp) / "model.orc",
                                 meta={}, entropy=coder)
                sizes[coder] = c.size_bytes
            row = {"format": name, "bytes": sizes["none"], "bytes_zstd": sizes["zstd"],
                   "saved": round(1 - sizes["zstd"] / sizes["none"], 4),
                   "bits_per_weight": round(8 * sizes["none"] / c.params, 3), "bits_per_weight_zstd": round(8 * sizes["zstd"] / c.params, 3)}
            print(f"{name:<40} {row['bytes']:>9} B -> {row['bytes_zstd']:>9} B  saved {row['saved']:6.1%}  "
                  f"({row['bits_per_weight']:.2f} -> {row['bits_per_weight_zstd']:.2f} bits/weight)", flush=True)
            out.append(row)
        return {"formats": out}

    teacher, _, measured = run_rows(SPACE, [], student=STUDENT, teacher_params=TEACHER, group_size=32, overrides={},
                                    storage=storage, extra=work)
    _save("entropy", {"date": time.strftime("%Y-%m-%d"), "teacher": _teacher(teacher), **measured})


def sweep(storage: str, trials: int, space: str = SPACE, resume: str | None = None) -> None:
    """One sweep of the product (frontier.yaml with `--trials`), then its smallest completed points whose
    validation accuracy keeps 95% / 90% of the teacher's (what a user picks from the front), with their
    test-split figures."""
    import orchestrator
    from orchestrator.cli import print_progress
    from orchestrator.core.space import Fixed

    uri = f"sqlite:///{storage}/mlflow.db"
    own_wall = _sweep_wall(uri, resume) if resume else None  # a finished sweep read back: its own run's wall time
    started = time.perf_counter()
    result = orchestrator.Sweep.from_yaml(space, storage=storage, trials=trials, tracking_uri=uri).run(progress=print_progress,
                                                                                                      resume=resume)
    wall = own_wall if own_wall is not None else time.perf_counter() - started
    teacher = result.teacher
    searched = [name for name, spec in result.config.params.items() if not isinstance(spec, Fixed)]
    t = result.trials
    done = t[t["status"] == "COMPLETED"].copy()
    done["size_vs_teacher"] = done["size_bytes"] / teacher.size_bytes
    done["val_retained"] = done["accuracy"] / teacher.accuracy
    picks = {}
    for target in (0.95, 0.90):
        ok = done[done["val_retained"] >= target].sort_values("size_vs_teacher")
        if ok.empty:
            picks[f"{target:.0%}"] = None
            continue
        best = ok.iloc[0]
        picks[f"{target:.0%}"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items()
                                  if k in ("trial_id", "size_vs_teacher", "effective_bits_measured", "val_retained", "test_accuracy_retained", "size_mb",
                                           "accuracy", "test_accuracy", "distill_steps", "time_stages_s")}
        picks[f"{target:.0%}"]["params"] = {name: (best[name].item() if hasattr(best[name], "item") else best[name])
                                            for name in searched}
        print(f"keeps {target:.0%}: trial {best['trial_id']} at {best['size_vs_teacher']:.2%} of the teacher's bytes "
              f"(validation {best['val_retained']:.1%}, test {best['test_accuracy_retained']:.1%})", flush=True)
    columns = [c for c in ("trial_id", *searched, "size_vs_teacher", "effective_bits_measured", "val_retained", "test_accuracy_retained", "distill_steps",
                           "time_stages_s") if c in done.columns]
    _save("sweep" if space == SPACE else f"sweep_{Path(space).stem}", {
                    "date": time.strftime("%Y-%m-%d"), "space": space, "trials": trials, "wall_s": round(wall, 1),
                    "teacher": _teacher(teacher), "completed": int(len(done)), "front": result.pareto["trial_id"].tolist(),
                    "picks": picks, "table": json.loads(done[columns].round(4).to_json(orient="records"))})


def _sweep_wall(uri: str, sweep_id: str) -> float:
    """The wall time a sweep's parent run logged (read before a resume logs its own)."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()],
                                         filter_string=f"attributes.run_name = '{sweep_id}'")
    return float(runs[0].data.metrics["wall_seconds"])


SMOLLM2 = [
    ("teacher float32", "teacher float32", [], {}),
    ("4-bit RTN affine/channel", "teacher float32", [q()], {"bits": 4}),
    ("4-bit GPTQ channel", "teacher float32", [q("gptq", calibration_windows=256)], {"bits": 4}),
    ("4-bit RTN affine/group-128", "teacher float32", [q(granularity="group")], g(128, bits=4)),
    ("4-bit GPTQ group-128", "teacher float32", [q("gptq", granularity="group", calibration_windows=256)], g(128, bits=4)),
]


def m(method: str, **kw: Any) -> dict:
    """A quantize stage that allocates widths per tensor (`allocation: sensitivity`)."""
    return q(method, allocation="sensitivity", **kw)


# uniform b bits in groups of 128, then mixed widths at the bits per weight that uniform row measured
# (`"=NAME"`: scales and zero points included), so that each pair compares at equal bytes
WIDTHS = [2, 3, 4, 5, 6, 8, 16]
GPTQ_256 = {"granularity": "group", "calibration_windows": 256}
MIXED_SMOLLM2 = [
    ("teacher float32", "teacher float32", [], {}),
    *[row for b in (3, 4, 5) for row in (
        (f"{b}-bit GPTQ group-128, uniform", "teacher float32", [q("gptq", **GPTQ_256)], g(128, bits=b)),
        (f"GPTQ group-128, mixed (fisher, 32 windows) at the {b}-bit row's bits", "teacher float32",
         [m("gptq", **GPTQ_256, candidate_bits=WIDTHS, sensitivity_windows=32)],
         g(128, effective_bits=f"={b}-bit GPTQ group-128, uniform")))],
    ("GPTQ group-128, mixed (fisher, 32 windows) at 4.5 bits", "teacher float32",
     [m("gptq", **GPTQ_256, candidate_bits=WIDTHS, sensitivity_windows=32)], g(128, effective_bits=4.5)),
    ("4-bit RTN group-128, uniform", "teacher float32", [q(granularity="group")], g(128, bits=4)),
    ("RTN group-128, mixed (fisher, 32 windows) at the 4-bit RTN row's bits", "teacher float32",
     [m("affine", granularity="group", candidate_bits=WIDTHS, sensitivity_windows=32)],
     g(128, effective_bits="=4-bit RTN group-128, uniform")),
]


def mixed_smollm2(storage: str) -> None:
    """SmolLM2-135M: uniform GPTQ at 3, 4 and 5 bits against mixed widths at the same bits per weight (issue 27)."""
    _smollm2_rows(storage, MIXED_SMOLLM2, "mixed_smollm2", calibration="256 training windows of 64 tokens (GPTQ); the "
                  f"sensitivities on 32 of them (fisher); candidate widths {WIDTHS}")


# the converged teacher and a converged student, uniform against mixed at equal bytes (groups of 128), by each estimate
GPT_WIDTHS = [2, 3, 4, 5, 6, 8]


def _pair(prefix: str, base: list, shape: dict, b: int, estimate: str = "fisher") -> list:
    uniform = f"{prefix} GPTQ group-128 {b}-bit + {R} QAT"
    return [
        (uniform, T, [*base, q("gptq", granularity="group", recovery_steps=R)], g(128, **shape, bits=b)),
        (f"{prefix} GPTQ group-128 mixed ({estimate}) at the {b}-bit row's bits + {R} QAT", T,
         [*base, m("gptq", granularity="group", recovery_steps=R, candidate_bits=GPT_WIDTHS, sensitivity=estimate)],
         g(128, **shape, effective_bits=f"={uniform}")),
    ]


def _between(prefix: str, base: list, shape: dict, bits: float) -> tuple:
    """Mixed at a budget no uniform width gives."""
    return (f"{prefix} GPTQ group-128 mixed (fisher) at {bits} bits + {R} QAT", T,
            [*base, m("gptq", granularity="group", recovery_steps=R, candidate_bits=GPT_WIDTHS)], g(128, **shape, effective_bits=bits))


S = {"layers": 3, "width": 96}
MIXED_GPT = [
    (T, T, [], {}),
    (f"teacher GPTQ group-128 2-bit + {R} QAT", T, [q("gptq", granularity="group", recovery_steps=R)], g(128, bits=2)),
    _between("teacher", [], {}, 2.6),
    *[row for b in (3, 4) for row in _pair("teacher", [], {}, b)],
    *_pair("teacher", [], {}, 3, "kl")[1:], *_pair("teacher", [], {}, 3, "mse")[1:],
    ("student 3x96 float32 (to convergence)", T, [D], S),
    (f"student 3x96 GPTQ group-128 2-bit + {R} QAT", T, [D, q("gptq", granularity="group", recovery_steps=R)], g(128, **S, bits=2)),
    _between("student 3x96", [D], S, 2.6),
    *[row for b in (3, 4) for row in _pair("student 3x96", [D], S, b)],
]


def mixed(storage: str) -> None:
    """The converged char GPT: uniform against mixed widths at equal bytes (issue 27)."""
    _gpt_rows(storage, MIXED_GPT, "mixed", group_size=128)


def smollm2(storage: str) -> None:
    _smollm2_rows(storage, SMOLLM2, "smollm2", calibration="256 training windows of 64 tokens (GPTQ)")


def _smollm2_rows(storage: str, rows: list, section: str, calibration: str) -> None:
    from smollm2 import SPACE as SMOL, STUDENT as SMOL_STUDENT, TEACHER as SMOL_TEACHER

    started = time.perf_counter()
    overrides = {"task.chars": 1_000_000, "task.eval_tokens": 8192, "measure.repeats": 10, "trials": 1, "distill.val_tokens": 1024}
    teacher, results, _ = run_rows(SMOL, rows, student=SMOL_STUDENT, teacher_params=SMOL_TEACHER, group_size=128,
                                   overrides=overrides, storage=f"{storage}-smollm2")
    for row in results:
        row["perplexity_vs_float"] = round(row["perplexity"] / teacher.test_perplexity - 1, 4)
    _save(section, {"date": time.strftime("%Y-%m-%d"), "space": SMOL, "eval_tokens": 8192, "calibration": calibration,
                    "embedding": "quantized as the tied head (its width allocated like any tensor in mixed rows)",
                    "corpus": "kjv, first 1,000,000 characters; test = last 5% (contiguous)",
                    "teacher": _teacher(teacher), "rows": results, "wall_s": round(time.perf_counter() - started, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["rows", "entropy", "sweep", "smollm2", "mixed", "mixed_smollm2"])
    parser.add_argument("--storage", default="/tmp/frontier/runs")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--space", default=SPACE, help="sweep: the search space (search_spaces/frontier_mixed.yaml: mixed widths)")
    parser.add_argument("--resume", help="sweep: a finished sweep's id in --storage, read back rather than run again")
    args = parser.parse_args()
    if args.part == "sweep":
        sweep(args.storage, args.trials, args.space, args.resume)
    else:
        globals()[args.part](args.storage)


if __name__ == "__main__":
    main()
