"""What the training loop watches as it goes: whether the student has converged (`Plateau`, which ends
training early) and the curves its trial's MLflow run shows (`Curves`)."""

from __future__ import annotations

import math


class Plateau:
    """Convergence: every `check_every` steps (after step `after`: QAT on, gradual pruning done) score
    validation accuracy; `patience` checks in a row without a better one mean the student has converged.
    `patience` None: never."""

    def __init__(self, patience: int | None, check_every: int, steps: int, val_tokens: int, *, after: int) -> None:
        self.patience, self.check_every, self.steps, self.after = patience, check_every, steps, after
        self.tokens = min(4096, val_tokens)  # validation positions per check
        self.best, self.stale = -math.inf, 0

    def due(self, step: int) -> bool:
        return self.patience is not None and step > self.after and step % self.check_every == 0 and step < self.steps

    def converged(self, accuracy: float) -> bool:
        if accuracy > self.best:
            self.best, self.stale = accuracy, 0
        else:
            self.stale += 1
        return self.stale >= (self.patience or 0)


class Curves:
    """What training looked like, for the trial's MLflow run: `distill_loss`, the mean loss over each of
    about 100 equal spans of the steps, and `distill_val_accuracy` at every validation check and at the end.

    >>> c = Curves(steps=300)
    >>> for step in range(1, 301): c.loss(step, float(step))
    >>> len(c.points["distill_loss"]), c.points["distill_loss"][0]  # spans of 3 steps: the mean of 1, 2, 3
    (100, [3, 2.0])
    >>> c.val(300, 0.5); c.val(300, 0.5); c.points["distill_val_accuracy"]  # one point per step
    [[300, 0.5]]
    """

    def __init__(self, steps: int) -> None:
        self.every = max(1, steps // 100)
        self.points: dict[str, list[list[float]]] = {"distill_loss": [], "distill_val_accuracy": []}
        self._sum, self._n = 0.0, 0

    def loss(self, step: int, value: float) -> None:
        self._sum, self._n = self._sum + value, self._n + 1
        if step % self.every == 0:
            self.points["distill_loss"].append([step, self._sum / self._n])
            self._sum, self._n = 0.0, 0

    def val(self, step: int, accuracy: float) -> None:
        points = self.points["distill_val_accuracy"]
        if not points or points[-1][0] != step:
            points.append([step, accuracy])
