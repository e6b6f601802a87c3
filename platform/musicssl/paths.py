"""Where musicssl keeps things by default: the state folder (corpus, feature cache, MLflow database, sweep records)
and a sweep's HTML report."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """Project-local state folder: $MUSICSSL_HOME or ./.musicssl."""
    return Path(os.environ.get("MUSICSSL_HOME", ".musicssl")).resolve()


def default_report(name: str, state_dir: Path) -> Path:
    """`dashboards/<name>.html` in a checkout; under `ray job submit` (a temporary copy of the working directory)
    the state folder's `dashboards/`, so the report outlives the job."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or not Path("dashboards").is_dir():  # set for `ray job submit`
        return state_dir / "dashboards" / f"{name}.html"
    return Path("dashboards") / f"{name}.html"
