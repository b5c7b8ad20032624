"""Front points as MLflow models, and models read back from MLflow URIs.

Each front point's child run gets `model/`: an MLflow model with the `python_function` flavour whose
loader is `orchestrator.tracking.pyfunc` (the product's own reader of the packed artifact), a signature
and an input example (token-id windows in, next-token ids out), this package's code, and pip
requirements pinned to the installed versions. Trials off the front keep their `model.orc` artifact only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.environ import environ
from orchestrator.core.environ import tracking_uri as tracking_uri_or_default
from orchestrator.io.artifact import read_manifest
from orchestrator.io.storage import cache_root, fetch
from orchestrator.models.registry import ARCHITECTURES
from orchestrator.techniques.quantize import ENCODINGS, EncodedTensor
from orchestrator.tracking.pyfunc import ARTIFACT_FILE, ENCODINGS_FILE, TASK_FILE, _load_pyfunc

MODEL_PATH = "model"  # the MLflow model's path inside its run: runs:/<run>/model
REQUIRED = ("torch", "numpy", "zstandard", "pyyaml")  # what the loader imports (besides this package's code)


def pinned_requirements(architecture: str) -> list[str]:
    """`name==version` of what loading the model needs, as installed here (a local build tag such as
    torch's ``+cpu`` left off: the same release from an index)."""
    names = [*REQUIRED, *(("transformers",) if architecture.startswith("hf") else ())]
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in names]


def copy_package(into: Path) -> Path:
    """A clean copy of this package (no bytecode caches) under `into`, for a model's `code/`."""
    target = into / "orchestrator"
    shutil.copytree(Path(__file__).resolve().parents[1], target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@functools.lru_cache(maxsize=1)  # the package's files are read once per process, not per model logged
def _package_digest() -> str:
    source = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def package_copy() -> Path:
    """This package's copy for models' `code/` in the node cache (`code/<digest of its files>/orchestrator`):
    made once per version of the package, by whichever process needs it first, and renamed into place whole."""
    home = cache_root() / "code" / _package_digest()
    if not (home / "orchestrator").is_dir():
        home.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
        copy_package(tmp)
        try:
            tmp.rename(home)
        except OSError:  # another process put it there first
            shutil.rmtree(tmp, ignore_errors=True)
    return home / "orchestrator"


def _pickle(obj: Any, path: Path) -> None:
    from ray import cloudpickle  # modules of your own are registered to pickle by value (engine.cluster.ship_by_value)

    path.write_bytes(cloudpickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL))


def _own_encodings(manifest: dict[str, Any], artifact: str) -> dict[str, type[EncodedTensor]]:
    """The encodings of the artifact's tensors that techniques outside this package registered."""
    used = {e["encoding"] for e in manifest["tensors"] if e.get("encoding") not in (None, "float32", "float16")}
    missing = sorted(used - set(ENCODINGS))
    if missing:
        raise ValueError(f"{artifact}: tensors stored as {missing}, which no registered technique decodes; import the module "
                         "that registers it")
    return {name: ENCODINGS[name] for name in sorted(used) if ENCODINGS[name].__module__.split(".")[0] != "orchestrator"}


def save_model(path: Path, artifact: str, example: np.ndarray, *, task: Any = None, code: Path) -> None:
    """Write the MLflow model of one packed `artifact` at `path`. A model of a task of your own (an
    architecture the package does not build) has `task` pickled beside it, to rebuild it, and one whose
    weights a technique of your own encoded has that encoding pickled beside it, to decode them."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "artifact"
        data.mkdir()
        local = fetch(artifact)
        shutil.copyfile(local, data / ARTIFACT_FILE)
        manifest = read_manifest(local)
        if manifest["architecture"] not in ARCHITECTURES:  # a task of your own rebuilds its model
            if task is None:
                raise ValueError(f"{artifact}: a {manifest['architecture']} model needs its task to be logged as an MLflow model")
            _pickle(task.model_builder(), data / TASK_FILE)
        own = _own_encodings(manifest, artifact)
        if own:  # a technique of your own decodes its weights: its encoding travels with the model
            _pickle(own, data / ENCODINGS_FILE)
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


ONNX_PATH = "onnx"  # the ONNX Runtime model's path inside its run (`export.formats: [onnx]`): runs:/<run>/onnx


def save_onnx_model(path: Path, onnx_file: str | Path, example: np.ndarray) -> None:
    """Write an MLflow model of the `onnx` flavour at `path` from an exported `.onnx` file (`runtimes.onnx`): it
    loads with `mlflow.onnx.load_model` or, as a pyfunc, runs on ONNX Runtime (no orchestrator needed)."""
    import mlflow.onnx
    import onnx
    import onnxruntime as ort
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (predicted,) = session.run(None, {session.get_inputs()[0].name: example})
    signature = ModelSignature(inputs=Schema([TensorSpec(example.dtype, (-1,) * example.ndim, session.get_inputs()[0].name)]),
                               outputs=Schema([TensorSpec(predicted.dtype, (-1,) * predicted.ndim, session.get_outputs()[0].name)]))
    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        mlflow.onnx.save_model(onnx.load(str(onnx_file)), str(path), signature=signature, save_as_external_data=False,
                               onnx_execution_providers=["CPUExecutionProvider"],
                               pip_requirements=[f"{n}=={metadata.version(n)}" for n in ("onnx", "onnxruntime", "numpy")],
                               metadata={"format": "ONNX, quantized weights as com.microsoft MatMulNBits"})
    finally:
        quiet.setLevel(level)


def download_model(uri: str, tracking_uri: str | None = None, into: str | Path | None = None) -> Path:
    """The `data/artifact` directory of the MLflow model at `uri` (runs:/<run>/model, models:/<name>@<alias>,
    models:/<name>/<version>), downloaded into `into` (default: a new temporary directory). The registry is the tracking
    store's (`tracking_uri`, default $MLFLOW_TRACKING_URI): no process-wide MLflow setting is read or changed."""
    from mlflow.tracking import MlflowClient

    store = tracking_uri_or_default(tracking_uri)
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
    with environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        local = Path(client.download_artifacts(run_id, path or MODEL_PATH, str(into or tempfile.mkdtemp(prefix="orchestrator-model-"))))
    artifact = local / "data" / "artifact"  # where save_model's `data_path` lands
    if not (artifact / ARTIFACT_FILE).exists():
        raise ValueError(f"{uri}: not a model logged by orchestrator (no data/artifact/{ARTIFACT_FILE} in it)")
    return artifact


__all__ = ["MODEL_PATH", "ONNX_PATH", "copy_package", "download_model", "package_copy", "pinned_requirements", "save_model", "save_onnx_model"]
