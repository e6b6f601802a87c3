"""A trial that raises is retried from its latest checkpoint up to `max_failures` times, in its own MLflow run; a
trial that keeps failing ends FAILED, and `--rerun-failed` reruns only it, from its latest checkpoint, under the
same parent run, leaving the finished trial untouched. The faults are real exceptions raised inside the trials
(`MUSICSSL_INJECT_FAULT`, sweep/faults.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from musicssl.sweep.faults import InjectedFault, maybe_fail, parse

SWEEP = """\
name: faults
base:
  model: {preset: tiny}
  data:
    max_sample_size: 16000
    min_sample_size: 8000
    max_tokens: 64000
    synthetic: {num_pieces: 8, piece_seconds: 2.0, probe_clips: 48, clip_seconds: 1.0}
  pretrain: {max_steps: 40, checkpoint_every: 10, log_every: 10, device: cpu}
  probe: {tasks: [synth_pitch], window_seconds: 1.0, standardize: true, max_epochs: 3}
seeds: [0, 1]
probe: {every_steps: 20}
max_failures: 1
"""


def test_fault_spec_counts_attempts_in_the_trial_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("-s0@20x1, -s1@5x9") == [("-s0", 20, 1), ("-s1", 5, 9)]
    with pytest.raises(ValueError, match="MUSICSSL_INJECT_FAULT: 'nonsense' is not"):
        parse("-s0@20x1,nonsense")
    maybe_fail("abc-s0", 20, tmp_path)  # unset: nothing
    monkeypatch.setenv("MUSICSSL_INJECT_FAULT", "-s0@20x2")
    maybe_fail("abc-s0", 10, tmp_path)  # before the step
    maybe_fail("abc-s1", 30, tmp_path)  # another trial
    for attempt in (1, 2):
        with pytest.raises(InjectedFault, match=f"injected fault {attempt} of 2 at step 3{attempt}"):
            maybe_fail("abc-s0", 30 + attempt, tmp_path)
    maybe_fail("abc-s0", 40, tmp_path)  # both faults spent


def _runs(state: Path) -> tuple[MlflowClient, list, dict[str, object]]:
    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return (client, [r for r in runs if r.data.tags.get("musicssl.kind") == "sweep"],
            {r.data.tags["musicssl.seed"]: r for r in runs if r.data.tags.get("musicssl.kind") == "trial"})


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_failing_trials_are_retried_then_rerun_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "faults.yaml"
    sweep.write_text(SWEEP)
    state = tmp_path / "state"
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    env = os.environ | {"RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "musicssl", "sweep", str(sweep), "--state-dir", str(state),
           "--report", str(tmp_path / "r.html"), "--num-cpus", "2"]
    try:
        # seed 0 fails once (retried: max_failures 1), seed 1 every time (2 attempts, then FAILED)
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                               env=env | {"MUSICSSL_INJECT_FAULT": "-s0@20x1,-s1@20x9"})
        assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
        assert "1/2 trials finished" in first.stdout and "FAILED " in first.stdout, first.stdout[-2000:]
        retries = re.findall(r"\[musicssl\] RETRY  .* seed (\d) failed \(attempt 1\); it starts again", first.stdout)
        assert sorted(retries) == ["0", "1"], first.stdout[-3000:]
        client, parents, trials = _runs(state)
        assert len(parents) == 1 and parents[0].info.status == "FAILED" and len(trials) == 2
        ok, bad = trials["0"], trials["1"]
        assert ok.info.status == "FINISHED" and ok.data.tags["musicssl.failures"] == "1"
        assert bad.data.tags["musicssl.error"].startswith("InjectedFault: injected fault 2 of 9 at step 30")
        assert bad.info.status == "FAILED" and bad.data.tags["musicssl.failures"] == "2", bad.data.tags
        # the retry resumed from the step-20 checkpoint: no step logged twice, none missing
        assert _steps(client, ok.info.run_id, "pretrain/loss") == [10, 20, 30, 40]
        assert _steps(client, ok.info.run_id, "probe/synth_pitch/score") == [20, 40]
        assert _steps(client, bad.info.run_id, "pretrain/loss") == [10, 20, 30]  # 2nd attempt failed at 30
        ok_end = ok.info.end_time

        status = subprocess.run([sys.executable, "-m", "musicssl", "sweep", "status", str(sweep), "--state-dir",
                                 str(state)], capture_output=True, text=True, env=env, timeout=120)
        assert status.returncode == 0, status.stderr[-2000:]
        rows = {line.split()[2]: line for line in status.stdout.splitlines()[2:4]}
        assert " finished " in rows["0"] and "1 failed attempt(s) (retried), last: InjectedFault" in rows["0"]
        assert " failed " in rows["1"] and "2 failed attempt(s), last: InjectedFault" in rows["1"]
        assert rows["1"].split()[4] == "30", "the failed trial's latest checkpoint is at step 30"

        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert again.returncode == 0 and "already ran to its end" in again.stdout, again.stdout[-2000:]
        assert "--rerun-failed" in again.stdout

        rerun = subprocess.run([*cmd, "--rerun-failed"], capture_output=True, text=True, timeout=600, env=env)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert "resuming: 1 of 2 trials still to run" in rerun.stdout, rerun.stdout[-2000:]
    finally:
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    client, parents, trials = _runs(state)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", "the same parent run, now finished"
    ok, bad = trials["0"], trials["1"]
    assert bad.info.status == "FINISHED"
    assert _steps(client, bad.info.run_id, "pretrain/loss") == [10, 20, 30, 40], "rerun from its step-30 checkpoint"
    assert _steps(client, bad.info.run_id, "probe/synth_pitch/score") == [20, 40]
    assert ok.info.end_time == ok_end and _steps(client, ok.info.run_id, "pretrain/loss") == [10, 20, 30, 40], \
        "the finished trial was not touched"
