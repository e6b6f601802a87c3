"""Helpers shared by the sweep tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient


def runs_by_kind(state: Path) -> tuple[MlflowClient, dict[str, list[Run]]]:
    """The sqlite MLflow store of a state folder, and its runs grouped by the `musicssl.kind` tag."""
    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    kinds: dict[str, list[Run]] = {}
    for r in runs:
        kinds.setdefault(r.data.tags.get("musicssl.kind", ""), []).append(r)
    return client, kinds


@pytest.fixture(scope="session")
def mlflow_runs() -> Callable[[Path], tuple[MlflowClient, dict[str, list[Run]]]]:
    """`runs_by_kind`, as a fixture for module-scoped sweep fixtures."""
    return runs_by_kind
