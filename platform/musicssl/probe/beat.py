"""Beat tracking probe (MARBLE v1 `GTZANBT`): 50 Hz frame features -> per-frame layer-weighted MLP -> DBN -> F-measure.

Protocol, as MARBLE's code has it (`benchmark/tasks/GTZAN/GTZANBT_*.py`):
- Every hidden state at the encoder's frame rate (50 Hz), no time pooling; each window of the clip is encoded
  with 320 zeros (one hop) appended, so a window of n hops gives n frames and frame i is at i / 50 s.
- Training: one random 10 s crop per train clip and epoch; targets smoothed around each beat (`beat_targets`);
  BCE on the sigmoid output; Adam, ReduceLROnPlateau(factor 0.5) and early stopping on the validation beat F.
- Decoding: madmom's `DBNBeatTrackingProcessor(fps=50)` with its defaults (`decode_beats`), built from
  madmom-infer (BSD-2, a reimplementation of madmom's HMM beat tracking: state space, transition model, Viterbi).
- Metric: `mir_eval.util.match_events` within 0.07 s, F-measure from counts summed over the dataset.

Known differences from MARBLE: a crop's features come from encoding the whole clip (in `window_seconds`
windows) and cutting the frames, not from encoding the 10 s crop; valid/test clips are decoded at their own
length, not padded to 30 s; references are the annotated times, not their 50 Hz frame times.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from musicssl.config import ProbeConfig
from musicssl.data.audio import SAMPLE_RATE, read_audio
from musicssl.models.encoder import SSLEncoder
from musicssl.probe.features import cache_key, cache_lock
from musicssl.probe.heads import LayerWeightedMLP, select_states
from musicssl.probe.protocol import Selection, TaskResult, task_settings
from musicssl.probe.tasks import SPLITS, TaskSpec

TOLERANCE = 0.07
"""F-measure window in seconds: MARBLE's code (`f_measure_threshold=0.07`, mir_eval's default); the MARBLE
paper's text says 20 ms."""
TRAIN_CROP_SECONDS = 10.0
"""MARBLE's random train crop; a task's `extra["train_crop_seconds"]` overrides it."""
FRAME_VERSION = 1
"""Bumped when the frame features change, so that stale caches are not reused."""

# --------------------------------------------------------------------------------------------------
# Targets, decoding, metric


def beat_targets(beat_times: np.ndarray | Sequence[float], num_frames: int, fps: float = 50) -> np.ndarray:
    """MARBLE's smoothed training targets: 1 at each beat frame, 0.95 one frame away and 0.5 two frames away.

    Beat frames are `round(t * fps)` (those outside [0, num_frames) are dropped). As in MARBLE, only beats
    with a beat before them get the smoothing before them, and only beats with a beat after them the smoothing
    after them (the first beat has no left shoulder, the last none on the right); values are written in
    MARBLE's order (beat, left 0.95, left 0.5, right 0.95, right 0.5), later ones overwriting earlier ones,
    which matters only for beats under 5 frames apart.

    Returns:
        (num_frames,) float32.
    """
    y = np.zeros(num_frames, dtype=np.float32)
    idx = np.round(np.asarray(beat_times, dtype=np.float64) * fps).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < num_frames)]
    y[idx] = 1.0
    for frames, value in ((idx[1:] - 1, 0.95), (idx[1:] - 2, 0.5), (idx[:-1] + 1, 0.95), (idx[:-1] + 2, 0.5)):
        y[frames[(frames >= 0) & (frames < num_frames)]] = value
    return y


class _BeatObservations:
    """madmom's `RNNBeatTrackingObservationModel`: the first 1/observation_lambda of each beat period are beat
    states (density = activation), the rest non-beat states (density = (1 - activation) / (lambda - 1)).

    Written here because madmom-infer 0.2.0's `log_densities` calls `np.asarray(..., ndmin=1)`, which numpy
    >= 2 rejects; `HiddenMarkovModel.viterbi` reads only `pointers` and `log_densities`.
    """

    def __init__(self, state_positions: np.ndarray, observation_lambda: float) -> None:
        self.observation_lambda = observation_lambda
        self.pointers = (state_positions < 1.0 / observation_lambda).astype(np.uint32)  # 1 = beat state

    def log_densities(self, observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float64)
        with np.errstate(divide="ignore"):  # activations of exactly 0 or 1 give -inf, as in madmom
            return np.stack(
                [np.log((1.0 - obs) / (self.observation_lambda - 1)), np.log(obs)], axis=1
            )  # (N, 2)


@functools.lru_cache(maxsize=8)
def _beat_hmm(
    fps: float,
    min_bpm: float,
    max_bpm: float,
    num_tempi: int | None,
    transition_lambda: float,
    observation_lambda: float,
) -> tuple[Any, _BeatObservations, Any]:
    """The DBN of `DBNBeatTrackingProcessor`: bar-pointer beat state space, exponential tempo transitions."""
    from madmom_infer.features.beats_hmm import BeatStateSpace, BeatTransitionModel
    from madmom_infer.ml.hmm import HiddenMarkovModel

    space = BeatStateSpace(60.0 * fps / max_bpm, 60.0 * fps / min_bpm, num_tempi)
    observations = _BeatObservations(space.state_positions, observation_lambda)
    return space, observations, HiddenMarkovModel(BeatTransitionModel(space, transition_lambda), observations)


def decode_beats(
    activation: np.ndarray,
    fps: float = 50,
    *,
    min_bpm: float = 55.0,
    max_bpm: float = 215.0,
    num_tempi: int | None = None,
    transition_lambda: float = 100.0,
    observation_lambda: float = 16.0,
    threshold: float = 0.0,
    correct: bool = True,
) -> np.ndarray:
    """Beat times (seconds) from a frame-wise beat activation, as madmom's `DBNBeatTrackingProcessor(fps=fps)`.

    The defaults are madmom's. Viterbi decoding through madmom-infer's beat state space and transition model;
    with `correct`, each beat is the activation peak inside a run of beat states, otherwise the frame where the
    beat position wraps. An all-zero activation (or none above `threshold`) gives no beats.

    Args:
        activation: (T,) beat probabilities in [0, 1].
        fps: Frames per second of `activation`.

    Returns:
        (num_beats,) float64, sorted.
    """
    act = np.asarray(activation, dtype=np.float64).ravel()
    first = 0
    if threshold:
        above = np.flatnonzero(act >= threshold)
        first, last = (int(above[0]), int(above[-1]) + 1) if above.size else (0, 0)
        act = act[first:last]
    if not act.any():
        return np.empty(0)
    space, observations, hmm = _beat_hmm(
        float(fps),
        float(min_bpm),
        float(max_bpm),
        num_tempi,
        float(transition_lambda),
        float(observation_lambda),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # -inf log probability: an empty path, no beats
        path, _ = hmm.viterbi(act)
    if path.size == 0:
        return np.empty(0)
    if correct:
        in_beat = observations.pointers[path].astype(np.int64)  # (T,) 1 inside a beat state run
        edges = np.flatnonzero(np.diff(in_beat)) + 1
        edges = np.r_[[0] if in_beat[0] else [], edges, [in_beat.size] if in_beat[-1] else []].astype(
            np.int64
        )
        beats = np.array(
            [left + int(np.argmax(act[left:right])) for left, right in edges.reshape(-1, 2)], dtype=np.int64
        )
    else:
        from scipy.signal import argrelmin

        beats = argrelmin(space.state_positions[path], mode="wrap")[0]
        beats = beats[observations.pointers[path[beats]] == 1]
    return (beats + first) / float(fps)


def beat_f_measure(
    references: Sequence[np.ndarray], estimates: Sequence[np.ndarray], tolerance: float = TOLERANCE
) -> dict[str, float]:
    """Beat F-measure over a dataset, MARBLE's way, plus the per-track mean for comparison.

    `beat_f` comes from the matched / estimated / reference counts summed over all tracks, each track matched
    with `mir_eval.util.match_events` within `tolerance` seconds (0 when there are no estimates or no
    references at all); `beat_f_track_mean` is the mean over tracks of `mir_eval.beat.f_measure`, the usual
    per-track average. The tolerance is 0.07 s in MARBLE's code (`GTZANBT_metric.py`), while the MARBLE paper's
    text says 20 ms; 0.07 s is the default here and mir_eval's.

    Returns:
        `beat_f`, `beat_precision`, `beat_recall` (dataset counts) and `beat_f_track_mean`.
    """
    import mir_eval  # a dev dependency of the package; this probe needs it at run time

    matched = n_est = n_ref = 0
    per_track = []
    for ref, est in zip(references, estimates, strict=True):
        ref, est = np.asarray(ref, dtype=np.float64), np.asarray(est, dtype=np.float64)
        matched += len(mir_eval.util.match_events(ref, est, tolerance))
        n_est, n_ref = n_est + len(est), n_ref + len(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # mir_eval warns on empty beat lists, then scores 0
            per_track.append(mir_eval.beat.f_measure(ref, est, f_measure_threshold=tolerance))
    precision = matched / n_est if n_est else 0.0
    recall = matched / n_ref if n_ref else 0.0
    f = 2 * precision * recall / (precision + recall) if n_est and n_ref and matched else 0.0
    return {
        "beat_f": float(f),
        "beat_precision": float(precision),
        "beat_recall": float(recall),
        "beat_f_track_mean": float(np.mean(per_track)) if per_track else 0.0,
    }


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
