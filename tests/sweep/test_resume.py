"""A sweep killed mid-training (SIGKILL of the whole process group) or interrupted with Ctrl-C (SIGINT, once or
twice) resumes when the same command runs again: one parent run, one run per trial, metric histories without
repeats, and no checkpoint copies in Ray's storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SWEEP = """\
# Run: musicssl sweep resume.yaml
name: resume
base:
  model: {preset: tiny}
  data:
    max_sample_size: 16000
    min_sample_size: 8000
    max_tokens: 64000
    synthetic: {num_pieces: 8, piece_seconds: 2.0, probe_clips: 48, clip_seconds: 1.0}
  pretrain: {max_steps: 60, checkpoint_every: 10, log_every: 10, device: cpu}
  probe: {tasks: [synth_pitch], window_seconds: 1.0, standardize: true, max_epochs: 5}
grid:
  model.mask_prob: [0.5, 0.8]
"""


def _kill_tree(proc: subprocess.Popen, ray_tmp: str) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Ray's own daemons may have left the process group: end every process of this test's Ray temp dir.
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)


def test_killed_sweep_resumes(tmp_path: Path) -> None:
    """SIGKILL of the whole sweep right after its short trial's run ended FINISHED, while the long one trains: the
    finished trial is never run again (its run, history and probe scores untouched), the other resumes."""
    sweep = tmp_path / "resume.yaml"
    sweep.write_text(SWEEP.replace("model.mask_prob: [0.5, 0.8]", "pretrain.max_steps: [20, 60]"))
    state = tmp_path / "state"
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    env = os.environ | {"RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "musicssl", "sweep", str(sweep), "--state-dir", str(state),
           "--report", str(tmp_path / "r.html"), "--num-cpus", "2"]
    with open(tmp_path / "run1.log", "w") as log1:
        proc = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finished: dict = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # kill everything as soon as a trial run is FINISHED
            # MLflow is read only once a checkpoint exists: opening the store while the driver creates it would
            # race on its schema migration
            if list(state.glob("sweeps/resume/*/trials/*/checkpoints/latest")):
                finished = {c.info.run_id: c for c in _runs(state)[2] if c.info.status == "FINISHED"}
            if finished:
                break
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            time.sleep(0.3)
        else:
            pytest.fail("no trial finished within 300 s:\n" + (tmp_path / "run1.log").read_text()[-3000:])
    finally:
        _kill_tree(proc, ray_tmp)
    (done,) = finished.values()
    client = _runs(state)[0]
    done_probes = sorted(m.step for m in client.get_metric_history(done.info.run_id, "probe/synth_pitch/score"))
    steps = [int(p.read_text().strip().split("_")[-1])
             for p in state.glob("sweeps/resume/*/trials/*/checkpoints/latest") if p.read_text().strip()]
    assert max(steps) < 60, "the long trial finished before the sweep could be killed; make it longer"

    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "(resuming)" in out.stdout and "resuming: 1 of 2 trials still to run" in out.stdout

    client, parents, children = _runs(state)
    assert len(parents) == 1, "the resumed sweep must reuse its parent run"
    assert parents[0].info.run_id in out.stdout
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 2, "a resumed trial must continue its own MLflow run, not open a second one"
    for child in children:
        assert child.info.status == "FINISHED"
        assert "probe/synth_pitch/acc" in child.data.metrics
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "pretrain/loss")]
        last = 20 if child.info.run_id == done.info.run_id else 60
        assert sorted(steps) == list(range(10, last + 1, 10)), "a resumed run continues its history without repeats"
        probes = [m.step for m in client.get_metric_history(child.info.run_id, "probe/synth_pitch/score")]
        assert len(probes) == len(set(probes)) and last in probes, probes
    again = next(c for c in children if c.info.run_id == done.info.run_id)
    assert again.info.end_time == done.info.end_time, "the finished trial was not run again"
    assert set(done_probes) <= {m.step for m in client.get_metric_history(done.info.run_id, "probe/synth_pitch/score")}
    _assert_one_copy(state)


def _assert_one_copy(state: Path) -> None:
    """Checkpoints live once, in the trials' folders: Ray Tune's storage holds no copy of them."""
    ray_files = [p for p in state.glob("sweeps/*/*/ray/**/*") if p.suffix in (".safetensors", ".pt")]
    assert ray_files == [], ray_files[:5]
    assert list(state.glob("sweeps/*/*/trials/*/checkpoints/step_*/model.safetensors"))


def _runs(state: Path) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return (client, [r for r in runs if r.data.tags.get("musicssl.kind") == "sweep"],
            [r for r in runs if r.data.tags.get("musicssl.kind") == "trial"])


def _interrupt(cmd: list[str], env: dict, state: Path, log: Path, at_step: int, times: int) -> subprocess.CompletedProcess:
    """Run the sweep and press Ctrl-C (SIGINT to the process group, as a terminal does) ``times`` times, 1 s apart,
    once a trial has a checkpoint at ``at_step`` or later."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline:
            steps = [int(p.read_text().strip().split("_")[-1])
                     for p in state.glob("sweeps/resume/*/trials/*/checkpoints/latest") if p.read_text().strip()]
            if steps and max(steps) >= at_step:
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        else:
            pytest.fail(f"no checkpoint at step >= {at_step} within 240 s:\n" + log.read_text()[-3000:])
        for i in range(times):
            if i:
                time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    return subprocess.CompletedProcess(cmd, code, log.read_text(), "")


def test_ctrl_c_once_and_twice_keeps_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "resume.yaml"
    sweep.write_text(SWEEP)
    state = tmp_path / "state"
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = os.environ | {"RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "musicssl", "sweep", str(sweep), "--state-dir", str(state),
           "--report", str(tmp_path / "r.html"), "--num-cpus", "2"]
    try:
        first = _interrupt(cmd, env, state, tmp_path / "run1.log", 20, times=1)
        assert first.returncode == 130, first.stdout[-3000:]
        assert "interrupted" in first.stdout and "run the same command again to resume" in first.stdout
        assert "Tuner.restore" not in first.stdout, "Tune's own resume advice does not apply to a musicssl sweep"
        client, parents, children = _runs(state)
        assert len(parents) == 1 and parents[0].info.status == "RUNNING", "the parent stays open to be resumed"
        assert "musicssl.interrupted" in parents[0].data.tags
        cut = [c for c in children if c.info.status == "KILLED"]
        assert cut and all("musicssl.interrupted" in c.data.tags and "musicssl.stopped_early" not in c.data.tags
                           for c in cut)
        assert not [c for c in children if c.info.status == "RUNNING"], "no trial run is left RUNNING for good"
        status = subprocess.run([sys.executable, "-m", "musicssl", "sweep", "status", str(sweep), "--state-dir",
                                 str(state)], capture_output=True, text=True, env=env, timeout=120)
        assert status.returncode == 0, status.stderr[-2000:]
        lines = status.stdout.splitlines()
        assert "(interrupted)" in lines[0] and len(lines) == 2 + 2 + 1, status.stdout
        assert sum(" interrupted " in line for line in lines[2:4]) == len(cut), status.stdout

        second = _interrupt(cmd, env, state, tmp_path / "run2.log", 40, times=2)
        assert second.returncode == 130, second.stdout[-3000:]
        assert "(resuming)" in second.stdout
        client, parents, children = _runs(state)
        assert len(parents) == 1 and parents[0].info.status == "RUNNING"

        third = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    finally:
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    assert "(resuming)" in third.stdout
    client, parents, children = _runs(state)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "musicssl.interrupted" not in parents[0].data.tags
    assert len(children) == 2, "each trial continues its own run across the three runs of the sweep"
    for child in children:
        assert child.info.status == "FINISHED" and "musicssl.interrupted" not in child.data.tags
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "pretrain/loss")]
        assert sorted(steps) == list(range(10, 61, 10)), steps
        probes = [m.step for m in client.get_metric_history(child.info.run_id, "probe/synth_pitch/score")]
        assert len(probes) == len(set(probes)) and 60 in probes, probes
    _assert_one_copy(state)
