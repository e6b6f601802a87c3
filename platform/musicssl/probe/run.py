"""Probe a checkpoint: cached frozen features -> layer-weighted MLP per task -> test metrics.

Protocol (MARBLE v1): every window is a training sample; on valid/test the window outputs of a clip are
averaged (logits) before the metric; Adam, ReduceLROnPlateau(factor 0.5) and early stopping on the first
validation metric; the test metrics come from the best-validation weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from musicssl.config import ProbeConfig
from musicssl.models.convert import load_any_encoder
from musicssl.models.encoder import SSLEncoder
from musicssl.probe.beat import probe_beat
from musicssl.probe.features import Features, cache_key, cached_extract_resumable
from musicssl.probe.heads import LayerWeightedMLP, select_states
from musicssl.probe.metrics import average_score
from musicssl.probe.protocol import Selection, TaskResult, task_settings
from musicssl.probe.tasks import SPLITS, TaskSpec, compute_metrics, get_task

log = logging.getLogger(__name__)


ENSEMBLES = ("mean_logit", "mean_prob", "max_logit", "vote")
"""Song-level combinations of window logits (jukemir / MARBLE's GiantSteps: gmean, mean, max, vote)."""


def probe_checkpoint(checkpoint: Path, cfg: ProbeConfig, *, synthetic_root: Path | None, cache_dir: Path,
                     data_roots: dict[str, Path] | None = None, device: torch.device | None = None
                     ) -> tuple[dict[str, TaskResult], float]:
    """Probe every task of `cfg.tasks` on the frozen encoder of `checkpoint`; return results and the average.

    `checkpoint` is a musicssl checkpoint folder, a Hugging Face model folder or a fairseq `.pt` file.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder, digest, normalize = load_encoder(checkpoint)
    results = {name: probe_task(encoder, digest, normalize, name, cfg, synthetic_root=synthetic_root,
                                cache_dir=cache_dir, data_roots=data_roots, device=device) for name in cfg.tasks}
    return results, average_score({k: r.score for k, r in results.items()})


def probe_task(encoder: SSLEncoder, digest: str, normalize: bool, name: str, cfg: ProbeConfig, *,
               synthetic_root: Path | None, cache_dir: Path, data_roots: dict[str, Path] | None = None,
               device: torch.device, on_epoch: Callable[[int, float], None] | None = None) -> TaskResult:
    """One task on a loaded frozen encoder: its features (cached), its probe, its test metrics."""
    task = get_task(name)
    if task.kind == "beat":  # frame-level features and probe
        result = probe_beat(encoder, digest, normalize, task, cfg, synthetic_root=synthetic_root,
                            cache_dir=cache_dir, data_roots=data_roots, device=device,
                            tolerance=cfg.beat_tolerance, on_epoch=on_epoch)
    else:
        feats, targets, splits = task_features(encoder, digest, normalize, task, cfg, synthetic_root=synthetic_root,
                                               cache_dir=cache_dir, data_roots=data_roots, device=device)
        result = train_probe(task, feats, targets, splits, cfg, device, on_epoch=on_epoch)
    log.info("probe %s: %s", name, result.test)
    return result


def load_encoder(checkpoint: Path) -> tuple[SSLEncoder, str, bool]:
    """The frozen encoder of `checkpoint`, its content hash (the feature-cache key) and its input normalisation."""
    enc_cfg, weights, digest, normalize = load_any_encoder(checkpoint)
    encoder = SSLEncoder(enc_cfg)
    encoder.load_state_dict(weights)
    return encoder, digest, normalize


def checkpoint_probe_settings(checkpoint: Path) -> dict[str, Any]:
    """The probe section a musicssl checkpoint's run was configured with (its `config.json`), the starting point of
    `musicssl probe` and `musicssl probe tune` on it; {} for a Hugging Face folder or a fairseq file."""
    from musicssl.checkpoints import CONFIG_FILE, ENCODER_FILE

    path = Path(checkpoint)
    if not (path.is_dir() and (path / ENCODER_FILE).exists() and (path / CONFIG_FILE).exists()):
        return {}
    section = json.loads((path / CONFIG_FILE).read_text()).get("probe") or {}
    return {k: v for k, v in section.items() if k in ProbeConfig.model_fields}


def probe_settings(checkpoint: Path, overrides: list[str], source: str, tasks: list[str] | None = None
                   ) -> ProbeConfig:
    """The checkpoint's own probe section (a musicssl checkpoint), then `probe.<field>=` overrides, then `tasks`."""
    from musicssl.config import deep_merge
    from musicssl.config_io import parse, probe_overrides

    given = probe_overrides(overrides, source)  # a malformed override fails before the checkpoint is read
    data = deep_merge(checkpoint_probe_settings(checkpoint), given)
    if tasks:
        data["tasks"] = list(tasks)
    return parse(ProbeConfig, data, source, prefix="probe")


def task_features(encoder: SSLEncoder, digest: str, normalize: bool, task: TaskSpec, cfg: ProbeConfig, *,
                  synthetic_root: Path | None, cache_dir: Path, data_roots: dict[str, Path] | None = None,
                  device: torch.device) -> tuple[Features, np.ndarray, np.ndarray]:
    """Window features of every clip of `task` (extracted once, then read from `cache_dir`), clip targets, splits.

    Window and crop follow probe.protocol (`TaskSpec.windowing`); a clip may be a segment of a file
    (`Example.start/stop`, VocalSet's chunks), which is part of the cache key.
    Returns `(features, targets (N_clips, ...), splits (N_clips,) as indices into SPLITS)`.
    """
    name = task.name
    roots = data_roots if data_roots is not None else {k: Path(v) for k, v in cfg.data_roots.items()}
    root = synthetic_root if task.synthetic else roots.get(name)
    if root is None:
        raise ValueError(f"probe task {name!r} needs its dataset root: set probe.data_roots.{name}=/path/to/dataset")
    examples = task.load(Path(root), task)
    paths = [e.path for e in examples]
    segments = [e.segment for e in examples]
    window, crop = task.windowing(cfg.protocol, cfg.window_seconds)
    key = cache_key(digest, name, paths, window, normalize, crop, segments)
    feats = cached_extract_resumable(cache_dir, key, encoder, paths, window, normalize, device,
                                     desc=f"features {name}", crop_seconds=crop, segments=segments)
    targets = np.stack([np.asarray(e.target) for e in examples])
    splits = np.array([SPLITS.index(e.split) for e in examples])
    return feats, targets, splits


def train_probe(task: TaskSpec, feats: Features, targets: np.ndarray, splits: np.ndarray, cfg: ProbeConfig,
                device: torch.device, *, on_epoch: Callable[[int, float], None] | None = None) -> TaskResult:
    """Train one probe head on window features; select by validation; report test metrics.

    `on_epoch(epoch, monitor)` is called after each epoch's validation (e.g. to report to an Optuna pruner,
    which may raise `optuna.TrialPruned` to stop training).
    """
    cfg = task_settings(task, cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(np.array(feats.x, dtype=np.float32))  # (N, S, D)
    y_clip = targets.astype(np.float32 if task.kind != "multiclass" else np.int64)
    if task.kind == "regression":  # z-score with train statistics (EMO protocol)
        train_y = y_clip[splits == 0]
        mu, sd = train_y.mean(0), train_y.std(0) + 1e-8
        y_clip = (y_clip - mu) / sd
    win_split = splits[feats.clip]
    train_idx = np.flatnonzero(win_split == 0)
    if len(train_idx) == 0 or not (splits == 1).any() or not (splits == 2).any():
        raise ValueError(f"probe task {task.name!r}: needs train, valid and test clips, got "
                         f"{[int((splits == i).sum()) for i in range(3)]}")
    if cfg.standardize:
        mu, sd = x_all[train_idx].mean(0), x_all[train_idx].std(0) + 1e-6  # (S, D)
        x_all = (x_all - mu) / sd
    batches = ClipBatches(feats.clip, np.flatnonzero(splits == 0), cfg.batch_size)
    x_train = x_all[batches.windows].to(device)  # the train windows, grouped by clip
    y_train = torch.from_numpy(y_clip[feats.clip[batches.windows]]).to(device)
    head = LayerWeightedMLP(select_states(x_all.shape[1], cfg.layers), x_all.shape[2], cfg.hidden_dim,
                            task.num_outputs, cfg.dropout).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=cfg.lr_patience)
    selection = Selection(head, cfg.early_stop_patience, sched, on_epoch)
    steps = 0
    for epoch in range(1, cfg.max_epochs + 1):
        head.train()
        for b in batches.epoch(gen):
            b = b.to(device)
            loss = _loss(task, head(x_train[b]), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        valid = _evaluate(task, head, x_all, feats.clip, y_clip, splits, 1, device)
        if selection.end_epoch(epoch, valid[task.metrics[0]]):
            break
    selection.restore_best()
    strategy = "mean_logit"
    if task.ensemble:  # pick the song-level combination on validation, as MARBLE's GiantSteps protocol does
        valid = {s: _evaluate(task, head, x_all, feats.clip, y_clip, splits, 1, device, s)[task.metrics[0]]
                 for s in ENSEMBLES}
        strategy = max(ENSEMBLES, key=lambda s: valid[s])
    test = _evaluate(task, head, x_all, feats.clip, y_clip, splits, 2, device, strategy)
    return TaskResult(task.name, test, task.score(test), float(selection.best), selection.epochs, strategy,
                      head.weights_by_state(), steps)


class ClipBatches:
    """Minibatches of clips, as MARBLE's loaders make them: `batch_size` clips per step, each with all its windows.

    MARBLE's train collate stacks every window of the batch's clips, so an epoch takes ceil(clips / batch_size)
    optimiser steps whatever the window count, and the loss is the mean over the batch's windows. `windows` holds
    the train windows' indices into the feature array, grouped by clip; `epoch` yields, per step, positions into
    `windows` (clips shuffled by `gen`, the last batch may be smaller).
    """

    def __init__(self, clip: np.ndarray, train_clips: np.ndarray, batch_size: int) -> None:
        self.batch_size = batch_size
        in_train = np.flatnonzero(np.isin(clip, train_clips))
        self.windows = in_train[np.argsort(clip[in_train], kind="stable")]
        ids, self.counts = np.unique(clip[self.windows], return_counts=True)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.num_clips = len(ids)

    def __len__(self) -> int:
        """Optimiser steps per epoch."""
        return -(-self.num_clips // self.batch_size)

    def epoch(self, gen: torch.Generator) -> list[torch.Tensor]:
        order = torch.randperm(self.num_clips, generator=gen).numpy()
        out = []
        for s in range(0, self.num_clips, self.batch_size):
            chosen = order[s:s + self.batch_size]
            out.append(torch.from_numpy(np.concatenate(
                [np.arange(self.starts[c], self.starts[c] + self.counts[c]) for c in chosen])))
        return out


def _loss(task: TaskSpec, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.kind == "multiclass":
        return F.cross_entropy(out, y)
    if task.kind == "multilabel":
        return F.binary_cross_entropy_with_logits(out, y)
    return F.mse_loss(out, y)


@torch.no_grad()
def _evaluate(task: TaskSpec, head: torch.nn.Module, x_all: torch.Tensor, clip: np.ndarray, y_clip: np.ndarray,
              splits: np.ndarray, split: int, device: torch.device, strategy: str = "mean_logit") -> dict[str, float]:
    """Clip-level metrics of one split: window outputs combined per clip (`strategy`), then the task's metrics."""
    head.eval()
    clips = np.flatnonzero(splits == split)
    win = np.flatnonzero(np.isin(clip, clips))
    out = torch.cat([head(x_all[win[s:s + 1024]].to(device)).float().cpu() for s in range(0, len(win), 1024)])
    pos = torch.from_numpy(np.searchsorted(clips, clip[win]))
    return compute_metrics(task, combine_windows(out, pos, len(clips), strategy).numpy(), y_clip[clips])


def combine_windows(out: torch.Tensor, pos: torch.Tensor, n: int, strategy: str = "mean_logit") -> torch.Tensor:
    """(W, C) window outputs of n clips (`pos` = clip of each window) -> (n, C) clip outputs."""
    counts = torch.bincount(pos, minlength=n).clamp(min=1)[:, None]
    mean_logit = torch.zeros(n, out.shape[1]).index_add_(0, pos, out) / counts
    if strategy == "mean_logit":
        return mean_logit
    if strategy == "mean_prob":
        return torch.zeros(n, out.shape[1]).index_add_(0, pos, out.softmax(-1)) / counts
    if strategy == "max_logit":
        return torch.full((n, out.shape[1]), -torch.inf).index_reduce_(0, pos, out, "amax")
    if strategy == "vote":  # most windows' argmax; ties broken by the mean logit
        votes = torch.zeros(n, out.shape[1]).index_add_(0, pos, F.one_hot(out.argmax(-1), out.shape[1]).float())
        return votes + 1e-3 * mean_logit.softmax(-1)
    raise ValueError(f"unknown ensemble {strategy!r}; known: {', '.join(ENSEMBLES)}")
