"""The README is a front door (its test command is the one CI runs; its example runs as written), and the
reference in docs/ names every YAML key, searched parameter, pipeline method and option, objective and CLI
flag, with links that lead somewhere."""

import argparse
import dataclasses
import re
import runpy
import shutil
from pathlib import Path

import pytest

from orchestrator import cli, load_config
from orchestrator.config import CORE_PARAMS
from orchestrator.core.objectives import OBJECTIVES
from orchestrator.tasks import TASKS
from orchestrator.techniques import TECHNIQUES

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


def _built_in(registry: dict) -> dict:
    """What the product registers itself (tests register techniques, tasks and objectives of their own)."""
    def module(value):  # a class's, or an objective's measuring function's
        return value.__module__ if isinstance(value, type) else value.measure.__module__

    return {name: value for name, value in registry.items() if module(value).startswith("orchestrator.")}


def _doc(name: str) -> str:
    return (DOCS / name).read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.M).group(1)
    readme = (ROOT / "README.md").read_text()
    assert f"\n{command}\n" in readme
    assert command.endswith("&& pytest")


def test_the_readme_is_a_front_door_that_leads_to_every_page_of_the_reference():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert pages and all(f"(docs/{page})" in readme for page in pages), pages
    assert "```bash\npython3 -m venv .venv" in readme and "orchestrator sweep search_spaces/quickstart.yaml" in readme


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors of a Markdown page (lowercased, punctuation dropped, spaces to hyphens) and
    its explicit `<a id=...>` ones."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    return slugs | set(re.findall(r'<a id="([^"]+)">', text))


@pytest.mark.parametrize("page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_every_relative_link_leads_to_a_file_and_a_heading_that_exist(page):
    path = ROOT / page
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{page}: {target}"
        if anchor:
            assert anchor in _anchors(dest.read_text()), f"{page}: {target}"


def _keys(mapping: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value and key not in ("params", "constraints", "reference_point", "sampler_options"):
            out.extend(_keys(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def test_the_configuration_page_names_every_yaml_key_and_every_searched_parameter():
    page = _doc("configuration.md")
    for key in _keys(load_config(None).to_dict()):
        section, _, name = key.rpartition(".")
        assert f"`{key}`" in page or f"`{key}." in page or (section and f"`.{name}`" in page), key
    for name in [*CORE_PARAMS, *(n for cls in _built_in(TASKS).values() for n in cls.params)]:
        assert f"`{name}`" in page, name
    for name in ("constraints.max_<objective>", "reference_point.<objective>", "sampler_options", "params.*"):
        assert f"`{name}`" in page, name


def test_the_configuration_page_names_every_cli_command_and_flag():
    page = _doc("configuration.md")
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        assert f"orchestrator {command}" in page, command
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in page, f"{command} {flag}"


def test_the_techniques_page_names_every_method_and_its_options():
    page = _doc("techniques.md")
    for stage, methods in TECHNIQUES.items():
        for name, cls in _built_in(methods).items():
            assert f"{stage} `{name}`" in page, f"{stage} {name}"
            for field in dataclasses.fields(cls):
                assert f"`{field.name}`" in page, f"{stage} {name}: {field.name}"


def test_the_objectives_page_names_every_registered_objective():
    page = _doc("objectives.md")
    for name in _built_in(OBJECTIVES):
        assert f"`{name}`" in page, name


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
    assert isinstance(best, done["MLP"]) and (tmp_path / "mlflow.db").is_file()  # your own module comes back
