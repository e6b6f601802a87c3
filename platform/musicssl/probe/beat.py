"""Beat tracking probe (MARBLE v1 `GTZANBT`): 50 Hz frame features -> per-frame layer-weighted MLP -> DBN -> F-measure.

Protocol, as MARBLE's code has it (`benchmark/tasks/GTZAN/GTZANBT_*.py`):
- Every hidden state at the encoder's frame rate (50 Hz), no time pooling; each window of the clip is encoded
  with 320 zeros (one hop) appended, so a window of n hops gives n frames and frame i is at i / 50 s.
- Training: one random 10 s crop per train clip and epoch; targets smoothed around each beat (`beat_targets`);
  BCE on the sigmoid output; Adam, ReduceLROnPlateau(factor 0.5) and early stopping on the validation beat F.
- Decoding: madmom's `DBNBeatTrackingProcessor(fps=50)` with its defaults (`decode_beats`), built from
  madmom-infer (BSD-2, a reimplementation of madmom's HMM beat tracking: state space, transition model, Viterbi).
- Metric: `mir_eval.util.match_events` within 0.07 s, F-measure from counts summed over the dataset.
  (Targets, decoding and the metric are `probe/beat_decoding.py`.)

Known differences from MARBLE: a crop's features come from encoding the whole clip (in `window_seconds`
windows) and cutting the frames, not from encoding the 10 s crop; valid/test clips are decoded at their own
length, not padded to 30 s; references are the annotated times, not their 50 Hz frame times.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from musicssl.config import ProbeConfig
from musicssl.data.audio import SAMPLE_RATE, read_audio
from musicssl.models.encoder import SSLEncoder
from musicssl.probe.beat_decoding import TOLERANCE, beat_f_measure, beat_targets, decode_beats
from musicssl.probe.features import cache_key, cache_lock
from musicssl.probe.heads import LayerWeightedMLP, select_states
from musicssl.probe.protocol import Selection, TaskResult, task_settings
from musicssl.probe.tasks import SPLITS, TaskSpec

TRAIN_CROP_SECONDS = 10.0
"""MARBLE's random train crop; a task's `extra["train_crop_seconds"]` overrides it."""
FRAME_VERSION = 1
"""Bumped when the frame features change, so that stale caches are not reused."""

# --------------------------------------------------------------------------------------------------
# Frame features


def hop_length(encoder: SSLEncoder) -> int:
    """Samples per frame: the product of the conv strides (320 for the base and tiny models = 50 Hz)."""
    return math.prod(stride for _, _, stride in encoder.cfg.conv_layers)


def _windows(wave: np.ndarray, size: int, hop: int) -> list[np.ndarray]:
    """Windows of `size` samples (a trailing piece under 1 s joins the one before), each + one hop of zeros."""
    starts = list(range(0, len(wave), size))
    if len(starts) > 1 and len(wave) - starts[-1] < SAMPLE_RATE:
        starts.pop()
    pad = np.zeros(hop, np.float32)
    return [np.concatenate([wave[a:b], pad]) for a, b in zip(starts, [*starts[1:], len(wave)], strict=True)]


@torch.no_grad()
def extract_frames(
    encoder: SSLEncoder,
    paths: Sequence[Path],
    window_seconds: float,
    normalize: bool,
    device: torch.device,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """Every hidden state of each clip at the frame rate, no pooling: per clip (num_states, T, D).

    A clip is cut into windows of whole hops (`window_seconds`, a trailing piece under 1 s joins the window
    before); each window is encoded with one hop of zeros appended (MARBLE), so a window of n hops gives n
    frames, and the frames are concatenated. Windows of equal length are batched. Returned as float16 unless
    a value exceeds its range.
    """
    hop = hop_length(encoder)
    size = max(hop, int(window_seconds * SAMPLE_RATE) // hop * hop)
    items = [
        (clip, w)
        for clip, path in enumerate(paths)
        for w in _windows(read_audio(path, normalize=normalize), size, hop)
    ]
    by_len: dict[int, list[int]] = {}
    for i, (_, w) in enumerate(items):
        by_len.setdefault(len(w), []).append(i)
    out: list[np.ndarray] = [np.empty(0)] * len(items)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            group = idx[s : s + batch_size]
            batch = torch.from_numpy(np.stack([items[i][1] for i in group])).to(device)
            states = torch.stack(encoder(batch), dim=1).float().cpu().numpy()  # (B, S, T_window, D)
            for i, row in zip(group, states, strict=True):
                out[i] = row
    clips = [
        np.concatenate([out[i] for i, (c, _) in enumerate(items) if c == clip], axis=1)
        for clip in range(len(paths))
    ]
    return [x.astype(np.float16) if np.abs(x).max() < np.finfo(np.float16).max else x for x in clips]


def cached_frames(
    cache_dir: Path,
    key: str,
    paths: Sequence[Path],
    compute: Callable[[Sequence[Path]], list[np.ndarray]],
    group: int = 32,
    desc: str = "frames",
) -> list[np.ndarray]:
    """Per-clip frame features from `cache_dir/<key>.frames/<i>.npy` (memory-mapped), computed once.

    Missing clips are computed `group` at a time and written one file each into `<key>.frames.partial/`, so
    an interrupted run resumes where it stopped; the folder is renamed when complete.
    """
    final, partial = cache_dir / f"{key}.frames", cache_dir / f"{key}.frames.partial"
    if not final.is_dir():
        with cache_lock(cache_dir, key):
            _fill_frames(final, partial, paths, compute, group, desc)
    return [np.load(final / f"{i:05d}.npy", mmap_mode="r") for i in range(len(paths))]


def _fill_frames(final: Path, partial: Path, paths: Sequence[Path], compute: Callable[[Sequence[Path]], list[np.ndarray]],
                 group: int, desc: str) -> None:
    if not final.is_dir():  # another worker may have finished while this one waited for the lock
        partial.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(paths)) if not (partial / f"{i:05d}.npy").exists()]
        with tqdm(
            total=len(paths), initial=len(paths) - len(todo), desc=desc, leave=False, disable=None
        ) as bar:
            for s in range(0, len(todo), group):
                ids = todo[s : s + group]
                for i, x in zip(ids, compute([paths[i] for i in ids]), strict=True):
                    tmp = partial / f".{i:05d}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp.npy"
                    np.save(tmp, x)
                    os.replace(tmp, partial / f"{i:05d}.npy")
                bar.update(len(ids))
        try:
            os.replace(partial, final)
        except OSError:
            if not final.is_dir():  # not a concurrent writer that finished first
                raise
            shutil.rmtree(partial, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The probe


def probe_beat(
    encoder: SSLEncoder,
    digest: str,
    normalize: bool,
    task: TaskSpec,
    cfg: ProbeConfig,
    *,
    synthetic_root: Path | None,
    cache_dir: Path,
    data_roots: dict[str, Path] | None = None,
    device: torch.device,
    tolerance: float = TOLERANCE,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TaskResult:
    """Frame features of every clip of a `beat` task (cached), then `train_beat_probe`."""
    roots = data_roots if data_roots is not None else {k: Path(v) for k, v in cfg.data_roots.items()}
    root = synthetic_root if task.synthetic else roots.get(task.name)
    if root is None:
        raise ValueError(
            f"probe task {task.name!r} needs its dataset root: "
            f"set probe.data_roots.{task.name}=/path/to/dataset"
        )
    examples = task.load(Path(root), task)
    paths = [e.path for e in examples]
    window = task.window_seconds or cfg.window_seconds
    encoder.eval().to(device)
    key = cache_key(digest, f"{task.name}#frames-v{FRAME_VERSION}", paths, window, normalize)
    frames = cached_frames(
        cache_dir,
        key,
        paths,
        lambda ps: extract_frames(encoder, ps, window, normalize, device),
        desc=f"frames {task.name}",
    )
    beats = [np.asarray(e.target, dtype=np.float64) for e in examples]
    splits = np.array([SPLITS.index(e.split) for e in examples])
    fps = SAMPLE_RATE / hop_length(encoder)
    return train_beat_probe(
        task, frames, beats, splits, fps, cfg, device, tolerance=tolerance, on_epoch=on_epoch
    )


def train_beat_probe(
    task: TaskSpec,
    frames: Sequence[np.ndarray],
    beats: Sequence[np.ndarray],
    splits: np.ndarray,
    fps: float,
    cfg: ProbeConfig,
    device: torch.device,
    *,
    tolerance: float = TOLERANCE,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TaskResult:
    """Train a per-frame `LayerWeightedMLP` on random crops; select by validation beat F; report test metrics.

    Args:
        frames: Per clip (num_states, T, D) features (memory-mapped arrays are read crop by crop).
        beats: Per clip beat times in seconds.
        splits: Per clip index into SPLITS.
    """
    cfg = task_settings(task, cfg)
    if not all((splits == i).any() for i in range(3)):
        raise ValueError(
            f"probe task {task.name!r}: needs train, valid and test clips, got "
            f"{[int((splits == i).sum()) for i in range(3)]}"
        )
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train: list[int] = np.flatnonzero(splits == 0).tolist()
    targets = {i: beat_targets(beats[i], frames[i].shape[1], fps) for i in train}
    num_states, dim = frames[0].shape[0], frames[0].shape[2]
    mu, sd = _train_stats(frames, train, device) if cfg.standardize else (None, None)
    head = LayerWeightedMLP(select_states(num_states, cfg.layers), dim, cfg.hidden_dim, 1, cfg.dropout).to(
        device
    )
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=cfg.lr_patience)
    crop = max(1, round(float(task.extra.get("train_crop_seconds", TRAIN_CROP_SECONDS)) * fps))
    selection = Selection(head, cfg.early_stop_patience, sched, on_epoch)
    for epoch in range(1, cfg.max_epochs + 1):
        head.train()
        order = rng.permutation(train)
        for s in range(0, len(order), cfg.batch_size):
            x, y, mask = _crop_batch(
                frames, targets, order[s : s + cfg.batch_size], crop, rng, mu, sd, device
            )
            logits = head(x.flatten(0, 1)).view(y.shape)  # (B, L)
            loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        monitor = _evaluate(head, frames, beats, np.flatnonzero(splits == 1), fps, mu, sd, device, tolerance)[
            "beat_f"
        ]
        if selection.end_epoch(epoch, monitor):
            break
    selection.restore_best()
    test = _evaluate(head, frames, beats, np.flatnonzero(splits == 2), fps, mu, sd, device, tolerance)
    return TaskResult(task.name, test, task.score(test), float(selection.best), selection.epochs,
                      layer_weights=head.weights_by_state())


def _frames(
    x: np.ndarray,
    start: int,
    stop: int,
    device: torch.device,
    mu: torch.Tensor | None,
    sd: torch.Tensor | None,
) -> torch.Tensor:
    """Frames [start, stop) of one clip's (S, T, D) features as a (L, S, D) float32 tensor, standardised."""
    out = (
        torch.from_numpy(np.asarray(x[:, start:stop], dtype=np.float32)).to(device).transpose(0, 1)
    )  # (L, S, D)
    return out if mu is None or sd is None else (out - mu) / sd


def _train_stats(
    frames: Sequence[np.ndarray], train: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (state, dim) mean and std over every train frame: (S, D) each."""
    total, total_sq, n = 0.0, 0.0, 0
    for i in train:
        x = np.asarray(frames[i], dtype=np.float64)  # (S, T, D)
        total, total_sq, n = total + x.sum(1), total_sq + (x * x).sum(1), n + x.shape[1]
    mean = np.asarray(total) / n
    std = np.sqrt(np.maximum(np.asarray(total_sq) / n - mean**2, 0.0)) + 1e-6
    return (
        torch.from_numpy(mean.astype(np.float32)).to(device),
        torch.from_numpy(std.astype(np.float32)).to(device),
    )


def _crop_batch(
    frames: Sequence[np.ndarray],
    targets: dict[int, np.ndarray],
    clips: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    mu: torch.Tensor | None,
    sd: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random crop of up to `crop` frames per clip, zero-padded: x (B, L, S, D), targets and mask (B, L)."""
    xs, ys = [], []
    for i in clips:
        length = frames[i].shape[1]
        start = int(rng.integers(0, max(length - crop, 0) + 1))
        xs.append(_frames(frames[i], start, start + crop, device, mu, sd))
        ys.append(torch.from_numpy(targets[int(i)][start : start + crop]))
    width = max(len(y) for y in ys)
    x = torch.stack([F.pad(t, (0, 0, 0, 0, 0, width - len(t))) for t in xs])
    y = torch.stack([F.pad(t, (0, width - len(t))) for t in ys]).to(device)
    mask = torch.stack([(torch.arange(width) < len(t)).float() for t in ys]).to(device)
    return x, y, mask


@torch.no_grad()
def beat_activations(
    head: LayerWeightedMLP,
    clips: Sequence[np.ndarray],
    device: torch.device,
    mu: torch.Tensor | None = None,
    sd: torch.Tensor | None = None,
    max_frames: int = 8192,
) -> list[np.ndarray]:
    """Sigmoid beat activation of every frame of each clip's (S, T, D) features: per clip (T,) float64.

    Frames of several clips go through the head together, about `max_frames` at a time.
    """
    head.eval()
    pieces = [(i, s) for i, x in enumerate(clips) for s in range(0, x.shape[1], max_frames)]
    out: list[list[torch.Tensor]] = [[] for _ in clips]
    batch: list[torch.Tensor] = []
    owners: list[int] = []
    for n, (i, s) in enumerate(pieces):
        batch.append(_frames(clips[i], s, s + max_frames, device, mu, sd))
        owners.append(i)
        if sum(len(b) for b in batch) >= max_frames or n == len(pieces) - 1:
            logits = head(torch.cat(batch))[:, 0].double().cpu()  # (sum L,)
            for owner, part in zip(owners, logits.split([len(b) for b in batch]), strict=True):
                out[owner].append(part)
            batch, owners = [], []
    return [torch.sigmoid(torch.cat(parts)).numpy() if parts else np.empty(0) for parts in out]


def _evaluate(
    head: LayerWeightedMLP,
    frames: Sequence[np.ndarray],
    beats: Sequence[np.ndarray],
    clips: np.ndarray,
    fps: float,
    mu: torch.Tensor | None,
    sd: torch.Tensor | None,
    device: torch.device,
    tolerance: float,
) -> dict[str, float]:
    """Beat metrics of `clips`: activations decoded with the DBN, matched against the annotated beats."""
    activations = beat_activations(head, [frames[i] for i in clips], device, mu, sd)
    estimates = [decode_beats(a, fps) for a in activations]
    return beat_f_measure([beats[i] for i in clips], estimates, tolerance)
