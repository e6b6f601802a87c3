"""fairseq behaviours at the edges of the defaults: a frozen conv extractor (`feature_grad_mult: 0`), HuBERT's
sample size with the unmasked loss on, and a MusicHuBERT run's HuBERT-base data and optimisation defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from musicssl.config import DataConfig, ExperimentConfig, PretrainConfig, musichubert_base, tiny, tiny_hubert
from musicssl.config_io import ConfigError, load_experiment
from musicssl.data.dataset import Batch, DataPosition
from musicssl.models.musichubert import MusicHubert
from musicssl.pretrain.distributed import DistContext
from musicssl.pretrain.loop import build_model, train_update
from musicssl.pretrain.optim import build_optimizer

REPO = Path(__file__).resolve().parents[2]
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "dropout_input": 0.0, "encoder_layerdrop": 0.0}
FRAMES = 24  # 8000 samples through the (tiny) base conv stack


def _experiment(preset: str, **encoder: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": {"preset": preset, "encoder": NO_DROPOUT | encoder, "hubert": {"num_clusters": 8, "label_rate": 50.0}},
        "data": {"labels": "unused.km"},
        "pretrain": {"device": "cpu", "lr": 1e-2, "weight_decay": 0.5, "clip_norm": 0.0},
    })


def _batch(paradigm: str, seed: int = 0, masked_per_row: int = 10) -> Batch:
    """Two items of 8000 samples (24 frames), `masked_per_row` masked frames each, labels for MusicHuBERT."""
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, 8000, generator=gen)
    keys = torch.rand(2, FRAMES, generator=gen)
    mask = keys <= keys.kthvalue(masked_per_row, dim=1, keepdim=True).values
    labels = torch.randint(0, 8, (2, FRAMES), generator=gen) if paradigm == "musichubert" else None
    return Batch(DataPosition(), audio, labels, mask)


def _extractor(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.student.feature_extractor.state_dict().items()}


@pytest.mark.parametrize("preset,paradigm", [("tiny", "music2vec"), ("tiny_hubert", "musichubert")])
@pytest.mark.parametrize("mult", [0.0, 0.1])
def test_feature_grad_mult_zero_freezes_the_extractor_bit_for_bit(preset: str, paradigm: str, mult: float) -> None:
    """fairseq runs the extractor under no_grad when feature_grad_mult is 0: no gradient, so Adam's decoupled
    weight decay does not shrink it either (a zero gradient would: AdamW decays every parameter it steps)."""
    cfg = _experiment(preset, feature_grad_mult=mult)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    params = model.trainable_parameters()
    optimizer = build_optimizer(params, cfg.pretrain)
    before, rest_before = _extractor(model), model.student.post_extract_proj.weight.detach().clone()
    for step in range(3):
        train_update(model, params, optimizer, [_batch(paradigm, step)], cfg, torch.device("cpu"),
                     torch.Generator(), DistContext())
        conv_grads = [p.grad for p in model.student.feature_extractor.parameters()]
        optimizer.step()
        model.ema_step(step + 1)
    after = _extractor(model)
    assert not torch.equal(model.student.post_extract_proj.weight, rest_before)  # the rest trains
    if mult == 0.0:
        assert all(g is None for g in conv_grads)
        assert all(torch.equal(before[k], after[k]) for k in before)
        # left out of the optimiser too, so a data-parallel gradient sum (which zero-fills) cannot decay it
        frozen = {id(p) for p in model.student.feature_extractor.parameters()}
        assert not frozen & {id(p) for p in params}
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in conv_grads)
        assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_frozen_extractor_output_carries_no_graph() -> None:
    cfg = _experiment("tiny_hubert", feature_grad_mult=0.0)
    model = build_model(cfg.model).train()
    assert not model.student.conv_features(torch.randn(1, 8000)).requires_grad
    model = build_model(_experiment("tiny_hubert", feature_grad_mult=0.1).model).train()
    assert model.student.conv_features(torch.randn(1, 8000)).requires_grad


def _hubert(nomask_weight: float) -> MusicHubert:
    cfg = _experiment("tiny_hubert", feature_grad_mult=0.1).model
    cfg = cfg.model_copy(update={"hubert": cfg.hubert.model_copy(update={"pred_nomask_weight": nomask_weight})})
    torch.manual_seed(0)
    return MusicHubert(cfg).train()


@pytest.mark.parametrize("nomask_weight", [0.0, 0.5])
def test_hubert_sample_size_counts_unmasked_frames_when_their_loss_is_on(nomask_weight: float) -> None:
    """fairseq hubert_criterion: sample_size = masked targets (+ unmasked targets when pred_nomask_weight > 0);
    the feature penalty is coef * features_pen * sample_size; the trainer divides by sample_size."""
    model, batch = _hubert(nomask_weight), _batch("musichubert")
    captured: list[torch.Tensor] = []
    model.student.encoder.register_forward_hook(lambda mod, args, out: captured.append(out.x.detach()))
    out = model(batch.audio, batch.labels, mask=batch.mask)
    n_masked, n_unmasked = 20, 28  # 2 x 10 masked of 2 x 24 frames
    assert int(batch.mask.sum()) == n_masked
    assert out.sample_size == (n_masked + n_unmasked if nomask_weight > 0 else n_masked)

    x, (targets, _) = captured[0], model.align_labels(batch.labels, FRAMES)
    with torch.no_grad():
        ce_m = F.cross_entropy(model.logits(x[batch.mask]), targets[batch.mask], reduction="sum")
        ce_u = F.cross_entropy(model.logits(x[~batch.mask]), targets[~batch.mask], reduction="sum")
    pen = out.logs["features_pen"]
    expected = ce_m + nomask_weight * ce_u + 10.0 * pen * (48 if nomask_weight > 0 else 20)
    assert out.loss_sum.item() == pytest.approx(expected.item(), rel=1e-5)

    # the training step reports (and normalises gradients by) the same sample size
    model = _hubert(nomask_weight)
    cfg = _experiment("tiny_hubert", feature_grad_mult=0.1)
    params = model.trainable_parameters()
    result = train_update(model, params, build_optimizer(params, cfg.pretrain), [batch], cfg, torch.device("cpu"),
                          torch.Generator(), DistContext())
    assert int(result.sample_size) == int(out.sample_size)
    assert float(result.loss) == pytest.approx(expected.item() / int(out.sample_size), rel=1e-5)


def test_hubert_with_no_weighted_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pred_masked_weight and pred_nomask_weight are both 0"):
        load_experiment(overrides=["model.preset=tiny_hubert", "model.hubert.pred_masked_weight=0"])


HUBERT_BASE_DATA = {"max_sample_size": 250000, "min_sample_size": 32000, "max_tokens": 1400000, "normalize": False}
HUBERT_BASE_PRETRAIN = {"max_steps": 400000, "lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01,
                        "scheduler": "polynomial", "warmup_steps": 32000, "clip_norm": 10.0}
DATA2VEC_BASE_DATA = {"max_sample_size": 480000, "min_sample_size": 32000, "max_tokens": 3800000, "normalize": True}
DATA2VEC_BASE_PRETRAIN = {"max_steps": 400000, "lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01,
                          "scheduler": "tri_stage", "phase_ratio": (0.03, 0.9, 0.07), "clip_norm": 0.0}


def _values(cfg: Any, keys: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in keys}


@pytest.mark.parametrize("exp", [
    lambda: load_experiment(overrides=["model.preset=musichubert_base"]),
    lambda: load_experiment(overrides=["model.preset=tiny_hubert"]),
    lambda: load_experiment(overrides=["model.paradigm=musichubert"]),
    lambda: ExperimentConfig(model=musichubert_base()),
    lambda: ExperimentConfig(model=tiny_hubert(), data=DataConfig(), pretrain=PretrainConfig()),
], ids=["preset-base", "preset-tiny", "paradigm", "object", "empty-objects"])
def test_a_musichubert_run_defaults_to_hubert_base(exp: Any) -> None:
    """examples/hubert/config/pretrain/hubert_base_librispeech.yaml: task, dataset, optimization, lr_scheduler."""
    cfg = exp()
    assert _values(cfg.data, HUBERT_BASE_DATA) == HUBERT_BASE_DATA
    assert _values(cfg.pretrain, HUBERT_BASE_PRETRAIN) == HUBERT_BASE_PRETRAIN


def test_set_values_win_over_the_hubert_defaults() -> None:
    cfg = load_experiment(overrides=["model.preset=tiny_hubert", "data.normalize=true", "data.max_sample_size=480000",
                                     "pretrain.scheduler=tri_stage", "pretrain.clip_norm=0"])
    assert (cfg.data.normalize, cfg.data.max_sample_size, cfg.pretrain.scheduler, cfg.pretrain.clip_norm) == (
        True, 480000, "tri_stage", 0.0)
    assert (cfg.data.max_tokens, cfg.pretrain.warmup_steps) == (1400000, 32000)  # the unset ones stay HuBERT's
    objects = ExperimentConfig(model=tiny_hubert(), data=DataConfig(max_sample_size=48000, max_tokens=384000),
                               pretrain=PretrainConfig(max_steps=6, clip_norm=0.0))
    assert (objects.data.max_sample_size, objects.data.max_tokens, objects.data.normalize) == (48000, 384000, False)
    assert (objects.pretrain.max_steps, objects.pretrain.clip_norm, objects.pretrain.scheduler) == (6, 0.0, "polynomial")
    # a saved config (a full dump, as checkpoints and trials store it) reloads to itself
    assert ExperimentConfig.model_validate(cfg.model_dump()) == cfg
    assert ExperimentConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize("exp", [
    lambda: ExperimentConfig(), lambda: load_experiment(overrides=["model.preset=tiny"]),
    lambda: ExperimentConfig(model=tiny()),
], ids=["default", "preset", "object"])
def test_music2vec_keeps_the_data2vec_defaults(exp: Any) -> None:
    cfg = exp()
    assert _values(cfg.data, DATA2VEC_BASE_DATA) == DATA2VEC_BASE_DATA
    assert _values(cfg.pretrain, DATA2VEC_BASE_PRETRAIN) == DATA2VEC_BASE_PRETRAIN


@pytest.mark.parametrize("name", ["musichubert_clusters", "musichubert_iter2"])
def test_shipped_hubert_sweeps_agree_with_the_defaults(name: str) -> None:
    """The sweep files spell out the paper's setting; it is now also what an unset MusicHuBERT run gets."""
    base = yaml.safe_load((REPO / "sweeps" / f"{name}.yaml").read_text())["base"]
    base["data"]["labels"] = "unused.km"  # iteration 2 would otherwise need its label model
    cfg = ExperimentConfig.model_validate(base)
    assert _values(cfg.data, HUBERT_BASE_DATA) == HUBERT_BASE_DATA
    assert _values(cfg.pretrain, HUBERT_BASE_PRETRAIN) == HUBERT_BASE_PRETRAIN


def test_a_warm_up_longer_than_the_run_is_warned_about(tmp_path: Path) -> None:
    """HuBERT base's 32000 warm-up updates in a short run would leave the LR near 0 for the whole run."""
    from musicssl.pretrain.loop import pretrain

    short = load_experiment(overrides=["model.preset=tiny_hubert", "pretrain.max_steps=10", "pretrain.device=cpu"])
    with pytest.warns(UserWarning, match="warmup_steps=32000 >= pretrain.max_steps=10"), \
            pytest.raises(ValueError, match="needs k-means labels"):  # stops before any data is read
        pretrain(short, tmp_path, None)  # type: ignore[arg-type]
