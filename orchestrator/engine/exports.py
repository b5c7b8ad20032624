"""A trial's files for other runtimes: what `measure.runtime` runs (an `.onnx` for onnxruntime) and every format
in `export.formats`, each written beside the trial's packed artifact from it (`runtimes`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.config.schema import SweepConfig
from orchestrator.engine.context import SweepContext
from orchestrator.runtimes import FORMATS, RUNTIMES, Exported, Runtime
from orchestrator.tasks.base import Task


def exported_runtimes(cfg: SweepConfig, *, measured_only: bool = False) -> list[Runtime]:
    """The runtimes a trial writes a file for: `measure.runtime` (when it runs a file of its own), then
    `export.formats`, each once (`measured_only`: the first alone)."""
    measured = RUNTIMES[cfg.measure.runtime]
    out = [measured] if measured.format else []
    return out if measured_only else out + [FORMATS[f] for f in cfg.export.formats if FORMATS[f] is not measured]


def export_files(ctx: SweepContext, task: Task, data: Any, artifact: Path, timings: dict[str, float] | None = None, *,
                 measured_only: bool = False) -> dict[str, Exported]:
    """Every file of `exported_runtimes` for the model in `artifact` (a local path), by format; `timings`
    receives `time_export_formats_s`. `measured_only`: only what the measurement service runs (an untrained
    student measured before training needs no file to keep)."""
    cfg, out = ctx.config, {}
    t = time.perf_counter()
    for runtime in exported_runtimes(cfg, measured_only=measured_only):
        out[runtime.format] = runtime.export(artifact, artifact.with_name(runtime.file_name(artifact)), task.example(data),
                                             build=task.build_model, encodings=ctx.encodings,
                                             dequantized=cfg.export.fallback == "dequantized")
    if timings is not None and out:
        timings["time_export_formats_s"] = time.perf_counter() - t
    return out


def runnable(cfg: SweepConfig, locations: dict[str, str]) -> str | None:
    """The location of the file `measure.runtime` runs, among a trial's exports (None: it runs the artifact)."""
    fmt = RUNTIMES[cfg.measure.runtime].format
    return locations.get(fmt) if fmt else None


def export_tags(files: dict[str, Exported], locations: dict[str, str]) -> dict[str, str]:
    """`export.<format>`: where the file is; `export.<format>.dequantized`: the weights that run as float there
    (`export.fallback: dequantized`), with the reason."""
    tags = {}
    for fmt, e in files.items():
        tags[f"export.{fmt}"] = locations[fmt]
        if e.dequantized:
            tags[f"export.{fmt}.dequantized"] = "; ".join(f"{name}: {why}" for name, why in sorted(e.dequantized.items()))[:5000]
    return tags
