"""Pretraining batches with fairseq `audio_pretraining` semantics.

Items shorter than `min_sample_size` are skipped; items are ordered by length (descending, random ties)
and grouped so that `batch_size * longest <= max_tokens`; batches are shuffled each epoch; each batch is
cropped to its shortest item (at most `max_sample_size`) at uniform random offsets, no padding. All
randomness derives from (seed, epoch, batch index), so a run resumed at a data position sees the very
same batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from musicssl.config import DataConfig
from musicssl.data.audio import SAMPLE_RATE, AudioError, read_audio
from musicssl.data.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: the next batch is `index` of `epoch`."""

    epoch: int = 0
    index: int = 0


def plan_batches(sizes: np.ndarray, cfg: DataConfig, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """Item indices of each batch of one epoch (this rank's share when data-parallel)."""
    capped = np.minimum(sizes, cfg.max_sample_size)
    keep = np.flatnonzero(sizes >= cfg.min_sample_size)
    rng = np.random.default_rng([seed, epoch])
    order = keep[np.lexsort((rng.permutation(len(keep)), capped[keep]))[::-1]]  # longest first
    batches: list[np.ndarray] = []
    first = 0
    for i in range(len(order)):  # greedy: close the batch when one more item would exceed max_tokens
        if i > first and (i - first + 1) * capped[order[first]] > cfg.max_tokens:
            batches.append(order[first:i])
            first = i
    if first < len(order):
        batches.append(order[first:])
    batches = [batches[j] for j in rng.permutation(len(batches))]
    if world_size > 1:  # equal count per rank so collectives stay in step
        batches = batches[: len(batches) // world_size * world_size][rank::world_size]
    return batches


def _crop(waves: list[np.ndarray], max_sample_size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    size = min(min(len(w) for w in waves), max_sample_size)
    out = np.empty((len(waves), size), dtype=np.float32)
    starts = []
    for row, w in enumerate(waves):
        start = int(rng.integers(0, len(w) - size + 1))
        out[row] = w[start:start + size]
        starts.append(start)
    return out, starts


def crop_batch(waves: list[np.ndarray], max_sample_size: int, rng: np.random.Generator) -> torch.Tensor:
    """Crop every wave to min(shortest, max_sample_size) at a uniform random offset -> (B, S)."""
    return torch.from_numpy(_crop(waves, max_sample_size, rng)[0])


def crop_labels(labels: list[np.ndarray], starts: list[int], size: int, label_rate: float) -> torch.Tensor:
    """The label frames of audio crops (fairseq `collater_frm_label`): (B, F) int64.

    Frame start = round(start * rate / 16000), length = round(size * rate / 16000), shortened to what every
    item still has.
    """
    s2f = label_rate / SAMPLE_RATE
    frm_starts = [int(round(s * s2f)) for s in starts]
    frm_size = min([int(round(size * s2f))] + [len(lab) - fs for lab, fs in zip(labels, frm_starts, strict=True)])
    return torch.from_numpy(np.stack([lab[fs:fs + frm_size] for lab, fs in zip(labels, frm_starts, strict=True)])
                            .astype(np.int64))


@dataclass(frozen=True)
class Batch:
    """One pretraining batch and where the stream stands after it."""

    position: DataPosition  # of the *next* batch
    audio: torch.Tensor  # (B, S)
    labels: torch.Tensor | None  # (B, F) cluster ids, MusicHuBERT only
    mask: torch.Tensor | None = None  # (B, T) a fixed mask (tests); None = the model draws one

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (the DataLoader calls this for a GPU), so copies to it overlap."""
        return Batch(self.position, self.audio.pin_memory(), self.labels, self.mask)


def iterate_batches(manifest: Manifest, cfg: DataConfig, seed: int, start: DataPosition = DataPosition(),
                    rank: int = 0, world_size: int = 1, labels: list[np.ndarray] | None = None,
                    label_rate: float = 100.0, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
    """Endless stream of batches from `start`; with `labels` (one array per manifest row) each batch carries
    the label frames of its crops. `shard=(i, n)`: only the i-th of every n batches (DataLoader worker i of n;
    the loader interleaves its workers' batches back into the one stream).

    A file that fails to decode is logged with its path and reason and dropped from its batch; a batch
    left empty is skipped. Raises ValueError if the manifest has no usable item.
    """
    if not np.any(manifest.sizes >= cfg.min_sample_size):
        raise ValueError(f"{manifest.source}: no file reaches data.min_sample_size={cfg.min_sample_size} samples")
    if labels is not None and len(labels) != len(manifest):
        raise ValueError(f"{len(labels)} label lines for {len(manifest)} manifest rows ({manifest.source})")
    epoch, index = start.epoch, start.index
    bad: set[int] = set()
    count = 0
    while True:
        batches = plan_batches(manifest.sizes, cfg, seed, epoch, rank, world_size)
        for b in range(index, len(batches)):
            count += 1
            if (count - 1) % shard[1] != shard[0]:
                continue
            waves, items = [], []
            for item in map(int, batches[b]):
                if item in bad:
                    continue
                try:
                    waves.append(read_audio(manifest.path(item), normalize=cfg.normalize))
                    items.append(item)
                except AudioError as exc:
                    bad.add(item)
                    log.warning("skipping unreadable audio (it stays skipped): %s", exc)
            if not waves:  # (with workers, an empty batch still has its turn: the position moves on)
                if shard[1] > 1:
                    yield Batch(DataPosition(epoch, b + 1), torch.empty(0, 0), None)
                continue
            rng = np.random.default_rng([seed, epoch, b, 1])
            audio, starts = _crop(waves, cfg.max_sample_size, rng)
            lab = None if labels is None else crop_labels([labels[i] for i in items], starts, audio.shape[1],
                                                          label_rate)
            yield Batch(DataPosition(epoch, b + 1), torch.from_numpy(audio), lab)
        epoch, index = epoch + 1, 0


class BatchStream(torch.utils.data.IterableDataset):
    """`iterate_batches` for a `torch.utils.data.DataLoader`: each worker decodes and crops its share of the batches
    (every n-th), and the loader hands them back in the stream's order, so the batches and their positions are
    exactly those of `iterate_batches` without workers (and a resumed run sees the same ones)."""

    def __init__(self, manifest: Manifest, cfg: DataConfig, seed: int, start: DataPosition, rank: int = 0,
                 world_size: int = 1, labels: list[np.ndarray] | None = None, label_rate: float = 100.0) -> None:
        super().__init__()
        self.args = (manifest, cfg, seed, start, rank, world_size, labels, label_rate)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        shard = (0, 1) if info is None else (info.id, info.num_workers)
        return iterate_batches(*self.args, shard=shard)


def loader_workers(cfg: DataConfig, device: torch.device) -> int:
    """`data.num_workers`, or by default for a GPU 4 (at most the cores this process may use, less one for the
    training process) and for the CPU 0 (its cores train)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device.type != "cuda":
        return 0
    return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


def batch_loader(manifest: Manifest, cfg: DataConfig, seed: int, start: DataPosition, *, device: torch.device,
                 rank: int = 0, world_size: int = 1, labels: list[np.ndarray] | None = None,
                 label_rate: float = 100.0) -> Iterator[Batch]:
    """The training stream: in this process (`data.num_workers` 0, the CPU default) or from DataLoader workers with
    `data.prefetch_batches` each prepared ahead and, for a GPU, pinned memory. Empty batches (every file unreadable)
    are dropped here."""
    workers = loader_workers(cfg, device)
    if workers == 0:
        return iterate_batches(manifest, cfg, seed, start, rank, world_size, labels, label_rate)
    stream = BatchStream(manifest, cfg, seed, start, rank, world_size, labels, label_rate)
    if not np.any(manifest.sizes >= cfg.min_sample_size):  # the same early error as without workers
        next(iter(stream))
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=cfg.prefetch_batches)
    return (batch for batch in loader if batch.audio.numel())
