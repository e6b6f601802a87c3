"""The logging-load benchmark on a sqlite store: real processes, every value logged is read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from musicssl.tracking.loadbench import run_load


def test_loadbench_counts_are_exact(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'load.db'}"
    result = run_load(uri, procs=2, rate=5, seconds=2, keys=3)
    # 2 processes x 10 scheduled calls (steps 0..9) x 3 keys, on a schedule an idle sqlite file keeps up with
    assert (result.errors, result.error_samples) == (0, [])
    assert result.attempted == result.logged == result.read_back == 2 * 10 * 3
    assert (result.lost, result.extra) == (0, 0)
    assert 0 < result.p50_ms <= result.p95_ms <= result.max_ms
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("musicssl-loadbench").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["load-0", "load-1"]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "load/m2")
        assert sorted(m.step for m in history) == list(range(10))
        proc = int(run.info.run_name[-1])
        assert {m.value for m in history} == {proc * 1_000_000 + s + 2 / 8 for s in range(10)}


def test_loadbench_command_reports_and_exits_zero(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "musicssl.tracking.loadbench", "--uri",
                          f"sqlite:///{tmp_path / 'load.db'}", "--procs", "2", "--rate", "4", "--seconds", "1",
                          "--json", str(tmp_path / "r.jsonl")], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "logged 8/8, read back 8, lost 0, extra 0, errors 0" in out.stdout
    assert '"lost": 0' in (tmp_path / "r.jsonl").read_text()
