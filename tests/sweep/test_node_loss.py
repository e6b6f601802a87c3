"""A two-node Ray cluster on this machine loses the node that runs a trial and one of its probe jobs; the trial
resumes on the surviving node from its latest checkpoint and the probe job runs again there.

The cluster: a head (`ray start --head`, 2 CPUs) and a second node (`ray start --address ...`, 2 CPUs), each with its
own short temporary folder, free ports and process group, all with token authentication. The state folder (the
checkpoints, the MLflow sqlite store) is one local folder, standing for the shared mount every node of a real
cluster sees.

Placement: before the second node joins, a small driver of this test holds every CPU of the head with an actor
(the "blocker"). The sweep's driver (`python -m musicssl sweep`, RAY_ADDRESS set, attached to the head as Ray
prefers for drivers on a host with several nodes) can then place its one trial (1 CPU) and its probe jobs (1 CPU)
only on the second node. Once the trial is past its second checkpoint and its step-20 probe job has started, every
process of the second node is SIGKILLed at once (the machine is gone) and the blocker lets go of the head, which
then has room for the retried trial (`max_failures: 2`) and the retried probe job (`probe.max_retries`).
The probe queue (a 0-CPU actor of the driver) must not be lost with the node.

Processes are stopped one by one at the end (see raycluster.py), never with `ray stop`. Every step has a
timeout within one overall budget.
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

import pytest
from mlflow.tracking import MlflowClient
from raycluster import cluster_pids, free_ports, kill_now, ray_start, stop_cluster, tail

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the venv's bin: `ray`
BUDGET_S = 300  # everything, teardown included
TEARDOWN_S = 30
MAX_STEPS = 150  # long enough for the step-20 probe job to start before the trial ends
PROBE_STEPS = [20, MAX_STEPS]  # probe.at_steps, and the final checkpoint
KILL_AFTER = 20  # the second checkpoint (checkpoint_every 10)
SWEEP = f"""\
# Run: musicssl sweep nodeloss.yaml (test_node_loss.py runs it on a two-node cluster)
name: nodeloss
base:
  model: {{preset: tiny}}
  data:
    max_sample_size: 16000
    min_sample_size: 8000
    max_tokens: 64000
    synthetic: {{num_pieces: 8, piece_seconds: 2.0, probe_clips: 48, clip_seconds: 1.0}}
  pretrain: {{max_steps: {MAX_STEPS}, checkpoint_every: 10, log_every: 10, keep_last: 20, device: cpu}}
  probe: {{tasks: [synth_pitch], window_seconds: 1.0, standardize: true, max_epochs: 5}}
probe: {{at_steps: [20], cpus: 1, max_retries: 2}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 1}}
max_failures: 2
"""
BLOCKER = """\
import sys
import ray

ray.init()


@ray.remote(num_cpus=2)
class Blocker:
    def node(self):
        return ray.get_runtime_context().get_node_id()


b = Blocker.remote()
print("HEAD_NODE", ray.get(b.node.remote(), timeout=120), flush=True)
sys.stdin.read()  # holds the head's CPUs until the test closes stdin
"""


def _latest(state: Path) -> int | None:
    """Step of the trial's latest checkpoint, None before the first."""
    for p in state.glob("sweeps/nodeloss/*/trials/*/checkpoints/latest"):
        text = p.read_text().strip()
        if text:
            return int(text.split("_")[-1])
    return None


def _runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


@pytest.fixture(scope="module")
def lost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    ray_exe = BIN / "ray"
    if not ray_exe.exists():
        pytest.skip(f"needs the venv's `ray` script in {BIN}")
    t_all = time.monotonic()
    deadline = t_all + BUDGET_S - TEARDOWN_S

    def left(limit: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining < 3:
            pytest.fail(f"out of the {BUDGET_S} s budget")
        return min(limit, remaining)

    work = tmp_path_factory.mktemp("node-loss")
    state = work / "state"
    (work / "nodeloss.yaml").write_text(SWEEP)
    head_tmp = tempfile.mkdtemp(prefix="nlh", dir="/tmp")  # Ray's socket paths must stay short
    node_tmp = tempfile.mkdtemp(prefix="nl2", dir="/tmp")
    gcs, client_port, *agent_ports = free_ports(8)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    driver_env = env | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    small = ["--object-store-memory", str(200 * 2**20), "--disable-usage-stats"]
    head_cmd = [str(ray_exe), "start", "--head", "--temp-dir", head_tmp, "--num-cpus", "2", "--num-gpus", "0",
                "--port", str(gcs), "--include-dashboard", "false", "--ray-client-server-port", str(client_port),
                "--dashboard-agent-listen-port", str(agent_ports[0]), "--dashboard-agent-grpc-port",
                str(agent_ports[1]), "--runtime-env-agent-port", str(agent_ports[2]), *small]
    node_cmd = [str(ray_exe), "start", "--address", f"127.0.0.1:{gcs}", "--temp-dir", node_tmp, "--num-cpus", "2",
                "--num-gpus", "0", "--dashboard-agent-listen-port", str(agent_ports[3]), "--dashboard-agent-grpc-port",
                str(agent_ports[4]), "--runtime-env-agent-port", str(agent_ports[5]), *small]
    sweep_cmd = [sys.executable, "-m", "musicssl", "sweep", str(work / "nodeloss.yaml"), "--state-dir", str(state),
                 "--report", str(work / "nodeloss.html")]
    out: dict = {"state": state, "times": {}, "events": []}
    head_pg = node_pg = -1
    blocker = driver = None

    def event(what: str) -> None:
        out["events"].append(f"{time.monotonic() - t_all:6.1f} s  {what}")

    try:
        token = subprocess.run([str(ray_exe), "get-auth-token", "--generate"], env=env, capture_output=True,
                               text=True, timeout=left(60))
        assert token.returncode == 0 and token.stdout.strip(), f"ray get-auth-token failed: {token.stderr[-2000:]}"

        head_pg, rc = ray_start(head_cmd, env, work / "head.log", head_tmp, left(90))
        assert rc == 0, f"`ray start --head` exited {rc}:\n{tail(work / 'head.log')}"
        event("head up")

        # the blocker holds the head's 2 CPUs, so the trial and its probe jobs can only go to the second node
        with open(work / "blocker.log", "w") as f:
            blocker = subprocess.Popen([sys.executable, "-c", BLOCKER], env=driver_env, stdin=subprocess.PIPE,
                                       stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
        until = time.monotonic() + left(90)
        while not (m := re.search(r"HEAD_NODE (\w+)", tail(work / "blocker.log"))):
            assert blocker.poll() is None and time.monotonic() < until, tail(work / "blocker.log")
            time.sleep(0.5)
        out["head_node"] = m.group(1)
        event("head's CPUs held by the blocker")

        node_pg, rc = ray_start(node_cmd, env, work / "node2.log", node_tmp, left(90))
        assert rc == 0, f"`ray start --address` exited {rc}:\n{tail(work / 'node2.log')}"
        event("second node up")

        with open(work / "driver.log", "w") as f:
            driver = subprocess.Popen(sweep_cmd, env=driver_env, stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=work)
        event("sweep started")

        # wait until the trial is past its second checkpoint and its step-20 probe job runs (on the second node)
        client, trial, probe = None, None, None
        until = time.monotonic() + left(180)
        while True:
            assert driver.poll() is None, f"the sweep ended before the node was lost:\n{tail(work / 'driver.log')}"
            assert time.monotonic() < until, f"no checkpoint at step {KILL_AFTER} with its probe job running:\n" \
                                             f"{tail(work / 'driver.log')}"
            step = _latest(state)
            if step is not None and step >= KILL_AFTER and (state / "mlflow.db").exists():
                client = client or MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
                runs = _runs(client)
                trial = next((r for r in runs if r.data.tags.get("musicssl.kind") == "trial"), None)
                probe = next((r for r in runs if r.data.tags.get("musicssl.kind") == "probe"
                              and r.data.tags.get("musicssl.step") == str(KILL_AFTER)), None)
                if trial is not None and "musicssl.node" in trial.data.tags and probe is not None \
                        and probe.info.status == "RUNNING":
                    break
            time.sleep(0.5)
        out["node_before"] = trial.data.tags["musicssl.node"]
        out["step_seen"] = step

        # the second node is lost: every one of its processes SIGKILLed at once
        out["killed_pids"] = kill_now(node_pg, node_tmp)
        t_kill, out["kill_wall"] = time.monotonic(), time.time()
        event(f"second node killed ({len(out['killed_pids'])} processes) at checkpoint step {step}")
        until = time.monotonic() + left(20)
        while (alive := cluster_pids(node_pg, node_tmp)) and time.monotonic() < until:
            time.sleep(0.2)
        out["alive_after_kill"] = alive
        out["resume_from"] = _latest(state)  # the latest complete checkpoint when the node died
        blocker.stdin.close()  # the head's CPUs are free for the retry
        blocker.wait(timeout=left(60))
        event("blocker released the head")

        until = time.monotonic() + left(240)
        while driver.poll() is None:
            text = tail(work / "driver.log", 100_000)
            if "detected" not in out and re.search(r"Trial \S+ errored after", text):
                out["detected"] = time.monotonic() - t_kill
                event("Tune saw the trial fail")
            if "node dead" not in out and "has been marked dead" in text:
                out["node dead"] = time.monotonic() - t_kill
                event("Ray marked the second node dead")
            if "restarted" not in out and text.count("[musicssl] start") >= 2:
                out["restarted"] = time.monotonic() - t_kill
                event("the trial started again")
            if time.monotonic() > until:
                pytest.fail(f"the sweep did not end after the node loss:\n{tail(work / 'driver.log')}")
            time.sleep(0.5)
        event(f"sweep exited {driver.returncode}")
        out["rc"], out["output"] = driver.returncode, (work / "driver.log").read_text(errors="replace")
        yield out
    finally:
        t0 = time.monotonic()
        for proc in (driver, blocker):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
        left_alive = []
        for pg, temp_dir in ((node_pg, node_tmp), (head_pg, head_tmp)):
            if pg > 0:
                left_alive += stop_cluster(pg, temp_dir, grace_s=8, timeout_s=TEARDOWN_S / 2 - 3)
        shutil.rmtree(head_tmp, ignore_errors=True)
        shutil.rmtree(node_tmp, ignore_errors=True)
        out["times"]["teardown"] = time.monotonic() - t0
        out["times"]["whole fixture"] = time.monotonic() - t_all
        print("\n[node loss test] " + "\n".join(out["events"]) + "\n" +
              ", ".join(f"{k} {v:.1f} s" for k, v in out["times"].items()) +
              "; after the kill: " + ", ".join(f"{k} {out[k]:.1f} s" for k in ("detected", "node dead", "restarted")
                                               if k in out))
        if sys.exc_info()[0] is None:  # never mask the error that ended the setup
            assert not left_alive, f"cluster processes still alive after teardown: {left_alive}"


def test_the_node_was_lost_mid_trial(lost: dict) -> None:
    assert lost["node_before"] != lost["head_node"], "the trial must have run on the second node"
    assert lost["killed_pids"] and lost["alive_after_kill"] == []
    assert KILL_AFTER <= lost["resume_from"] < MAX_STEPS, "the node must die before the trial's end"


def test_sweep_finishes_on_the_head(lost: dict) -> None:
    text = lost["output"]
    assert lost["rc"] == 0, text[-6000:]
    assert re.search(r"sweep 'nodeloss': 1/1 trials finished in [\d.]+ min", text), text[-6000:]
    # Tune saw the trial fail once and retried it (a recoverable failure: no `[musicssl] ERROR` line)
    assert len(re.findall(r"Trial \S+ errored after \d+ iterations", text)) == 1, text[-6000:]
    assert text.count("[musicssl] start") == 2 and "[musicssl] ERROR" not in text, text[-6000:]
    assert re.search(r"\[musicssl\] RETRY  \S+ seed 0 failed \(attempt 1\); it starts again from its latest "
                     r"checkpoint", text), text[-6000:]
    assert "Task run_probe_job failed. There are 2 retries remaining" in text
    assert re.search(r"probe  \S+ seed 0 step 20 synth_pitch: score [\d.]+ \(\d+ s, attempt 2\)", text), text[-6000:]
    assert "FAILED" not in text.split("trials finished", 1)[1], text[-3000:]


def test_one_run_per_trial_resumed_from_its_latest_checkpoint(lost: dict) -> None:
    client = MlflowClient(f"sqlite:///{lost['state'] / 'mlflow.db'}")
    runs = _runs(client)
    parents = [r for r in runs if r.data.tags.get("musicssl.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("musicssl.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 1, "the retried trial continues its MLflow run, it does not open a second one"
    (trial,) = trials
    assert trial.info.status == "FINISHED"
    assert trial.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert trial.data.tags["musicssl.node"] == lost["head_node"], "the retry ran on the surviving head"
    assert "musicssl.error" not in trial.data.tags  # SIGKILL left no error; the retry ended it FINISHED

    names = [k for k in trial.data.metrics if k.startswith("pretrain/")]
    assert "pretrain/loss" in names
    for name in names:
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, name)]
        assert sorted(steps) == list(range(10, MAX_STEPS + 1, 10)), (name, steps)

    # resumed from the latest checkpoint: the ones up to it were not written again, the later ones after the kill
    root = next(lost["state"].glob("sweeps/nodeloss/*/trials/*/checkpoints"))
    written = {int(p.name.split("_")[-1]): (p / "state.json").stat().st_mtime for p in root.glob("step_*")}
    assert sorted(written) == list(range(10, MAX_STEPS + 1, 10))
    resume = lost["resume_from"]
    assert all(t < lost["kill_wall"] for s, t in written.items() if s <= resume), (resume, written, lost["kill_wall"])
    assert all(t > lost["kill_wall"] for s, t in written.items() if s > resume), (resume, written, lost["kill_wall"])
    assert json.loads((root / f"step_{MAX_STEPS:09d}" / "state.json").read_text())["step"] == MAX_STEPS


def test_every_probe_job_has_its_result(lost: dict) -> None:
    client = MlflowClient(f"sqlite:///{lost['state'] / 'mlflow.db'}")
    runs = _runs(client)
    (trial,) = [r for r in runs if r.data.tags.get("musicssl.kind") == "trial"]
    probes = [r for r in runs if r.data.tags.get("musicssl.kind") == "probe"]
    assert sorted(int(r.data.tags["musicssl.step"]) for r in probes) == PROBE_STEPS, "one probe run per job"
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == trial.info.run_id for r in probes)
    attempts = {int(r.data.tags["musicssl.step"]): int(r.data.tags["musicssl.attempts"]) for r in probes}
    assert attempts[KILL_AFTER] == 2, f"the probe job running on the lost node runs again elsewhere: {attempts}"
    for name in ("probe/synth_pitch/score", "probe/average"):
        history = client.get_metric_history(trial.info.run_id, name)
        assert sorted(m.step for m in history) == PROBE_STEPS, (name, [m.step for m in history])
        assert all(0.0 <= m.value <= 1.0 for m in history)
    results = sorted(lost["state"].glob("sweeps/nodeloss/*/trials/*/probes/step_*/synth_pitch.json"))
    assert [json.loads(p.read_text())["step"] for p in results] == PROBE_STEPS
    assert not list(lost["state"].glob("sweeps/nodeloss/*/trials/*/probes/step_*/*.failed.json"))
