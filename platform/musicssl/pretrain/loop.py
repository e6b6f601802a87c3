"""The pretraining loop: a plain function, read top to bottom.

Per update: set the LR, run `update_freq` micro-batches (loss summed over frames, backward), divide the
gradients by the total sample size (fairseq's normalisation: the masked frames, plus the unmasked ones for
MusicHuBERT with `pred_nomask_weight` > 0), clip, skip the update if anything is non-finite, step, then move
the EMA teacher. Checkpoints carry everything needed to continue exactly (weights, optimiser, step, data
position, the RNG states of every rank).
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from musicssl.config import ExperimentConfig, ModelConfig, MusicHubertConfig
from musicssl.data.dataset import Batch, DataPosition, iterate_batches
from musicssl.data.manifest import Manifest
from musicssl.models.encoder import num_frames
from musicssl.models.music2vec import Music2Vec
from musicssl.models.musichubert import MusicHubert
from musicssl.pretrain.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from musicssl.pretrain.distributed import DistContext
from musicssl.pretrain.optim import build_optimizer, lr_at, set_lr


class MetricSink(Protocol):
    """Where step metrics go (MLflow in sweeps); implementations batch their writes."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...


class NonFiniteLossError(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradient."""


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pretrain.device=cuda but no CUDA device is visible; use pretrain.device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_model(cfg: ModelConfig) -> Music2Vec | MusicHubert:
    """The model of `cfg.paradigm`."""
    return Music2Vec(cfg) if cfg.paradigm == "music2vec" else MusicHubert(cfg)


def read_checked_labels(path: Path, manifest: Manifest, cfg: MusicHubertConfig) -> list[np.ndarray]:
    """Read a `.km` file (+ `dict.km.txt` beside it) and check it against the manifest and the model config."""
    from musicssl.data.labels import check_labels, read_labels

    labels = read_labels(path, path.parent / "dict.km.txt")
    check_labels(labels, manifest, cfg.label_rate, num_classes=cfg.num_clusters)
    return labels


def pretrain(cfg: ExperimentConfig, run_dir: Path, manifest: Manifest, *, sink: MetricSink | None = None,
             on_checkpoint: Callable[[Path, int, dict[str, float]], None] | None = None,
             labels: Path | None = None, dist: DistContext | None = None,
             extra_checkpoints: Collection[int] = (),
             after_checkpoint: Callable[[int], None] | None = None) -> Path:
    """Train (or continue from `run_dir`'s latest checkpoint) to `cfg.pretrain.max_steps`; return the final checkpoint.

    MusicHuBERT reads its k-means labels from `labels` (or `cfg.data.labels`), checked against the manifest.
    With `dist` (a data-parallel worker, e.g. under Ray Train), every rank trains on its shard of the batches;
    gradients and masked-frame counts are summed over ranks before the update; rank 0 logs and writes checkpoints.
    `extra_checkpoints`: steps that get a checkpoint besides every `checkpoint_every` (e.g. a probe schedule).
    `on_checkpoint(path, step, metrics)` runs on rank 0 once a checkpoint is written; `after_checkpoint(step)` on
    every rank once all have passed it (e.g. a collective report to Ray Train).
    """
    pcfg = cfg.pretrain
    if pcfg.scheduler == "polynomial" and pcfg.warmup_steps >= pcfg.max_steps:
        warnings.warn(f"pretrain.warmup_steps={pcfg.warmup_steps} >= pretrain.max_steps={pcfg.max_steps}: the "
                      "learning rate never leaves the polynomial warm-up (HuBERT base warms up over 32000 of 400000 "
                      "updates); set pretrain.warmup_steps for a short run", stacklevel=2)
    dist = dist or DistContext()
    device = dist.device or resolve_device(pcfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    params = model.trainable_parameters()
    optimizer = build_optimizer(params, pcfg)
    mask_rng = torch.Generator(device=device).manual_seed(cfg.seed + 7919 * dist.rank)
    if dist.rank:  # same initial weights on every rank, different dropout
        torch.manual_seed(cfg.seed + 7919 * dist.rank)
    step, position, skipped = 0, DataPosition(), 0
    if dist.rank == 0:
        remove_partial_checkpoints(run_dir)  # writes a kill cut short
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        state, rng = load_checkpoint(resume, model, optimizer)
        step, position = state.step, DataPosition(state.data_epoch, state.data_index)
        skipped = int(state.extra.get("skipped_updates", 0))
        mine = "" if dist.rank == 0 else f"rank{dist.rank}."  # every rank's streams are saved (exact resume)
        if f"{mine}torch" in rng:
            torch.set_rng_state(rng[f"{mine}torch"])
            mask_rng.set_state(rng[f"{mine}mask"])
            if device.type == "cuda" and f"{mine}cuda" in rng:
                torch.cuda.set_rng_state(rng[f"{mine}cuda"], device)
        else:  # a checkpoint of a run with fewer workers: this rank draws fresh streams
            torch.manual_seed(cfg.seed + 7919 * dist.rank + step)
            mask_rng.manual_seed(cfg.seed + 7919 * dist.rank + step)
        model.num_updates = step
    if step >= pcfg.max_steps and resume is not None:
        return resume

    labels_path = labels or (Path(cfg.data.labels) if cfg.data.labels else None)
    label_arrays = None
    if cfg.model.paradigm == "musichubert":
        if labels_path is None:
            raise ValueError("MusicHuBERT needs k-means labels: set data.labels to a .km file aligned with the "
                             "manifest, or let `musicssl pretrain` / `musicssl sweep` make them")
        label_arrays = read_checked_labels(labels_path, manifest, cfg.model.hubert)
    batches = iterate_batches(manifest, cfg.data, cfg.seed, position, rank=dist.rank, world_size=dist.world_size,
                              labels=label_arrays, label_rate=cfg.model.hubert.label_rate)
    model.train()
    bad_in_a_row, window, started, since_ckpt = 0, _Window(), time.monotonic(), []
    while step < pcfg.max_steps:
        set_lr(optimizer, lr_at(step, pcfg))
        micro = [next(batches) for _ in range(pcfg.update_freq)]
        position = micro[-1].position
        result = train_update(model, params, optimizer, micro, cfg, device, mask_rng, dist)
        if not result.finite:
            skipped += 1
            bad_in_a_row += 1
            if bad_in_a_row >= pcfg.max_bad_updates_in_a_row:
                raise NonFiniteLossError(
                    f"{bad_in_a_row} updates in a row had a non-finite loss or gradient (loss={result.loss}, "
                    f"grad_norm={result.grad_norm}) at update {step}: lower pretrain.lr, set pretrain.clip_norm, "
                    "or check the audio for NaN/inf")
            continue
        bad_in_a_row = 0
        optimizer.step()
        step += 1
        model.ema_step(step)
        model.check_collapse(result.logs, step)
        window.add(loss=result.loss, grad_norm=result.grad_norm, frames=result.frames, **result.logs)
        out_of_time = pcfg.max_time_s is not None and time.monotonic() - started > pcfg.max_time_s
        last = step == pcfg.max_steps or out_of_time

        since_ckpt.append(result.loss)
        if dist.rank == 0 and sink is not None and (step % pcfg.log_every == 0 or last):
            metrics = window.flush() | {"lr": optimizer.param_groups[0]["lr"], "skipped_updates": skipped,
                                        "peak_mem_mb": _peak_memory_mb(device)}
            sink.log({f"pretrain/{k}": v for k, v in metrics.items()}, step)
        if step % pcfg.checkpoint_every == 0 or last or step in extra_checkpoints:
            streams = {"torch": torch.get_rng_state(), "mask": mask_rng.get_state()}
            if device.type == "cuda":
                streams["cuda"] = torch.cuda.get_rng_state(device)
            ranks = dist.gather_states(streams)  # a collective: every rank takes part
            if dist.rank == 0:
                rng = ranks[0] | {f"rank{r}.{k}": v for r, s in enumerate(ranks[1:], 1) for k, v in s.items()}
                state = TrainState(step, position.epoch, position.index, {"skipped_updates": skipped})
                path = save_checkpoint(run_dir, cfg, model, model.student, optimizer, state, rng, pcfg.keep_last,
                                       score=float(np.mean(since_ckpt)))
                if on_checkpoint is not None:
                    on_checkpoint(path, step, {"loss": result.loss})
            since_ckpt = []
            dist.barrier()
            if after_checkpoint is not None:
                after_checkpoint(step)
        if out_of_time:
            break
    final = latest_checkpoint(run_dir)
    assert final is not None
    return final


@dataclass
class UpdateResult:
    """One update's numbers, summed over micro-batches and ranks."""

    loss: float
    grad_norm: float
    sample_size: int
    frames: int
    logs: dict[str, float]

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def train_update(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, micro: list[Batch],
                 cfg: ExperimentConfig, device: torch.device, mask_rng: torch.Generator,
                 dist: DistContext) -> UpdateResult:
    """Forward/backward every micro-batch, sum over ranks, normalise by the sample size, clip.

    The optimiser step is left to the caller (it is skipped when the result is not finite).
    """
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    loss_sum, sample_size, frames, logs = 0.0, 0, 0, {}
    try:
        for batch in micro:
            audio = batch.audio.to(device, non_blocking=True)
            mask = None if batch.mask is None else batch.mask.to(device)
            with autocast:
                if batch.labels is None:
                    out = model(audio, mask_rng, mask=mask)
                else:
                    out = model(audio, batch.labels.to(device, non_blocking=True), mask_rng, mask=mask)
            out.loss_sum.backward()
            loss_sum += out.loss_sum.item()
            sample_size += out.sample_size
            frames += audio.shape[0] * num_frames(audio.shape[1], cfg.model.encoder)
            logs = out.logs
    except torch.OutOfMemoryError as exc:
        raise torch.OutOfMemoryError(
            f"out of memory on {device} with batches of up to data.max_tokens={cfg.data.max_tokens} samples "
            f"(crops of data.max_sample_size={cfg.data.max_sample_size}): lower data.max_tokens and raise "
            f"pretrain.update_freq to keep the effective batch. ({exc})") from exc
    if dist.world_size > 1:
        loss_sum, sample_size, frames = dist.all_reduce_grads(params, [loss_sum, float(sample_size), float(frames)])
        sample_size, frames = int(sample_size), int(frames)
    for p in params:
        if p.grad is not None:
            p.grad.div_(max(sample_size, 1))
    clip = cfg.pretrain.clip_norm if cfg.pretrain.clip_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    return UpdateResult(loss_sum / max(sample_size, 1), grad_norm, sample_size, frames, logs)


class _Window:
    """Averages step values between two log points and measures frames per second."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.frames, self.t0 = 0, 0, time.perf_counter()

    def add(self, frames: int, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        self.frames += frames

    def flush(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()} | {"frames_per_s": self.frames / elapsed}
        self.__init__()  # type: ignore[misc]
        return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
