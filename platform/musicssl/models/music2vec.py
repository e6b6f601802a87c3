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
    """One forward pass, all on the device (reading none of it waits for the device until the caller does):
    `loss_sum` (divide by `sample_size`: the masked frames, plus the unmasked ones when MusicHuBERT weights their
    loss) and logging values (0-dim tensors)."""

    loss_sum: Tensor
    sample_size: Tensor
    logs: dict[str, Tensor]


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
    def ema_step(self, num_updates: int, applied: Tensor | None = None) -> None:
        """Teacher <- decay * teacher + (1 - decay) * student in fused foreach ops; the positional conv (and a frozen
        extractor's part, none in the teacher) copied, buffers copied. `applied` (a bool tensor, False when the
        update was skipped) makes it a no-op on the device, without reading the flag."""
        self.num_updates = num_updates
        decay = self.ema_decay(num_updates)
        if decay >= 1.0:
            return
        averaged, copied, buffers = self._ema_pairs()
        if applied is None:
            if averaged[0]:
                torch._foreach_lerp_(averaged[0], averaged[1], 1.0 - decay)
            for teacher, student in (copied, buffers):
                if teacher:
                    torch._foreach_copy_(teacher, student)
            return
        keep = applied.float()  # 1 = the update was applied; 0 = skipped: move nothing
        for (teacher, student), weight in ((averaged, keep * (1.0 - decay)), (copied, keep), (buffers, keep)):
            if teacher:  # teacher += weight * (student - teacher), the weight a device tensor (lerp would read it)
                step = torch._foreach_sub(student, teacher)
                torch._foreach_mul_(step, weight)
                torch._foreach_add_(teacher, step)

    def _ema_pairs(self) -> tuple[tuple[list[Tensor], list[Tensor]], ...]:
        """(teacher, student) tensor lists: averaged parameters, copied parameters, buffers (built once)."""
        if getattr(self, "_pairs", None) is None:
            student = dict(self.student.encoder.named_parameters())
            averaged: tuple[list[Tensor], list[Tensor]] = ([], [])
            copied: tuple[list[Tensor], list[Tensor]] = ([], [])
            for name, t in self.teacher.named_parameters():
                s = student[name]
                if s.dtype != t.dtype:
                    raise TypeError(f"EMA: student {name} is {s.dtype}, the fp32 teacher needs fp32 weights")
                group = copied if name.startswith("pos_conv.") or not s.requires_grad else averaged
                group[0].append(t)
                group[1].append(s)
            buffers = ([b for _, b in self.teacher.named_buffers()], [b for _, b in self.student.encoder.named_buffers()])
            self._pairs = (averaged, copied, buffers)
        return self._pairs

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
            mask = compute_mask(None, T, cfg.mask_prob, cfg.mask_length,
                                min_masks=cfg.mask_min_masks, require_same_masks=cfg.require_same_masks,
                                batch_rounding=True, generator=generator, batch_size=B,
                                device=x.device)  # (B, T); no padding_mask in fairseq
        x = torch.where(mask[..., None], enc.mask_emb.to(x.dtype), x)
        student_out = enc.encoder(x).x  # (B, T, D)

        with torch.no_grad():
            self.teacher.eval()
            k = cfg.music2vec.average_top_k_layers
            layers = self.teacher(teacher_in.float(), min_layer=cfg.encoder.num_layers - k).layer_results
            y = self._targets(layers)  # (B, T, D)
        # every frame is predicted and the loss keeps the masked ones: the same sum as fairseq's over x[mask], without
        # a boolean index (whose size only the device knows)
        pred = self.final_proj(student_out).float()  # (B, T, D)
        weight = mask.to(pred.dtype)
        loss = (self._loss(pred, y) * weight).sum()
        logs = {"target_var": _std_mean(y, weight), "pred_var": _std_mean(pred.detach(), weight),
                "masked_frac": weight.mean()}
        return StepOutput(loss * self._loss_scale(), mask.sum(), logs)

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
        """Raise `TargetCollapseError` once past `var_check_after` updates if target or prediction std collapsed
        (`logs`: values read from the device; the loop checks at its log steps)."""
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


def _std_mean(y: Tensor, weight: Tensor) -> Tensor:
    """fairseq `compute_var` over the masked frames (`weight` (B, T) 1 there): mean over channels of
    sqrt(unbiased var over those frames + 1e-6); 0 with fewer than 2 frames."""
    y, w = y.float(), weight.float()[..., None]  # (B, T, D), (B, T, 1)
    n = w.sum()
    mean = (y * w).sum((0, 1)) / n.clamp(min=1)
    var = ((y - mean) ** 2 * w).sum((0, 1)) / (n - 1).clamp(min=1)
    return torch.where(n >= 2, torch.sqrt(var + 1e-6).mean(), n.new_zeros(()))
