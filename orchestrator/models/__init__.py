"""The model families the product builds itself: a small GPT (`gpt`) and any Hugging Face causal LM (`hf`),
each a compressible model (`core.compressible`) registered by architecture name (`registry`). A user's
own model comes in through its task (`tasks.python`)."""

from orchestrator.models import gpt, hf  # noqa: F401 (they register their architectures)
from orchestrator.models.registry import ARCHITECTURES, build, describe, register_architecture

__all__ = ["ARCHITECTURES", "build", "describe", "register_architecture"]
