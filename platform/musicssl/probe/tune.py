"""Tune a probe's hyperparameters on one task with Optuna, each trial a child MLflow run.

Features are extracted once (the same cache as `probe/run.py`); every trial trains a head on them with
hyperparameters from TPE, reports its validation metric each epoch to a pruner, and returns the best
validation value. The study lives in an Optuna storage (sqlite URL or journal file), so a run resumes after
an interruption (`n_trials` more trials) and several processes can share one study. Test metrics are
recorded for every trial (user attrs and MLflow) but never used for selection.

The search starts from the checkpoint's own probe section (the settings its run's probe jobs used, with the
command line's `probe.<field>=` overrides on top): that is the first trial of a new study. Search space: the MARBLE
constrained track (lr 5e-5..1e-2; a single state or the learned weighted sum), feature standardisation (on/off),
and the usual probe knobs (dropout, hidden units, weight decay, clips per batch). The command line
(`musicssl probe tune`) is `probe/tune_cli.py`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from musicssl.config import ProbeConfig
from musicssl.probe.beat import probe_beat
from musicssl.probe.orphans import claim, fail_orphaned_trials, heartbeat
from musicssl.probe.protocol import task_lr
from musicssl.probe.run import load_encoder, task_features, train_probe
from musicssl.probe.tasks import get_task
from musicssl.tracking.mlflow import MlflowSink, ensure_experiment, log_params, log_tags, start_run

log = logging.getLogger(__name__)

LR = (5e-5, 1e-2)
DROPOUT = (0.0, 0.5)
HIDDEN_DIMS = (256, 512, 1024)
WEIGHT_DECAY = (1e-6, 1e-2)  # log scale; 1e-6 is as good as no decay for Adam at these learning rates
BATCH_SIZES = (32, 64, 128)  # clips per minibatch, each with all its windows
STANDARDIZE = (True, False)  # z-scored features or raw: raw features of small encoders leave a probe at chance
JOURNAL_SUFFIXES = (".journal", ".log")


@dataclass
class TuneResult:
    """Outcome of a study (all its trials, including those of earlier or concurrent runs)."""

    study_name: str
    storage: str
    task: str
    metric: str
    """The validation metric maximised (the task's monitor)."""
    best_number: int
    best_params: dict[str, Any]
    best_value: float
    best_test: dict[str, float]
    """Test metrics of the best-validation trial."""
    n_complete: int
    n_pruned: int
    n_failed: int
    study_run_id: str | None = None
    tracking_uri: str | None = None
    trial_run_ids: dict[int, str] = field(default_factory=dict)
    orphaned: list[tuple[int, str]] = field(default_factory=list)
    """Trials of killed processes this run marked FAIL: (number, reason)."""


def open_storage(storage: str) -> str | BaseStorage:
    """An Optuna storage: a journal file (path ending in .journal or .log, file lock) or a database URL.

    sqlite gets a long busy timeout and a heartbeat, so a trial of a killed process is marked FAILED later.
    """
    if "://" not in storage:
        if not storage.endswith(JOURNAL_SUFFIXES):
            raise ValueError(
                f"storage {storage!r}: expected an Optuna storage URL (sqlite:///study.db, "
                f"postgresql://...) or a journal file path ending in {' or '.join(JOURNAL_SUFFIXES)}"
            )
        path = Path(storage).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeat_interval is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                storage,
                engine_kwargs={"connect_args": {"timeout": 60}},
                heartbeat_interval=60,
                grace_period=180,
            )
    return storage


def suggest_params(trial: optuna.Trial, num_states: int) -> dict[str, Any]:
    """The trial's probe hyperparameters (`layers` as a string: 'all', 'transformer' or a state index)."""
    return {
        "lr": trial.suggest_float("lr", *LR, log=True),
        "dropout": trial.suggest_float("dropout", *DROPOUT),
        "hidden_dim": trial.suggest_categorical("hidden_dim", HIDDEN_DIMS),
        "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY, log=True),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
        "layers": trial.suggest_categorical("layers", _layer_choices(num_states)),
        "standardize": trial.suggest_categorical("standardize", STANDARDIZE),
    }


def probe_config(base: ProbeConfig, params: dict[str, Any]) -> ProbeConfig:
    """`base` with a trial's hyperparameters (validated)."""
    layers = params.get("layers", base.layers)
    update = dict(params) | {"layers": int(layers) if str(layers).isdigit() else layers}
    return ProbeConfig.model_validate(base.model_dump() | update)


def tune_probe(
    checkpoint: Path,
    task_name: str,
    base: ProbeConfig,
    *,
    n_trials: int,
    storage: str,
    study_name: str | None = None,
    synthetic_root: Path | None,
    cache_dir: Path,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
    seed: int = 0,
    timeout: float | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    data_roots: dict[str, Path] | None = None,
    device: torch.device | None = None,
    enqueue_base: bool = True,
) -> TuneResult:
    """Run `n_trials` more trials of the probe study of (`checkpoint`, `task_name`) and summarise the study.

    Args:
        checkpoint: musicssl checkpoint folder, Hugging Face model folder or fairseq `.pt`.
        task_name: a registered probe task.
        base: probe settings the search starts from (epochs, patience, windows, ...); the searched fields
            are overridden per trial.
        n_trials: trials to run in this call (0 only creates the study and its MLflow run, e.g. before
            starting several workers).
        storage: `sqlite:///file.db` (or another database URL) or a journal file path (`.journal`/`.log`).
        study_name: default `probe-<task>-<encoder hash>`. An existing study of that name is continued.
        tracking_uri: MLflow store; None = no MLflow logging. The store must exist before several
            processes open it at once (a fresh sqlite DB races on its migrations).
        parent_run_id, experiment_id: where the study run goes (default: the parent's experiment, else
            `musicssl`).
        seed: TPE seed; it is mixed with the number of trials already in the study, so a resumed study does
            not repeat its first trials. Workers started together on a fresh study should use different seeds.
        pruner: default `MedianPruner(n_startup_trials=5, n_warmup_steps=5)`.
        enqueue_base: the first trial of a new study is `base`'s own settings (where inside the space).
    """
    task = get_task(task_name)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder, digest, normalize = load_encoder(checkpoint)
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
    name = study_name or f"probe-{task.name}-{digest[:12]}"
    opened = optuna.storages.get_storage(open_storage(storage))
    study = optuna.create_study(
        storage=opened,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        pruner=pruner,
    )
    _check_study(study, task.name, digest, str(checkpoint))  # before extracting: a wrong study fails fast
    orphaned = fail_orphaned_trials(opened, name, tracking_uri)  # trials of killed processes (probe/orphans.py)
    for number, why in orphaned:
        log.warning("study %s: trial %d marked FAIL: %s", name, number, why)
    sources: dict[str, Any] = {"synthetic_root": synthetic_root, "cache_dir": cache_dir, "data_roots": data_roots,
                               "device": device}
    if task.kind == "beat":  # frame-level: probe_beat extracts (once, cached) inside each trial
        num_states = encoder.cfg.num_layers + 1
    else:
        feats, targets, splits = task_features(encoder, digest, normalize, task, base, **sources)
        num_states = feats.x.shape[1]
    metric = task.metrics[0]
    n_existing = len(study.trials)
    study.sampler = optuna.samplers.TPESampler(
        seed=int(np.random.SeedSequence([seed, n_existing]).generate_state(1)[0])
    )
    if enqueue_base and n_existing == 0:
        base_params = _base_params(base, task_lr(task, base), num_states)
        study.enqueue_trial(base_params, user_attrs={"musicssl.base": True})

    client = MlflowClient(tracking_uri) if tracking_uri else None
    study_run = None
    if client is not None:
        info = {
            "task": task.name,
            "checkpoint": str(checkpoint),
            "storage": storage,
            "tracking_uri": tracking_uri,
        }
        study_run = _study_run(client, study, base, info, parent_run_id, experiment_id)
    run_ids: dict[int, str] = {}

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, num_states)
        claim(trial)
        run = _TrialRun(client, study_run, trial, task.name, params)
        if run.run_id:
            run_ids[trial.number] = run.run_id

        def on_epoch(epoch: int, value: float) -> None:
            run.log({f"valid/{metric}": value}, epoch)
            heartbeat(trial)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: valid {metric}={value:.4f} below the pruner's bar")

        try:
            trial_cfg = probe_config(base, params)
            if task.kind == "beat":
                res = probe_beat(encoder, digest, normalize, task, trial_cfg, tolerance=trial_cfg.beat_tolerance,
                                 on_epoch=on_epoch, **sources)
            else:
                res = train_probe(task, feats, targets, splits, trial_cfg, device, on_epoch=on_epoch)
        except BaseException as exc:
            run.end(exc)
            raise
        for key, value in {"test": res.test, "test_score": res.score, "epochs": res.epochs}.items():
            trial.set_user_attr(key, value)
        run.log(
            {f"best_valid/{metric}": res.best_valid, "epochs": float(res.epochs), "test/score": res.score}
            | {f"test/{k}": v for k, v in res.test.items()},
            res.epochs,
        )
        run.end(None)
        return res.best_valid

    try:
        if n_trials > 0:
            study.optimize(objective, n_trials=n_trials, timeout=timeout, gc_after_trial=False)
    finally:
        result = summarise(study, storage, task.name, metric)
        result.tracking_uri, result.trial_run_ids, result.orphaned = tracking_uri, run_ids, orphaned
        if client is not None and study_run is not None:
            result.study_run_id = study_run[0]
            _close_study_run(client, study_run[0], result)
    return result


class _TrialRun:
    """The MLflow child run of one trial under the study run; does nothing without a tracking store."""

    def __init__(
        self,
        client: MlflowClient | None,
        study_run: tuple[str, str] | None,
        trial: optuna.Trial,
        task: str,
        params: dict[str, Any],
    ) -> None:
        self.client, self.run_id, self.sink = client, None, None
        if client is None or study_run is None:
            return
        self.run_id = start_run(
            client,
            study_run[1],
            f"trial {trial.number}",
            {
                "musicssl.kind": "probe_trial",
                "musicssl.task": task,
                "optuna.study": trial.study.study_name,
                "optuna.trial": str(trial.number),
            },
            parent_run_id=study_run[0],
        )
        log_params(client, self.run_id, params)
        trial.set_user_attr("mlflow_run_id", self.run_id)
        self.sink = MlflowSink(client, self.run_id, flush_every=200)  # per-epoch values, written in batches

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.sink is not None:
            self.sink.log(metrics, step)

    def end(self, exc: BaseException | None) -> None:
        """Flush, tag the Optuna state and close the run (KILLED for a pruned or interrupted trial)."""
        if self.client is None or self.sink is None or self.run_id is None:
            return
        self.sink.flush()
        pruned = isinstance(exc, optuna.TrialPruned)
        tags = {"optuna.state": "COMPLETE" if exc is None else "PRUNED" if pruned else "FAIL"}
        if exc is not None and not pruned:
            tags["musicssl.error"] = f"{type(exc).__name__}: {exc}"[:4000]
        log_tags(self.client, self.run_id, tags)
        status = (
            "FINISHED" if exc is None else "FAILED" if isinstance(exc, Exception) and not pruned else "KILLED"
        )
        self.client.set_terminated(self.run_id, status)


def summarise(study: optuna.Study, storage: str, task: str, metric: str) -> TuneResult:
    """Best trial and trial counts of `study`."""
    trials = study.get_trials(deepcopy=False)
    count = {
        s: sum(t.state == s for t in trials)
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    best: FrozenTrial | None = study.best_trial if count[TrialState.COMPLETE] else None
    return TuneResult(
        study.study_name,
        storage,
        task,
        metric,
        best_number=best.number if best else -1,
        best_params=dict(best.params) if best else {},
        best_value=float(best.value) if best and best.value is not None else float("nan"),
        best_test=dict(best.user_attrs.get("test", {})) if best else {},
        n_complete=count[TrialState.COMPLETE],
        n_pruned=count[TrialState.PRUNED],
        n_failed=count[TrialState.FAIL],
    )


def _layer_choices(num_states: int) -> list[str]:
    return ["all", "transformer", *(str(i) for i in range(num_states))]


def _base_params(base: ProbeConfig, lr: float, num_states: int) -> dict[str, Any]:
    """`base`'s searched settings (with the lr it trains with) that lie inside the space; the rest are sampled."""
    wd = max(base.weight_decay, WEIGHT_DECAY[0])  # no decay -> the smallest in the space
    layers = str(base.layers)
    inside = {
        "lr": (lr, LR[0] <= lr <= LR[1]),
        "dropout": (base.dropout, DROPOUT[0] <= base.dropout <= DROPOUT[1]),
        "hidden_dim": (base.hidden_dim, base.hidden_dim in HIDDEN_DIMS),
        "weight_decay": (wd, wd <= WEIGHT_DECAY[1]),
        "batch_size": (base.batch_size, base.batch_size in BATCH_SIZES),
        "layers": (layers, layers in _layer_choices(num_states)),
        "standardize": (base.standardize, True),
    }
    return {k: v for k, (v, ok) in inside.items() if ok}


def _check_study(study: optuna.Study, task: str, digest: str, checkpoint: str) -> None:
    """Tag a new study with its task and encoder; refuse to continue a study of another task or encoder."""
    attrs = study.user_attrs
    mine = {"musicssl.task": task, "musicssl.encoder_sha256": digest}
    if any(k in attrs and attrs[k] != v for k, v in mine.items()):
        raise ValueError(
            f"study {study.study_name!r} tunes task {attrs.get('musicssl.task')!r} on checkpoint "
            f"{attrs.get('musicssl.checkpoint')!r}, not {task!r} on {checkpoint!r}: "
            f"pass another study name"
        )
    for k, v in (mine | {"musicssl.checkpoint": checkpoint}).items():
        if k not in attrs:
            study.set_user_attr(k, v)


def _study_run(
    client: MlflowClient,
    study: optuna.Study,
    base: ProbeConfig,
    info: dict[str, Any],
    parent_run_id: str | None,
    experiment_id: str | None,
) -> tuple[str, str]:
    """(run id, experiment id) of the study's MLflow run: the one recorded in the study, else a new one.

    `info` holds task, checkpoint, storage and tracking_uri.
    """
    attrs = study.user_attrs
    if attrs.get("mlflow_tracking_uri") == info["tracking_uri"] and attrs.get("mlflow_run_id"):
        try:
            run = client.get_run(attrs["mlflow_run_id"])
        except MlflowException as exc:  # the store was replaced or the run deleted: start a new study run
            log.warning(
                "study %s: MLflow run %s not found (%s); starting a new study run",
                study.study_name,
                attrs["mlflow_run_id"],
                exc,
            )
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, run.info.experiment_id
    if experiment_id is None:
        experiment_id = (
            client.get_run(parent_run_id).info.experiment_id
            if parent_run_id
            else ensure_experiment(client, "musicssl")
        )
    tags = {
        "musicssl.kind": "probe_study",
        "musicssl.task": info["task"],
        "optuna.study": study.study_name,
        "optuna.storage": info["storage"],
        "musicssl.checkpoint": info["checkpoint"],
    }
    run_id = start_run(client, experiment_id, study.study_name, tags, parent_run_id=parent_run_id)
    params = {f"base.{k}": v for k, v in base.model_dump(mode="json").items()}
    log_params(client, run_id, params | {"task": info["task"], "checkpoint": info["checkpoint"]})
    study.set_user_attr("mlflow_tracking_uri", info["tracking_uri"])
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id, experiment_id


def _close_study_run(client: MlflowClient, run_id: str, result: TuneResult) -> None:
    """Study summary on the study run (step = trials finished so far), then mark it finished."""
    done = result.n_complete + result.n_pruned + result.n_failed
    metrics: dict[str, float] = {
        "n_complete": result.n_complete,
        "n_pruned": result.n_pruned,
        "n_failed": result.n_failed,
    }
    if result.best_number >= 0:
        metrics |= {f"best_valid/{result.metric}": result.best_value} | {
            f"best_test/{k}": v for k, v in result.best_test.items()
        }
        log_tags(
            client,
            run_id,
            {"optuna.best_trial": result.best_number, "optuna.best_params": repr(result.best_params)},
        )
    sink = MlflowSink(client, run_id)
    sink.log({k: float(v) for k, v in metrics.items()}, step=done)
    client.set_terminated(run_id, "FINISHED")
