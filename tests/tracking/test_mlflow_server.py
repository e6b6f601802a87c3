"""A real sweep, through the real CLI, tracked on a real `mlflow server` backed by a real PostgreSQL.

The server (tests/tracking/server.py) is this module's own: its own temporary folder, free ports, stopped at the
end. PostgreSQL missing is a failure, not a skip: CI machines have it. Everything stays under BUDGET_S.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow.artifacts
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from musicssl.tracking.loadbench import run_load

try:  # tests/ may become a package later
    from .server import MlflowServer, ServerError, mlflow_on_postgres
except ImportError:
    from server import MlflowServer, ServerError, mlflow_on_postgres

pytestmark = pytest.mark.slow

BUDGET_S = 240  # the sweep itself (about 110 s on 2 busy cores); the server takes ~15 s more to start and stop
STEPS = 30
SWEEP = f"""\
# Run: musicssl sweep onserver.yaml
name: onserver
tracking: {{uri: URI}}
base:
  model: {{preset: tiny}}
  data:
    max_sample_size: 16000
    min_sample_size: 8000
    max_tokens: 64000
    synthetic: {{num_pieces: 8, piece_seconds: 2.0, probe_clips: 48, clip_seconds: 1.0}}
  pretrain: {{max_steps: {STEPS}, checkpoint_every: {STEPS}, log_every: 10, device: cpu}}
  probe: {{tasks: [synth_pitch], window_seconds: 1.0, standardize: true, max_epochs: 5}}
grid:
  model.mask_prob: [0.5, 0.8]
"""


@pytest.fixture(scope="module")
def server() -> Iterator[MlflowServer]:
    try:
        with mlflow_on_postgres() as s:
            yield s
    except ServerError as e:
        pytest.fail(f"could not run PostgreSQL + mlflow server (needed, not optional): {e}")


def _kill_under(folder: str) -> None:
    """SIGKILL the processes whose command line names `folder` (this test's Ray daemons), one pid at a time."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if folder in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry), signal.SIGKILL)


@pytest.fixture(scope="module")
def sweep(server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("onserver")
    (root / "onserver.yaml").write_text(SWEEP.replace("URI", server.url))
    state = root / "state"
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "MUSICSSL_HOME"))}
    env |= {"RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "musicssl", "sweep", str(root / "onserver.yaml"), "--state-dir", str(state),
           "--report", str(root / "onserver.html"), "--num-cpus", "2"]
    t0 = time.monotonic()
    with open(root / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
        try:
            proc.wait(timeout=BUDGET_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep took over {BUDGET_S} s:\n" + (root / "sweep.log").read_text()[-4000:])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _kill_under(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    output = (root / "sweep.log").read_text()
    assert proc.returncode == 0, output[-4000:]
    return {"root": root, "state": state, "output": output, "seconds": time.monotonic() - t0}


def test_sweep_run_tree_on_the_server(server: MlflowServer, sweep: dict) -> None:
    client = MlflowClient(server.url)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    runs = [r for r in runs if r.data.tags.get("musicssl.kind") != "loadbench"]
    parents = [r for r in runs if r.data.tags.get("musicssl.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("musicssl.kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2, sorted(r.data.tags.get("musicssl.kind", "") for r in runs)
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert f"MLflow {server.url}" in sweep["output"] and parent.info.run_id in sweep["output"]
    assert sorted(t.data.params["model.mask_prob"] for t in trials) == ["0.5", "0.8"]
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.info.status == "FINISHED"
        assert t.data.params["pretrain.max_steps"] == str(STEPS)  # params flattened to dotted keys
        loss = client.get_metric_history(t.info.run_id, "pretrain/loss")
        assert sorted(m.step for m in loss) == list(range(10, STEPS + 1, 10)), "one point per logged step"
        assert all(m.value > 0 for m in loss)
        assert 0.0 <= t.data.metrics["probe/synth_pitch/acc"] <= 1.0
        assert [m.step for m in client.get_metric_history(t.info.run_id, "probe/synth_pitch/score")] == [STEPS]
    probes = [r for r in runs if r.data.tags.get("musicssl.kind") == "probe"]  # one probe job per trial
    assert sorted((r.data.tags["mlflow.parentRunId"], r.data.tags["musicssl.task"], r.data.tags["musicssl.step"])
                  for r in probes) == sorted((t.info.run_id, "synth_pitch", str(STEPS)) for t in trials)
    assert all(r.info.status == "FINISHED" and "test/acc" in r.data.metrics for r in probes)


def test_report_is_an_artifact_served_by_the_server(server: MlflowServer, sweep: dict, tmp_path: Path) -> None:
    client = MlflowClient(server.url)
    (parent,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   filter_string="tags.`musicssl.kind` = 'sweep'")
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/"), "artifacts go through the server"
    assert "onserver.html" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    got = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="onserver.html",
                                              dst_path=str(tmp_path), tracking_uri=server.url)
    html = Path(got).read_text()
    assert html == (sweep["root"] / "onserver.html").read_text() and "<html" in html.lower()
    stored = list(server.artifacts.rglob(f"{parent.info.run_id}/artifacts/onserver.html"))
    assert len(stored) == 1 and stored[0].read_text() == html  # proxied to --artifacts-destination


def test_rows_live_in_postgres_not_in_a_local_sqlite(server: MlflowServer, sweep: dict) -> None:
    with contextlib.closing(psycopg2.connect(server.postgres.dsn)) as con, con.cursor() as cur:
        cur.execute("SELECT run_uuid FROM runs r JOIN tags t USING (run_uuid) "
                    "WHERE t.key = 'musicssl.kind' AND t.value IN ('sweep', 'trial')")
        pg_runs = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT count(*) FROM metrics WHERE key = 'pretrain/loss'")
        (loss_points,) = cur.fetchone()
    client = MlflowClient(server.url)
    api_runs = {r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                if r.data.tags.get("musicssl.kind") in ("sweep", "trial")}
    assert pg_runs == api_runs and len(pg_runs) == 3
    assert loss_points == 2 * STEPS // 10
    state = sweep["state"]
    assert not (state / "mlflow.db").exists()
    assert [p for p in state.rglob("*") if p.suffix == ".db" or p.name == "mlruns"] == []
    assert not (sweep["root"] / "mlflow.db").exists() and not (sweep["root"] / "mlruns").exists()


def test_loadbench_against_the_server_loses_nothing(server: MlflowServer) -> None:
    result = run_load(server.url, procs=3, rate=5, seconds=3, keys=2, experiment="loadbench-test")
    assert (result.errors, result.error_samples) == (0, [])
    assert result.attempted == result.logged == result.read_back == 3 * 15 * 2
    assert (result.lost, result.extra) == (0, 0)
