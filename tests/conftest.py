"""One Ray instance for the whole test session (started only if a test asks for it)."""

from __future__ import annotations

import os

import pytest

# MLflow 3's usage telemetry costs every process that uses MLflow ~5 s of imports on these machines (and
# would report test runs): off for this process and every process the tests start
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in test logs


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from orchestrator.engine.cluster import RAY_ENV, loopback_only

    os.environ.update(RAY_ENV)
    # 3 logical CPUs on a 2-core machine: room for two 1-CPU trials (or one 2-CPU one) beside the sweep's
    # measurement service, as `resources.local_cpus: 3` gives a sweep; on the loopback only, as a sweep's own Ray
    with loopback_only(True):
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": RAY_ENV})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1 with a bucket `sweeps`; yields a storage URI template
    that reaches it (`s3://sweeps/{}?endpoint_override=...&scheme=http`, `{}` for the prefix). Credentials
    are set for this process and the processes it starts (Ray's workers inherit them)."""
    from tests.servers import start_s3, stop

    proc, uri = start_s3("sweeps")
    try:
        yield uri
    finally:
        stop(proc)


@pytest.fixture
def mlflow_server(tmp_path_factory, s3_server):
    """A real `mlflow server` on a free port: runs in SQLite, artifacts proxied to the S3 server's bucket
    (`mlflow/`), so no client writes an artifact to its own disk. Yields its URL; stopped afterwards."""
    import subprocess

    from tests.servers import executable, free_port, stop, wait_for

    port, root = free_port(), tmp_path_factory.mktemp("mlflow_server")
    endpoint = s3_server.split("endpoint_override=")[1].split("&")[0]
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": f"http://{endpoint}", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [executable("mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         "s3://sweeps/mlflow", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc, 60, root / "server.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama (GQA: 4 heads, 2 key-value heads; widths multiples of 32, as GGUF's blocks need) and a
    byte-level BPE tokenizer trained on KJV, saved as a Hugging Face directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from orchestrator.tasks.corpora import builtin_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([builtin_text("kjv")[:60_000]], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
