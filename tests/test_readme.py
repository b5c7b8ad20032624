"""The README's test command is the one CI runs, and the README names every searchable parameter."""

import re
from pathlib import Path

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
    cfg = load_config(None).to_dict()
    for section in ("task", "teacher", "distill", "resources", "measure"):
        for key in cfg[section]:
            assert f"`{section}.{key}`" in readme or f".{key}`" in readme, f"{section}.{key}"
