"""Does the teacher-output cache cost accuracy on a user's own classifier? (issue 25)

    python bench/pool.py [--out bench/results/pool.json]

A user task through `PythonTask`, sized like Fashion-MNIST (which downloads from the internet, so it cannot be
used here): 55,000 training, 5,000 validation and 5,000 test examples of 196 features and 10 classes, made
by scikit-learn's `make_classification` (clusters of classes, redundant features, 2 % flipped labels). An
MLP teacher (196-256-256-10) is trained by the product, once; then the same student (196-64-10, 1,000
distillation steps of 64 examples, beta 0, lambda 0.5, T 2) is distilled three ways, each in a sweep of one
trial from the same storage: the teacher live in every step, from a pool of 2,048 examples (the default
before issue 25), and from the default pool (as many distinct examples as the student draws, here all
55,000). Test accuracy of each, and the pool's size and build time. Prints the figures and writes them as
JSON. Not a test: one seed, one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import orchestrator

SPACE = """
name: pool
trials: 1
task: {eval_tokens: 5000}
distill: {steps: 1000, batch_size: 64, warmup: 50, val_tokens: 5000, patience: null}
pipeline: [distill]
params: {width: 64, beta: 0.0, lambda: 0.5, temperature: 2.0, lr: 0.003}
"""


class MLP(nn.Module):
    def __init__(self, width: int, depth: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = 196
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.body, self.out = nn.Sequential(*layers), nn.Linear(size, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=65_000, n_features=196, n_informative=40, n_redundant=40, n_classes=10,
                               n_clusters_per_class=3, class_sep=1.0, flip_y=0.02, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return {"train": (x[:55_000], y[:55_000]), "val": (x[55_000:60_000], y[55_000:60_000]), "test": (x[60_000:], y[60_000:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/pool.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    task = user_task()
    figures: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
                     "train_examples": 55_000, "student_draws": 1000 * 64}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "space.yaml").write_text(SPACE)
        for name, over in (("live", {"distill.teacher_outputs": "live"}), ("pool_2048", {"distill.cache_blocks": 2048}),
                           ("pool_default", {})):
            result = orchestrator.Sweep.from_yaml(Path(tmp) / "space.yaml", task=task, storage=f"{tmp}/runs",
                                                  tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment=name, **over).run()
            row = result.trials.iloc[0]
            figures[name] = {"test_accuracy": round(float(row["test_accuracy"]), 4), "accuracy": round(float(row["accuracy"]), 4),
                             "distill_s": round(float(row["time_distill_s"]), 1)}
            if name != "live":
                from mlflow.tracking import MlflowClient

                m = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
                figures[name].update({"pool_examples": int(m["teacher_outputs_examples"]), "pool_mb": round(m["teacher_outputs_mb"], 1),
                                      "pool_build_s": round(m["teacher_outputs_seconds"], 2)})
            figures["teacher_test_accuracy"] = round(float(result.teacher.metrics["test_accuracy"]), 4)
    print(json.dumps(figures, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


def user_task() -> orchestrator.PythonTask:
    """The user's task: the data above, an untrained teacher the product trains (3,000 steps), the student MLP."""
    return orchestrator.PythonTask(data=data(), teacher=MLP(256, depth=2), teacher_steps=3000,
                                   student=lambda width: MLP(width), label="synthetic-fashion")


if __name__ == "__main__":
    main()
