"""A trial's outcome, typed: built once where the trial reports, and read back as the same object by the
sweep's monitor, the searcher, the tracking callback and the CLI.

Ray Tune carries it as one JSON field of the trial's last result (`OUTCOME_KEY`), beside the objective
values that Optuna reads by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

OUTCOME_KEY = "outcome"  # the Tune result field that holds the JSON outcome


@dataclass(frozen=True)
class TrialOutcome:
    status: Literal["COMPLETED", "STOPPED"]  # STOPPED: early stopping ended its distillation (no test metrics)
    metrics: dict[str, float]  # every measured number by name, the objectives among them
    cache_hits: dict[str, bool] = field(default_factory=dict)  # stage (teacher, teacher_outputs, distill, recover, gptq, quantize_recover) -> reused
    timings: dict[str, float] = field(default_factory=dict)  # time_<stage>_s -> seconds inside that stage
    artifact: str | None = None  # the packed model (COMPLETED)
    stop_reason: str | None = None  # STOPPED: why
    stopped_at_step: int | None = None  # STOPPED: the distillation step
    warnings: list[str] = field(default_factory=list)  # what the trial measured with less than it was asked for
    tags: dict[str, str] = field(default_factory=dict)  # where it ran: `node` (its driver's), `distill.worker_nodes` (each DDP rank's)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # name -> [[step, value], ...]: distill_loss, distill_val_accuracy

    def objectives(self, names: Sequence[str]) -> dict[str, float]:
        """The values of the objectives `names` (empty for a trial stopped early)."""
        return {name: self.metrics[name] for name in names if name in self.metrics}

    def numbers(self) -> dict[str, float]:
        """Every number to log or tabulate: metrics, `cache_hit_<stage>` (1 = reused) and timings."""
        hits = {f"cache_hit_{stage}": float(hit) for stage, hit in self.cache_hits.items()}
        stop = {"early_stopped": 1.0, "stopped_at_step": float(self.stopped_at_step or 0)} if self.status == "STOPPED" else {}
        return {**self.metrics, **hits, **self.timings, **stop}

    def row(self) -> dict[str, Any]:
        """The trials table's columns for this trial."""
        return {**self.numbers(), "artifact": self.artifact, "stop_reason": self.stop_reason}

    def report(self, objectives: Sequence[str]) -> dict[str, Any]:
        """What the trial hands Ray Tune: the sweep's `objectives` by name (for Optuna) and the outcome itself."""
        return {**self.objectives(objectives), OUTCOME_KEY: json.dumps(asdict(self))}

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> "TrialOutcome | None":
        """The outcome in a Tune result, or None when the trial ended without one (it failed)."""
        if not result or OUTCOME_KEY not in result:
            return None
        return cls(**json.loads(result[OUTCOME_KEY]))
