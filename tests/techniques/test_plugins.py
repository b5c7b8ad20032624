"""A compression technique registered inside this file, with no edit anywhere else: a sign binarizer (each
weight becomes ±α, α the mean |w| of its row's kept weights: one bit a weight, XNOR-Net's binarization).
Its config and checks, its encoding in the artifact and back, and a sweep of it end to end on real Ray,
Optuna and MLflow, its front model loaded by MLflow in a fresh process that never imported this file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
import torch

from orchestrator import ConfigError, Sweep, load_config, load_model, register_technique
from orchestrator.io.artifact import export, load_artifact, read_manifest
from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.techniques.quantize import BlobLoad, BlobStore, EncodedTensor, QuantizeMethod, QuantSpec, register_encoding

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"


@pytest.fixture
def space(tmp_path):
    """The tests' smoke sweep with the binarizer as its quantize stage (and no `params.bits`: it reads none)."""
    text = "\n".join(line for line in SMOKE.read_text().splitlines() if not line.strip().startswith("bits:"))
    path = tmp_path / "sign.yaml"
    path.write_text(text + "\npipeline: [distill, {prune: {method: magnitude}}, {quantize: {method: sign_test, scale: mean}}]\n")
    return path


@register_encoding
@dataclass(frozen=True)
class SignTensor(EncodedTensor):
    """A weight as its signs (1 bit each, packed) and one float32 scale per row."""

    encoding: ClassVar[str] = "sign_test"
    q: torch.Tensor  # (rows, cols) uint8: 1 where the weight is >= 0
    scale: torch.Tensor  # (rows,) float32

    def dequantize(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        w = (self.q.float() * 2 - 1) * self.scale[:, None]
        return w if mask is None else torch.where(mask, w, torch.zeros_like(w))

    def encode(self, store: BlobStore, kept: Any) -> dict[str, Any]:
        signs = self.q.numpy().reshape(-1)[kept]
        return {"encoding": self.encoding, "signs": store.add(np.packbits(signs).tobytes()),
                "scale": store.add(self.scale.numpy().astype("<f4").tobytes(), floats=True)}

    @classmethod
    def decode(cls, entry: Mapping[str, Any], load: BlobLoad, mask: torch.Tensor | None) -> SignTensor:
        shape = entry["shape"]
        numel = int(np.prod(shape))
        kept = numel if mask is None else int(mask.sum())
        q = np.zeros(numel, dtype=np.uint8)
        q[mask.numpy().reshape(-1) if mask is not None else slice(None)] = np.unpackbits(
            np.frombuffer(load.blob(entry["signs"]), dtype=np.uint8))[:kept]
        scale = torch.from_numpy(np.frombuffer(load.blob(entry["scale"]), dtype="<f4").copy())
        return cls(q=torch.from_numpy(q).view(shape), scale=scale)


@register_technique("sign_test")
@dataclass(frozen=True)
class SignBinarization(QuantizeMethod):
    """w' = sign(w) · α per row, α the mean (or the median) |w| of the row's kept weights."""

    uses: ClassVar[tuple[str, ...]] = ()  # no searched strength: one bit a weight, always
    scale: Literal["mean", "median"] = "mean"

    def spec(self, params: Mapping[str, Any]) -> QuantSpec:
        return QuantSpec(self, bits=1, group_size=0)

    def quantize_tensor(self, w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> SignTensor:
        kept = torch.ones_like(w, dtype=torch.bool) if mask is None else mask
        rows = [row[k].abs() for row, k in zip(w, kept)]
        stat = (lambda r: r.mean()) if self.scale == "mean" else (lambda r: r.median())
        scale = torch.stack([stat(r) if r.numel() else torch.zeros(()) for r in rows]).float()
        return SignTensor(q=(w >= 0).to(torch.uint8), scale=scale)

    def why_unused(self, param: str) -> str:
        return " (it keeps one bit a weight)"

    def describe(self, params: Mapping[str, Any]) -> str:
        return f"Binarize every weight to ±{self.scale} |w| of its row (1 bit)."


def test_the_technique_is_named_from_yaml_with_its_options_checked_in_one_line(space):
    cfg = load_config(space)
    method = cfg.pipeline.quantize
    assert isinstance(method, SignBinarization) and method.scale == "mean" and method.recovery_steps == 0
    assert "Binarize every weight to ±mean |w| of its row (1 bit)." in cfg.pipeline.describe({"sparsity": 0.3})
    with pytest.raises(ConfigError) as bits:  # a strength it does not read is refused, not ignored
        load_config(space, overrides={"params.bits": {"choices": [4, 8]}})
    assert "`params.bits` is not used by quantize method sign_test (it keeps one bit a weight)" in str(bits.value)
    with pytest.raises(ConfigError, match="scale") as option:
        load_config(space, overrides={"pipeline": [{"quantize": {"method": "sign_test", "scale": "max"}}]})
    assert "\n" not in str(option.value)


def test_a_binarized_model_is_stored_at_one_bit_a_weight_and_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context=16, layers=2, width=32, heads=2)).eval()
    method, masks = SignBinarization(), {}
    quantized = method.quantize(model, method.spec({}), masks, None)
    assert quantized and all(isinstance(t, SignTensor) for t in quantized.values())
    for name, t in quantized.items():  # every quantized weight is now ±α per row
        w = dict(model.named_parameters())[name]
        assert torch.equal(w.abs(), t.scale[:, None].expand_as(w))
    size = export(model, tmp_path / "model.orc", quantized=quantized, entropy="none")
    x = torch.randint(20, (3, 16))
    reloaded, _ = load_artifact(tmp_path / "model.orc")
    assert torch.equal(reloaded(x)[0], model(x)[0])  # bit-exact
    binarized = sum(t.q.numel() for t in quantized.values())
    floats = sum(p.numel() for n, p in model.named_parameters() if n not in quantized)
    assert size < binarized / 8 + 4 * floats + 4 * sum(t.scale.numel() for t in quantized.values()) + 6000  # + manifest
    assert {e.get("encoding") for e in read_manifest(tmp_path / "model.orc")["tensors"]} >= {"sign_test", "float32"}


@pytest.mark.slow
def test_a_technique_registered_in_a_test_file_is_swept_end_to_end(ray_session, tmp_path, space):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = Sweep.from_yaml(space, trials=2, storage=str(tmp_path / "runs"), tracking_uri=uri,
                             **{"params.sparsity": {"choices": [0.0, 0.5]}}).run()
    t = result.trials
    assert (t["status"] == "COMPLETED").all(), t["error"].tolist()
    # one bit a weight, plus (these rows hold 16-32 weights) a float32 scale per row, biases, norms and masks
    assert (t["bits_per_weight"] < 8).all() and (t["compression_ratio"] > 8).all()
    trial = result.pareto.iloc[0]
    model = load_model(trial["artifact"])  # rebuilt from the artifact through the registered encoding
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):  # ±α per row, zero where pruned
            assert all(len(set(row[row != 0].abs().tolist())) <= 1 for row in module.weight)

    # MLflow loads the front model in a fresh process that never imported this file: the encoding travels with it
    script = textwrap.dedent(f"""
        import json, sys, mlflow, mlflow.pyfunc, numpy as np
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model({trial["model_uri"]!r})
        print(json.dumps(model.predict(np.array(json.loads(sys.argv[1]), dtype=np.int64)).tolist()))
    """)
    x = torch.randint(len(model.vocab), (2, 16))
    out = subprocess.run([sys.executable, "-c", script, json.dumps(x.tolist())], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_DISABLE_TELEMETRY": "true"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with torch.no_grad():
        assert json.loads(out.stdout.splitlines()[-1]) == model(x)[0].argmax(-1).tolist()
