"""`sweeps/baselines.yaml` for real: imported checkpoints (a Hugging Face folder, a musicssl folder) probed as
probe jobs, no pretraining."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from musicssl.checkpoints import load_encoder_checkpoint
from musicssl.cli import main
from musicssl.models.convert import export_hf

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_baselines_probe_imported_checkpoints(checkpoint: Path, tmp_path: Path, mlflow_runs: Callable) -> None:
    import ray

    exp, state, _ = load_encoder_checkpoint(checkpoint)
    hf = export_hf(state, exp.model.encoder, "music2vec", tmp_path / "hf")
    home = tmp_path / "state"
    try:
        code = main(["sweep", str(REPO / "sweeps" / "baselines.yaml"), "--smoke", "--state-dir", str(home),
                     "--report", str(tmp_path / "r.html"), "--num-cpus", "2", f"checkpoints.hubert_base={hf}",
                     f"checkpoints.data2vec_audio_base={hf}", f"checkpoints.music2vec_v1={checkpoint}",
                     "probe.tasks=[synth_pitch,synth_key]"])
    finally:
        ray.shutdown()
    assert code == 0
    client, runs = mlflow_runs(home)
    trials = {t.data.tags["musicssl.variant"]: t for t in runs["trial"]}
    assert set(trials) == {"hubert_base", "data2vec_audio_base", "music2vec_v1"}
    for name, trial in trials.items():
        assert trial.info.status == "FINISHED"
        assert trial.data.tags["musicssl.checkpoint"] == str(checkpoint if name == "music2vec_v1" else hf)
        assert not [k for k in trial.data.metrics if k.startswith("pretrain/")], "nothing is trained"
        assert [h.step for h in client.get_metric_history(trial.info.run_id, "probe/average")] == [0]
    assert len(runs["probe"]) == 3 * 2 and all(p.info.status == "FINISHED" for p in runs["probe"])
    pitch = {n: t.data.metrics["probe/synth_pitch/score"] for n, t in trials.items()}
    assert pitch["hubert_base"] == pitch["data2vec_audio_base"], "the same folder gives the same probe"
    assert pitch["music2vec_v1"] == pytest.approx(pitch["hubert_base"], abs=1 / 12), "same weights, other format"
