"""`ray job submit` of a smoke sweep to a real local `ray start --head` cluster with token authentication.

The cluster is this test's own: its own temporary folder (a short path under /tmp, for Ray's unix sockets), free
ports, 2 CPUs, and the venv's bin first on PATH (the job's driver inherits the raylet's environment, so that is how
it finds the `musicssl` console script). Its processes are stopped one by one at the end (those of its process
group, or whose command line or working directory lies in its temporary folder, and their descendants: see
raycluster.py), never with `ray stop`, which would stop every Ray instance on the machine. Every step has a
subprocess timeout within one overall budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow.artifacts
import pytest
from mlflow.tracking import MlflowClient
from raycluster import free_ports, http_status, ray_start, stop_cluster, tail

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and `musicssl`
BUDGET_S = 450  # everything, teardown included, stays under 8 minutes
TEARDOWN_S = 25
SUBMIT_ARGS = ["musicssl", "sweep", "sweeps/demo.yaml", "--smoke", "seeds=[0]", "variants.prob80=null",
               "base.pretrain.max_steps=30", "probe.every_steps=15", "probe.tasks=[synth_pitch,synth_key]"]
PROBE_STEPS = [15, 30]
TASKS = {"synth_pitch", "synth_key"}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    ray_exe = BIN / "ray"
    if not ray_exe.exists() or not (BIN / "musicssl").exists():
        pytest.skip(f"needs the venv's `ray` and `musicssl` scripts in {BIN}")
    t_all = time.monotonic()
    deadline = t_all + BUDGET_S - TEARDOWN_S

    def left(limit: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining < 5:
            pytest.fail(f"out of the {BUDGET_S} s budget")
        return min(limit, remaining)

    logs = tmp_path_factory.mktemp("ray-job-logs")
    state = tmp_path_factory.mktemp("ray-job-state")
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay short
    gcs_port, dash_port, client_port, agent_port = free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0"}

    # the token: ~/.ray/auth_token (created if missing); both the head and the `ray job submit` client read it
    token = subprocess.run([str(ray_exe), "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                           timeout=left(60))
    assert token.returncode == 0 and token.stdout.strip(), f"ray get-auth-token failed: {token.stderr[-2000:]}"
    token = token.stdout.strip()

    start_cmd = [str(ray_exe), "start", "--head", "--temp-dir", temp_dir, "--num-cpus", "2",
                 "--port", str(gcs_port), "--dashboard-port", str(dash_port), "--dashboard-host", "127.0.0.1",
                 "--include-dashboard", "true", "--ray-client-server-port", str(client_port),
                 "--dashboard-agent-listen-port", str(agent_port), "--disable-usage-stats"]
    submit_cmd = [str(ray_exe), "job", "submit", "--address", f"http://127.0.0.1:{dash_port}",
                  "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"env_vars": {
                      "MUSICSSL_HOME": str(state), "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}"}}),
                  "--", *SUBMIT_ARGS]
    out: dict = {"state": state, "temp_dir": temp_dir, "uri": f"sqlite:///{state / 'mlflow.db'}",
                 "start_cmd": start_cmd, "submit_cmd": submit_cmd, "times": {}}
    pgid = -1
    try:
        # the head: its own session (process group), output to a file (daemons must not hold a pipe open)
        t0 = time.monotonic()
        pgid, rc = ray_start(start_cmd, env, logs / "start.log", temp_dir, left(120))
        if rc == -1:
            pytest.fail(f"`ray start` still running after its timeout:\n{tail(logs / 'start.log')}")
        out["times"]["ray start"] = time.monotonic() - t0
        assert rc == 0, f"`ray start` exited {rc}:\n{tail(logs / 'start.log')}"

        # the dashboard answers, and only with the token
        url = f"http://127.0.0.1:{dash_port}/api/jobs/"
        until = time.monotonic() + left(60)
        while (status := http_status(url, token)) != 200 and time.monotonic() < until:
            time.sleep(1)
        out["times"]["ray start + dashboard answering"] = time.monotonic() - t0
        out["status_with_token"], out["status_without_token"] = status, http_status(url)

        t0 = time.monotonic()
        with open(logs / "submit.log", "w") as f:
            try:
                rc = subprocess.run(submit_cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                    timeout=left(330)).returncode
            except subprocess.TimeoutExpired:
                pytest.fail(f"`ray job submit` still running after its timeout:\n{tail(logs / 'submit.log')}")
        out["times"]["ray job submit"] = time.monotonic() - t0
        out["submit_rc"], out["submit_output"] = rc, (logs / "submit.log").read_text(errors="replace")
        # reports written inside Ray's temporary folder (its copy of the working directory) would be lost with it
        out["reports_in_ray_temp"] = [str(p) for p in Path(temp_dir).rglob("*.html")]
        yield out
    finally:
        if pgid > 0:
            t0 = time.monotonic()
            left_alive = stop_cluster(pgid, temp_dir, grace_s=8, timeout_s=TEARDOWN_S - 3)
            out["times"]["teardown"] = time.monotonic() - t0
        shutil.rmtree(temp_dir, ignore_errors=True)
        out["times"]["whole fixture"] = time.monotonic() - t_all
        print("\n[ray job test] " + ", ".join(f"{k} {v:.1f} s" for k, v in out["times"].items()))
        if pgid > 0 and sys.exc_info()[0] is None:  # never mask the error that ended the setup
            assert not left_alive, f"cluster processes still alive after teardown: {left_alive}"


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def test_token_auth_is_enforced(job: dict) -> None:
    assert job["status_with_token"] == 200
    assert job["status_without_token"] == 401


def test_submit_succeeds_and_prints_the_summary(job: dict) -> None:
    text = job["submit_output"]
    assert job["submit_rc"] == 0, text[-6000:]
    assert re.search(r"sweep 'demo-smoke': 2/2 trials finished in [\d.]+ min", text), text[-6000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", text)
    assert "FAILED" not in text.split("trials finished", 1)[1].split("MLflow store", 1)[0]
    assert f"dashboard    : {job['state'] / 'dashboards' / 'demo-smoke.html'}" in text


def test_mlflow_parent_trials_and_probes(job: dict) -> None:
    client = MlflowClient(job["uri"])
    runs = _runs(job["uri"])
    parents = [r for r in runs if r.data.tags.get("musicssl.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["musicssl.sweep"] == "demo-smoke"
    assert parent.data.tags["musicssl.smoke"] == "True"
    assert parent.info.status == "FINISHED"
    pid = parent.info.run_id

    trials = [r for r in runs if r.data.tags.get("musicssl.kind") == "trial"]
    assert sorted(r.data.tags["musicssl.variant"] for r in trials) == ["prob50", "vanilla"]
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == pid
        assert t.data.tags["musicssl.sweep"] == "demo-smoke"
        assert t.info.status == "FINISHED"
        history = client.get_metric_history(t.info.run_id, "probe/average")
        assert sorted(h.step for h in history) == PROBE_STEPS
        assert all(0.0 <= h.value <= 1.0 for h in history)

        probes = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == t.info.run_id]
        assert probes and all(r.data.tags.get("musicssl.kind") == "probe" for r in probes)
        assert sorted((r.data.tags["musicssl.task"], int(r.data.tags["musicssl.step"])) for r in probes) == sorted(
            (task, step) for task in TASKS for step in PROBE_STEPS)
        assert all(r.info.status == "FINISHED" for r in probes)
        assert all(r.data.tags["musicssl.variant"] == t.data.tags["musicssl.variant"] for r in probes)
    assert len(runs) == 1 + 2 + 2 * len(TASKS) * len(PROBE_STEPS)


def test_dashboard_in_the_state_folder_and_logged_on_the_parent(job: dict, tmp_path: Path) -> None:
    report = job["state"] / "dashboards" / "demo-smoke.html"
    assert report.is_file()
    assert job["reports_in_ray_temp"] == []
    html = report.read_text()

    client = MlflowClient(job["uri"])
    (parent,) = [r for r in _runs(job["uri"]) if r.data.tags.get("musicssl.kind") == "sweep"]
    assert "demo-smoke.html" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    logged = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="demo-smoke.html",
                                                      dst_path=str(tmp_path), tracking_uri=job["uri"]))
    assert logged.read_text() == html

    # the report's table holds the trials' final probe averages
    table = html[html.index('<table id="ablation-table">'):]
    table = table[:table.index("</table>")]
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S):
        label = re.search(r'<th scope="row">([^<]+)', row).group(1).strip()
        rows[label] = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
    trials = {r.data.tags["musicssl.variant"]: r for r in _runs(job["uri"])
              if r.data.tags.get("musicssl.kind") == "trial"}
    assert set(rows) == set(trials)
    for variant, run in trials.items():
        assert rows[variant][2][0] == f"{100 * run.data.metrics['probe/average']:.1f}"  # then its delta and n=1
        assert rows[variant][2][-1] == "n=1"
