"""fairseq's Adam (= AdamW, decoupled weight decay on every parameter) and its LR schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from musicssl.config import PretrainConfig


def build_optimizer(params: list[nn.Parameter], cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW(betas, eps, weight_decay) with no parameter groups, as fairseq's Adam; the fused implementation (one
    kernel for all parameters), whose step can be skipped on the device (`found_inf`) without a host sync."""
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=True)


def use_fused_step(optimizer: torch.optim.Optimizer) -> None:
    """Set the fused step again after `load_state_dict` (an older checkpoint's parameter group says unfused)."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate for update `step` (0-based).

    tri_stage: linear warm-up from 0.01*lr, hold, exponential decay to 0.01*lr, then constant.
    polynomial: linear warm-up from 0 over `warmup_steps`, then linear decay to 0 at `max_steps`.
    """
    if cfg.scheduler == "tri_stage":
        warm, hold, decay = (int(r * cfg.max_steps) for r in cfg.phase_ratio)
        init, final = 0.01 * cfg.lr, 0.01 * cfg.lr
        if step < warm:
            return init + (cfg.lr - init) * step / warm
        if step < warm + hold:
            return cfg.lr
        if step < warm + hold + decay:
            return cfg.lr * math.exp(math.log(final / cfg.lr) * (step - warm - hold) / decay)
        return final
    if step < cfg.warmup_steps:  # fairseq sets step_update(0) before update 0, so update n gets lr * n / warmup
        return cfg.lr * step / cfg.warmup_steps
    remaining = max(cfg.max_steps - cfg.warmup_steps, 1)
    return cfg.lr * max(0.0, 1.0 - (step - cfg.warmup_steps) / remaining)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
