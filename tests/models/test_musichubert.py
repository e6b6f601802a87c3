"""MusicHuBERT objective: fairseq's logits and loss, label alignment, label errors, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicssl.config import musichubert_base, tiny_hubert
from musicssl.data.audio import read_audio
from musicssl.data.manifest import read_manifest
from musicssl.models.musichubert import LabelError, MusicHubert


def _model(**hubert: object) -> MusicHubert:
    cfg = tiny_hubert()
    cfg = cfg.model_copy(update={"hubert": cfg.hubert.model_copy(update=hubert)})
    torch.manual_seed(0)
    return MusicHubert(cfg)


def test_base_preset_is_the_hubert_base_recipe() -> None:
    cfg = musichubert_base()
    e = cfg.encoder
    assert (e.extractor_mode, e.pos_conv_depth, e.conv_pos, e.feature_grad_mult, e.dropout_input) == (
        "default", 1, 128, 0.1, 0.1)
    assert (cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks) == (0.8, 10, 2)
    h = cfg.hubert
    assert (h.final_dim, h.logit_temp, h.feature_pen_weight, h.pred_nomask_weight) == (256, 0.1, 10.0, 0.0)
    model = MusicHubert(cfg)
    assert model.label_embs_concat.shape == (504, 256)  # k=500 + fairseq's 4 Dictionary specials
    encoder_params = sum(p.numel() for p in model.student.parameters())
    assert 94_000_000 < encoder_params < 95_000_000, encoder_params  # HuBERT base: 94.4M


def test_label_alignment_takes_every_second_mfcc_label() -> None:
    model = _model(label_rate=100.0)
    labels = torch.arange(200).remainder(50)[None].repeat(2, 1)  # (B, 200) at 100 Hz = 2 s
    targets, frames = model.align_labels(labels, 99)
    assert frames == 99
    assert targets[0, :5].tolist() == [4, 6, 8, 10, 12]  # every 2nd label, shifted past the 4 specials
    model50 = _model(label_rate=50.0, dictionary_specials=False)
    targets, frames = model50.align_labels(labels[:, :99], 99)
    assert targets[0, :3].tolist() == [0, 1, 2] and model50.num_rows == 50


def test_label_problems_are_clear_errors() -> None:
    model = _model(label_rate=100.0)
    with pytest.raises(LabelError, match=r"label ids must be in \[0, 50\).*got \[0, 77\]"):
        model.check_label_ids(torch.tensor([[0, 77] * 100]))
    with pytest.raises(LabelError, match="label_rate does not match"):
        model.align_labels(torch.zeros(1, 100, dtype=torch.long), 99)  # 50 Hz labels read as 100 Hz


def _fairseq_nce_loss(model: MusicHubert, x: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    """fairseq `compute_nce`: [positive; all embeddings] cosine logits / temp, the positive's duplicate at -inf."""
    proj = model.final_proj(x)
    embs = model.label_embs_concat
    pos = embs[target_rows]  # (N, D)
    negs = embs[None].expand(len(x), -1, -1).transpose(0, 1)  # (rows, N, D)
    neg_is_pos = (pos[None] == negs).all(-1)  # (rows, N)
    targets = torch.cat([pos[None], negs], 0)
    logits = F.cosine_similarity(proj.float()[None], targets.float(), dim=-1) / model.cfg.hubert.logit_temp
    logits[1:][neg_is_pos] = float("-inf")
    logits = logits.transpose(0, 1)
    return F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long), reduction="sum")


def test_logits_equal_fairseq_compute_nce() -> None:
    model = _model()
    x = torch.randn(37, model.cfg.encoder.embed_dim)
    rows = torch.randint(4, model.num_rows, (37,))
    ours = F.cross_entropy(model.logits(x), rows, reduction="sum")
    torch.testing.assert_close(ours, _fairseq_nce_loss(model, x, rows), atol=1e-4, rtol=1e-5)


def test_fixed_seed_regression_value() -> None:
    model = _model()
    torch.manual_seed(1)
    audio = torch.randn(2, 16000)
    labels = torch.randint(0, 50, (2, 100))
    out = model(audio, labels, torch.Generator().manual_seed(0))
    assert out.sample_size == int(out.logs["masked_frac"] * 2 * 49 + 0.5)
    # guards against accidental changes of the objective; update only for an intended change
    assert out.loss_sum.item() / out.sample_size == pytest.approx(4.523989, abs=1e-4)


def test_loss_decreases_on_synthetic_music(tiny_corpus) -> None:
    """Labels: k-means (k=16) of log-spectra at 50 Hz, as iteration 1 would use MFCC; 120 CPU steps."""
    from sklearn.cluster import KMeans

    manifest = read_manifest(tiny_corpus / "pretrain" / "train.tsv")
    waves = [read_audio(manifest.path(i))[:32000] for i in range(len(manifest))]
    waves = [w for w in waves if len(w) == 32000]
    frames = np.stack([np.log1p(np.abs(np.fft.rfft(w.reshape(-1, 320), axis=1))[:, :40]) for w in waves])  # (N, 100, 40)
    km = KMeans(16, n_init=2, random_state=0).fit(frames.reshape(-1, 40))
    labels = torch.from_numpy(km.labels_.reshape(len(waves), 100)).long()
    audio = torch.from_numpy(np.stack(waves))
    cfg = tiny_hubert()
    cfg = cfg.model_copy(update={"hubert": cfg.hubert.model_copy(update={"num_clusters": 16, "label_rate": 50.0})})
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = MusicHubert(cfg)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    losses, accs = [], []
    for _ in range(120):
        idx = rng.choice(len(waves), 4, replace=False)
        out = model(audio[idx], labels[idx], gen)
        opt.zero_grad()
        (out.loss_sum / out.sample_size).backward()
        opt.step()
        losses.append(out.loss_sum.item() / out.sample_size)
        accs.append(out.logs["acc_masked"])
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:5]), (losses[:5], losses[-20:])
    assert np.mean(accs[-20:]) > 2 / 16, "masked accuracy should beat chance after training"
