"""What a run was made with: package versions, the git commit of the working directory, the device, the data."""

from __future__ import annotations

import subprocess
from importlib import metadata

VERSIONED = ("orchestrator", "ray", "torch", "optuna", "mlflow")  # packages whose versions every run carries


def environment_tags(*, device: str, data_key: str) -> dict[str, str]:
    """Package versions, the git commit of the working directory (when it is a git checkout), the device trials
    ran on and the hash of the data."""
    tags = {"device": device, "data_hash": data_key}
    for name in VERSIONED:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            tags[f"version.{name}"] = "not installed"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return tags
    if head.returncode == 0:
        tags["mlflow.source.git.commit"] = head.stdout.strip()  # the UI shows it as the run's source version
        tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    return tags
