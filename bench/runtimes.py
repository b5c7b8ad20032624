"""What a runtime with low-bit kernels changes on the latency axis: the same compressed GPTs timed in torch eager
(the packed artifact, as `measure.runtime: torch` times it) and in ONNX Runtime (its `.onnx` export, MatMulNBits),
at 32, 8 and 4 bits (issue 26).

    python bench/runtimes.py [--out bench/results/runtimes.json] [--threads 1] [--repeats 200]

Models: the cost bench's teacher shape (4 x 128, context 64) and two students (2 x 64, 1 x 32), randomly
initialised and seeded (latency does not depend on training), each quantized per channel (affine min-max) at 8
bits and in groups of 32 at 4 bits, plus float32. Batch-1 latency is the median of `repeats` passes over a
64-token window (and of a 1-token input: the matrix-vector products decoding does) after warm-up, each model in both runtimes with the same thread count, interleaved pass by pass
(torch, then ONNX Runtime) so both see the same machine state; the 4-bit ONNX export is checked against the
torch model first (max |difference| relative to the largest logit). Prints the table and writes it as JSON.
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

from orchestrator.engine.compress import compress
from orchestrator.io.artifact import load_artifact, load_encoded
from orchestrator.models.registry import build
from orchestrator.runtimes.onnx import OrtModel, export_onnx
from orchestrator.tasks.char_lm import build_model
from orchestrator.techniques.pipeline import Pipeline
from orchestrator.techniques.rounding import AffineQuantization

SHAPES = {"teacher 4x128": (4, 128, 4), "student 2x64": (2, 64, 2), "student 1x32": (1, 32, 2)}
GRIDS = {32: ("channel", 32), 8: ("channel", 32), 4: ("group", 32)}
VOCAB, CONTEXT = 80, 64


def timed(model, x: torch.Tensor) -> float:
    t = time.perf_counter()
    model(x)
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/runtimes.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randint(VOCAB, (1, CONTEXT), generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name, (layers, width, heads) in SHAPES.items():
            for bits, (granularity, group) in GRIDS.items():
                torch.manual_seed(0)
                model = build_model(VOCAB, CONTEXT, layers=layers, width=width, heads=heads)
                artifact = Path(tmp) / f"{layers}x{width}-{bits}.orc"
                c = compress(model, Pipeline(prune=None, quantize=AffineQuantization(granularity=granularity)),
                             {"bits": bits, "group_size": group}, artifact=artifact, meta={})
                e = export_onnx(artifact, artifact.with_suffix(".onnx"), x, build=build)
                eager, session = load_artifact(artifact)[0], OrtModel(e.path, threads=args.threads)
                want = load_encoded(artifact)[0](x)[0]
                err = ((session(x)[0] - want).abs().max() / want.abs().max()).item()
                for _ in range(20):
                    eager(x), session(x)
                t_eager, t_ort, t1_eager, t1_ort = [], [], [], []
                for _ in range(args.repeats):
                    t_eager.append(timed(eager, x))
                    t_ort.append(timed(session, x))
                    t1_eager.append(timed(eager, x[:, :1]))  # one token: the matrix-vector products of decoding
                    t1_ort.append(timed(session, x[:, :1]))
                rows.append({"model": name, "bits": bits, "grid": f"{granularity}" + (f" {group}" if granularity == "group" else ""),
                             "artifact_mb": round(c.size_bytes / 1e6, 4), "onnx_mb": round(e.size_bytes / 1e6, 4),
                             "torch_ms": round(statistics.median(t_eager), 4), "onnxruntime_ms": round(statistics.median(t_ort), 4),
                             "torch_1token_ms": round(statistics.median(t1_eager), 4),
                             "onnxruntime_1token_ms": round(statistics.median(t1_ort), 4),
                             "max_rel_diff": float(f"{err:.2g}")})
                r = rows[-1]
                print(f"{name:>14} {bits:>2} bits ({r['grid']:>8}): torch {r['torch_ms']:.3f} ms, onnxruntime "
                      f"{r['onnxruntime_ms']:.3f} ms ({r['torch_ms'] / r['onnxruntime_ms']:.2f}x); one token {r['torch_1token_ms']:.3f} / "
                      f"{r['onnxruntime_1token_ms']:.3f} ms; artifact {r['artifact_mb']:.3f} MB, "
                      f".onnx {r['onnx_mb']:.3f} MB, max rel diff {err:.1e}")
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
           "repeats": args.repeats, "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
