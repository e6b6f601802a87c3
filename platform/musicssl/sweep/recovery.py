"""What an interrupted sweep leaves behind, how it is closed, and which trials a resumed sweep runs again.

The ground truth is the trials' own state, not Ray Tune's: each trial's MLflow run (found by its trial key) and its
checkpoints in the state folder (storage every node sees). A resumed sweep starts a fresh Ray Tune run over the
trials that have not ended (`trials_to_run`); each continues its MLflow run from its latest checkpoint. A trial
whose run FINISHED is never run again, nor one the scheduler stopped; a FAILED one only with `--rerun-failed`.

Ctrl-C during a sweep (`graceful_sigint`): Ray Tune stops the trials (its own graceful stop); `close_interrupted`
then marks each trial run not ended as KILLED with the tag `musicssl.interrupted`, tags the parent run and leaves
it RUNNING, so running the same command again resumes the sweep. Probe jobs still queued keep their checkpoint pins
and are submitted again by that next run. A second Ctrl-C stops Tune without its last state save (nothing of ours
depends on it); the bookkeeping after it ignores further Ctrl-C, so nothing is left half-written. The command then
ends with `exit_interrupted`, which stops the Ray node it started itself without Ray's own driver teardown (that
teardown, after an interrupted Tune run, has crashed the process with SIGSEGV now and then).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from mlflow import MlflowClient

from musicssl.sweep.probes import failure_records
from musicssl.tracking.mlflow import find_child_run, log_tags

INTERRUPTED_TAG = "musicssl.interrupted"
EXIT_INTERRUPTED = 130
"""The exit code of an interrupted sweep (128 + SIGINT, as a shell reports Ctrl-C)."""


@contextmanager
def graceful_sigint() -> Iterator[dict[str, int]]:
    """Count Ctrl-C inside the block (``state["count"]``): the first one asks Ray Tune to stop gracefully (through
    its SIGUSR1 handler, the same stop its own Ctrl-C handler makes, which is turned off so that we see the signal),
    a second one raises KeyboardInterrupt."""
    state = {"count": 0}

    def handler(signum: int, frame: Any) -> None:
        state["count"] += 1
        if state["count"] > 1:
            raise KeyboardInterrupt
        print("\n[musicssl] Ctrl-C: stopping the trials; the sweep stays resumable (Ctrl-C again to stop at once)",
              flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(_not_tunes_resume_advice)
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C cannot reach us here anyway
        previous = None
    try:
        yield state
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        tune_log.removeFilter(_not_tunes_resume_advice)


def _not_tunes_resume_advice(record: logging.LogRecord) -> bool:
    """Drop Tune's "Stop signal received" / "Resume experiment with: Tuner.restore(...)" lines: a musicssl sweep
    resumes by running the same command again, which the interrupted run says itself."""
    text = record.getMessage()
    return not text.startswith(("Stop signal received", "Experiment has been interrupted"))


def trial_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> dict[str | None, Any]:
    """The sweep's trial runs by trial key."""
    return {r.data.tags.get("musicssl.trial_key"): r for r in client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`musicssl.kind` = 'trial'",
        max_results=10000)}


def failed_trials(client: MlflowClient, experiment_id: str, parent_id: str) -> list[str]:
    """``"<variant> seed <seed>: <error>"`` for every trial run of the sweep that is FAILED."""
    return [f"{r.data.tags.get('musicssl.variant')} seed {r.data.tags.get('musicssl.seed')}: "
            f"{r.data.tags.get('musicssl.error', 'failed')}"
            for r in trial_runs(client, experiment_id, parent_id).values() if r.info.status == "FAILED"]


def trials_to_run(client: MlflowClient, experiment_id: str, parent_id: str, keys: list[str], *,
                  rerun_failed: bool = False) -> list[str]:
    """The trial keys a (resumed) sweep still has to run: no run yet, still RUNNING (the driver died), cut short by
    Ctrl-C, and with ``rerun_failed`` the FAILED ones; not FINISHED nor stopped early by the scheduler."""
    runs = trial_runs(client, experiment_id, parent_id)
    todo = []
    for key in keys:
        run = runs.get(key)
        status = run.info.status if run is not None else None
        tags = run.data.tags if run is not None else {}
        if status == "FINISHED" or (status == "FAILED" and not rerun_failed):
            continue
        if status == "KILLED" and "musicssl.stopped_early" in tags and INTERRUPTED_TAG not in tags:
            continue  # the scheduler stopped it: its result stands
        todo.append(key)
    return todo


def exit_interrupted() -> NoReturn:
    """End an interrupted sweep command now with `EXIT_INTERRUPTED`, everything already recorded.

    A Ray node this process started (in-process Ray, no `RAY_ADDRESS`) is stopped the way `ray.shutdown` stops it
    (its processes asked to end, then killed), but the driver's own teardown is skipped: after a Tune run cut by a
    second Ctrl-C, Tune's threads can still be inside Ray when that teardown runs, and the process has died of
    SIGSEGV there. Connected to a cluster, nothing of the cluster is touched.
    """
    import sys

    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # set only where this process started the node
    if node is not None and not os.environ.get("RAY_ADDRESS"):
        with sigint_ignored():
            node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(EXIT_INTERRUPTED)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C inside the block (the bookkeeping after an interruption must not be cut in half)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (e.g. under a test runner's worker): nothing to guard
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def close_interrupted(client: MlflowClient, experiment_id: str, parent_id: str, trials: dict[str, dict[str, Any]]
                      ) -> list[str]:
    """Mark the trial runs of ``trials`` that had not ended as KILLED + interrupted (a trial that saw the Ctrl-C
    itself may have tagged itself stopped early: that tag goes) and tag the parent; the parent stays RUNNING.

    Returns:
        The trials that were cut short, as ``"<variant> seed <seed>"``.
    """
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cut = []
    with sigint_ignored():
        for info in trials.values():
            run_id = find_child_run(client, experiment_id, parent_id, info["key"])
            if run_id is None:
                continue
            run = client.get_run(run_id)
            if run.info.status in ("RUNNING", "KILLED"):
                if "musicssl.stopped_early" in run.data.tags:
                    client.delete_tag(run_id, "musicssl.stopped_early")
                log_tags(client, run_id, {INTERRUPTED_TAG: when})
                client.set_terminated(run_id, "KILLED")
                cut.append(f"{info['variant']} seed {info['seed']}")
        log_tags(client, parent_id, {INTERRUPTED_TAG: when})
    return cut


MODES = ("auto", "resume", "fresh", "rerun-failed")
"""How `musicssl sweep` treats an earlier run of the same sweep (same name, state folder and tracking store):
``auto`` resumes an unfinished one and stops at a finished one, ``resume`` insists on resuming, ``fresh`` always
starts a new parent run, ``rerun-failed`` reopens a finished one to rerun its failed trials and probe jobs."""


class SweepStateError(Exception):
    """The earlier runs of a sweep do not allow what was asked (nothing to resume, nothing failed, ...)."""


@dataclass(frozen=True)
class AlreadyRan:
    """A sweep that ran to its end before (``auto`` mode): nothing is run again."""

    parent_run_id: str
    status: str
    failed: int


def earlier_parent(client: MlflowClient | None, record: Path, uri: str, mode: str, folder_of: Any
                   ) -> str | AlreadyRan | None:
    """The parent run this run of the sweep continues, `AlreadyRan`, or None for a new parent run.

    Args:
        client: The sweep's tracking store; None only when `record` does not exist.
        record: The sweep's `sweep.json` (the parent run of its latest run).
        uri: This run's tracking URI (a record of another store does not count).
        mode: One of `MODES`.
        folder_of: parent run id -> that run's work folder (for its failed probe jobs).

    Raises:
        SweepStateError: ``resume`` with nothing unfinished, ``rerun-failed`` with nothing failed.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "fresh":
        return None
    run = None
    if record.exists() and client is not None:
        info = json.loads(record.read_text())
        if info.get("tracking_uri") == uri:
            try:
                run = client.get_run(info["parent_run_id"])
            except Exception:  # the run was deleted or the store replaced: start afresh
                run = None
    if run is not None and run.info.status == "RUNNING":
        return run.info.run_id
    where = f"{record} ({uri})"
    if mode == "resume":
        raise SweepStateError(f"nothing to resume: no unfinished run of this sweep in {where}"
                              + (f"; its latest run {run.info.run_id} is {run.info.status}" if run else ""))
    if run is None:
        if mode == "rerun-failed":
            raise SweepStateError(f"nothing to rerun: this sweep has no earlier run in {where}")
        return None
    assert client is not None
    failed = (len(failed_trials(client, run.info.experiment_id, run.info.run_id))
              + len(failure_records(folder_of(run.info.run_id) / "trials")))
    if mode == "auto":
        return AlreadyRan(run.info.run_id, run.info.status, failed)
    if not failed:
        raise SweepStateError(f"nothing to rerun: the latest run {run.info.run_id} of this sweep has no failed "
                              "trial or probe job")
    client.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id
