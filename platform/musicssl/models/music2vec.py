"""Music2Vec: the data2vec-1.0 objective on music (fairseq `Data2VecAudioModel`, v0.12.2).

The student sees masked projected features; an fp32 EMA copy of the transformer (the teacher) sees the
same features unmasked, in eval mode. Targets are the mean of the teacher's top-K layers' FFN outputs
(before the residual), each instance-normalised over time. The regression head predicts them at masked
frames; the loss is L2 (or smooth-L1) summed over channels, scaled by 1/sqrt(D).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.config import ModelConfig
from musicssl.models.encoder import SSLEncoder
from musicssl.models.masking import compute_mask


class TargetCollapseError(RuntimeError):
    """The teacher targets (or predictions) lost their variance: the run is training on nothing."""


@dataclass
class StepOutput:
    """One forward pass: `loss_sum` (divide by `sample_size`: the masked frames, plus the unmasked ones when
    MusicHuBERT weights their loss) and logging values."""

    loss_sum: Tensor
    sample_size: int
    logs: dict[str, float]


class Music2Vec(nn.Module):
    """Student encoder + regression head + EMA teacher (transformer only)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = SSLEncoder(cfg.encoder)
        dim = cfg.encoder.embed_dim
        self.final_proj = nn.Linear(dim, dim)
        self.teacher = copy.deepcopy(self.student.encoder).float().requires_grad_(False)
        self.num_updates = 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the teacher (fairseq's Adam covers all student parameters, no groups) and a frozen
        conv extractor (`feature_grad_mult` 0: fairseq gives it no gradient, so Adam never moves it)."""
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad
                and self.student.trainable(n.removeprefix("student."))]

    def ema_decay(self, num_updates: int) -> float:
        """Linear ramp from `ema_decay` to `ema_end_decay` over `ema_anneal_end_step` updates."""
        c = self.cfg.music2vec
        if num_updates >= c.ema_anneal_end_step:
            return c.ema_end_decay
        return c.ema_end_decay - (c.ema_end_decay - c.ema_decay) * (1 - num_updates / c.ema_anneal_end_step)

    @torch.no_grad()
    def ema_step(self, num_updates: int) -> None:
        """Teacher <- decay * teacher + (1 - decay) * student; positional conv and buffers copied."""
        self.num_updates = num_updates
        decay = self.ema_decay(num_updates)
        if decay >= 1.0:
            return
        student = dict(self.student.encoder.named_parameters())
        for name, t in self.teacher.named_parameters():
            s = student[name].detach().float()
            if name.startswith("pos_conv.") or not student[name].requires_grad:
                t.copy_(s)
            else:
                t.mul_(decay).add_(s, alpha=1.0 - decay)
        for (_, tb), (_, sb) in zip(self.teacher.named_buffers(), self.student.encoder.named_buffers(), strict=True):
            tb.copy_(sb)

    def forward(self, source: Tensor, generator: torch.Generator | None = None, mask: Tensor | None = None
                ) -> StepOutput:
        """source: (B, S) cropped waveforms without padding (fairseq pretraining never pads); `mask` (B, T)
        overrides the drawn span mask (tests)."""
        cfg, enc = self.cfg, self.student
        x = enc.project(enc.conv_features(source))  # (B, T, D)
        teacher_in = x.detach()
        x = enc.dropout_input(x)
        B, T, _ = x.shape
        if mask is None:
            mask = compute_mask(torch.full((B,), T, device=x.device), T, cfg.mask_prob, cfg.mask_length,
                                min_masks=cfg.mask_min_masks, require_same_masks=cfg.require_same_masks,
                                batch_rounding=True, generator=generator)  # (B, T); no padding_mask in fairseq
        x = torch.where(mask[..., None], enc.mask_emb.to(x.dtype), x)
        student_out = enc.encoder(x).x  # (B, T, D)

        with torch.no_grad():
            self.teacher.eval()
            k = cfg.music2vec.average_top_k_layers
            layers = self.teacher(teacher_in.float(), min_layer=cfg.encoder.num_layers - k).layer_results
            y = self._targets(layers)[mask]  # (N, D)
        pred = self.final_proj(student_out[mask]).float()  # (N, D)
        loss = self._loss(pred, y)
        logs = {"target_var": _std_mean(y), "pred_var": _std_mean(pred.detach()),
                "ema_decay": self.ema_decay(self.num_updates), "masked_frac": mask.float().mean().item()}
        return StepOutput(loss.sum() * self._loss_scale(), int(mask.sum()), logs)

    def _targets(self, layers: list[Tensor]) -> Tensor:
        """Average of per-layer instance-normalised FFN outputs: [(B, T, D)] -> (B, T, D)."""
        if self.cfg.music2vec.instance_norm_target_layer:
            layers = [F.instance_norm(t.float().transpose(1, 2)).transpose(1, 2) for t in layers]
        return torch.stack(layers).mean(0)

    def _loss(self, pred: Tensor, y: Tensor) -> Tensor:
        beta = self.cfg.music2vec.loss_beta
        if beta == 0:
            return F.mse_loss(pred, y, reduction="none").sum(-1)
        return F.smooth_l1_loss(pred, y, reduction="none", beta=beta).sum(-1)

    def _loss_scale(self) -> float:
        scale = self.cfg.music2vec.loss_scale
        return scale if scale is not None else 1.0 / math.sqrt(self.cfg.encoder.embed_dim)

    def check_collapse(self, logs: dict[str, float], num_updates: int) -> None:
        """Raise `TargetCollapseError` once past `var_check_after` updates if target or prediction std collapsed."""
        c = self.cfg.music2vec
        if num_updates < c.var_check_after:
            return
        if logs["target_var"] < c.min_target_var:
            raise TargetCollapseError(
                f"target std {logs['target_var']:.4g} < min_target_var {c.min_target_var} at update {num_updates}: "
                "the teacher collapsed; lower pretrain.lr or raise model.music2vec.ema_decay")
        if logs["pred_var"] < c.min_pred_var:
            raise TargetCollapseError(
                f"prediction std {logs['pred_var']:.4g} < min_pred_var {c.min_pred_var} at update {num_updates}")


def _std_mean(y: Tensor) -> float:
    """fairseq `compute_var`: mean over channels of sqrt(var over frames + 1e-6)."""
    if y.shape[0] < 2:
        return 0.0
    return torch.sqrt(y.float().var(dim=0) + 1e-6).mean().item()
