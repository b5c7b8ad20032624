"""The hypervolume's reference point and the normalized hypervolume of a trials table."""

import pandas as pd
import pytest

from orchestrator import ConfigError
from orchestrator.core.fronts import normalized_hypervolume, reference_point
from orchestrator.core.objectives import Objectives

DEFAULT = Objectives(["accuracy", "size_mb", "latency_ms"])
TEACHER = {"size_mb": 2.0, "latency_ms": 4.0, "output_classes": 65.0}  # 2 MB, 4 ms, 65 output classes


def test_normalized_hypervolume_uses_the_configured_reference_point_or_the_teachers():
    assert reference_point(DEFAULT, {}, TEACHER, source="x") == {"accuracy": 0.0, "size_mb": 2.0, "latency_ms": 4.0}
    reference = {"accuracy": 0.2, "size_mb": 1.0, "latency_ms": 4.0}
    assert reference_point(DEFAULT, {"accuracy": 0.2, "size_mb": 1.0}, TEACHER, source="x") == reference
    # perplexity's default reference is a uniform guess over the outputs
    assert reference_point(Objectives(["perplexity", "size_mb"]), {}, TEACHER, source="x") == {"perplexity": 65.0, "size_mb": 2.0}
    table = pd.DataFrame({"accuracy": [0.6], "size_mb": [0.5], "latency_ms": [1.0], "feasible": [True]})
    # one point: the box (0.6 - 0.2) x (1.0 - 0.5) x (4 - 1) over the whole box (1 - 0.2) x 1.0 x 4
    assert normalized_hypervolume(table, reference, DEFAULT) == pytest.approx(0.4 * 0.5 * 3 / (0.8 * 1.0 * 4))
    assert normalized_hypervolume(table.assign(feasible=False), reference, DEFAULT) == 0.0
    with pytest.raises(ConfigError, match="reference point for perplexity is 1, its best possible value"):
        reference_point(Objectives(["perplexity", "size_mb"]), {}, {"output_classes": 1.0, "size_mb": 2.0}, source="x")
