"""The README's test command is the one CI runs, and the README names every searchable parameter."""

import re
import runpy
import shutil
from pathlib import Path

import pytest

from orchestrator.config import PARAM_NAMES, load_config

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.M).group(1)
    readme = (ROOT / "README.md").read_text()
    assert f"\n{command}\n" in readme
    assert command.endswith("&& pytest")


def test_readme_documents_every_param_and_section_key():
    readme = (ROOT / "README.md").read_text()
    for name in PARAM_NAMES:
        assert f"`{name}`" in readme, name
    from orchestrator.objectives import OBJECTIVES

    for name in OBJECTIVES:  # every registered objective
        assert f"`{name}`" in readme, name
    cfg = load_config(None).to_dict()
    for section in ("task", "teacher", "distill", "resources", "measure"):
        for key in cfg[section]:
            assert f"`{section}.{key}`" in readme or f".{key}`" in readme, f"{section}.{key}"


@pytest.mark.slow
def test_the_readme_own_model_example_runs_as_written(ray_session, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- user-task-example -->\n```python\n(.+?)```", readme, re.S).group(1)
    (tmp_path / "search_spaces").mkdir()
    shutil.copy(ROOT / "search_spaces" / "user_task.yaml", tmp_path / "search_spaces")
    (tmp_path / "example.py").write_text(code)
    monkeypatch.chdir(tmp_path)  # its storage and mlflow.db land here
    done = runpy.run_path(str(tmp_path / "example.py"), run_name="__main__")  # as `python example.py` runs it
    result, best = done["result"], done["best"]
    assert (result.trials["status"] == "COMPLETED").all(), result.trials["error"].tolist()
    assert len(result.pareto) >= 1 and result.teacher.accuracy > 0.8
    assert isinstance(best.net, done["MLP"]) and (tmp_path / "mlflow.db").is_file()
