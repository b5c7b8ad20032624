"""The measurement service on a target device: the same exported students measured twice, one at a time.

    python bench/target_measure.py --device cuda --text kjv.txt [--out bench/results/target_measure_cuda.json]

A char-level teacher (random weights: timing and memory do not depend on them) and students of several
shapes, sparsities and bit widths are exported as artifacts; the sweep's measurement service (a Ray actor
holding the device) measures the teacher alone (the reference latency), then every student, twice, in
two rounds. Reports each student's latency (drift-corrected), raw latency, peak memory (a fresh process;
on CUDA `torch.cuda.max_memory_allocated`) and the relative difference between the rounds. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch

from orchestrator import load_config
from orchestrator.engine.compress import compress
from orchestrator.engine.context import resolve
from orchestrator.engine.prepare import prepare_data
from orchestrator.engine.service import measure_on_service, start_service, stop_service
from orchestrator.io.artifact import export
from orchestrator.io.storage import fetch
from orchestrator.tasks import TrialParams, task_from_config

STUDENTS = [  # (layers, width, sparsity, bits)
    (6, 512, 0.0, 32), (6, 512, 0.5, 8), (4, 256, 0.0, 32), (4, 256, 0.5, 4), (2, 128, 0.3, 8), (2, 128, 0.0, 16),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--text", required=True, help="a .txt corpus (e.g. the KJV text)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or f"bench/results/target_measure_{args.device}.json")
    ray.init(address="local", num_cpus=4, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False)
    figures: dict = {"device": args.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                     "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"), "students": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, overrides={
            "storage": tmp, "objectives": ["accuracy", "size_mb", "latency_ms", "peak_memory_mb"],
            "task": {"files": args.text, "context": 128, "eval_tokens": 4096},
            "teacher": {"layers": 6, "width": 512, "heads": 8},
            "measure": {"device": args.device, "threads": 1, "warmup": 20, "repeats": 100},
            "params": {"heads": 8},
        })
        task, ctx = task_from_config(cfg), resolve(cfg)
        data = prepare_data(ctx, task)
        loaded = task.load_data(fetch(data.path))
        torch.manual_seed(0)
        teacher = task.teacher(cfg, loaded).eval()
        export(teacher, Path(tmp) / "teacher.orc", meta=task.meta(loaded))
        started = time.perf_counter()
        service = start_service(ctx, task, data.path, str(Path(tmp) / "teacher.orc"))
        figures["service_start_s"] = round(time.perf_counter() - started, 1)
        figures["where"] = service.where()
        alone, _ = measure_on_service(service, str(Path(tmp) / "teacher.orc"))
        service.set_reference_ms(alone["latency_ms"])
        figures["teacher"] = {k: alone[k] for k in ("latency_ms", "latency_p95_ms", "peak_memory_mb", "throughput_tokens_per_s")}
        artifacts = []
        for layers, width, sparsity, bits in STUDENTS:
            p = TrialParams.from_config({"layers": layers, "width": width, "heads": 8, "beta": 0.0, "lambda": 0.0,
                                         "temperature": 1.0, "sparsity": sparsity, "bits": bits, "optimizer": "adamw", "lr": 1e-3})
            path = Path(tmp) / f"s{layers}x{width}-{sparsity}-{bits}.orc"
            c = compress(task.student(cfg, p, loaded, teacher), cfg.pipeline, {"sparsity": sparsity, "bits": bits, "group_size": 64},
                         artifact=path, meta=task.meta(loaded))
            artifacts.append(((layers, width, sparsity, bits), path, c.size_bytes))
        rounds = [[measure_on_service(service, str(path))[0] for _, path, _ in artifacts] for _ in range(2)]
        for (shape, path, size), a, b in zip(artifacts, *rounds):
            row = {"layers": shape[0], "width": shape[1], "sparsity": shape[2], "bits": shape[3], "size_mb": size / 1e6}
            for name in ("latency_ms", "latency_raw_ms", "peak_memory_mb"):
                row[name] = [round(a[name], 4), round(b[name], 4)]
                row[f"{name}_rel_diff"] = round(abs(a[name] - b[name]) / ((a[name] + b[name]) / 2), 4)
            figures["students"].append(row)
        for name in ("latency_ms", "latency_raw_ms", "peak_memory_mb"):
            diffs = [r[f"{name}_rel_diff"] for r in figures["students"]]
            figures[f"{name}_rel_diff"] = {"median": statistics.median(diffs), "worst": max(diffs)}
        spans = sorted((m["measure_started_at"], m["measure_ended_at"]) for r in rounds for m in r)
        figures["overlapping_measurements"] = sum(s < e for (_, e), (s, _) in zip(spans, spans[1:]))
        stop_service(service)
    ray.shutdown()
    print(json.dumps(figures, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
