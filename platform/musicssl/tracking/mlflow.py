"""MLflow bookkeeping: the driver creates the store, experiment and sweep parent run before any trial starts
(a fresh sqlite DB opened by many processes at once races on its migrations); trials and probes log to
child runs by explicit run id through `MlflowClient`, in batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

MAX_PARAM_LEN = 6000


def sqlite_uri(path: Path) -> str:
    """`sqlite:///` URI of a database file (absolute)."""
    return f"sqlite:///{path.resolve()}"


def resolve_tracking_uri(explicit: str | None, state_dir: Path) -> str:
    """The tracking URI every musicssl command uses: `explicit` (a flag or the sweep's `tracking.uri`), else
    ``$MLFLOW_TRACKING_URI``, else the state folder's sqlite DB."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(state_dir / "mlflow.db")


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None = None) -> str:
    """Id of experiment `name`, created (with a local artifact root if given) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    experiment_id = client.create_experiment(name, artifact_location=location)
    # MLflow 3's UI opens an experiment of this kind on its runs table (not the GenAI overview)
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    return experiment_id


def git_tags() -> dict[str, str]:
    """`mlflow.source.git.commit` (and whether the tree had changes) of the musicssl checkout, if it is one."""
    repo = Path(__file__).resolve().parents[3]
    if not (repo / ".git").exists():
        return {}
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "musicssl.git_dirty": str(bool(dirty)).lower()}


def start_run(client: MlflowClient, experiment_id: str, name: str, tags: Mapping[str, str],
              parent_run_id: str | None = None) -> str:
    """Create a RUNNING run (a child when `parent_run_id` is given); return its id."""
    all_tags = dict(tags) | {"mlflow.runName": name}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def find_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, key: str) -> str | None:
    """The child run of `parent_run_id` tagged `musicssl.trial_key=key` (so a resumed trial reuses its run)."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`musicssl.trial_key` = '{key}'"), max_results=1)
    return runs[0].info.run_id if runs else None


def param_value(value: Any) -> str:
    """Params are strings: lists and tuples as JSON, long values truncated to MLflow's limit."""
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:MAX_PARAM_LEN]


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params once; a run that already has them (a resumed trial) is left as it is."""
    existing = client.get_run(run_id).data.params
    items = [Param(k, param_value(v)) for k, v in params.items() if k not in existing]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set several tags in one call."""
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


class MlflowSink:
    """A `MetricSink` that writes each `log` call's metrics with one `log_batch` (not one call per number).

    `flush_every` > 1 buffers that many metrics before writing (for very frequent logging to a remote server).
    `logged_through` ({key prefix: step}) drops the points of keys with that prefix at or before that step: a run
    resumed from a checkpoint recomputes steps it had already logged, and its history must not repeat them.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 1,
                 logged_through: Mapping[str, int] | None = None) -> None:
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self.logged_through = dict(logged_through or {})
        self.buffer: list[Metric] = []

    def _new(self, key: str, step: int) -> bool:
        return not any(key.startswith(prefix) and step <= last for prefix, last in self.logged_through.items())

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), now, step) for k, v in metrics.items() if self._new(k, step)]
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.buffer), 1000):
            self.client.log_batch(self.run_id, metrics=self.buffer[start:start + 1000])
        self.buffer = []
