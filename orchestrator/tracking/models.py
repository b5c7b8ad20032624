"""Front points as MLflow models, the Model Registry, and models read back from MLflow URIs.

Each front point's child run gets `model/`: an MLflow model with the `python_function` flavour whose
loader is `orchestrator.tracking.pyfunc` (the product's own reader of the packed artifact), a signature
and an input example (token-id windows in, next-token ids out), this package's code, and pip
requirements pinned to the installed versions. Trials off the front keep their `model.orc` artifact only.

`register_front` registers the front as versions of one registered model, tags each version with its
measured objectives, and points the aliases `recommended`, `smallest`, `fastest` and `most-accurate`
at the right versions.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.storage import fetch
from orchestrator.tracking.pyfunc import ARTIFACT_FILE, TASK_FILE
from orchestrator.tracking.runs import SweepTracker, quiet_downloads

log = logging.getLogger("orchestrator")

MODEL_PATH = "model"  # the MLflow model's path inside its run: runs:/<run>/model
REQUIRED = ("torch", "numpy", "zstandard", "pyyaml")  # what the loader imports (besides this package's code)
ALIASES = {  # alias -> (column, best is the smallest)
    "smallest": ("size_mb", True),
    "fastest": ("latency_ms", True),
    "most-accurate": ("accuracy", False),
}
VERSION_TAGS = ("accuracy", "test_accuracy", "perplexity", "size_mb", "latency_ms", "compression_ratio")


def pinned_requirements(architecture: str) -> list[str]:
    """`name==version` of what loading the model needs, as installed here (a local build tag such as
    torch's ``+cpu`` left off: the same release from an index)."""
    names = [*REQUIRED, *(("transformers",) if architecture.startswith("hf") else ())]
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in names]


def _package_code(into: Path) -> Path:
    """A clean copy of this package (no bytecode caches) for the model's `code/`."""
    import orchestrator

    target = into / "orchestrator"
    shutil.copytree(Path(orchestrator.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def save_model(path: Path, artifact: str, example: np.ndarray, *, task: Any = None, code: Path) -> None:
    """Write the MLflow model of one packed `artifact` at `path`. A model of a task of your own (an
    architecture the package does not build) has `task` pickled beside it, to rebuild it."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from orchestrator import models
    from orchestrator.stages.export import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "artifact"
        data.mkdir()
        local = fetch(artifact)
        shutil.copyfile(local, data / ARTIFACT_FILE)
        manifest = read_manifest(local)
        if manifest["architecture"] not in models.ARCHITECTURES:  # a task of your own rebuilds its model
            if task is None:
                raise ValueError(f"{artifact}: a {manifest['architecture']} model needs its task to be logged as an MLflow model")
            from ray import cloudpickle  # its modules are registered to pickle by value (sweep._ship_by_value)

            (data / TASK_FILE).write_bytes(cloudpickle.dumps(task.model_builder(), protocol=pickle.DEFAULT_PROTOCOL))
        from orchestrator.tracking.pyfunc import _load_pyfunc

        predicted = _load_pyfunc(str(data)).predict(example)  # what the loader will give back, on the example
        signature = ModelSignature(  # unnamed tensors: an array in, an array out (any batch, any length)
            inputs=Schema([TensorSpec(example.dtype, (-1,) * example.ndim)]),
            outputs=Schema([TensorSpec(predicted.dtype, (-1,) * predicted.ndim)]),
        )
        quiet = logging.getLogger("mlflow.pyfunc")  # its "Validating input example" line, once per front point
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            mlflow.pyfunc.save_model(
                path, loader_module="orchestrator.tracking.pyfunc", data_path=str(data), code_paths=[str(code)],
                signature=signature, input_example=example, pip_requirements=pinned_requirements(manifest["architecture"]),
                metadata={"architecture": manifest["architecture"], "format": "orchestrator packed artifact"},
            )
        finally:
            quiet.setLevel(level)


def log_front_models(tracker: SweepTracker, trials: pd.DataFrame, example: np.ndarray, *, task: Any = None) -> dict[str, str]:
    """Log an MLflow model in every front point's run; returns trial id -> its model URI (runs:/<run>/model)."""
    logged: dict[str, str] = {}
    front = trials[trials["pareto"] & trials["run_id"].notna()]
    if front.empty:
        return logged
    with tempfile.TemporaryDirectory() as tmp:
        code = _package_code(Path(tmp) / "code")
        for _, row in front.iterrows():
            path = Path(tmp) / row["trial_id"]
            save_model(path, row["artifact"], example, task=task, code=code)
            if tracker.log_artifacts(row["run_id"], path, MODEL_PATH):
                logged[row["trial_id"]] = f"runs:/{row['run_id']}/{MODEL_PATH}"
    return logged


def register_front(tracker: SweepTracker, name: str, trials: pd.DataFrame, models: Mapping[str, str], *,
                   objectives: Sequence[str], recommended: str | None, sweep_id: str) -> dict[str, str]:
    """Register every logged front model as a version of `name`; returns alias -> version."""
    client = tracker.client
    from mlflow.exceptions import MlflowException

    try:
        tracker.retried("find registered model", client.get_registered_model, name)
    except MlflowException:
        tracker.retried("create registered model", client.create_registered_model, name,
                        description="Pareto-front models of orchestrator sweeps")
    versions: dict[str, str] = {}  # trial id -> version
    rows = trials.set_index("trial_id")
    for trial_id, uri in models.items():
        row = rows.loc[trial_id]
        run_id = row["run_id"]
        figures = {k: f"{row[k]:.6g}" for k in dict.fromkeys([*objectives, *VERSION_TAGS]) if k in row and pd.notna(row[k])}
        done, version = tracker.call(
            f"register version {uri} as {name}", client.create_model_version, name, source=uri, run_id=run_id,
            tags={**figures, "sweep_id": sweep_id, "trial": tracker.run_names.get(trial_id, trial_id),
                  "objectives": ",".join(objectives)},
            description=f"sweep {sweep_id}, {tracker.run_names.get(trial_id, trial_id)}",
        )
        if done and version is not None:
            versions[trial_id] = str(version.version)
    aliases: dict[str, str] = {}
    candidates = rows.loc[list(versions)]
    if recommended in versions:
        aliases["recommended"] = versions[recommended]
    for alias, (column, smallest) in ALIASES.items():
        if column in candidates and candidates[column].notna().any():
            best = candidates[column].idxmin() if smallest else candidates[column].idxmax()
            aliases[alias] = versions[best]
        elif not candidates.empty:
            log.info("registry: no `%s` alias: this sweep did not measure %s", alias, column)
    for alias, version in aliases.items():
        tracker.call(f"set alias {alias}", client.set_registered_model_alias, name, alias, version)
    return aliases


def download_model(uri: str, tracking_uri: str | None = None, into: str | Path | None = None) -> Path:
    """The `data/artifact` directory of the MLflow model at `uri` (runs:/<run>/model, models:/<name>@<alias>,
    models:/<name>/<version>), downloaded into `into` (default: a new temporary directory). The registry is the tracking
    store's (`tracking_uri`, default $MLFLOW_TRACKING_URI): no process-wide MLflow setting is read or changed."""
    from mlflow.tracking import MlflowClient

    from orchestrator.config import resolve_tracking_uri

    store = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(store, registry_uri=store)
    if uri.startswith("models:/"):
        name, sep, alias = uri[len("models:/"):].partition("@")
        if sep:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = name.rpartition("/")
            version = client.get_model_version(name, number)
        if not version.source.startswith("runs:/"):
            raise ValueError(f"{uri}: version {version.version} comes from {version.source}, not from a sweep's run")
        uri = version.source
    run_id, _, path = uri[len("runs:/"):].partition("/")
    with quiet_downloads():
        local = Path(client.download_artifacts(run_id, path or MODEL_PATH, str(into or tempfile.mkdtemp(prefix="orchestrator-model-"))))
    artifact = local / "data" / "artifact"  # where save_model's `data_path` lands
    if not (artifact / ARTIFACT_FILE).exists():
        raise ValueError(f"{uri}: not a model logged by orchestrator (no data/artifact/{ARTIFACT_FILE} in it)")
    return artifact


__all__ = ["ALIASES", "MODEL_PATH", "download_model", "log_front_models", "pinned_requirements", "register_front",
           "save_model"]
