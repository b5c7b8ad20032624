"""Where a compressed model runs besides torch's eager mode: exporters to other runtimes' formats, and the
sessions the measurement service times (`runtimes.base`). Importing this package registers every runtime."""

from orchestrator.runtimes import gguf, onnx  # noqa: F401  (registers llama_cpp and onnxruntime)
from orchestrator.runtimes.base import FORMATS, RUNTIMES, Exported, Runtime, register_runtime

__all__ = ["FORMATS", "RUNTIMES", "Exported", "Runtime", "register_runtime"]
