"""Tasks of a user's own, end to end through the public API on real Ray, Optuna and MLflow: an image
classifier passed as a `PythonTask`, a torch LM task registered by name in this file (no edit elsewhere),
and the YAML `task.entry` route."""

import textwrap

import mlflow
import mlflow.pyfunc
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.nn import functional as F

import orchestrator
from orchestrator import ConfigError, PythonTask, Sweep, register_task
from orchestrator.core.space import Fixed
from orchestrator.core.compressible import UnitGroup, UnitSlice, unit_index
from orchestrator.io.storage import Storage

CLASSES = 4


def images(n, seed):
    """A small image dataset made here: 8x8 images of 4 classes, each a fixed random template plus noise."""
    templates = torch.randn(CLASSES, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(CLASSES, (n,), generator=gen)
    return templates[y] + 1.5 * torch.randn(n, 8, 8, generator=gen), y


class MLP(nn.Module):
    """The user's model; it also offers its hidden states and its neurons for structured pruning."""

    def __init__(self, width, activation="relu"):
        super().__init__()
        self.width, self.activation = width, activation
        self.fc, self.out = nn.Linear(64, width), nn.Linear(width, CLASSES)

    def forward(self, x, hidden=False):
        h = getattr(torch, self.activation)(self.fc(x.flatten(1)))  # (B, width)
        return (self.out(h), [h]) if hidden else self.out(h)

    def structured_units(self, kind):
        if kind != "mlp":
            raise TypeError("an MLP has no attention heads")
        neuron = unit_index(self.width, 1)
        return [UnitGroup((UnitSlice("fc.weight", 0, neuron), UnitSlice("fc.bias", 0, neuron), UnitSlice("out.weight", 1, neuron)))]

    def resized(self, kind, n):
        return MLP(n, self.activation)


def make_student(width, activation):
    return MLP(width, activation)


def accuracy_and_loss(model, x, y):
    logits = model(x)
    return {"accuracy": float((logits.argmax(-1) == y).float().mean()), "loss": float(F.cross_entropy(logits, y)),
            "errors": float((logits.argmax(-1) != y).sum())}


SPACE = """
name: digits
trials: 3
sampler: random
distill: {steps: 40, batch_size: 32, warmup: 2, val_tokens: 400}
measure: {warmup: 2, repeats: 5}
pipeline: [distill, {prune: {method: structured, recovery_steps: 5}}, {quantize: {method: affine}}]
params:
  width: {choices: [8, 16]}
  activation: {choices: [relu, tanh]}
  beta: {choices: [0.0, 0.5]}
  sparsity: {choices: [0.25, 0.5]}
  bits: {choices: [4, 8, 32]}
  lr: 0.01
"""


@pytest.mark.slow
def test_an_image_classifier_from_python_is_distilled_pruned_quantized_and_reloads(ray_session, tmp_path):
    torch.manual_seed(0)
    task = PythonTask(
        data={"train": images(2000, 1), "val": images(400, 2), "test": images(400, 3)},
        teacher=MLP(64), teacher_steps=150,  # trained here, with the default cross-entropy
        student=make_student, evaluate=accuracy_and_loss, label="images",
    )
    (tmp_path / "space.yaml").write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = Sweep.from_yaml(tmp_path / "space.yaml", task=task, storage=str(tmp_path / "runs"), tracking_uri=uri).run()

    assert (result.trials["status"] == "COMPLETED").all(), result.trials["error"].tolist()
    assert result.teacher.accuracy > 0.8  # the product trained the user's teacher
    assert set(result.trials["activation"]) <= {"relu", "tanh"} and result.pareto.shape[0] >= 1
    client = MlflowClient(uri)
    children = {r.data.tags["trial_id"]: r for r in client.search_runs([result.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == result.run_id}
    assert set(children) == set(result.trials["trial_id"])
    assert {c.data.tags.get("task") for c in children.values()} == {"python"}
    # the teacher-output pool: as many distinct training images as a student draws (40 steps x 32)
    assert client.get_run(result.run_id).data.metrics["teacher_outputs_examples"] == 40 * 32
    assert {c.data.tags["trial_id"] for c in children.values() if c.data.tags.get("pareto") == "true"} == set(result.pareto["trial_id"])
    data = task.load_data(Storage(str(tmp_path / "runs")).path("data") / task.data_key(result.config) / "data.pt")
    for row in result.trials.itertuples():
        run = children[row.trial_id]
        assert run.data.params["activation"] == row.activation and "errors" in run.data.metrics
        model = result.load_model(row.trial_id)  # your own module, as your builder made it
        assert isinstance(model, MLP) and model.fc.out_features == round(row.width * (1 - row.sparsity))  # structured pruning shrank it
        with torch.no_grad():  # searched on validation, reported on test
            for split, name in (("val", "accuracy"), ("test", "test_accuracy")):
                x, y = data[split]
                assert accuracy_and_loss(model.eval(), x, y)["accuracy"] == pytest.approx(run.data.metrics[name])
    # a front point's MLflow model: rebuilt by the pickled task (without its teacher), it predicts the classes
    front = result.pareto.iloc[0]
    x, _ = data["test"]
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(result.models[front["trial_id"]])
    finally:
        mlflow.set_tracking_uri(None)
    with torch.no_grad():
        expected = result.load_model(front["trial_id"]).eval()(x).argmax(-1).numpy()
    assert (pyfunc.predict(x.numpy()) == expected).all()
    assert pyfunc.metadata.get_output_schema().inputs[0].shape == (-1,)  # one class per image
    with pytest.raises(ValueError, match="task of your own"):
        orchestrator.load_model(result.trials["artifact"].iloc[0])
    assert orchestrator.load_model(result.trials["artifact"].iloc[0], task=task).activation in ("relu", "tanh")
    # a second sweep with the same task reuses the teacher, its outputs and the first trial's student
    again = Sweep.from_yaml(tmp_path / "space.yaml", task=task, trials=1, storage=str(tmp_path / "runs"), tracking_uri=uri).run()
    first = again.trials.iloc[0]
    assert again.teacher.cache_hit and first["cache_hit_teacher_outputs"] == 1 and first["cache_hit_distill"] == 1
    params = ["width", "activation", "beta", "sparsity", "bits"]
    earlier = result.trials.loc[(result.trials[params] == first[params]).all(axis=1)]  # the same sampled config
    assert len(earlier) == 1 and first["accuracy"] == earlier.iloc[0]["accuracy"]


class TinyLM(nn.Module):
    """A user's own torch language model: embedding, a GRU, a linear head."""

    def __init__(self, vocab, width):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(vocab, width), nn.GRU(width, width, batch_first=True), nn.Linear(width, vocab)

    def forward(self, idx):
        return self.head(self.rnn(self.emb(idx))[0])  # (B, T, V)


def token_batches(n, seed, vocab=12, context=16):
    """An iterable of (inputs, next tokens) batches of a simple repeating sequence with noise."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        start = torch.randint(vocab, (8, 1), generator=gen)
        seq = (start + torch.arange(context + 1)) % vocab
        seq = torch.where(torch.rand(seq.shape, generator=gen) < 0.1, torch.randint(vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


def lm_metrics(model, x, y):
    logits = model(x)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return {"accuracy": float((logits.argmax(-1) == y).float().mean()), "loss": float(nll), "perplexity": float(nll.exp())}


@register_task("tiny_lm_in_a_test")
class TinyLMTask(PythonTask):
    """Registered here and nowhere else; built from the YAML's `task.options`."""

    def __init__(self, vocab=12, teacher_width=32):
        torch.manual_seed(0)
        super().__init__(data={"train": token_batches(40, 1, vocab), "val": token_batches(8, 2, vocab), "test": token_batches(8, 3, vocab)},
                         teacher=TinyLM(vocab, teacher_width), teacher_steps=120, evaluate=lm_metrics,
                         student=lambda width: TinyLM(vocab, width), label="tiny-lm")

    @classmethod
    def from_config(cls, cfg):
        return cls(**cfg.options)


@pytest.mark.slow
def test_a_task_registered_in_a_test_file_runs_from_yaml_by_name(ray_session, tmp_path):
    (tmp_path / "lm.yaml").write_text(textwrap.dedent("""
        name: tiny-lm
        trials: 2
        sampler: random
        task: {name: tiny_lm_in_a_test, options: {vocab: 12, teacher_width: 32}}
        distill: {steps: 30, batch_size: 16, warmup: 2, val_tokens: 64, cache_blocks: 64}
        measure: {warmup: 1, repeats: 5}
        pipeline: [distill, {prune: {method: magnitude}}, {quantize: {method: symmetric}}]
        params: {width: {choices: [8, 16]}, sparsity: 0.3, bits: {choices: [4, 8]}, lr: 0.01}
    """))
    sweep = Sweep.from_yaml(tmp_path / "lm.yaml", storage=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert isinstance(sweep.task, TinyLMTask)
    result = sweep.run()
    assert (result.trials["status"] == "COMPLETED").all(), result.trials["error"].tolist()
    assert (result.trials["perplexity"] > 1).all() and (result.trials["sparsity_measured"] >= 0.29).all()
    assert result.teacher.accuracy > 0.5
    with pytest.raises(ConfigError, match="`params.beta` weighs hidden states"):
        Sweep.from_yaml(tmp_path / "lm.yaml", **{"params.beta": {"choices": [0.0, 1.0]}})


def test_a_python_task_entry_is_imported_with_its_options(tmp_path, monkeypatch):
    (tmp_path / "my_images.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from orchestrator import PythonTask

        def make_task(n, width):
            x, y = torch.randn(n, 8), torch.randint(2, (n,))
            split = (x, y)
            return PythonTask(data={"train": split, "val": split, "test": split}, teacher=nn.Linear(8, 2),
                              student=lambda hidden: nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2)))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    space = tmp_path / "s.yaml"
    space.write_text("task: {name: python, entry: 'my_images:make_task', options: {n: 50, width: 3}}\n"
                     "params: {hidden: {choices: [4, 8]}, beta: 0}\n")
    sweep = Sweep.from_yaml(space)
    assert isinstance(sweep.task, PythonTask) and sweep.config.params["hidden"].choices == (4, 8)
    (tmp_path / "missing.yaml").write_text("task: {name: python, entry: 'my_images:make_task', options: {n: 50, width: 3}}\n")
    with pytest.raises(ConfigError, match="the student builder needs `hidden`"):
        Sweep.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="`params.depth` is not an argument of the student builder"):
        Sweep.from_yaml(space, **{"params.depth": 3})
    with pytest.raises(ConfigError, match="cannot import"):
        Sweep.from_yaml(space, **{"task.entry": "no_such_module:make_task"})
    cfg = orchestrator.load_config(space)  # the YAML names task python: `params` may declare its own
    assert cfg.task.name == "python" and cfg.params["hidden"].choices == (4, 8)


def test_load_config_takes_your_tasks_own_parameters_and_its_name(tmp_path):
    task = PythonTask(data={"train": images(64, 1), "val": images(32, 2), "test": images(32, 3)}, teacher=MLP(16),
                      teacher_steps=0, student=make_student, evaluate=accuracy_and_loss)
    space = tmp_path / "space.yaml"
    space.write_text("params: {width: {choices: [10, 25]}, activation: {choices: [relu, tanh]}, bits: {choices: [4, 8]}}\n")
    cfg = orchestrator.load_config(space, task=task)  # widths no `heads` divides: an MLP has no heads
    assert cfg.task.name == "python" and cfg.params["width"].choices == (10, 25)
    assert "heads" not in cfg.params and "layers" not in cfg.params  # the GPT's shape is the GPT's
    sweep = Sweep(cfg, task=task)
    assert sweep.config.params["activation"].choices == ("relu", "tanh")
    space.write_text("params: {width: 16, activation: relu, depth: {choices: [1, 2]}}\n")
    with pytest.raises(ConfigError, match="`params.depth` is not an argument of the student builder"):
        Sweep(orchestrator.load_config(space, task=task), task=task)
    # a value of your own that equals a default of the built-in GPT (its width is 64) is still yours
    space.write_text("params: {width: 64, activation: relu}\n")
    assert orchestrator.load_config(space, task=task).params["width"] == Fixed(64)
    # while the GPT's defaults, filled in when a YAML was bound to char_lm first, are not (`Sweep(cfg, task=...)`)
    (tmp_path / "gpt.yaml").write_text("params: {width: 32, bits: 4}\n")
    gpt = orchestrator.load_config(tmp_path / "gpt.yaml")
    assert gpt.task.name == "char_lm" and "heads" in gpt.params
    rebound = task.bind(gpt).params
    assert "heads" not in rebound and "layers" not in rebound and rebound["width"] == Fixed(32)


def test_the_teacher_output_pool_of_a_python_task_is_distinct_examples_up_to_the_whole_training_split(tmp_path):
    task = PythonTask(data={"train": images(100, 1), "val": images(10, 2), "test": images(10, 3)}, teacher=MLP(8),
                      student=make_student, evaluate=accuracy_and_loss)
    task.write_data(orchestrator.load_config(None), tmp_path / "data.pt")
    data = task.load_data(tmp_path / "data.pt")
    x, y = data["train"]
    some, _ = task.pool(data, 60, torch.Generator().manual_seed(0))
    every, labels = task.pool(data, 500, torch.Generator().manual_seed(0))
    assert len(some) == 60 and len({tuple(r.flatten().tolist()) for r in some}) == 60  # distinct
    assert len(every) == 100 and sorted(labels.tolist()) == sorted(y.tolist())  # the whole split, once each
    cfg = orchestrator.load_config(None, overrides={"distill": {"steps": 50, "batch_size": 16}, "params.steps": {"choices": [20, 80]}})
    assert cfg.pool_examples == 80 * 16  # the longest distillation's draws
    assert orchestrator.load_config(None, overrides={"distill.cache_blocks": 64}).pool_examples == 64
