import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from orchestrator.core.measure import count_params, measure_latency
from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.techniques.magnitude import GradualPruning, MagnitudePruning, cubic_sparsity, global_magnitude_masks
from orchestrator.techniques.nm import SemiStructuredPruning, nm_mask
from orchestrator.techniques.structured import StructuredPruning
from orchestrator.techniques.weights import measured_sparsity, prunable_weights


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{"vocab_size": 13, "context": 8, "layers": 2, "width": 16, "heads": 2, **kw}))


def _torch_masks(model):
    return {f"{n}.weight": m.weight_mask.bool() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_global_masks_match_torch_global_unstructured(sparsity):
    ours, ref = _model(), _model()
    masks = MagnitudePruning().prune(ours, sparsity).masks
    params = [(m, "weight") for m in ref.modules() if isinstance(m, nn.Linear)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    ref_masks = _torch_masks(ref)
    assert masks.keys() == ref_masks.keys()
    for name in masks:
        assert torch.equal(masks[name], ref_masks[name]), name


@pytest.mark.parametrize("sparsity", [0.3, 0.8])
def test_layer_masks_match_torch_l1_unstructured(sparsity):
    ours, ref = _model(), _model()
    masks = MagnitudePruning(scope="layer").prune(ours, sparsity).masks
    for m in ref.modules():
        if isinstance(m, nn.Linear):
            torch_prune.l1_unstructured(m, "weight", amount=sparsity)
    for name, mask in _torch_masks(ref).items():
        assert torch.equal(masks[name], mask), name


@pytest.mark.parametrize("sparsity", [0.25, 0.6])
def test_masks_match_a_sort_based_threshold(sparsity):
    weights = {k: v.detach().clone() for k, v in prunable_weights(_model(3)).items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()]).sort().values
    n = round(sparsity * len(flat))
    threshold = flat[n - 1]  # the largest pruned magnitude (no ties in random floats)
    masks = global_magnitude_masks(weights, sparsity)
    for name, w in weights.items():
        assert torch.equal(masks[name], w.abs() > threshold)
    assert sum(int((~m).sum()) for m in masks.values()) == n


def test_prune_zeroes_exactly_the_masked_weights_and_leaves_embeddings():
    model = _model()
    emb = model.tok.weight.detach().clone()
    masks = MagnitudePruning().prune(model, 0.5).masks
    for name, w in prunable_weights(model).items():
        assert torch.all(w[~masks[name]] == 0)
        assert torch.all(w[masks[name]] != 0)
    assert torch.equal(model.tok.weight, emb)
    assert measured_sparsity(model) == pytest.approx(0.5, abs=1e-3)


def test_zero_sparsity_prunes_nothing():
    assert MagnitudePruning().prune(_model(), 0.0).masks == {}


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_every_n_m_group_keeps_exactly_n_largest(n, m):
    model = _model()
    masks = SemiStructuredPruning(n=n, m=m).prune(model, 0.0).masks
    for name, w in prunable_weights(model).items():
        groups = w.reshape(w.shape[0], -1, m)
        assert torch.all((groups == 0).sum(-1) == m - n), name  # exactly m - n zeros in every group
        kept = masks[name].reshape(groups.shape)
        smallest_kept = torch.where(kept, groups.abs(), torch.inf).amin(-1)
        largest_pruned = torch.where(kept, -torch.inf, _model().state_dict()[name].reshape(groups.shape).abs()).amax(-1)
        assert torch.all(smallest_kept >= largest_pruned)
    assert measured_sparsity(model) == pytest.approx(1 - n / m)


def test_n_m_leaves_a_ragged_tail_dense():
    mask = nm_mask(torch.randn(3, 10), 2, 4)
    assert mask[:, 8:].all() and (mask[:, :8].sum(1) == 4).all()


@pytest.mark.parametrize("target", ["mlp", "heads", "both"])
def test_structured_pruning_equals_the_model_with_those_units_zeroed(target):
    torch.manual_seed(0)
    model = _model(heads=4).eval()
    x = torch.randint(13, (2, 8))
    small = StructuredPruning(target=target).prune(_model(heads=4).eval(), 0.5).model
    assert small.cfg.mlp == (32 if target != "heads" else 64)
    assert small.cfg.heads == (2 if target != "mlp" else 4)
    assert count_params(small)[0] < count_params(model)[0]
    # independent reference: zero the removed neurons' / heads' weights in the full model
    ref = _model(heads=4).eval()
    with torch.no_grad():
        for big, cut in zip(ref.blocks, small.blocks):
            kept = [int(i) for i in range(64) if any(torch.equal(big.fc.weight[i], r) for r in cut.fc.weight)]
            dropped = sorted(set(range(64)) - set(kept))
            big.fc.weight[dropped] = 0
            big.fc.bias[dropped] = 0
            d = 4
            q_rows = big.attn.qkv.weight[:16].reshape(4, d, 16)
            kept_heads = [h for h in range(4) if any(torch.equal(q_rows[h], cut.attn.qkv.weight[:cut.attn.heads * d].reshape(-1, d, 16)[k])
                                                     for k in range(cut.attn.heads))]
            for h in sorted(set(range(4)) - set(kept_heads)):  # a head with zero q, k, v adds nothing through proj
                big.attn.proj.weight[:, h * d:(h + 1) * d] = 0
        assert torch.allclose(ref(x)[0], small(x)[0], atol=1e-5)


def test_structured_pruning_keeps_the_highest_norm_neurons():
    model = _model()
    norms = torch.linalg.vector_norm(torch.cat([model.blocks[0].fc.weight, model.blocks[0].fc.bias[:, None],
                                                model.blocks[0].fc_out.weight.T], 1), dim=1)
    small = StructuredPruning().prune(model, 0.75).model
    expected = model.blocks[0].fc.weight[norms.topk(16).indices.sort().values]
    assert torch.equal(small.blocks[0].fc.weight, expected)


def test_structured_pruning_lowers_measured_latency():
    torch.manual_seed(0)
    big = GPT(GPTConfig(vocab_size=60, context=64, layers=2, width=256, heads=4)).eval()
    small = StructuredPruning(target="both").prune(GPT(big.cfg).eval(), 0.75).model
    x = torch.randint(60, (1, 64))
    lat = measure_latency(small, x, threads=1, warmup=5, repeats=30, reference=big)
    assert lat.p50_ms < lat.reference_p50_ms


def test_cubic_schedule():
    s = [cubic_sparsity(t, final=0.8, begin=10, end=110) for t in range(0, 130)]
    assert s[:11] == [0.0] * 11 and s[110:] == [0.8] * 20
    assert all(a <= b for a, b in zip(s, s[1:]))  # monotone
    assert s[60] == pytest.approx(0.8 * (1 - 0.5**3))  # halfway: 7/8 of the way there
    assert s[20] - s[10] > s[100] - s[90]  # fast first, slow at the end


def test_gradual_pruner_reaches_its_end_sparsity_and_holds_it():
    model = _model()
    pruner = MagnitudePruning(schedule="gradual", start=0.2, end=0.6, every=7).distill_hook({"sparsity": 0.7})
    assert isinstance(pruner, GradualPruning)
    pruner.start(model, steps=100, init={})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for step in range(1, 101):
        model(torch.randint(13, (2, 8)))[0].pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step(model, step)
        seen.append(measured_sparsity(model))
    assert seen[18] == 0.0 and seen[30] > 0
    assert seen[59] == pytest.approx(0.7, abs=1e-3) and seen[-1] == pytest.approx(0.7, abs=1e-3)


def test_the_output_layer_can_be_left_dense():
    model = _model()
    masks = MagnitudePruning(lm_head=False).prune(model, 0.5).masks
    assert masks and "head.weight" not in masks and bool((model.head.weight != 0).all())
    assert "head.weight" in MagnitudePruning().prune(_model(), 0.5).masks
    assert "head.weight" not in SemiStructuredPruning(lm_head=False).prune(_model(), 0.0).masks
