"""What the clip-level probe (`probe/run.py`) and the beat probe (`probe/beat.py`) share of MARBLE v1's protocol:
each task's published settings where the probe config holds its defaults, best-validation selection with early
stopping, and the result record of a task.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from musicssl.config import ProbeConfig
from musicssl.probe.tasks import TaskSpec


@dataclass
class TaskResult:
    """Test metrics of one task, its table score, and the best validation value."""

    task: str
    test: dict[str, float]
    score: float
    best_valid: float
    epochs: int
    ensemble: str = "mean_logit"
    """How window outputs were combined per clip (chosen on validation for tasks with `ensemble`)."""
    layer_weights: dict[int, float] = field(default_factory=dict)
    """The learned softmax weight of each hidden state the probe read (state index -> weight)."""
    steps: int = 0
    """Optimiser steps taken (batches of `probe.batch_size` clips, each with all its windows)."""


class Selection:
    """Best-validation weights and early stopping, shared by the clip-level and the beat probe.

    `end_epoch` reports the monitor (to `on_epoch`, then the LR scheduler), keeps the weights when the monitor
    improves, and returns True once `patience` epochs passed without improvement.
    """

    def __init__(self, head: torch.nn.Module, patience: int, sched: torch.optim.lr_scheduler.ReduceLROnPlateau,
                 on_epoch: Callable[[int, float], None] | None = None) -> None:
        self.head, self.patience, self.sched, self.on_epoch = head, patience, sched, on_epoch
        self.best, self.state, self.since, self.epochs = -np.inf, copy.deepcopy(head.state_dict()), 0, 0

    def end_epoch(self, epoch: int, monitor: float) -> bool:
        self.epochs = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch, float(monitor))
        self.sched.step(monitor)
        if monitor > self.best:
            self.best, self.state, self.since = monitor, copy.deepcopy(self.head.state_dict()), 0
            return False
        self.since += 1
        return self.since >= self.patience

    def restore_best(self) -> None:
        self.head.load_state_dict(self.state)


def task_lr(task: TaskSpec, cfg: ProbeConfig) -> float:
    """The task's published lr (GTZAN: 5e-3) while probe.lr is at its default; any other probe.lr wins."""
    default = ProbeConfig.model_fields["lr"].default
    return task.lr if task.lr is not None and cfg.lr == default else cfg.lr


def task_settings(task: TaskSpec, cfg: ProbeConfig) -> ProbeConfig:
    """`cfg` with the task's published settings (MARBLE) wherever `cfg` still holds the default.

    Covers lr, the epoch cap, the LR and early-stopping patiences and the hidden-state choice; a value a sweep,
    a tuning trial or the command line sets explicitly (anything but the default) wins.
    """
    update: dict[str, object] = {"lr": task_lr(task, cfg), "max_epochs": task_max_epochs(task, cfg)}
    for name in ("lr_patience", "early_stop_patience", "layers"):
        value = getattr(task, name)
        if value is not None and getattr(cfg, name) == ProbeConfig.model_fields[name].default:
            update[name] = value
    return cfg.model_copy(update=update)


def task_max_epochs(task: TaskSpec, cfg: ProbeConfig) -> int:
    """probe.max_epochs, capped by the task's own limit (NSynth: 50)."""
    return min(cfg.max_epochs, task.max_epochs) if task.max_epochs is not None else cfg.max_epochs
