"""`musicssl dashboard`, run as a real subprocess (``python -m musicssl dashboard ...``) against a real MLflow sqlite
store: where the tracking URI and the output come from, logging the page to the sweep's parent run, CSV / LaTeX,
--summary, the one-line errors (exit 2), and --live while the sweep's parent run is RUNNING."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from musicssl.dashboards.report import build_report

try:  # tests/ may become a package later
    from .ablation_fixture import TASKS, TRIALS, AblationStore, write_ablation_sweep
except ImportError:
    from ablation_fixture import TASKS, TRIALS, AblationStore, write_ablation_sweep

T975_DF2 = 4.302652729749464  # t(0.975, 2), from a printed t table
CLEARED = ("MLFLOW_TRACKING_URI", "MUSICSSL_HOME", "RAY_JOB_CONFIG_JSON_ENV_VAR")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> AblationStore:
    return write_ablation_sweep(tmp_path_factory.mktemp("cli-store"))


def _env(**set_: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return env | set_


def dashboard(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m musicssl dashboard ARGS`` in ``cwd`` with MLFLOW_TRACKING_URI / MUSICSSL_HOME only as given."""
    return subprocess.run([sys.executable, "-m", "musicssl", "dashboard", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def artifacts(store: AblationStore) -> dict[str, int | None]:
    return {a.path: a.file_size for a in MlflowClient(store.uri).list_artifacts(store.parent_run_id)}


def test_env_tracking_uri_default_output_and_logged_page(store: AblationStore, tmp_path: Path) -> None:
    home = tmp_path / "home"  # an empty state folder: the sweep is only found through $MLFLOW_TRACKING_URI
    done = dashboard("ablation", cwd=tmp_path, MLFLOW_TRACKING_URI=store.uri, MUSICSSL_HOME=str(home))
    assert done.returncode == 0, done.stderr
    out = home / "dashboards" / "ablation.html"  # no ./dashboards folder: under the state folder
    assert done.stdout == f"dashboard: {out}  (logged to run {store.parent_run_id})\n"
    page = out.read_text(encoding="utf-8")
    assert "<h1>Sweep report: ablation</h1>" in page and f"<dd><code>{store.uri}</code></dd>" in page
    assert "http-equiv" not in page
    assert artifacts(store).get("ablation.html") == out.stat().st_size
    logged = MlflowClient(store.uri).download_artifacts(store.parent_run_id, "ablation.html", str(tmp_path))
    assert Path(logged).read_text(encoding="utf-8") == page


def test_tracking_uri_flag_wins_and_no_log(store: AblationStore, tmp_path: Path) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # holds no sweep: using it would exit 2
    out = tmp_path / "out" / "nolog.html"
    done = dashboard("ablation", "--tracking-uri", store.uri, "-o", str(out), "--no-log", cwd=tmp_path,
                     MLFLOW_TRACKING_URI=elsewhere, MUSICSSL_HOME=str(tmp_path / "home"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"dashboard: {out}\n"
    assert f"<dd><code>{store.uri}</code></dd>" in out.read_text(encoding="utf-8")
    assert "nolog.html" not in artifacts(store)
    assert not (tmp_path / "home").exists()  # nothing written to the state folder


def test_state_folder_store_and_latex(store: AblationStore, tmp_path: Path) -> None:
    # No --tracking-uri and no $MLFLOW_TRACKING_URI: $MUSICSSL_HOME/mlflow.db (the fixture wrote the store there).
    done = dashboard("ablation", "--format", "latex", cwd=tmp_path, MUSICSSL_HOME=str(store.root))
    assert done.returncode == 0, done.stderr
    out = store.root / "dashboards" / "ablation.tex"
    assert done.stdout == f"dashboard: {out}\n"  # a table is not logged to the run
    tex = out.read_text(encoding="utf-8")
    expected = build_report(store.uri, tmp_path / "expected.tex", sweep_name="ablation", fmt="latex")
    assert tex == expected.read_text(encoding="utf-8")
    assert "\\begin{tabular}{lrrr}" in tex and "vanilla (baseline) & 34.0 $\\pm$ 7.5 & 54.0 $\\pm$ 7.5" in tex
    assert not any(path.endswith(".tex") for path in artifacts(store))


def _csv_cells(text: str) -> dict[tuple[str, str], str]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return {(row["variant"], column): value for row in rows for column, value in row.items()}


def test_csv_at_a_summary_step(store: AblationStore, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = dashboard("ablation", "--format", "csv", "--summary", "step:100", cwd=tmp_path, MLFLOW_TRACKING_URI=store.uri,
                     MUSICSSL_HOME=str(home))  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = home / "dashboards" / "ablation.csv"
    assert done.stdout == f"dashboard: {out}\n"
    cells = _csv_cells(out.read_text(encoding="utf-8"))
    # At step 100 every trial probed there counts, the stopped-early and the failed seed too: n = 3 everywhere.
    for variant in ("vanilla", "close", "far", "span5"):
        for task in TASKS:
            values = [t.score(task, 100) for t in TRIALS if t.variant == variant]
            ci = T975_DF2 * statistics.stdev(values) / math.sqrt(3)
            assert cells[(variant, task)] == f"{100 * statistics.mean(values):.1f}", (variant, task)
            assert cells[(variant, f"{task}_ci95")] == f"{100 * ci:.1f}", (variant, task)
            assert cells[(variant, f"{task}_n")] == "3", (variant, task)
    assert cells[("vanilla", "synth_key")] == "32.0" and cells[("close", "synth_key_delta")] == "1.0"
    # The default (each trial's last checkpoint, finished trials only) gives other numbers.
    last = _csv_cells(build_report(store.uri, tmp_path / "last.csv", sweep_name="ablation", fmt="csv").read_text())
    assert (last[("vanilla", "synth_key")], last[("close", "synth_key_n")]) == ("34.0", "2")


def test_bad_summary_exits_2_with_one_line(store: AblationStore, tmp_path: Path) -> None:
    done = dashboard("ablation", "--summary", "bogus", "--tracking-uri", store.uri, cwd=tmp_path,
                     MUSICSSL_HOME=str(tmp_path / "home"))  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "musicssl dashboard: summary 'bogus': expected last (the last probed checkpoint), best (each task's best "
        "checkpoint) or step:N (the checkpoint at N)"
    ]
    assert not (tmp_path / "home").exists()


def test_unknown_sweep_exits_2_listing_the_known_ones(store: AblationStore, tmp_path: Path) -> None:
    done = dashboard("ablaton", cwd=tmp_path, MLFLOW_TRACKING_URI=store.uri, MUSICSSL_HOME=str(tmp_path / "home"))
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"musicssl dashboard: no sweep parent run named 'ablaton' in {store.uri}; "
                           "known sweeps: ablation.")  # fmt: skip
    assert "Traceback" not in done.stderr


def _wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"dashboard exited ({proc.returncode}) while waiting for {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s")
        time.sleep(0.1)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def test_live_mode_refreshes_until_the_sweep_finishes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    live = write_ablation_sweep(root, name="live")
    client = MlflowClient(live.uri)
    client.update_run(live.parent_run_id, status="RUNNING")  # the sweep is still going
    out = tmp_path / "live.html"
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicssl", "dashboard", "live", "--live", "1", "-o", str(out)],
        cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=live.uri, MUSICSSL_HOME=str(tmp_path / "home")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for("live page", lambda: '<meta http-equiv="refresh" content="1">' in _read(out), proc, 120)
        first = _read(out)
        # It keeps rebuilding: the next page is a new one (a later "Generated" time), still reloading itself.
        _wait_for("rebuilt page", lambda: _read(out) not in ("", first), proc, 30)
        assert 'http-equiv="refresh"' in _read(out)
        assert "ablation-table" in first and "<h1>Sweep report: live</h1>" in first
        client.set_terminated(live.parent_run_id, "FINISHED")
        finished = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - finished
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert took < 10, f"live mode took {took:.1f} s to stop after the sweep finished"
    assert stdout.splitlines() == [
        f"dashboard (live, every 1 s; open it in a browser, Ctrl-C stops): {out}",
        f"dashboard: {out}  (logged to run {live.parent_run_id})",
    ]
    final = out.read_text(encoding="utf-8")
    assert "http-equiv" not in final and "<h1>Sweep report: live</h1>" in final
    logged = client.download_artifacts(live.parent_run_id, "live.html", str(tmp_path / "logged"))
    assert Path(logged).read_text(encoding="utf-8") == final
