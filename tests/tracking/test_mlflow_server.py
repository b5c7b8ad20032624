"""The smoke sweep against a real `mlflow server` (SQLite backend, artifacts served by the server, one
worker, 127.0.0.1) with `--register`; what a user then does with it: load a front model through
`mlflow.pyfunc`, compare two sweeps, open the MLflow UI in headless Chromium, and `orchestrator ui`."""

import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pytest
import torch
from mlflow.tracking import MlflowClient

import orchestrator
from orchestrator import cli
from orchestrator.tasks.char_lm import CharData
from tests.servers import MlflowServer, free_port, wait_for

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"
SHOTS = Path(__file__).parents[2] / "test-output" / "browser"  # screenshots a person can look at
ALIASES = ("recommended", "smallest", "fastest", "most-accurate")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_http(tmp_path_factory):
    """`mlflow server`: SQLite runs and registry, artifacts stored by the server in its own directory and
    served to clients over HTTP (no client writes them to its disk); a test may stop and restart it."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_http")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(mlflow_http):
    return mlflow_http.uri, mlflow_http.root


@pytest.fixture(scope="module")
def sweeps(ray_session, server, tmp_path_factory):
    """Two smoke sweeps through the CLI against the server, the first with --register (same storage: the
    second reuses the teacher). Returns (tracking URI, storage, [first parent run, second parent run])."""
    uri, _ = server
    storage = tmp_path_factory.mktemp("http_sweeps") / "runs"
    assert cli.main(["sweep", str(SMOKE), "--storage", str(storage), "--tracking-uri", uri, "--register", "smoke-front"]) == 0
    assert cli.main(["sweep", str(SMOKE), "--storage", str(storage), "--tracking-uri", uri, "--trials", "2",
                     "--set", "sampler_seed=1"]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke").experiment_id
    parents = client.search_runs([experiment], "tags.`orchestrator.role` = 'sweep'", order_by=["attributes.start_time ASC"])
    assert len(parents) == 2
    return uri, storage, parents


def _children(client, parent):
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return sorted(runs, key=lambda r: r.info.run_name)


def test_runs_are_named_described_and_tagged_and_artifacts_are_served(sweeps, server):
    uri, _, (first, second) = sweeps
    client = MlflowClient(uri)
    assert first.info.run_name == first.data.tags["sweep_id"] and first.info.status == "FINISHED"
    assert first.data.params["distill.steps"] == "20" and first.data.params["task.context"] == "32"  # dotted keys
    assert "3 trials of task char_lm" in first.data.tags["mlflow.note.content"]
    for name in ("orchestrator", "ray", "torch", "optuna", "mlflow"):
        assert first.data.tags[f"version.{name}"]
    assert first.data.tags["device"] == "cpu" and len(first.data.tags["data_hash"]) == 16
    assert first.data.metrics["tracking_ms_per_trial"] > 0 and first.data.metrics["tracking_failures"] == 0
    files = {a.path for a in client.list_artifacts(first.info.run_id)}
    assert {"pareto.csv", "pareto.html", "pareto.png", "trials.csv", "hypervolume.png"} <= files
    assert first.info.artifact_uri.startswith("mlflow-artifacts:/")  # stored and served by the server
    children = _children(client, first)
    assert [c.info.run_name for c in children] == ["trial-0001", "trial-0002", "trial-0003"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["sweep_id"] == first.info.run_name
        assert child.data.tags["mlflow.note.content"].startswith("Distil a 1-layer")
        assert {"accuracy", "test_accuracy", "size_mb", "latency_ms", "time_distill_s"} <= set(child.data.metrics)
        loss = client.get_metric_history(child.info.run_id, "distill_loss")
        assert len(loss) == 20 and sorted(m.step for m in loss) == list(range(1, 21))  # 20 steps, one point each
        assert 0 < child.data.metrics["accuracy"] < 1  # measured
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        if child.data.tags["pareto"] == "true":
            assert artifacts == {"model", "model.orc"} and child.data.tags["model_uri"] == f"runs:/{child.info.run_id}/model"
        else:
            assert artifacts == {"model.orc"} and "model_uri" not in child.data.tags
    assert [c.info.run_name for c in _children(client, second)] == ["trial-0001", "trial-0002"]


def test_a_front_model_loads_through_pyfunc_and_reproduces_its_test_accuracy(sweeps):
    uri, storage, (first, _) = sweeps
    client = MlflowClient(uri)
    data = CharData.load(next((storage / "data").glob("*/data.pt")))
    context, positions = 32, 4096  # smoke.yaml's task.context and task.eval_tokens
    windows = min((len(data.test) - 1) // context, math.ceil(positions / context))
    chunk = data.test[torch.arange(windows)[:, None] * context + torch.arange(context + 1)].long().numpy()
    front = [c for c in _children(client, first) if c.data.tags["pareto"] == "true"]
    assert front
    mlflow.set_tracking_uri(uri)
    try:
        for child in front:
            model = mlflow.pyfunc.load_model(child.data.tags["model_uri"])
            predicted = model.predict(chunk[:, :-1])
            accuracy = float((predicted == chunk[:, 1:]).mean())
            assert accuracy == pytest.approx(child.data.metrics["test_accuracy"], abs=1.5 / predicted.size), child.info.run_name
    finally:
        mlflow.set_tracking_uri(None)


def test_the_front_is_registered_with_its_aliases(sweeps):
    uri, _, (first, _) = sweeps
    client = MlflowClient(uri, registry_uri=uri)
    front = {c.info.run_id: c for c in _children(client, first) if c.data.tags["pareto"] == "true"}
    versions = client.search_model_versions("name = 'smoke-front'")
    assert {v.run_id for v in versions} == set(front)
    by_alias = {alias: client.get_model_version_by_alias("smoke-front", alias) for alias in ALIASES}
    smallest = min(front.values(), key=lambda c: c.data.metrics["size_mb"])
    fastest = min(front.values(), key=lambda c: c.data.metrics["latency_ms"])
    accurate = max(front.values(), key=lambda c: c.data.metrics["accuracy"])
    assert by_alias["smallest"].run_id == smallest.info.run_id
    assert by_alias["fastest"].run_id == fastest.info.run_id
    assert by_alias["most-accurate"].run_id == accurate.info.run_id
    assert front[by_alias["recommended"].run_id].data.tags["recommended"] == "true"
    for version in versions:
        child = front[version.run_id]
        assert float(version.tags["size_mb"]) == pytest.approx(child.data.metrics["size_mb"], rel=1e-5)
        assert float(version.tags["accuracy"]) == pytest.approx(child.data.metrics["accuracy"], rel=1e-5)
        assert version.tags["trial"] == child.info.run_name
    model = orchestrator.load_model("models:/smoke-front@smallest", tracking_uri=uri)
    assert model.vocab and sum(p.numel() for p in model.parameters()) > 0


def test_compare_puts_two_fronts_side_by_side_from_one_reference_point(sweeps, tmp_path, capsys):
    uri, _, parents = sweeps
    ids = [p.info.run_name for p in parents]
    table = orchestrator.compare(ids, tracking_uri=uri, plot=tmp_path / "fronts.png")
    assert list(table["sweep"].unique()) == ids and (tmp_path / "fronts.png").stat().st_size > 10_000
    for parent in parents:
        rows = table[table["sweep"] == parent.info.run_name]
        assert len(rows) == parent.data.metrics["front_size"]
        # the same teacher and config: the shared reference is each sweep's own, so each hypervolume is its own
        assert rows["hypervolume"].iloc[0] == pytest.approx(parent.data.metrics["hypervolume"])
    assert table.attrs["reference"]["size_mb"] == pytest.approx(parents[0].data.metrics["hypervolume_ref_size_mb"])
    assert cli.main(["compare", *ids, "--tracking-uri", uri, "--plot", str(tmp_path / "cli.png")]) == 0
    out = capsys.readouterr().out
    assert all(f"  {i}: " in out for i in ids) and "hypervolume" in out and (tmp_path / "cli.png").exists()
    assert cli.main(["compare", "no-such-sweep", "--tracking-uri", uri]) == 2
    assert "no sweep 'no-such-sweep'" in capsys.readouterr().err


def _chromium(*args, out=None):
    """Headless Chromium with the flags that let MLflow's single-page app render here (../shared/DESIGN.md)."""
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--virtual-time-budget=15000", "--window-size=1600,1000", *args],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def browser():
    if shutil.which("chromium") is None:
        if os.environ.get("ORCHESTRATOR_REQUIRE_BROWSER"):
            pytest.fail("chromium is missing (.ci/run installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    return _chromium


def test_the_mlflow_ui_shows_the_sweep_its_trials_and_their_figures(sweeps, browser):
    from orchestrator.tracking.ui import pages

    uri, _, (first, _) = sweeps
    client = MlflowClient(uri)
    children = _children(client, first)
    runs_page = pages(uri, first)["runs"]  # the sweep's own view of the runs table, as `orchestrator ui` prints it
    dom = browser("--dump-dom", runs_page)
    assert first.info.run_name in dom
    for child in children:
        assert child.info.run_name in dom
    for column in ("accuracy", "size_mb", "latency_ms", "test_accuracy"):
        assert f">{column}<" in dom, column  # a column header of the table
    browser(f"--screenshot={SHOTS / 'runs.png'}", runs_page)

    pair = '["%s","%s"]' % (children[0].info.run_id, children[1].info.run_id)
    compare = f"{uri}/#/compare-runs?runs={pair}&experiments=[\"{first.info.experiment_id}\"]"
    dom = browser("--dump-dom", compare)
    assert "Comparing 2 Runs" in dom and children[0].info.run_name in dom and children[1].info.run_name in dom
    browser(f"--screenshot={SHOTS / 'compare.png'}", compare)

    html = Path(client.download_artifacts(first.info.run_id, "pareto.html", str(SHOTS)))  # as served by the server
    dom = browser("--dump-dom", html.as_uri())
    assert "Pareto front over accuracy, size_mb, latency_ms" in dom and "plotly" in dom
    browser(f"--screenshot={SHOTS / 'pareto.png'}", html.as_uri())
    for name in ("runs.png", "compare.png", "pareto.png"):
        assert (SHOTS / name).stat().st_size > 20_000, name


def _listening_on(port):
    """The local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(address) == 8 else address)
    return found


def test_orchestrator_ui_serves_the_store_on_localhost_and_prints_the_last_sweep(tmp_path):
    from orchestrator.tracking.mlflow_store import MlflowTracker
    from orchestrator.tracking.sweep_runs import SweepRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "ui")
    runs = SweepRuns(tracker, "ui-sweep")
    parent = runs.start(params={}, tags={}, description="", metrics={})
    runs.end("FINISHED")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs?viewStateShareKey={parent}" in text
        assert f"runs/{parent}/artifacts/pareto.html" in text and "last sweep ui-sweep" in text
        wait_for(f"http://127.0.0.1:{port}/health", proc, 10)
        assert _listening_on(port) == {"127.0.0.1"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    with pytest.raises(OSError):  # the server went with it
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


OUTAGE_S = 30


def test_a_sweep_survives_its_tracking_server_down_for_30_s(mlflow_http, sweeps, tmp_path):
    """The server stops as trial 1 ends and comes back 30 s later: the sweep waits it out (the tracker
    retries each call every few seconds), and then every trial's run holds its params, metrics and files."""
    import threading
    import time

    from orchestrator import Sweep

    outage: dict[str, float] = {}
    restarted: list[BaseException | None] = []

    def restart() -> None:
        try:
            mlflow_http.start()
            outage["up"] = time.monotonic()
            restarted.append(None)
        except BaseException as e:  # reported by the test below
            restarted.append(e)

    def progress(p):
        if p.done == 1 and not outage:  # before trial 1's run is logged: that and everything after meet the outage
            mlflow_http.stop()
            outage["down"] = time.monotonic()
            threading.Timer(OUTAGE_S, restart).start()

    _, storage, _ = sweeps
    started = time.monotonic()
    result = Sweep.from_yaml(SMOKE, trials=2, storage=str(storage), tracking_uri=mlflow_http.uri, experiment="outage",
                             sampler_seed=7).run(progress=progress)
    assert restarted == [None] and outage["up"] - outage["down"] >= OUTAGE_S
    assert time.monotonic() - outage["up"] < 30  # the tracker's retries are seconds apart: it went on soon after
    assert time.monotonic() - started < 150
    client = MlflowClient(mlflow_http.uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["tracking_failures"] == 0
    assert {"pareto.csv", "pareto.html", "pareto.png", "trials.csv"} <= {a.path for a in client.list_artifacts(result.run_id)}
    runs = _children(client, parent)
    assert [r.info.run_name for r in runs] == ["trial-0001", "trial-0002"]
    for run, (_, row) in zip(runs, result.trials.sort_values("run_name").iterrows()):
        assert run.info.status == "FINISHED"
        assert run.data.params["width"] == str(row["width"]) and run.data.params["bits"] == str(row["bits"])
        for name in ("accuracy", "size_mb", "latency_ms", "test_accuracy"):
            assert math.isclose(run.data.metrics[name], row[name], rel_tol=1e-9), name
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert files == ({"model", "model.orc"} if row["pareto"] else {"model.orc"})
