"""Property: every malformed search space or invocation is refused in one line, exit 2, before anything
starts, and nothing is written (Hypothesis generates a few hundred per run)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import Sweep, cli

EXAMPLES = 250
BASE = {  # a valid space: each example breaks it in one place
    "name": "prop", "trials": 2, "sampler": "random",
    "distill": {"steps": 5, "batch_size": 4},
    "teacher": {"layers": 1, "width": 16, "steps": 5},
    "params": {"width": {"choices": [16, 32]}, "sparsity": {"low": 0.0, "high": 0.5}, "bits": {"choices": [4, 8]}},
}
SECTIONS = ["distill", "teacher", "task", "measure", "resources", "early_stopping", "export"]
known_top = {"name", "seed", "sampler_seed", "trials", "max_failures", "max_concurrent_trials", "sampler", "sampler_options",
             "population_size", "storage", "study_storage", "tracking_uri", "experiment", "register", "address",
             "objectives", "constraints", "reference_point", "pipeline", "params", "initial_points", *SECTIONS}

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
junk = st.one_of(st.text(max_size=30), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=3),
                 st.dictionaries(names, st.integers(), max_size=2), st.booleans())
not_int = st.one_of(st.text(max_size=10), st.floats(allow_nan=True).filter(lambda v: v != int(v) if v == v and abs(v) < 1e300 else True),
                    st.lists(st.integers(), max_size=2), st.booleans())


def _set(doc: dict, dotted: str, value) -> dict:
    node = doc
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


@st.composite
def broken_spaces(draw) -> tuple[str, list[str]]:
    """(YAML text, extra CLI arguments), malformed in one place."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    kind = draw(st.sampled_from(["unknown_top", "unknown_section_key", "unknown_param", "bad_trials", "bad_number",
                                 "bad_param_value", "duplicate", "empty", "not_mapping", "bad_yaml", "bad_set",
                                 "bad_flag", "bad_stage", "bad_objective"]))
    args: list[str] = []
    if kind == "unknown_top":
        doc[draw(names.filter(lambda n: n not in known_top))] = draw(junk)
    elif kind == "unknown_section_key":
        section = draw(st.sampled_from(SECTIONS))
        key = draw(names.filter(lambda n: n not in {"steps", "batch_size", "layers", "width", "heads", "name", "chars",
                                                     "context", "eval_tokens", "warmup", "repeats", "threads", "target",
                                                     "device", "cpus", "enabled", "codec", "level"}))
        doc.setdefault(section, {})[key] = draw(junk)
        if draw(st.booleans()):  # the same through --set
            doc = yaml.safe_load(yaml.safe_dump(BASE))
            args = ["--set", f"{section}.{key}=1"]
    elif kind == "unknown_param":
        doc["params"][draw(names.filter(lambda n: n not in {"layers", "width", "heads", "beta", "lambda", "temperature",
                                                            "sparsity", "bits", "optimizer", "lr", "weight_decay",
                                                            "group_size", "steps"}))] = draw(junk)
    elif kind == "bad_trials":
        value = draw(st.one_of(st.integers(max_value=0), not_int))
        if draw(st.booleans()):
            doc["trials"] = value
        else:
            args = ["--trials", str(draw(st.integers(max_value=0)))]
    elif kind == "bad_number":
        key = draw(st.sampled_from(["distill.steps", "distill.batch_size", "teacher.layers", "teacher.steps", "measure.repeats"]))
        _set(doc, key, draw(st.one_of(st.integers(max_value=0), not_int)))
    elif kind == "bad_param_value":
        name, value = draw(st.sampled_from([
            ("sparsity", st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)),
            ("bits", st.sampled_from([0, 1, 9, 12, 64, -4])),
            ("temperature", st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)),
            ("optimizer", names.filter(lambda n: n not in {"adamw", "sgd", "adagrad", "rmsprop", "adam"})),
        ]))
        doc["params"][name] = draw(value)
    elif kind == "duplicate":
        text = yaml.safe_dump(doc, sort_keys=False)
        key = draw(st.sampled_from(["trials", "name", "sampler"]))
        return f"{text}{key}: {yaml.safe_dump(doc[key]).splitlines()[0]}\n", args
    elif kind == "empty":
        return draw(st.sampled_from(["", "\n", "# nothing\n", "---\n", "# a\n# b\n\n", "~\n", "null\n"])), args
    elif kind == "not_mapping":
        return yaml.safe_dump(draw(st.one_of(st.lists(junk, min_size=1, max_size=3), st.integers(), st.text(min_size=1, max_size=9)
                                             .filter(lambda t: t.strip() and not t.strip().startswith("#"))))), args
    elif kind == "bad_yaml":
        return draw(st.sampled_from(["trials: [2,", "params: {bits: [4, 8}", "a: b: c", "\t- x\n y", "{", "trials: 2\n  - x",
                                     "key: 'unclosed"])), args
    elif kind == "bad_set":
        args = ["--set", draw(st.one_of(names.filter(lambda n: "=" not in n), st.just("=3"),
                                        names.map(lambda n: f"{n}.x={n}").filter(lambda s: s.split(".")[0] not in known_top),
                                        st.just("params.bits={choices: [4,"), st.just("distill.steps=-1")))]
    elif kind == "bad_flag":
        args = draw(st.sampled_from([["--trials", "x"], ["--max-failures", "0"], ["--max-failures", "-3"], ["--bogus"],
                                     ["--trials"], ["--register", "team/model"], ["--tracking-uri", "nonsense"],
                                     ["--storage", "ftp://x/y"], ["--address", "ray:/x"]]))
    elif kind == "bad_stage":
        doc["pipeline"] = [draw(names.filter(lambda n: n not in {"distill", "prune", "quantize"}))]
    elif kind == "bad_objective":
        doc["objectives"] = ["accuracy", draw(names.filter(lambda n: n not in {"accuracy", "size_mb", "latency_ms", "perplexity"}))]
    return yaml.safe_dump(doc, sort_keys=False), args


@pytest.fixture()
def nothing_launches(monkeypatch):
    """A malformed input that got past the checks would start a sweep: fail fast instead of running it."""
    def refuse(self, **kwargs):
        raise AssertionError(f"a malformed input reached Sweep.run: {self.config.source}")

    monkeypatch.setattr(Sweep, "run", refuse)


def test_malformed_spaces_and_invocations_are_one_line_exit_2_and_write_nothing(nothing_launches):
    seen: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(broken_spaces())
    def check(example):
        text, args = example
        with tempfile.TemporaryDirectory() as d:
            space = Path(d) / "space.yaml"
            space.write_text(text)
            err = io.StringIO()
            before = os.getcwd()
            os.chdir(d)  # where a default storage, mlflow.db or mlruns/ would land
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
                    try:
                        code = cli.main(["sweep", str(space), *args])
                    except SystemExit as e:  # argparse
                        code = e.code
            finally:
                os.chdir(before)
            lines = err.getvalue().strip().splitlines()
            assert code == 2, (text, args, err.getvalue())
            assert len(lines) == 1 and lines[0].startswith("orchestrator") and "error: " in lines[0], (text, args, lines)
            assert len(lines[0]) <= 1100 and out.getvalue() == ""
            assert sorted(os.listdir(d)) == ["space.yaml"], (text, args)
        seen.append(lines[0])

    check()
    assert len(seen) >= 200
