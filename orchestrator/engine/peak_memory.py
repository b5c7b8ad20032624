"""`python -m orchestrator.engine.peak_memory SPEC_DIR FILE DEVICE THREADS [RUNTIME]`: the peak memory of a batch-1
inference of an exported model (FILE: its packed artifact, or the file `RUNTIME` runs, e.g. an `.onnx` for
onnxruntime; default torch), in this fresh process; prints {"peak_memory_mb": ...} as its last line.

On CPU it is the resident set's high-water mark (Linux `VmHWM`, reset after the model is loaded) minus
the resident set before the model was loaded: the loaded weights and the forward pass's peak, not the
interpreter or torch. On CUDA it is `torch.cuda.max_memory_allocated` over the same span. MB = 10^6 bytes.
SPEC_DIR holds the task (`task.pkl`, cloudpickle), the sweep's artifact encodings (`encodings.pkl`) and
the example input (`example.pt`); the measurement service writes them once per sweep.
"""

from __future__ import annotations

import ctypes
import gc
import json
import resource
import sys
from collections.abc import Mapping
from typing import Any
from pathlib import Path

import torch
from ray import cloudpickle

from orchestrator.runtimes import RUNTIMES
from orchestrator.tasks.base import Task
from orchestrator.techniques.quantize import EncodedTensor


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so the resident set holds only what is live: the
    loading's transient buffers must not count as the model's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
        return True
    except OSError:
        return False


@torch.inference_mode()
def _warm_up_runtime(device: str) -> None:
    """Run the common inference ops once on small tensors, so that the runtime's one-time set-up (thread
    pools, kernel workspaces) is in the baseline and not counted against the model."""
    x = torch.randn(4, 16, 64, device=device)
    w = torch.nn.Linear(64, 64).to(device)
    y = torch.nn.functional.gelu(torch.nn.functional.layer_norm(w(x), (64,)))
    y = torch.softmax(y @ y.transpose(1, 2), -1) @ y
    torch.nn.functional.embedding(torch.zeros(4, 16, dtype=torch.long, device=device), w.weight)
    q = torch.randint(-128, 127, (64, 64), dtype=torch.int8, device=device)
    (x @ (q.float() * 0.01).t()).sum().item()


@torch.inference_mode()
def peak_memory_bytes(artifact: str, task: Task, example: torch.Tensor, device: str,
                      encodings: Mapping[str, type[EncodedTensor]] | None = None, *, runtime: str = "torch",
                      threads: int = 1) -> float:
    def load() -> Any:
        return RUNTIMES[runtime].load(Path(artifact), build=task.build_model, encodings=encodings, threads=threads,
                                      device=device)

    _warm_up_runtime(device)
    gc.collect()
    _trim()
    if device == "cuda":
        torch.cuda.init()
        before = torch.cuda.memory_allocated()
        model = load()
        torch.cuda.reset_peak_memory_stats()
        model(example.to(device))
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    before_kb = _status_kb("VmRSS")
    model = load()
    gc.collect()
    _trim()
    if before_kb is None or not _reset_high_water_mark():  # not Linux: the process's lifetime peak
        before = 0 if before_kb is None else before_kb * 1024
        model(example)
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    model(example)
    return float((_status_kb("VmHWM") - before_kb) * 1024)


def main(argv: list[str]) -> None:
    spec, artifact, device, threads = Path(argv[0]), argv[1], argv[2], int(argv[3])
    runtime = argv[4] if len(argv) > 4 else "torch"
    torch.set_num_threads(threads)
    task = cloudpickle.loads((spec / "task.pkl").read_bytes())
    encodings = cloudpickle.loads((spec / "encodings.pkl").read_bytes())  # the sweep's, techniques of your own included
    example = torch.load(spec / "example.pt", weights_only=True)
    print(json.dumps({"peak_memory_mb": peak_memory_bytes(artifact, task, example, device, encodings, runtime=runtime, threads=threads) / 1e6}))


if __name__ == "__main__":
    main(sys.argv[1:])
