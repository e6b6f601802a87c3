"""`musicssl sweep status FILE`: where each trial of a sweep's latest run stands, read from MLflow and the state folder
(it starts nothing: no Ray, no data preparation)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from musicssl.sweep.probes import failure_records, latest_result
from musicssl.sweep.recovery import INTERRUPTED_TAG, trial_runs
from musicssl.sweep.spec import Sweep
from musicssl.sweep.stages import sweep_record, work_dir
from musicssl.tracking.mlflow import resolve_tracking_uri


@dataclass(frozen=True)
class TrialStatus:
    """One trial as the status table shows it."""

    key: str
    variant: str
    seed: int
    state: str  # not started | running | interrupted | finished | failed | stopped early (step S)
    step: int | None  # the step of its latest checkpoint
    probe: str  # the newest finished Average (or task score) and its step
    failures: str  # the trial's error, and how many of its probe jobs failed for good
    checkpoints: Path


def _state(run: object | None) -> str:
    if run is None:
        return "not started"
    status, tags = run.info.status, run.data.tags  # type: ignore[attr-defined]
    if INTERRUPTED_TAG in tags:
        return "interrupted"
    if status == "KILLED" and "musicssl.stopped_early" in tags:
        return f"stopped early (step {int(float(tags['musicssl.stopped_early']))})"
    return {"RUNNING": "running (or its driver died)", "FINISHED": "finished", "FAILED": "failed"}.get(
        status, status.lower())


def sweep_status(sweep: Sweep, state_dir: Path) -> tuple[str, list[TrialStatus]]:
    """A one-line summary of the sweep's latest run and one `TrialStatus` per trial (in the sweep's order).

    Raises:
        FileNotFoundError: The sweep never ran with this state folder.
    """
    cfg = sweep.cfg
    record = sweep_record(state_dir, cfg.name)
    if not record.exists():
        raise FileNotFoundError(f"sweep {cfg.name!r} has not run with the state folder {state_dir} (no {record})")
    info = json.loads(record.read_text())
    client = MlflowClient(info.get("tracking_uri", resolve_tracking_uri(cfg.tracking.uri, state_dir)))
    parent = client.get_run(info["parent_run_id"])
    runs = trial_runs(client, parent.info.experiment_id, parent.info.run_id)
    trials_dir = work_dir(state_dir, cfg.name, parent.info.run_id) / "trials"
    rows = []
    for trial in sweep.trials:
        run, run_dir = runs.get(trial.key), trials_dir / trial.key
        pointer = run_dir / "checkpoints" / "latest"
        step = int(pointer.read_text().strip().split("_")[-1]) if pointer.exists() else None
        newest = latest_result(run_dir, "average")
        failed_jobs = len(failure_records(trials_dir, trial.key))
        tags = run.data.tags if run is not None else {}
        attempts = int(tags.get("musicssl.failures", 1 if "musicssl.error" in tags else 0))
        retried = run is not None and run.info.status != "FAILED"
        error = (f"{attempts} failed attempt(s){' (retried)' if retried else ''}, last: "
                 f"{tags['musicssl.error'][:120]}" if "musicssl.error" in tags else "")
        failures = "; ".join(x for x in (error, f"{failed_jobs} probe job(s) failed" if failed_jobs else "") if x)
        rows.append(TrialStatus(trial.key, trial.variant, trial.seed, _state(run), step,
                                f"{100 * newest[1]:.1f} (step {newest[0]})" if newest else "-", failures or "-",
                                run_dir / "checkpoints"))
    interrupted = " (interrupted)" if INTERRUPTED_TAG in parent.data.tags else ""
    head = (f"sweep {cfg.name!r}: latest run {parent.info.run_id} is {parent.info.status}{interrupted}, "
            f"MLflow {client.tracking_uri}")
    return head, rows


def format_status(head: str, rows: list[TrialStatus]) -> str:
    """The status as a text table."""
    lines = [head, f"{'trial':<16} {'variant':<24} {'seed':>4}  {'state':<28} {'step':>7}  {'Average':<18} failures"]
    for r in rows:
        lines.append(f"{r.key:<16} {r.variant:<24} {r.seed:>4}  {r.state:<28} {r.step if r.step is not None else '-':>7}"
                     f"  {r.probe:<18} {r.failures}")
    lines.append(f"checkpoints: {rows[0].checkpoints.parent.parent}/<trial>/checkpoints" if rows else "no trials")
    return "\n".join(lines)
