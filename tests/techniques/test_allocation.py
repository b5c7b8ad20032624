"""Mixed precision (`core/allocation.py`, `techniques/allocation.py`): the allocation is optimal against brute force,
the budget holds on the artifact's measured bits, a mixed model reloads bit-exactly through every method and its
recovery, the sensitivity cache key moves with exactly what changes it, and GPTQ calibrates each block on the
inputs the model's own forward gives it."""

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator.core.allocation import Infeasible, allocate
from orchestrator.engine.compress import compress
from orchestrator.io.artifact import effective_bits, load_artifact, read_manifest
from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.techniques.allocation import allocate_widths, sensitivity_key, sensitivity_table, stored_bits
from orchestrator.techniques.codebook import CodebookQuantization
from orchestrator.techniques.gptq import GPTQQuantization, gptq_quantize_
from orchestrator.techniques.magnitude import MagnitudePruning
from orchestrator.techniques.pipeline import Pipeline
from orchestrator.techniques.quantize import Calibration, QuantSpec
from orchestrator.techniques.rounding import AffineQuantization, SymmetricQuantization
from orchestrator.techniques.weights import quantizable_weights


def _brute(scores, costs, budget):
    best = None
    for combo in itertools.product(range(scores.shape[1]), repeat=scores.shape[0]):
        rows = np.arange(scores.shape[0])
        if costs[rows, list(combo)].sum() <= budget:
            s = scores[rows, list(combo)].sum()
            best = s if best is None or s < best else best
    return best


def test_the_allocation_is_optimal_against_every_assignment():
    rng = np.random.default_rng(0)
    for _ in range(150):
        T, C = rng.integers(1, 6), rng.integers(1, 5)
        widths = np.sort(rng.choice(np.arange(2, 17), C, replace=False))
        sizes = rng.integers(1, 3000, size=T)
        costs = sizes[:, None] * widths[None, :] + rng.integers(0, 64, size=(T, 1))  # levels plus scales
        scores = np.sort(rng.random((T, C)) * rng.random((T, 1)) * 10, axis=1)[:, ::-1].copy()
        budget = int(rng.integers(costs.min(1).sum(), costs.max(1).sum() + 1))
        choice = allocate(scores, costs, budget)
        rows = np.arange(T)
        assert costs[rows, choice].sum() <= budget
        assert scores[rows, choice].sum() == pytest.approx(_brute(scores, costs, budget), rel=1e-9, abs=1e-12)


def test_an_allocation_below_the_cheapest_is_infeasible():
    with pytest.raises(Infeasible):
        allocate(np.ones((2, 2)), np.array([[2, 4], [2, 4]]), budget=3)


def _gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=48, context=32, layers=2, width=64, heads=2)).eval()


def _calibration(tables=None):
    g = torch.Generator().manual_seed(1)
    store = {}

    def cached(parts, build):
        return build()

    def table_cache(parts, build):
        key = repr(parts)
        if key not in store:
            store[key] = build()
        return store[key]

    return Calibration(inputs=lambda n: torch.randint(0, 48, (n, 32), generator=g), cached=cached,
                       tables=table_cache if tables is None else tables), store


METHODS = {
    "affine": AffineQuantization(granularity="group", allocation="sensitivity", candidate_bits=(2, 3, 4, 8, 16)),
    "symmetric-kl": SymmetricQuantization(granularity="channel", allocation="sensitivity", sensitivity="kl",
                                          candidate_bits=(2, 4, 8), sensitivity_windows=4),
    "gptq": GPTQQuantization(granularity="group", allocation="sensitivity", candidate_bits=(2, 3, 4, 8), calibration_windows=8),
    "codebook": CodebookQuantization(granularity="channel", allocation="sensitivity", embeddings=False, iterations=4,
                                     candidate_bits=(2, 4, 16)),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_a_mixed_model_meets_its_budget_on_the_artifact_and_reloads_bit_exactly(name, tmp_path):
    method = METHODS[name]
    model = _gpt()
    calibration, _ = _calibration()
    params = {"sparsity": 0.3, "effective_bits": 3.5, "group_size": 32}
    c = compress(model, Pipeline(prune=MagnitudePruning(), quantize=method), params, artifact=tmp_path / "m.orc", meta={},
                 calibration=calibration)
    widths = dict(c.allocation.widths)
    assert len(set(widths.values())) > 1  # mixed: the budget sits between the candidates
    assert set(widths) == set(quantizable_weights(_gpt(), embeddings=method.embeddings))
    assert c.effective_bits <= 3.5 + 1e-9
    costed = sum(r[2] for r in c.allocation.rows) / sum(w.numel() for w in quantizable_weights(_gpt(), embeddings=method.embeddings).values())
    assert c.effective_bits == pytest.approx(costed)  # the costs the allocation used are what the artifact stores
    for tensor, bits in widths.items():
        if bits <= 8:
            assert c.quantized[tensor].bits == bits
    manifest = read_manifest(tmp_path / "m.orc")
    assert [row[:2] for row in manifest["allocation"]["data"]] == [list(w) for w in c.allocation.widths]
    entries = {e["name"]: e for e in manifest["tensors"]}
    for tensor, bits in widths.items():
        stored = entries[tensor].get("encoding")
        assert stored == {16: "float16", 32: "float32"}.get(bits, stored)
    reloaded, _ = load_artifact(tmp_path / "m.orc")
    x = torch.randint(0, 48, (2, 32))
    with torch.no_grad():
        assert torch.equal(reloaded(x)[0], c.model(x)[0])


def test_recovery_steps_train_every_tensor_at_its_own_width(tmp_path):
    """QAT recovery keeps each tensor's allocated grid: the tuned model is requantized onto the same widths."""
    method = dataclasses.replace(METHODS["affine"], recovery_steps=3)
    calibration, _ = _calibration()
    seen = {}

    def tune(model, spec, masks, quantized):
        from orchestrator.techniques.quantize import add_fake_quant, remove_fake_quant
        parts = add_fake_quant(model, spec)
        seen["widths"] = sorted({p.spec.bits for p in parts})
        remove_fake_quant(model)
        return model

    c = compress(_gpt(), Pipeline(prune=None, quantize=method), {"effective_bits": 3.5, "group_size": 32},
                 artifact=tmp_path / "m.orc", meta={}, calibration=calibration, tune=tune)
    integer = sorted({b for b in dict(c.allocation.widths).values() if b <= 8})
    assert seen["widths"] == integer
    assert {t: q.bits for t, q in c.quantized.items()} == {t: b for t, b in c.allocation.widths if b <= 8}


def test_a_uniform_model_reports_its_effective_bits_too(tmp_path):
    c = compress(_gpt(), Pipeline(prune=None, quantize=AffineQuantization(granularity="group")), {"bits": 4, "group_size": 32},
                 artifact=tmp_path / "m.orc", meta={})
    assert c.allocation is None
    # 4-bit levels, a float16 scale and a 4-bit zero point per group of 32
    assert c.effective_bits == pytest.approx(4 + (16 + 4) / 32)
    assert effective_bits(tmp_path / "m.orc", list(c.quantized)) == c.effective_bits


def test_a_budget_below_the_narrowest_width_is_one_clear_error(tmp_path):
    calibration, _ = _calibration()
    with pytest.raises(ValueError, match=r"`params.effective_bits` 2 is below .* \(2\.5\d\d bits per weight"):
        compress(_gpt(), Pipeline(prune=None, quantize=METHODS["affine"]), {"effective_bits": 2.0, "group_size": 32},
                 artifact=tmp_path / "m.orc", meta={}, calibration=calibration)
    assert not (tmp_path / "m.orc").exists()


def test_sensitivities_rank_the_tensors_the_outputs_depend_on():
    """Both data estimates agree on which tensor matters most, and every estimate grows as the width shrinks."""
    model = _gpt()
    inputs = torch.randint(0, 48, (8, 32), generator=torch.Generator().manual_seed(3))
    spec = QuantSpec(METHODS["affine"], 32, 32, budget=4.0)
    fisher = sensitivity_table(model, spec, {}, "fisher", inputs)
    kl = sensitivity_table(model, spec, {}, "kl", inputs)
    mse = sensitivity_table(model, spec, {}, "mse", None)
    for table in (fisher, kl, mse):
        assert (np.diff(table["scores"], axis=1) <= 1e-12).all()  # wider is never worse
        assert (table["scores"][:, -1] < table["scores"][:, 0]).all()
    # the Fisher estimate is the second-order form of the measured KL: same order of magnitude at 2 bits
    ratio = fisher["scores"][:, 0].sum() / kl["scores"][:, 0].sum()
    assert 0.5 < ratio < 2
    assert np.corrcoef(fisher["scores"][:, 0], kl["scores"][:, 0])[0, 1] > 0.95
    # costs are measured from the encoding: 2-bit levels plus a float16 scale and 2-bit zero point per group of 32
    first = next(iter(quantizable_weights(model).values()))
    assert fisher["costs"][0, 0] == first.numel() * 2 + (first.numel() // 32) * (16 + 2)
    assert fisher["costs"][0, -1] == first.numel() * 16


def test_the_sensitivity_cache_is_keyed_by_exactly_what_changes_it():
    model, method = _gpt(), METHODS["affine"]
    spec = QuantSpec(method, 32, 32, budget=4.0)
    base = sensitivity_key(model, spec, {})
    same = [
        QuantSpec(method, 32, 32, budget=3.0),  # the budget
        QuantSpec(dataclasses.replace(method, recovery_steps=50), 32, 32, budget=4.0),
        QuantSpec(dataclasses.replace(method, kernel="dequantized"), 32, 32, budget=4.0),
    ]
    for other in same:
        assert sensitivity_key(model, other, {}) == base
    gptq = GPTQQuantization(granularity="group", allocation="sensitivity", candidate_bits=(2, 3, 4, 8, 16), damping=0.05)
    assert sensitivity_key(model, QuantSpec(gptq, 32, 32, budget=4.0), {}) == base  # rounds one tensor as affine does
    changed = [
        (model, QuantSpec(method, 32, 64, budget=4.0), {}),  # the group size
        (model, QuantSpec(dataclasses.replace(method, candidate_bits=(2, 4, 8)), 32, 32, budget=4.0), {}),
        (model, QuantSpec(dataclasses.replace(method, sensitivity="kl"), 32, 32, budget=4.0), {}),
        (model, QuantSpec(dataclasses.replace(method, sensitivity_windows=8), 32, 32, budget=4.0), {}),
        (model, QuantSpec(dataclasses.replace(method, embeddings=False), 32, 32, budget=4.0), {}),
        (model, QuantSpec(SymmetricQuantization(granularity="group", allocation="sensitivity", candidate_bits=(2, 3, 4, 8, 16)),
                          32, 32, budget=4.0), {}),
        (_gpt(seed=1), spec, {}),  # the weights
        (model, spec, {"blocks.0.attn.c_attn.weight": torch.ones(192, 64, dtype=torch.bool)}),  # the masks
    ]
    keys = [sensitivity_key(m, s, masks) for m, s, masks in changed]
    assert base not in keys and len(set(map(repr, keys))) == len(keys)


def test_every_budget_a_sweep_tries_on_one_model_reuses_its_sensitivities(tmp_path):
    calibration, store = _calibration()
    model = _gpt()
    pipeline = Pipeline(prune=None, quantize=METHODS["affine"])
    sizes = []
    for i, budget in enumerate((2.8, 3.5, 5.0)):
        c = compress(copy.deepcopy(model), pipeline, {"effective_bits": budget, "group_size": 32}, artifact=tmp_path / f"{i}.orc",
                     meta={}, calibration=calibration)
        sizes.append(c.size_bytes)
        assert c.effective_bits <= budget
    assert len(store) == 1 and sizes == sorted(sizes)


def test_an_untrained_model_is_allocated_by_its_rounding_error_alone(tmp_path):
    """Measured before training (no calibration), the widths come from the data-free estimate, within the budget."""
    c = compress(_gpt(), Pipeline(prune=None, quantize=METHODS["affine"]), {"effective_bits": 3.5, "group_size": 32},
                 artifact=tmp_path / "m.orc", meta={})
    assert c.allocation.estimate == "mse" and c.effective_bits <= 3.5


def test_the_stored_bits_of_an_encoding_count_every_weight():
    qt = AffineQuantization(granularity="channel").quantize_tensor(torch.randn(8, 30), QuantSpec(AffineQuantization(), 3, 32))
    assert stored_bits(qt) == 8 * 30 * 3 + 8 * 16 + 8 * 3  # 90 bytes of levels, 8 float16 scales, 8 3-bit zero points (3 bytes)


class _Blocks(nn.Module):
    """A user's model: blocks in a ModuleList, the activation applied in `forward()`, between them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16)) for _ in range(3))
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        x = self.inp(x)
        for layer in self.layers:
            x = torch.relu(layer(x)) * 3 - 1  # what the next block receives: >= -1
        return self.out(x)


def test_gptq_calibrates_each_block_on_the_inputs_the_forward_gives_it():
    model = _Blocks()
    seen = []
    handle = model.layers[1][0].register_forward_hook(lambda m, args, out: seen.append(float(args[0].min())))
    batches = [torch.randn(32, 8) * 4 for _ in range(2)]
    gptq_quantize_(model, QuantSpec(GPTQQuantization(granularity="channel"), 4, 32), batches)
    handle.remove()
    assert seen and min(seen) >= -1.0  # post-activation, as in use; the block's raw output went below -1
