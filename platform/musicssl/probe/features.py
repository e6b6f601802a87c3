"""Frozen features, extracted once per (checkpoint, task, settings) and cached on disk.

Each clip is cut into non-overlapping windows of `window_seconds` (a last window shorter than 1 s is
dropped unless it is the only one, as MARBLE does); every window goes through the encoder and each
hidden state is mean-pooled over time, giving (num_states, D) per window. The cache key is the encoder's
content hash plus the extraction settings (and the file segments, where clips are segments), so a changed
checkpoint or clip list never reuses stale features.

A clip may be a segment of a file (frames `start:stop` at the file's own rate): it is read alone and
standardised on its own, as the chunk files MARBLE's VocalSet preprocessing writes are, then resampled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm import tqdm

from musicssl.data.audio import SAMPLE_RATE, AudioError, layer_norm, read_audio
from musicssl.models.encoder import SSLEncoder

FEATURE_VERSION = 1


@dataclass
class Features:
    """Window features and the clip each window belongs to."""

    x: np.ndarray  # (N_windows, num_states, D) float32
    clip: np.ndarray  # (N_windows,) int64 index into the clip list


def windows(wave: np.ndarray, window: int) -> list[np.ndarray]:
    """Non-overlapping windows; a trailing window under 1 s is dropped unless it is the only one."""
    chunks = [wave[i:i + window] for i in range(0, len(wave), window)]
    kept = [c for c in chunks if len(c) >= SAMPLE_RATE]
    return kept or chunks[:1]


Segment = tuple[int, int] | None
"""(start, stop) frames of a file at its own sample rate, or None for the whole file."""


def read_segment(path: Path, start: int, stop: int, normalize: bool) -> np.ndarray:
    """Frames `start:stop` of `path` as a 16 kHz mono float32 waveform, standardised on their own.

    The segment is mixed to mono and brought to zero mean and unit sample std (ddof 1) at the file's rate, as
    MARBLE's VocalSet preprocessing normalises each 3 s chunk before writing it; it is then resampled (soxr HQ)
    and, with `normalize`, layer-normed like a whole file (the model's input normalisation)."""
    try:
        data, rate = sf.read(str(path), start=start, stop=stop, dtype="float64", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(path, f"cannot decode frames {start}:{stop}: {exc}") from exc
    wav = data.mean(axis=1)
    if len(wav) != stop - start:
        raise AudioError(path, f"frames {start}:{stop} asked for, {len(wav)} read; did the file change?")
    std = wav.std(ddof=1) if len(wav) > 1 else 0.0
    if not np.isfinite(wav).all() or std == 0:
        raise AudioError(path, f"frames {start}:{stop} are constant or hold NaN/inf; cannot standardise them")
    wav = ((wav - wav.mean()) / std).astype(np.float32)
    if rate != SAMPLE_RATE:
        wav = soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ")
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    return layer_norm(wav) if normalize else wav


@torch.no_grad()
def extract(encoder: SSLEncoder, paths: list[Path], window_seconds: float, normalize: bool,
            device: torch.device, batch_size: int = 16, desc: str = "features",
            crop_seconds: float | None = None, segments: list[Segment] | None = None) -> Features:
    """Mean-pooled hidden states of every window of every clip (windows of equal length are batched).

    `crop_seconds` keeps the first seconds of each clip (after the whole-clip normalisation). `segments`,
    parallel to `paths`, names the part of each file that is the clip (None entries: the whole file)."""
    encoder.eval().to(device)
    window = int(window_seconds * SAMPLE_RATE)
    segments = segments if segments is not None else [None] * len(paths)
    if len(segments) != len(paths):
        raise ValueError(f"{len(segments)} segments for {len(paths)} paths; give one (or None) per path")
    items: list[tuple[int, np.ndarray]] = []
    for clip, (path, segment) in enumerate(zip(paths, segments, strict=True)):
        wave = read_audio(path, normalize=normalize) if segment is None else read_segment(path, *segment, normalize)
        if crop_seconds is not None:
            wave = wave[:int(crop_seconds * SAMPLE_RATE)]
        items += [(clip, w) for w in windows(wave, window)]
    by_len: dict[int, list[int]] = {}
    for i, (_, w) in enumerate(items):
        by_len.setdefault(len(w), []).append(i)
    out: list[np.ndarray | None] = [None] * len(items)
    groups = [idx[s:s + batch_size] for idx in by_len.values() for s in range(0, len(idx), batch_size)]
    for group in tqdm(groups, desc=desc, leave=False, disable=None):
        batch = torch.from_numpy(np.stack([items[i][1] for i in group])).to(device)
        states = torch.stack(encoder(batch), dim=1).mean(2)  # (B, S, D)
        for i, row in zip(group, states.float().cpu().numpy(), strict=True):
            out[i] = row
    return Features(np.stack(out).astype(np.float32), np.array([c for c, _ in items], dtype=np.int64))  # type: ignore[arg-type]


def cache_key(encoder_sha256: str, task: str, paths: list[Path], window_seconds: float, normalize: bool,
              crop_seconds: float | None = None, segments: list[Segment] | None = None) -> str:
    """Key of a cached feature set: checkpoint content, task, clip list (with segments) and extraction settings.

    Whole-file clip lists (no segment set) keep the key they had before segments existed."""
    settings: dict[str, object] = {"encoder": encoder_sha256, "task": task, "paths": [str(p) for p in paths],
                                   "window": window_seconds, "normalize": normalize, "version": FEATURE_VERSION}
    if crop_seconds is not None:
        settings["crop"] = crop_seconds
    if segments is not None and any(s is not None for s in segments):
        settings["segments"] = [list(s) if s is not None else None for s in segments]
    blob = json.dumps(settings)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@contextlib.contextmanager
def cache_lock(cache_dir: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock on cache entry `key` (probe jobs and Optuna trials of one checkpoint run at once:
    the first extracts, the others wait and then read its result). `flock`, released if the holder dies; every
    waiter checks the entry again once it holds the lock, so removing the lock file when done is safe."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
            path.unlink(missing_ok=True)  # the entry is complete: a later comer sees it before it needs the lock
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_extract(cache_dir: Path, key: str, compute: Callable[[], Features]) -> Features:
    """Load features for `key` from `cache_dir`, or compute and store them atomically (once, under a lock)."""
    x_path, c_path = cache_dir / f"{key}.x.npy", cache_dir / f"{key}.clip.npy"
    if x_path.exists() and c_path.exists():
        return Features(np.load(x_path, mmap_mode="r"), np.load(c_path))
    with cache_lock(cache_dir, key):
        if x_path.exists() and c_path.exists():  # another worker extracted them while this one waited
            return Features(np.load(x_path, mmap_mode="r"), np.load(c_path))
        feats = compute()
        for path, arr in ((c_path, feats.clip), (x_path, feats.x)):  # x last: its presence marks completion
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, path)
    return feats


def cached_extract_resumable(cache_dir: Path, key: str, encoder: SSLEncoder, paths: list[Path],
                             window_seconds: float, normalize: bool, device: torch.device,
                             part_size: int = 256, desc: str = "features",
                             crop_seconds: float | None = None, segments: list[Segment] | None = None) -> Features:
    """`extract` with the cache of `cached_extract`, done in parts of `part_size` clips that are kept on disk.

    An interrupted extraction (a killed job, a preempted node) resumes from the parts already written;
    the parts are merged into the cache entry and removed at the end.
    """

    def compute() -> Features:
        parts_dir = cache_dir / f"{key}.parts"
        parts_dir.mkdir(parents=True, exist_ok=True)
        xs, clips = [], []
        starts = range(0, len(paths), part_size)
        for n, start in enumerate(tqdm(starts, desc=desc, disable=None if len(starts) > 1 else True)):
            part = parts_dir / f"part{n:06d}.npz"
            if not part.exists():
                part_segments = segments[start:start + part_size] if segments is not None else None
                feats = extract(encoder, paths[start:start + part_size], window_seconds, normalize, device, desc=desc,
                                crop_seconds=crop_seconds, segments=part_segments)
                tmp = parts_dir / f".part{n:06d}.{os.getpid()}.tmp.npz"
                np.savez(tmp, x=feats.x, clip=feats.clip + start)
                os.replace(tmp, part)
            with np.load(part) as data:
                xs.append(data["x"])
                clips.append(data["clip"])
        return Features(np.concatenate(xs), np.concatenate(clips))

    feats = cached_extract(cache_dir, key, compute)
    parts_dir = cache_dir / f"{key}.parts"
    if parts_dir.exists():
        for f in parts_dir.iterdir():
            f.unlink()
        parts_dir.rmdir()
    return feats
