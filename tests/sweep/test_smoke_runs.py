"""`--smoke` runs of the paper's sweep files, for real: the mask ablation, MusicHuBERT iteration 1 and the
iteration-2 stage that finds its label model in iteration 1's state by (sweep, variant, step).

(`sweeps/demo.yaml --smoke` runs end to end in tests/sweep/test_ray_job.py, through `ray job submit`.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from musicssl.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STAND_INS = '["synth_tags", "synth_key", "synth_instrument", "synth_tempo", "synth_pitch", "synth_beat"]'


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("smoke")


def _run(state: Path, name: str) -> int:
    import ray

    try:
        return main(["sweep", str(REPO / "sweeps" / name), "--smoke", "--state-dir", str(state),
                     "--report", str(state / f"{name}.html"), "--num-cpus", "2"])
    finally:
        ray.shutdown()


def _trials(state: Path, sweep: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    (parent,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   f"tags.`musicssl.sweep` = '{sweep}' and tags.`musicssl.kind` = 'sweep'")
    assert parent.info.status == "FINISHED" and parent.data.tags["musicssl.smoke"] == "True"
    trials = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    for t in trials:
        assert t.info.status == "FINISHED"
        assert sorted(h.step for h in client.get_metric_history(t.info.run_id, "probe/average")) == [30, 60]
        assert t.data.params["probe.tasks"] == STAND_INS
        assert t.data.params["model.encoder.embed_dim"] == "64" and t.data.params["pretrain.device"] == "cpu"
    return client, trials


def test_music2vec_mask_smoke(state: Path) -> None:
    assert _run(state, "music2vec_mask.yaml") == 0
    _, trials = _trials(state, "music2vec_mask-smoke")
    spans = {t.data.tags["musicssl.variant"]: (t.data.params["model.mask_length"], t.data.params["model.mask_prob"])
             for t in trials}
    assert spans == {"vanilla": ("10", "0.65"), "span5": ("5", "0.65"), "span15": ("15", "0.65"),
                     "prob50": ("10", "0.5"), "prob80": ("10", "0.8")}
    assert [t.data.tags["musicssl.baseline"] for t in trials].count("true") == 1


def test_musichubert_iterations_smoke(state: Path) -> None:
    assert _run(state, "musichubert_clusters.yaml") == 0
    _, trials = _trials(state, "musichubert_clusters-smoke")
    k = {t.data.tags["musicssl.variant"]: (t.data.params["model.hubert.num_clusters"],
                                           t.data.params["model.hubert.mfcc_ceps"]) for t in trials}
    assert k == {"k2000_mfcc39": ("100", "13"), "k500_mfcc39": ("25", "13"), "k500_mfcc60": ("25", "20")}
    iter1 = next(t for t in trials if t.data.tags["musicssl.variant"] == "k2000_mfcc39")

    assert _run(state, "musichubert_iter2.yaml") == 0  # its label model: iteration 1's baseline, found by name
    _, (trial,) = _trials(state, "musichubert_iter2-smoke")
    p = trial.data.params
    assert p["model.hubert.label_source"] == "model" and p["model.hubert.label_layer"] == "2"
    assert p["model.hubert.label_model"] == iter1.data.tags["musicssl.checkpoint"]
    assert "/labels/model-k100-" in trial.data.tags["musicssl.labels"]
