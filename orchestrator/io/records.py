"""Records that cross a process or a file, written and read back as themselves: JSON of frozen dataclasses,
each carrying its format version.

- `TrialOutcome`: what a trial reports (carried by Ray Tune as one JSON field of its last result);
- `TrialRecord`: a line of the sweep's `trials.jsonl`, read back by recovery, the recorder and `SweepResult`;
- `DistillRecord`: a distillation's figures (`distill.json` beside a cached student, and what a Ray Train
  worker reports);
- `TeacherBuild`, `TeacherMeasurement`, `TeacherOutputsRecord`: the teacher's cache entries' own files;
  `TeacherRecord` is the teacher as a sweep prepared it (`SweepResult.teacher`).

    >>> outcome = TrialOutcome(Status.COMPLETED, {"accuracy": 0.5}, {CacheStage.DISTILL: True})
    >>> from_json(TrialOutcome, to_json(outcome)) == outcome
    True
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

R = TypeVar("R")


class RecordError(ValueError):
    """A record this version of orchestrator cannot read (another version wrote it, or it is damaged)."""


class Status(str, enum.Enum):
    """How a trial ended."""

    COMPLETED = "COMPLETED"  # measured: it counts for the front
    STOPPED = "STOPPED"  # early stopping ended its distillation: it could not reach the front
    ERROR = "ERROR"  # it failed (its cause in `error`)


class CacheStage(str, enum.Enum):
    """A stage whose output a trial may reuse from storage instead of computing it (metric `cache_hit_<stage>`)."""

    TEACHER = "teacher"
    TEACHER_OUTPUTS = "teacher_outputs"
    DISTILL = "distill"
    RECOVER = "recover"  # fine-tuning after one-shot pruning
    GPTQ = "gptq"  # a calibrated quantizer's result
    SENSITIVITY = "sensitivity"  # a model's per-tensor sensitivities (mixed-precision allocation)
    QUANTIZE_RECOVER = "quantize_recover"  # fine-tuning after quantization


def _plain(value: Any) -> Any:
    """A record's value as JSON takes it: dataclasses as objects, enums as their values, numpy scalars as numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {(k.value if isinstance(k, enum.Enum) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # a numpy scalar
        return value.item()
    return value


def _typed(hint: Any, value: Any) -> Any:
    """`value` read from JSON as the type `hint` names (nested records, enums, tuples, typed dict keys)."""
    if value is None or hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _typed(hints[f.name], value[f.name]) for f in dataclasses.fields(hint) if f.name in value})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if origin in (dict, Mapping) and args:
        return {_typed(args[0], k): _typed(args[1], v) for k, v in value.items()}
    if origin is tuple:
        return tuple(_typed(args[0], v) for v in value) if args else tuple(value)
    if origin in (list, Sequence) and args:
        return [_typed(args[0], v) for v in value]
    return value


def to_json(record: Any) -> str:
    """One line of JSON: the record's fields and its class's `VERSION`."""
    return json.dumps({"version": type(record).VERSION, **_plain(record)}, separators=(",", ":"))


def from_json(cls: type[R], text: str) -> R:
    """A record of class `cls` from `to_json`'s output; `RecordError` for another version's or a damaged one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"not a {cls.__name__} record: {e}") from None
    version = data.pop("version", None) if isinstance(data, dict) else None
    if version != cls.VERSION:  # type: ignore[attr-defined]
        raise RecordError(f"a {cls.__name__} record of format {version}, written by another version of orchestrator; this "
                          f"one reads format {cls.VERSION} (finish that sweep with the version that started it)")  # type: ignore[attr-defined]
    return _typed(cls, data)


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial reports: built once where the trial ends, read back as itself by the searcher, the
    recorder, tracking and the CLI."""

    VERSION: ClassVar[int] = 1
    status: Status  # COMPLETED or STOPPED (a trial that failed reports no outcome)
    metrics: dict[str, float]  # every measured number by name, the objectives among them
    cache_hits: dict[CacheStage, bool] = field(default_factory=dict)  # stage -> reused from storage
    timings: dict[str, float] = field(default_factory=dict)  # time_<stage>_s -> seconds inside that stage
    artifact: str | None = None  # the packed model (COMPLETED)
    stop_reason: str | None = None  # STOPPED: why
    stopped_at_step: int | None = None  # STOPPED: the distillation step
    warnings: list[str] = field(default_factory=list)  # what the trial measured with less than it was asked for
    tags: dict[str, str] = field(default_factory=dict)  # where it ran: `node` (its driver's), `distill.worker_nodes` (each DDP rank's)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # name -> [[step, value], ...]: distill_loss, distill_val_accuracy
    exports: dict[str, str] = field(default_factory=dict)  # `export.formats` (and `measure.runtime`'s) file -> its location (COMPLETED)

    OUTCOME_KEY: ClassVar[str] = "outcome"  # the Tune result field that holds it

    def __post_init__(self) -> None:  # built in Python with plain strings: typed all the same
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "cache_hits", {CacheStage(k): bool(v) for k, v in self.cache_hits.items()})

    def objectives(self, names: Sequence[str]) -> dict[str, float]:
        """The values of the objectives `names` (empty for a trial stopped early)."""
        return {name: self.metrics[name] for name in names if name in self.metrics}

    def numbers(self) -> dict[str, float]:
        """Every number to log or tabulate: metrics, `cache_hit_<stage>` (1 = reused) and timings."""
        hits = {f"cache_hit_{stage.value}": float(hit) for stage, hit in self.cache_hits.items()}
        stop = {"early_stopped": 1.0, "stopped_at_step": float(self.stopped_at_step or 0)} if self.status is Status.STOPPED else {}
        return {**self.metrics, **hits, **self.timings, **stop}

    def row(self) -> dict[str, Any]:
        """The trials table's columns for this trial."""
        return {**self.numbers(), "artifact": self.artifact, **{f"export_{fmt}": at for fmt, at in self.exports.items()},
                "stop_reason": self.stop_reason}

    def report(self, objectives: Sequence[str]) -> dict[str, Any]:
        """What the trial hands Ray Tune: the sweep's `objectives` by name (for Optuna) and the outcome itself."""
        return {**self.objectives(objectives), self.OUTCOME_KEY: to_json(self)}

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> "TrialOutcome | None":
        """The outcome in a Tune result, or None when the trial ended without one (it failed)."""
        if not result or cls.OUTCOME_KEY not in result:
            return None
        return from_json(cls, result[cls.OUTCOME_KEY])


@dataclass(frozen=True)
class TrialRecord:
    """One line of a sweep's `trials.jsonl`: how a trial ended, written before Optuna or MLflow is told."""

    VERSION: ClassVar[int] = 1
    trial_id: str  # Ray Tune's
    status: Status
    params: dict[str, Any]  # its configuration, by the YAML's names
    run_name: str | None = None  # its MLflow run (trial-0001, ...)
    run_id: str | None = None
    outcome: TrialOutcome | None = None  # None when it failed
    error: str | None = None  # a failed trial's cause, one line
    error_file: str | None = None  # and where its whole traceback is

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    def row(self) -> dict[str, Any]:
        """The trials table's columns: ids, status, params, every measured number, artifact, error. A measured number
        named as a param (`effective_bits`: the budget searched, and the bits the artifact measured) is
        `<name>_measured` here (MLflow keeps params and metrics apart under one name)."""
        measured = self.outcome.row() if self.outcome is not None else {}
        measured = {f"{k}_measured" if k in self.params else k: v for k, v in measured.items()}
        return {"trial_id": self.trial_id, "run_name": self.run_name, "status": self.status.value, "run_id": self.run_id,
                **self.params, **measured, "error": self.error}

    def objective_values(self, names: Sequence[str]) -> list[float] | None:
        """Its values of the objectives `names`, when it completed."""
        if self.status is not Status.COMPLETED or self.outcome is None:
            return None
        return [float(self.outcome.metrics[n]) for n in names]


@dataclass(frozen=True)
class DistillRecord:
    """A distillation's figures: what a Ray Train worker reports and `distill.json` beside a cached student keeps."""

    VERSION: ClassVar[int] = 1
    steps: int  # optimizer steps taken (fewer than asked when it converged: `distill.patience`)
    train_seconds: float  # time inside the training loop on rank 0 (worker start-up excluded)
    val_accuracy: float
    val_loss: float  # validation cross-entropy, nats per symbol (NaN when the task has none)
    worker_nodes: tuple[str, ...] = ()  # Ray Train: the node of each rank, in rank order (in-process: none)
    worker_weights: tuple[str, ...] = ()  # and a digest of each rank's final weights (all equal: checked)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # see `training.progress.Curves`
    resumed_from: int = 0  # Ray Train: the step of the checkpoint a restarted worker group resumed from (0: none)
    paused_seconds: float = 0.0  # of `train_seconds`, paused between steps while the node's measurement service timed a model


STUDENT_TAG = "distill.student"  # a trial's tag: the cache key of the student it compressed (`fanout` reads it)
RUNG = "rung"  # a trial's report at a rung of successive halving carries its rung, verdict and point (`RUNG_POINT<objective>`)
RUNG_POINT = "rung_point_"


@dataclass(frozen=True)
class RungRecord:
    """A student judged at a rung of multi-objective successive halving (`core.fidelity`): one line of the
    sweep's `rungs.jsonl`, which the trials read to rank themselves."""

    VERSION: ClassVar[int] = 1
    trial_id: str
    rung: int  # 0: the first (fewest steps)
    step: int
    point: dict[str, float]  # its objectives there: validation scores, and the figures measured before training
    promoted: bool  # trained on
    place: int  # its place in the rung when judged, from 1
    size: int  # the rung's points when judged, its own included

    @classmethod
    def from_report(cls, trial_id: str, result: Mapping[str, Any], objectives: Sequence[str]) -> "RungRecord":
        """The judgement a trial reported at a rung (`engine.trial`)."""
        return cls(trial_id=trial_id, rung=int(result[RUNG]), step=int(result["distill_step"]),
                   point={n: float(result[RUNG_POINT + n]) for n in objectives}, promoted=bool(result["rung_promoted"]),
                   place=int(result["rung_place"]), size=int(result["rung_size"]))


@dataclass(frozen=True)
class TeacherBuild:
    """`built.json` in the teacher's cache entry: what building it took."""

    VERSION: ClassVar[int] = 1
    train_seconds: float  # inside its training loop (0 for a teacher used as given)
    build_seconds: float  # inside its stages: training loop and export


@dataclass(frozen=True)
class TeacherMeasurement:
    """`teacher.json` in a teacher-measurements entry: the teacher measured like a student, under one set of
    evaluation and timing settings."""

    VERSION: ClassVar[int] = 1
    metrics: dict[str, float]  # everything measured, by name (reference points read it), `output_classes` among them
    warnings: tuple[str, ...] = ()  # figures measured with less than asked
    measure_seconds: float = 0.0


@dataclass(frozen=True)
class TeacherOutputsRecord:
    """`teacher_outputs.json` beside the cached teacher outputs."""

    VERSION: ClassVar[int] = 1
    seconds: float  # teacher time it took to compute them
    examples: int = 0  # in the pool


@dataclass(frozen=True)
class TeacherRecord:
    """The teacher as a sweep prepared it (`SweepResult.teacher`): where it is, whether it was reused, and what
    it measured under the sweep's own settings (`metrics`: validation figures by name, test ones as
    `test_<name>`, size, latency, ...)."""

    key: str  # content hash of its source, recipe and data: its weights' cache entry
    path: str  # its checkpoint (description + state_dict) in storage
    artifact: str  # its exported float32 artifact: the measurement service's reference model
    cache_hit: bool  # its weights reused from an earlier sweep
    build: TeacherBuild
    measure_key: str  # content hash of the weights and every setting its measurements depend on
    measure_cache_hit: bool  # its measurements reused (same weights, same evaluation and timing settings)
    measurement: TeacherMeasurement

    @property
    def metrics(self) -> dict[str, float]:
        return self.measurement.metrics

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.measurement.warnings

    @property
    def accuracy(self) -> float:
        """Validation accuracy (every task reports accuracy)."""
        return self.metrics["accuracy"]

    @property
    def test_accuracy(self) -> float:
        return self.metrics.get("test_accuracy", math.nan)

    @property
    def perplexity(self) -> float:
        """Validation perplexity; NaN for a task that reports none."""
        return self.metrics.get("perplexity", math.nan)

    @property
    def test_perplexity(self) -> float:
        return self.metrics.get("test_perplexity", math.nan)

    @property
    def size_bytes(self) -> int:
        return int(self.metrics["size_bytes"])

    @property
    def latency_ms(self) -> float:
        return self.metrics["latency_ms"]

    @property
    def params(self) -> int:
        return int(self.metrics["params"])

    @property
    def train_seconds(self) -> float:
        return self.build.train_seconds

    @property
    def seconds_now(self) -> float:
        """Stage time this sweep spent on the teacher (what it did not reuse)."""
        return (0.0 if self.cache_hit else self.build.build_seconds) + (0.0 if self.measure_cache_hit else self.measurement.measure_seconds)
