"""Probing a Hugging Face folder or a fairseq .pt goes through the same path and gives the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicssl.checkpoints import load_encoder_checkpoint
from musicssl.config import ExperimentConfig, ProbeConfig
from musicssl.data.manifest import read_manifest
from musicssl.models.convert import export_hf
from musicssl.pretrain.loop import pretrain
from musicssl.probe.run import probe_checkpoint

pytest.importorskip("omegaconf")


def test_same_results_from_every_checkpoint_format(tiny_corpus: Path, tmp_path: Path) -> None:
    import omegaconf

    cfg = ExperimentConfig.model_validate({
        "model": {"preset": "tiny"},
        "data": {"max_sample_size": 16000, "min_sample_size": 8000, "max_tokens": 64000},
        "pretrain": {"max_steps": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu"},
    })
    ckpt = pretrain(cfg, tmp_path / "run", read_manifest(tiny_corpus / "pretrain" / "train.tsv"))
    _, state, _ = load_encoder_checkpoint(ckpt)
    hf_dir = export_hf(state, cfg.model.encoder, "music2vec", tmp_path / "hf")
    e = cfg.model.encoder
    fairseq_state = dict(state)
    model_cfg = {"_name": "data2vec_audio", "extractor_mode": "layer_norm",
                 "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", "encoder_layers": e.num_layers,
                 "encoder_embed_dim": e.embed_dim, "encoder_ffn_embed_dim": e.ffn_dim,
                 "encoder_attention_heads": e.num_heads, "conv_pos": e.conv_pos, "conv_pos_groups": e.conv_pos_groups,
                 "pos_conv_depth": e.pos_conv_depth}
    pt = tmp_path / "checkpoint_last.pt"
    torch.save({"model": fairseq_state, "cfg": omegaconf.OmegaConf.create(
        {"model": model_cfg, "task": {"_name": "audio_pretraining", "normalize": True}})}, pt)

    probe = ProbeConfig(tasks=("synth_pitch",), window_seconds=1.5, standardize=True, lr=5e-3, max_epochs=15)
    results = {}
    for name, source in (("musicssl", ckpt), ("hf", hf_dir), ("fairseq", pt)):
        cache = tmp_path / f"cache-{name}"
        res, avg = probe_checkpoint(source, probe, synthetic_root=tiny_corpus, cache_dir=cache,
                                    device=torch.device("cpu"))
        feats = sorted(cache.glob("*.x.npy"))
        assert len(feats) == 1
        results[name] = (res["synth_pitch"].test["acc"], avg, np.load(feats[0]))
    ref_acc, ref_avg, ref_x = results["musicssl"]
    for name in ("hf", "fairseq"):
        acc, avg, x = results[name]
        np.testing.assert_allclose(x, ref_x, atol=1e-5, err_msg=f"features from the {name} checkpoint differ")
        assert acc == pytest.approx(ref_acc, abs=1 / 18) and avg == pytest.approx(ref_avg, abs=1 / 18)
