"""A request no node of the (real, in-process) Ray cluster can hold fails as soon as Ray is up: exit 2, before the
corpus, labels or any MLflow run exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicssl.cli import main

pytestmark = pytest.mark.slow

SWEEP = """\
# Run: musicssl sweep big.yaml
name: big
base:
  model: {preset: tiny}
  pretrain: {max_steps: 10, device: cpu}
probe: {tasks: [synth_pitch], gpus: 0.5}
resources: {cpus_per_trial: 1, gpus_per_trial: 1}
"""


def test_requests_no_node_can_hold_fail_before_anything_is_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    import ray

    f = tmp_path / "big.yaml"
    f.write_text(SWEEP)
    state = tmp_path / "state"
    assert main(["sweep", str(f), "--check", "--state-dir", str(state)]) == 0  # the file itself is fine
    try:
        code = main(["sweep", str(f), "--state-dir", str(state), "--num-cpus", "2"])
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert code == 2
    assert "on the Ray cluster: 2 problems" in err and "Traceback" not in err
    assert "resources: a trial needs 1 CPU and 1 GPU on one node" in err and "2 CPU/0 GPU" in err
    assert "probe: a probe job needs 1 CPU and 0.5 GPU on one node" in err
    assert not (state / "mlflow.db").exists() and not (state / "corpus").exists()
