"""Probe minibatches hold clips with all their windows (MARBLE's train collate), not a fixed number of windows."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from musicssl.config import ProbeConfig
from musicssl.probe.features import Features
from musicssl.probe.run import ClipBatches, train_probe
from musicssl.probe.tasks import get_task


def _long_clips(windows_per_clip: int, clips: int = 130, dim: int = 8, states: int = 3) -> tuple[Features, np.ndarray,
                                                                                                  np.ndarray]:
    """`clips` clips of `windows_per_clip` windows each; labels readable from the features (two classes)."""
    rng = np.random.default_rng(0)
    labels = np.arange(clips) % 2
    clip = np.repeat(np.arange(clips), windows_per_clip)
    x = rng.normal(size=(len(clip), states, dim)).astype(np.float32)
    x[:, :, 0] += 6.0 * labels[clip][:, None]
    splits = np.where(np.arange(clips) < 100, 0, np.where(np.arange(clips) < 115, 1, 2))
    return Features(x, clip.astype(np.int64)), labels, splits


def test_a_batch_is_whole_clips_and_an_epoch_has_ceil_clips_over_batch_steps() -> None:
    clip = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4])  # windows per clip: 3, 1, 2, 4, 1
    batches = ClipBatches(clip, np.array([0, 2, 3, 4]), batch_size=3)  # clip 1 is not train
    assert len(batches) == 2
    assert sorted(batches.windows.tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    steps = batches.epoch(torch.Generator().manual_seed(0))
    assert [len(s) for s in steps] != [] and len(steps) == 2
    seen = [clip[batches.windows[s.numpy()]] for s in steps]
    assert sorted(np.concatenate(seen).tolist()) == [0, 0, 0, 2, 2, 3, 3, 3, 3, 4]  # every window once
    per_step = [sorted(set(s.tolist())) for s in seen]
    assert sorted(len(c) for c in per_step) == [1, 3]  # 3 clips, then the last 1
    for step_clips, windows in zip(per_step, seen, strict=True):  # a clip comes with all its windows
        for c in step_clips:
            assert (windows == c).sum() == (clip == c).sum()
    again = batches.epoch(torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(steps, again, strict=True))  # seeded


def test_optimiser_steps_per_epoch_do_not_grow_with_the_windows_per_clip() -> None:
    """100 train clips in batches of 64 clips: 2 steps an epoch with 1 window per clip and with 12."""
    task = dataclasses.replace(get_task("synth_pitch"), classes=(0, 1))
    cfg = ProbeConfig(max_epochs=5, early_stop_patience=100, batch_size=64, lr=1e-2)
    for windows in (1, 12):
        feats, labels, splits = _long_clips(windows)
        result = train_probe(task, feats, labels, splits, cfg, torch.device("cpu"))
        assert result.epochs == 5
        assert result.steps == 5 * 2, windows  # ceil(100 / 64) = 2 per epoch; 64 windows a batch would give 19
        assert result.test["acc"] > 0.9  # the label is in the features: the probe learns it either way
