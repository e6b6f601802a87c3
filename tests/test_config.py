from __future__ import annotations

import pytest

from musicssl.config import PRESETS, ExperimentConfig, music2vec_base, tiny
from musicssl.config_io import ConfigError, load_experiment, parse, parse_overrides


def test_defaults_are_the_published_base_settings() -> None:
    cfg = ExperimentConfig()
    assert (cfg.model.mask_prob, cfg.model.mask_length) == (0.65, 10)
    assert cfg.model.music2vec.average_top_k_layers == 8
    assert cfg.model.encoder.extractor_mode == "layer_norm"
    assert (cfg.model.encoder.pos_conv_depth, cfg.model.encoder.conv_pos) == (5, 95)
    assert (cfg.pretrain.lr, cfg.pretrain.betas, cfg.pretrain.eps) == (5e-4, (0.9, 0.98), 1e-6)
    assert cfg.pretrain.phase_ratio == (0.03, 0.9, 0.07)
    assert cfg.data.max_sample_size == 480000  # 30 s, the Music2Vec context
    assert music2vec_base() == cfg.model


def test_preset_then_overrides() -> None:
    cfg = parse(ExperimentConfig, {"model": {"preset": "tiny", "mask_prob": 0.8}}, "t")
    assert cfg.model.encoder == tiny().encoder
    assert cfg.model.mask_prob == 0.8
    assert set(PRESETS) >= {"tiny", "music2vec_base"}


def test_every_problem_listed_with_its_dotted_path() -> None:
    data = {"model": {"mask_prob": 1.3, "mask_lenght": 5, "encoder": {"num_heads": "x"}},
            "probe": {"taks": ["a"]}}
    with pytest.raises(ConfigError) as err:
        parse(ExperimentConfig, data, "x.yaml")
    problems = err.value.problems
    assert "model.mask_prob: input should be less than or equal to 1, got 1.3" in problems
    assert "model.mask_lenght: unknown key (did you mean 'mask_length'?)" in problems
    assert "probe.taks: unknown key (did you mean 'tasks'?)" in problems
    assert any(p.startswith("model.encoder.num_heads: input should be a valid integer") for p in problems)
    assert len(problems) == 4
    assert str(err.value).startswith("x.yaml: 4 problems")


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"model: unknown preset .tinny.; known: music2vec_base, musichubert_base, tiny, tiny_hubert"):
        parse(ExperimentConfig, {"model": {"preset": "tinny"}}, "t")


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="num_heads \\(5\\) must divide embed_dim"):
        parse(ExperimentConfig, {"model": {"encoder": {"num_heads": 5}}}, "t")
    with pytest.raises(ConfigError, match="max_tokens .* must be >= max_sample_size"):
        parse(ExperimentConfig, {"data": {"max_tokens": 1000, "max_sample_size": 2000, "min_sample_size": 500}}, "t")


def test_command_line_overrides(tmp_path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("model:\n  preset: tiny\npretrain:\n  max_steps: 7\n")
    cfg = load_experiment(path, ["model.mask_length=5", "pretrain.lr=1e-3"])
    assert (cfg.model.mask_length, cfg.pretrain.lr, cfg.pretrain.max_steps) == (5, 1e-3, 7)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["model.mask_length"])
