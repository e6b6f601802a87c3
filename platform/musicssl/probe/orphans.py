"""Optuna trials whose process died: found and marked FAIL when the study is opened again.

A journal storage has no heartbeat, so the trial a killed `probe tune` was running stays RUNNING for good (sqlite's
heartbeat marks it only after its grace period). Each trial records who runs it (`OWNER`: host, pid and the
process's start time, which tells a reused pid apart) and when it last finished an epoch (`ALIVE`). Opening the
study marks a RUNNING trial FAIL when its process is gone from this host, or, for a trial of another host, when it
has not finished an epoch for `grace_s` seconds; its MLflow run is closed FAILED with the reason.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from musicssl.tracking.mlflow import log_tags

OWNER = "musicssl.owner"
ALIVE = "musicssl.alive"


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot) from /proc; None when it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def owner() -> dict[str, Any]:
    """This process, as recorded in a trial's `OWNER` attr."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid())}


def claim(trial: optuna.Trial) -> None:
    """Record that this process runs `trial` (at its start)."""
    trial.set_user_attr(OWNER, owner())
    trial.set_user_attr(ALIVE, time.time())


def heartbeat(trial: optuna.Trial) -> None:
    """Record that `trial` is alive (after each epoch)."""
    trial.set_user_attr(ALIVE, time.time())


def _orphaned(attrs: dict[str, Any], started: float, grace_s: float) -> str | None:
    """Why a RUNNING trial with these attrs is dead, or None when it may still run."""
    who = attrs.get(OWNER)
    if isinstance(who, dict) and who.get("host") == socket.gethostname():
        ticks = _start_ticks(int(who["pid"]))
        if ticks is None or (who.get("start") is not None and ticks != who["start"]):
            return f"its process {who['pid']} on {who['host']} is gone"
        return None
    quiet = time.time() - float(attrs.get(ALIVE, started))
    if quiet > grace_s:
        where = f"on {who['host']} " if isinstance(who, dict) else ""
        return f"its process {where}has not reported for {quiet:.0f} s (more than {grace_s:.0f} s)"
    return None


def fail_orphaned_trials(storage: BaseStorage, study_name: str, tracking_uri: str | None = None, *,
                         grace_s: float = 3600.0) -> list[tuple[int, str]]:
    """Mark the study's RUNNING trials whose process died FAIL (and their MLflow runs FAILED).

    Returns:
        ``(trial number, reason)`` per trial marked.
    """
    study_id = storage.get_study_id_from_name(study_name)
    marked = []
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        why = _orphaned(trial.user_attrs, started, grace_s)
        if why is None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "musicssl.error", f"orphaned: {why}")
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            continue  # another process finished it meanwhile
        marked.append((trial.number, why))
        run_id = trial.user_attrs.get("mlflow_run_id")
        if tracking_uri and run_id:
            client = MlflowClient(tracking_uri)
            if client.get_run(run_id).info.status == "RUNNING":
                log_tags(client, run_id, {"optuna.state": "FAIL", "musicssl.error": f"orphaned: {why}"})
                client.set_terminated(run_id, "FAILED")
    return marked
