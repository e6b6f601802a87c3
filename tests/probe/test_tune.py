"""Probe hyperparameter studies: resume, pruning, MLflow child runs, two processes on one journal, the CLI."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from musicssl.config import ProbeConfig
from musicssl.config_io import ConfigError
from musicssl.probe import orphans
from musicssl.probe.orphans import ALIVE, OWNER
from musicssl.probe.tune import open_storage, tune_probe
from musicssl.probe.tune_cli import add_tune_parser, tune_cli
from musicssl.tracking.mlflow import sqlite_uri

BASE = ProbeConfig(
    tasks=("synth_pitch",),
    window_seconds=1.5,
    standardize=True,
    lr=5e-3,
    max_epochs=20,
    early_stop_patience=8,
)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder shared by the module's tests: its feature cache (`features/`) and MLflow store."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def tracking_uri(state: Path) -> str:
    """One MLflow store for the module (creating a sqlite store takes seconds), made before any worker opens it."""
    uri = sqlite_uri(state / "mlflow.db")
    MlflowClient(uri).search_experiments()
    return uri


def _children(client: MlflowClient, experiment_id: str, parent: str) -> list[Any]:
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_study_resumes_prunes_and_logs_every_trial_to_mlflow(
    checkpoint: Path, tiny_corpus: Path, state: Path, tracking_uri: str, tmp_path: Path
) -> None:
    journal = str(tmp_path / "pitch.journal")
    uri = tracking_uri
    common: dict[str, Any] = dict(
        storage=journal,
        study_name="pitch",
        synthetic_root=tiny_corpus,
        cache_dir=state / "features",
        tracking_uri=uri,
        device=CPU,
        seed=0,
    )
    # aggressive: from the second trial on, a trial below the median of earlier trials at any epoch stops
    aggressive = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    first = tune_probe(checkpoint, "synth_pitch", BASE, n_trials=4, pruner=aggressive, **common)
    assert first.n_complete + first.n_pruned == 4 and first.n_failed == 0
    # "interrupted" here; a new call continues the same study with 3 more trials
    second = tune_probe(checkpoint, "synth_pitch", BASE, n_trials=3, pruner=aggressive, **common)

    study = optuna.load_study(study_name="pitch", storage=open_storage(journal))
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(7))
    assert second.n_complete + second.n_pruned == 7 and second.best_value >= first.best_value
    assert TrialState.PRUNED in {t.state for t in trials}, [t.state for t in trials]
    # trial 0 is the base settings; the resumed run does not replay the first run's TPE start-up samples
    assert trials[0].params == {
        "lr": 5e-3,
        "dropout": 0.2,
        "hidden_dim": 512,
        "weight_decay": 1e-6,
        "batch_size": 64,
        "layers": "all",
        "standardize": True,
    }
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 7
    for t in trials:
        if t.state == TrialState.COMPLETE:  # objective = best validation accuracy of the per-epoch reports
            assert t.value == max(t.intermediate_values.values())
            assert 0.0 <= t.user_attrs["test"]["acc"] <= 1.0 and t.user_attrs["epochs"] >= 1
        else:
            assert len(t.intermediate_values) < BASE.max_epochs and "test" not in t.user_attrs
    best = study.best_trial
    assert (second.best_number, second.best_params, second.best_test) == (
        best.number,
        best.params,
        best.user_attrs["test"],
    )
    assert second.best_test["acc"] > 1 / 12  # chance is 1/12 on 12 pitch classes

    client = MlflowClient(uri)
    assert second.study_run_id == first.study_run_id  # the resumed study keeps its MLflow run
    study_run = client.get_run(first.study_run_id)
    assert study_run.data.tags["musicssl.kind"] == "probe_study"
    assert study_run.data.tags["musicssl.task"] == "synth_pitch"
    assert study_run.data.metrics["best_valid/acc"] == pytest.approx(second.best_value)
    children = _children(client, study_run.info.experiment_id, first.study_run_id)
    assert len(children) == 7
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    for t in trials:
        run = by_trial[t.number]
        assert run.data.params == {k: str(v) for k, v in t.params.items()}
        assert run.data.tags["optuna.state"] == t.state.name
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["best_valid/acc"] == pytest.approx(t.value)
            assert run.data.metrics["test/acc"] == pytest.approx(t.user_attrs["test"]["acc"])
        else:
            assert run.info.status == "KILLED"
        curve = client.get_metric_history(run.info.run_id, "valid/acc")
        assert [m.step for m in curve] == sorted(t.intermediate_values)

    with pytest.raises(ValueError, match="tunes task 'synth_pitch'"):  # one study, one task
        tune_probe(checkpoint, "synth_key", BASE, n_trials=1, **common)


def _worker(
    checkpoint: Path, corpus: Path, tmp: Path, cache: Path, uri: str, seed: int
) -> tuple[int, str | None]:
    torch.set_num_threads(1)
    r = tune_probe(
        checkpoint,
        "synth_pitch",
        BASE,
        n_trials=2,
        storage=str(tmp / "shared.journal"),
        study_name="shared",
        synthetic_root=corpus,
        cache_dir=cache,
        tracking_uri=uri,
        device=CPU,
        seed=seed,
    )
    return len(r.trial_run_ids), r.study_run_id


def test_two_processes_share_one_journal_study(
    checkpoint: Path, tiny_corpus: Path, state: Path, tracking_uri: str, tmp_path: Path
) -> None:
    # the driver creates the study, the MLflow store and the study run (and fills the feature cache) first
    made = tune_probe(
        checkpoint,
        "synth_pitch",
        BASE,
        n_trials=0,
        storage=str(tmp_path / "shared.journal"),
        study_name="shared",
        synthetic_root=tiny_corpus,
        cache_dir=state / "features",
        tracking_uri=tracking_uri,
        device=CPU,
    )
    assert made.n_complete == 0 and made.best_number == -1
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        out = pool.starmap(
            _worker,
            [(checkpoint, tiny_corpus, tmp_path, state / "features", tracking_uri, seed) for seed in (1, 2)],
        )
    assert [n for n, _ in out] == [2, 2] and {run for _, run in out} == {made.study_run_id}

    study = optuna.load_study(study_name="shared", storage=open_storage(str(tmp_path / "shared.journal")))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == 4
    client = MlflowClient(tracking_uri)
    exp = client.get_run(made.study_run_id).info.experiment_id
    assert len(_children(client, exp, made.study_run_id)) == 4


def test_cli_prints_the_best_trial_and_the_dashboard_command(
    checkpoint: Path,
    tiny_corpus: Path,
    state: Path,
    tracking_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_tune_parser(parser.add_subparsers(dest="command"))
    db = tmp_path / "optuna.db"
    args = parser.parse_args(
        [
            "tune",
            str(checkpoint),
            "window_seconds=1.5",
            "standardize=true",
            "max_epochs=10",
            "--task",
            "synth_pitch",
            "--trials",
            "2",
            "--storage",
            f"sqlite:///{db}",
            "--state-dir",
            str(state),
            "--corpus",
            str(tiny_corpus),
            "--tracking-uri",
            tracking_uri,
        ]
    )
    assert args.func(args) == 0 and args.func is tune_cli
    out = capsys.readouterr().out
    assert "2 complete, 0 pruned" in out and "best trial " in out
    assert f"optuna-dashboard sqlite:///{db}" in out
    study = optuna.load_study(
        study_name=optuna.get_all_study_names(f"sqlite:///{db}")[0], storage=f"sqlite:///{db}"
    )
    assert study.study_name.startswith("probe-synth_pitch-") and len(study.trials) == 2

    with pytest.raises(ValueError, match="journal file path ending in .journal or .log"):
        open_storage(str(tmp_path / "study.db"))
    bad = parser.parse_args(
        ["tune", str(checkpoint), "--task", "synth_pich", "--trials", "1", "--storage", "x.db"]
    )
    with pytest.raises(ConfigError) as err:  # both problems at once, before anything starts
        tune_cli(bad)
    assert len(err.value.problems) == 2 and "known: " in err.value.problems[1]


def test_beat_task_is_tuned_through_the_frame_level_probe(checkpoint: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    base = ProbeConfig(tasks=("synth_beat",), max_epochs=3, lr=1e-3)
    result = tune_probe(checkpoint, "synth_beat", base, n_trials=2, storage=str(tmp_path / "beat.journal"),
                        study_name="beat", synthetic_root=tiny_corpus, cache_dir=tmp_path / "features",
                        device=CPU, seed=0)
    assert result.n_complete == 2 and result.n_failed == 0
    assert 0.0 <= result.best_value <= 1.0
    assert set(result.best_test) >= {"beat_f", "beat_precision", "beat_recall"}


def test_trials_of_a_killed_process_are_marked_failed_when_the_study_resumes(
    checkpoint: Path, tiny_corpus: Path, state: Path, tracking_uri: str, tmp_path: Path
) -> None:
    journal = tmp_path / "killed.journal"
    cmd = [sys.executable, "-m", "musicssl", "probe", "tune", str(checkpoint), "window_seconds=1.5",
           "standardize=true", "max_epochs=3000", "early_stop_patience=3000", "--task", "synth_pitch", "--trials", "50",
           "--storage", str(journal), "--study", "killed", "--state-dir", str(state), "--corpus", str(tiny_corpus),
           "--tracking-uri", tracking_uri]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    running = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not running:  # a trial past its first epoch: then kill -9
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            time.sleep(0.5)
            if journal.exists():
                with contextlib.suppress(KeyError):  # the study is being created
                    trials = optuna.load_study(study_name="killed", storage=open_storage(str(journal))).trials
                    running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
        assert running, "no trial got past its first epoch within 180 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    study = optuna.load_study(study_name="killed", storage=open_storage(str(journal)))
    (victim,) = [t for t in study.trials if t.state == TrialState.RUNNING]  # the trial it was running when killed
    assert victim.user_attrs[OWNER]["pid"] == proc.pid
    client = MlflowClient(tracking_uri)
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "RUNNING"

    resumed = tune_probe(checkpoint, "synth_pitch", BASE.model_copy(update={"max_epochs": 3}), n_trials=1,
                         storage=str(journal), study_name="killed", synthetic_root=tiny_corpus,
                         cache_dir=state / "features", tracking_uri=tracking_uri, device=CPU)
    assert [n for n, _ in resumed.orphaned] == [victim.number]
    assert f"process {proc.pid} on " in resumed.orphaned[0][1]
    study = optuna.load_study(study_name="killed", storage=open_storage(str(journal)))
    states = {t.number: t.state for t in study.trials}
    assert states[victim.number] == TrialState.FAIL and resumed.n_failed == 1
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states.values()) == len(states) - 1
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["musicssl.error"].startswith("orphaned: its process")


def test_only_dead_or_silent_trials_count_as_orphans(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "o.journal"))
    study = optuna.create_study(storage=storage, study_name="o")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    attrs = [
        {OWNER: orphans.owner()},  # this process: alive
        {OWNER: orphans.owner() | {"pid": dead.pid}},  # ended
        {OWNER: {"host": "elsewhere", "pid": 1, "start": 0}, ALIVE: time.time() - 7200},  # silent for 2 h
        {OWNER: {"host": "elsewhere", "pid": 1, "start": 0}, ALIVE: time.time() - 60},  # reported a minute ago
        {OWNER: orphans.owner() | {"start": -1}},  # this pid, but another process's start time (pid reused)
    ]
    for a in attrs:
        trial = study.ask()
        for k, v in a.items():
            trial.set_user_attr(k, v)
    marked = orphans.fail_orphaned_trials(optuna.storages.get_storage(storage), "o", grace_s=3600)
    assert [n for n, _ in marked] == [1, 2, 4]
    assert "has not reported for 72" in marked[1][1] and "on elsewhere" in marked[1][1]
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.FAIL,
                                              TrialState.RUNNING, TrialState.FAIL]
