"""Probe jobs beside pretraining: retried failures that never fail their trial, and ASHA early stopping on probe
results that arrive while the trials train. Real Ray (in-process), real MLflow, real training and probes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from musicssl.cli import main

pytestmark = pytest.mark.slow

SWEEP = """\
# Run: musicssl sweep asha.yaml
name: asha
base:
  model: {preset: tiny}
  data:
    max_sample_size: 32000
    min_sample_size: 16000
    max_tokens: 128000
    synthetic: {num_pieces: 8, piece_seconds: 2.0, probe_clips: 48, clip_seconds: 1.0}
  pretrain: {max_steps: 60, checkpoint_every: 10, log_every: 5, device: cpu, lr: 0.001}
  probe: {window_seconds: 1.0, standardize: true, max_epochs: 10, early_stop_patience: 3, lr: 0.005}
baseline: vanilla
variants:
  vanilla: {}
  prob20: {model.mask_prob: 0.2}
  span3: {model.mask_length: 3}
  frozen: {pretrain.lr: 1.0e-7}
probe:
  tasks: [synth_pitch]
  every_steps: 10
  max_concurrent: 2
  max_retries: 2
scheduler: {type: asha, metric: synth_pitch, grace_steps: 10, reduction_factor: 2}
resources: {cpus_per_trial: 1, max_concurrent_trials: 1}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, mlflow_runs: Callable) -> dict:
    import ray

    tmp = tmp_path_factory.mktemp("asha")
    (tmp / "asha.yaml").write_text(SWEEP)
    state = tmp / "state"
    mp = pytest.MonkeyPatch()
    # every step-20 job fails once (then succeeds on its retry); every step-30 job fails for good (3 attempts)
    mp.setenv("MUSICSSL_FAIL_PROBE", "synth_pitch@20:1,synth_pitch@30:9")
    try:
        code = main(["sweep", str(tmp / "asha.yaml"), "--state-dir", str(state), "--report", str(tmp / "r.html"),
                     "--num-cpus", "3"])
    finally:
        ray.shutdown()
        mp.undo()
    client, kinds = mlflow_runs(state)
    return {"code": code, "client": client, "runs": kinds, "state": state}


def test_a_failed_probe_job_is_retried_and_never_fails_its_trial(sweep: dict) -> None:
    client = sweep["client"]
    assert sweep["code"] == 1, "probe jobs that failed for good make the command exit 1"
    trials = sweep["runs"]["trial"]
    assert len(trials) == 4
    assert all(t.info.status in ("FINISHED", "KILLED") for t in trials), [t.info.status for t in trials]
    probes = sweep["runs"]["probe"]
    at20 = [p for p in probes if p.data.tags["musicssl.step"] == "20"]
    assert at20
    for run in at20:  # failed once, retried, succeeded: its failure is recorded on the probe run
        assert run.info.status == "FINISHED"
        assert run.data.tags["musicssl.attempts"] == "2"
        assert "injected probe failure" in run.data.tags["musicssl.error.1"]
        scores = client.get_metric_history(run.data.tags["mlflow.parentRunId"], "probe/synth_pitch/score")
        assert 20 in [h.step for h in scores]
    at30 = [p for p in probes if p.data.tags["musicssl.step"] == "30"]
    assert at30, "some trial reached step 30"
    for run in at30:  # failed for good: recorded, pin released, nothing logged on the trial at that step
        assert run.info.status == "FAILED"
        assert run.data.tags["musicssl.attempts"] == "3"
        scores = client.get_metric_history(run.data.tags["mlflow.parentRunId"], "probe/synth_pitch/score")
        assert 30 not in [h.step for h in scores]
    (parent,) = sweep["runs"]["sweep"]
    assert parent.data.tags["musicssl.failed_probe_jobs"] == str(len(at30))
    assert parent.info.status == "FINISHED"
    assert len(list(sweep["state"].glob("sweeps/asha/*/trials/*/probes/step_000000030/*.failed.json"))) == len(at30)
    # only the jobs that failed for good keep their checkpoint pinned (for --rerun-failed)
    pinned = list(sweep["state"].glob("sweeps/asha/*/trials/*/checkpoints/pins/*.json"))
    assert len(pinned) == len(at30), pinned


def test_asha_stops_a_trial_on_probe_results(sweep: dict) -> None:
    client = sweep["client"]
    stopped = [t for t in sweep["runs"]["trial"] if t.info.status == "KILLED"]
    assert stopped, "ASHA (reduction factor 2, 4 trials, rungs at 10, 20 and 40 steps) stopped no trial"
    for run in stopped:
        last = client.get_metric_history(run.info.run_id, "pretrain/loss")[-1].step
        assert last < 60 and int(float(run.data.tags["musicssl.stopped_early"])) < 60
    finished = [t for t in sweep["runs"]["trial"] if t.info.status == "FINISHED"]
    assert finished, "the best trial runs to the end"
    for run in finished:
        assert client.get_metric_history(run.info.run_id, "pretrain/loss")[-1].step == 60


def test_finished_sweep_is_not_run_again_and_rerun_failed_reruns_only_the_failed_jobs(sweep: dict, mlflow_runs:
                                                                                      Callable, capsys) -> None:
    """Runs last: it changes the sweep's state (the failed step-30 probe jobs run again, without the fault)."""
    import ray

    args = ["sweep", str(sweep["state"].parent / "asha.yaml"), "--state-dir", str(sweep["state"]),
            "--report", str(sweep["state"].parent / "r.html"), "--num-cpus", "3"]
    before = {r.info.run_id: r for r in sweep["runs"]["trial"]}
    try:
        assert main(args) == 0  # the same command again: the sweep ran to its end, nothing runs again
        out = capsys.readouterr().out
        assert "already ran to its end" in out and "--rerun-failed" in out and "--fresh" in out
        assert main([*args, "--resume"]) == 2
        assert "nothing to resume" in capsys.readouterr().err
        assert main([*args, "--rerun-failed"]) == 0
    finally:
        ray.shutdown()
    client, kinds = mlflow_runs(sweep["state"])
    assert len(kinds["sweep"]) == 1 and kinds["sweep"][0].info.status == "FINISHED", "the same parent run"
    assert {r.info.run_id for r in kinds["trial"]} == set(before), "no trial run was added"
    for run in kinds["trial"]:  # no trial failed, so none ran again: histories unchanged
        old = before[run.info.run_id]
        assert run.info.status == old.info.status
        assert len(client.get_metric_history(run.info.run_id, "pretrain/loss")) == len(
            sweep["client"].get_metric_history(run.info.run_id, "pretrain/loss"))
    at30 = [p for p in kinds["probe"] if p.data.tags["musicssl.step"] == "30"]
    assert at30 and all(p.info.status == "FINISHED" for p in at30), "the failed jobs ran again and succeeded"
    for run in at30:
        scores = client.get_metric_history(run.data.tags["mlflow.parentRunId"], "probe/synth_pitch/score")
        assert [h.step for h in scores].count(30) == 1
    state = sweep["state"]
    assert not list(state.glob("sweeps/asha/*/trials/*/probes/step_*/*.failed.json"))
    assert not list(state.glob("sweeps/asha/*/trials/*/checkpoints/pins/*.json"))
