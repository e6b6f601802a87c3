from __future__ import annotations

from pathlib import Path

import torch

from musicssl.checkpoints import best_checkpoint, latest_checkpoint
from musicssl.config import ExperimentConfig
from musicssl.pretrain.checkpoint import TrainState, save_checkpoint
from musicssl.pretrain.loop import build_model
from musicssl.pretrain.optim import build_optimizer


def test_keep_last_plus_best(tmp_path: Path) -> None:
    cfg = ExperimentConfig.model_validate({"model": {"preset": "tiny"}})
    model = build_model(cfg.model)
    opt = build_optimizer(model.trainable_parameters(), cfg.pretrain)
    rng = {"torch": torch.get_rng_state(), "mask": torch.Generator().get_state()}
    for step, score in zip((10, 20, 30, 40, 50), (3.0, 1.0, 2.0, float("nan"), 4.0), strict=True):
        save_checkpoint(tmp_path, cfg, model, model.student, opt, TrainState(step, 0, step, {}), rng,
                        keep_last=2, score=score)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_000000020", "step_000000040", "step_000000050"]
    assert best_checkpoint(tmp_path).name == "step_000000020"
    assert latest_checkpoint(tmp_path).name == "step_000000050"
