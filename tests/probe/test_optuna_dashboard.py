"""optuna-dashboard (the `dashboard` extra) opens a `probe tune` study, as `dashboard_command` prints it.

The real console script is started on localhost for each storage (sqlite URL, journal file) and the study is
read back over its JSON API (`GET /api/studies`, `GET /api/studies/<id>`).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from musicssl.config import ProbeConfig
from musicssl.probe.tune import tune_probe
from musicssl.probe.tune_cli import dashboard_command

pytest.importorskip("optuna_dashboard", reason="the `dashboard` extra: pip install -e '.[dashboard]'")

SCRIPT = Path(sys.executable).parent / "optuna-dashboard"  # the console script of this environment
BASE = ProbeConfig(tasks=("synth_pitch",), window_seconds=1.5, standardize=True, lr=5e-3, max_epochs=4)
STARTUP_S = 60.0
CACHE_S = 2.0  # optuna-dashboard re-reads a study's trials at most this often (under 100 trials)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """`serve(command)`: start `command` (as `dashboard_command` prints it) on a free port; its base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(command: str) -> str:
        argv = shlex.split(command)
        assert argv[0] == "optuna-dashboard"
        port = _free_port()
        log = tmp_path / f"dashboard-{port}.log"
        elsewhere = tmp_path / "elsewhere"  # not the folder the study was written from
        elsewhere.mkdir(exist_ok=True)
        env = os.environ | {"XDG_RUNTIME_DIR": str(tmp_path)}  # gunicorn's control socket, else in $HOME
        with log.open("wb") as out:
            proc = subprocess.Popen([str(SCRIPT), *argv[1:], "--host", "127.0.0.1", "--port", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=elsewhere, env=env,
                                    start_new_session=True)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                _get(f"{url}/api/meta")
                return url
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"optuna-dashboard did not answer within {STARTUP_S:.0f} s")
                time.sleep(0.2)

    yield start
    for proc in procs:  # gunicorn, when installed, runs workers: end the whole process group
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_dashboard_reads_back_a_tuned_study(
    kind: str, checkpoint: Path, tiny_corpus: Path, tmp_path: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a relative path, as a user types it: dashboard_command makes it absolute (the server runs elsewhere)
    storage = {"sqlite": "sqlite:///studies/pitch.db", "journal": "studies/pitch.journal"}[kind]
    monkeypatch.chdir(tmp_path)
    common: dict[str, Any] = dict(storage=storage, study_name=f"pitch-{kind}", synthetic_root=tiny_corpus,
                                  cache_dir=tmp_path / "features", device=torch.device("cpu"), seed=0)
    result = tune_probe(checkpoint, "synth_pitch", BASE, n_trials=3, **common)
    assert result.n_complete + result.n_pruned == 3 and result.n_complete >= 1
    command = dashboard_command(storage)
    assert str(tmp_path / "studies") in command

    url = serve(command)
    (summary,) = _get(f"{url}/api/studies")["study_summaries"]
    assert (summary["study_name"], summary["directions"]) == (f"pitch-{kind}", ["maximize"])
    detail = _get(f"{url}/api/studies/{summary['study_id']}")
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    states = [t["state"] for t in trials]
    assert set(states) <= {"Complete", "Pruned"}
    assert states.count("Complete") == result.n_complete and states.count("Pruned") == result.n_pruned
    (best,) = detail["best_trials"]
    assert best["number"] == result.best_number
    assert best["values"] == [result.best_value]
    assert {p["name"]: p["param_external_value"] for p in best["params"]} == {
        k: str(v) for k, v in result.best_params.items()
    }
    user_attrs = {a["key"]: a["value"] for a in best["user_attrs"]}  # a dict arrives as its JSON text
    assert json.loads(user_attrs["test"]) == result.best_test

    # the study goes on while the dashboard is open (a resumed run, or another worker): it shows the new trial
    resumed = tune_probe(checkpoint, "synth_pitch", BASE, n_trials=1, **common)
    deadline = time.monotonic() + 3 * CACHE_S
    while len(detail["trials"]) == 3 and time.monotonic() < deadline:  # it caches trials for CACHE_S
        time.sleep(0.5)
        detail = _get(f"{url}/api/studies/{summary['study_id']}")
    assert [t["number"] for t in detail["trials"]] == [0, 1, 2, 3]
    assert detail["trials"][3]["state"] in ("Complete", "Pruned")
    assert detail["best_trials"][0]["values"] == [resumed.best_value]


def test_dashboard_command_names_absolute_paths_and_the_journal_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert dashboard_command("sqlite:///a.db") == f"optuna-dashboard sqlite:///{tmp_path}/a.db"
    assert dashboard_command(f"sqlite:///{tmp_path}/a.db") == f"optuna-dashboard sqlite:///{tmp_path}/a.db"
    assert dashboard_command("postgresql://u@db/optuna") == "optuna-dashboard postgresql://u@db/optuna"
    assert shlex.split(dashboard_command("my studies/x.journal")) == [
        "optuna-dashboard", "--storage-class", "JournalFileStorage", f"{tmp_path}/my studies/x.journal"
    ]
