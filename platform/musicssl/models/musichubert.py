"""MusicHuBERT: the HuBERT objective on music (fairseq `HubertModel` + `hubert` criterion, v0.12.2).

The student sees masked projected features and predicts, at masked frames, the k-means label of each frame:
logits are cosine similarities between a projection of the encoder output and learned label embeddings,
divided by `logit_temp`, over every embedding row (k + 4 with fairseq's Dictionary specials, which are never
targets). Labels at 100 Hz (MFCC) are aligned to the 50 Hz frames by taking every 2nd one. The conv features
carry an L2 penalty, and their gradient is scaled by `feature_grad_mult` (0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.config import ModelConfig
from musicssl.models.encoder import SSLEncoder
from musicssl.models.masking import compute_mask
from musicssl.models.music2vec import StepOutput

NUM_SPECIALS = 4  # fairseq Dictionary: <s>, <pad>, </s>, <unk>


class LabelError(ValueError):
    """Labels that cannot be right: out of range, or too short for the audio."""


class MusicHubert(nn.Module):
    """Student encoder + final projection + label embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hubert
        self.student = SSLEncoder(cfg.encoder)
        self.final_proj = nn.Linear(cfg.encoder.embed_dim, h.final_dim)
        self.label_embs_concat = nn.Parameter(torch.empty(self.num_rows, h.final_dim).uniform_())
        total_stride = 1
        for _, _, stride in cfg.encoder.conv_layers:
            total_stride *= stride
        self.feat2tar_ratio = h.label_rate * total_stride / 16000
        self.num_updates = 0

    @property
    def num_rows(self) -> int:
        """Embedding rows: k, plus fairseq's 4 specials when `dictionary_specials`."""
        return self.cfg.hubert.num_clusters + (NUM_SPECIALS if self.cfg.hubert.dictionary_specials else 0)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter but a frozen conv extractor's (`feature_grad_mult` 0)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and self.student.trainable(n.removeprefix("student."))]

    def ema_step(self, num_updates: int, applied: Tensor | None = None) -> None:
        """No teacher in HuBERT: only the update count moves."""
        self.num_updates = num_updates

    def check_collapse(self, logs: dict[str, float], num_updates: int) -> None:
        """Nothing to check per step (label problems are caught in `align_labels`)."""

    def align_labels(self, labels: Tensor, frames: int) -> tuple[Tensor, int]:
        """(B, T_lab) cluster ids -> (B, T) embedding-row targets at frame rate; frames trimmed to the labels.

        Only shapes are read here (no host sync); the ids themselves are checked by `check_label_ids` (the training
        loop checks a whole label file against `num_clusters` when it reads it).
        """
        usable = min(frames, int(labels.shape[1] / self.feat2tar_ratio))
        if usable < frames * 0.9:
            raise LabelError(
                f"{labels.shape[1]} labels at {self.cfg.hubert.label_rate:g} Hz cover only {usable} of {frames} "
                "frames: model.hubert.label_rate does not match the label files (100 for MFCC, 50 for model features)")
        idx = (torch.arange(usable, device=labels.device).float() * self.feat2tar_ratio).long()
        offset = NUM_SPECIALS if self.cfg.hubert.dictionary_specials else 0
        return labels[:, idx] + offset, usable

    def check_label_ids(self, labels: Tensor) -> None:
        """Raise `LabelError` unless every id is in [0, num_clusters)."""
        k = self.cfg.hubert.num_clusters
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise LabelError(f"label ids must be in [0, {k}) for model.hubert.num_clusters={k}, got "
                             f"[{int(labels.min())}, {int(labels.max())}]: were the labels made with another k?")

    def logits(self, x: Tensor) -> Tensor:
        """(..., D) encoder outputs -> (..., rows) cosine-similarity logits / logit_temp."""
        proj = self.final_proj(x).float()
        sim = F.normalize(proj, dim=-1, eps=1e-8) @ F.normalize(self.label_embs_concat.float(), dim=-1, eps=1e-8).T
        return sim / self.cfg.hubert.logit_temp

    def forward(self, source: Tensor, labels: Tensor, generator: torch.Generator | None = None,
                mask: Tensor | None = None) -> StepOutput:
        """source: (B, S) cropped waveforms; labels: (B, T_lab) cluster ids of the same crops, in [0, num_clusters)
        (`check_label_ids`), moved to the device here; `mask` (B, T) overrides the drawn span mask (tests)."""
        cfg, h, enc = self.cfg, self.cfg.hubert, self.student
        conv = enc.conv_features(source)  # (B, C, T)
        targets, frames = self.align_labels(labels, conv.shape[2])
        targets = targets.to(conv.device, non_blocking=True)
        conv = conv[..., :frames]
        features_pen = conv.float().pow(2).mean()
        x = enc.dropout_input(enc.project(conv))  # (B, T, D)
        B, T, _ = x.shape
        if mask is None:
            mask = compute_mask(None, T, cfg.mask_prob, cfg.mask_length,
                                min_masks=cfg.mask_min_masks, require_same_masks=cfg.require_same_masks,
                                generator=generator, batch_size=B, device=x.device)  # (B, T)
        x = torch.where(mask[..., None], enc.mask_emb.to(x.dtype), x)
        out = enc.encoder(x).x  # (B, T, D)

        # fairseq's hubert criterion: the sample size counts the frames of every loss term whose weight is > 0
        # (masked, plus unmasked when pred_nomask_weight > 0); the feature penalty is scaled by that same count.
        # Every frame gets its logits and cross-entropy; the masked / unmasked sums weight them (the same sums as
        # fairseq's over out[mask] and out[~mask], without a boolean index whose size only the device knows).
        masked = mask.float()
        unmasked = 1.0 - masked
        logits = self.logits(out)  # (B, T, rows)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(B, T)
        hit = (logits.detach().argmax(-1) == targets).float()
        loss, sample_size = out.new_zeros((), dtype=torch.float32), masked.new_zeros(())
        if h.pred_masked_weight > 0:
            loss = loss + h.pred_masked_weight * (ce * masked).sum()
            sample_size = sample_size + masked.sum()
        if h.pred_nomask_weight > 0:
            loss = loss + h.pred_nomask_weight * (ce * unmasked).sum()
            sample_size = sample_size + unmasked.sum()
        if h.feature_pen_weight != 0:
            loss = loss + h.feature_pen_weight * features_pen * sample_size
        logs = {"acc_masked": _mean_where(hit, masked), "acc_unmasked": _mean_where(hit, unmasked),
                "features_pen": features_pen.detach(), "masked_frac": masked.mean()}
        return StepOutput(loss, sample_size.long(), logs)


def _mean_where(values: Tensor, weight: Tensor) -> Tensor:
    """Mean of `values` where `weight` is 1 (0 where it is nowhere)."""
    return (values * weight).sum() / weight.sum().clamp(min=1)
