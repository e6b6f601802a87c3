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
from torch import Tensor, nn

from musicssl.checkpoints import latest_checkpoint
from musicssl.config import ExperimentConfig, ModelConfig, MusicHubertConfig
from musicssl.data.dataset import Batch, DataPosition, batch_loader
from musicssl.data.manifest import Manifest
from musicssl.models.encoder import num_frames
from musicssl.models.music2vec import Music2Vec
from musicssl.models.musichubert import MusicHubert
from musicssl.pretrain.checkpoint import (
    TrainState,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from musicssl.pretrain.distributed import DistContext
from musicssl.pretrain.optim import build_optimizer, lr_at, set_lr, use_fused_step


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
        use_fused_step(optimizer)  # (a checkpoint of an older musicssl carries the unfused setting)
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
    batches = batch_loader(manifest, cfg.data, cfg.seed, position, device=device, rank=dist.rank,
                           world_size=dist.world_size, labels=label_arrays, label_rate=cfg.model.hubert.label_rate)
    compile_s = compile_model(model) if pcfg.compile else None
    model.train()
    # Between log steps nothing is read from the device: the update's numbers are summed there (`_Window`), a
    # non-finite update is skipped there (the fused optimiser's `found_inf`), and they are read, checked (too many
    # non-finite updates in a row, collapsed targets) and logged every `log_every` updates and at checkpoints.
    window, started = _Window(device, skipped), time.monotonic()
    while step < pcfg.max_steps:
        micro = [next(batches) for _ in range(pcfg.update_freq)]
        position = micro[-1].position
        result = update(model, params, optimizer, micro, cfg, step, device, mask_rng, dist)
        step += 1
        window.add(result)
        if compile_s is not None and step == 1:
            compile_s += time.monotonic() - started  # the first step compiles the graphs
        out_of_time = pcfg.max_time_s is not None and time.monotonic() - started > pcfg.max_time_s
        last = step == pcfg.max_steps or out_of_time
        log_now = step % pcfg.log_every == 0 or last
        checkpoint_now = step % pcfg.checkpoint_every == 0 or last or step in extra_checkpoints
        if not (log_now or checkpoint_now):
            continue
        seen = window.read()  # the one wait for the device
        if seen.bad_in_a_row >= pcfg.max_bad_updates_in_a_row:
            raise NonFiniteLossError(
                f"{seen.bad_in_a_row} updates in a row had a non-finite loss or gradient (last non-finite loss="
                f"{seen.last_bad_loss}) by update {step}, after {step - seen.bad_in_a_row} updates: lower "
                "pretrain.lr, set pretrain.clip_norm, or check the audio for NaN/inf")
        if seen.means:
            model.check_collapse(seen.means, step)
        if dist.rank == 0 and sink is not None and log_now:
            metrics = window.flush() | {"lr": optimizer.param_groups[0]["lr"], "peak_mem_mb": _peak_memory_mb(device)}
            if isinstance(model, Music2Vec):
                metrics["ema_decay"] = model.ema_decay(step)
            if compile_s is not None and step <= pcfg.log_every:
                metrics["compile_s"] = compile_s
            sink.log({f"pretrain/{k}": v for k, v in metrics.items()}, step)
        if checkpoint_now:
            streams = {"torch": torch.get_rng_state(), "mask": mask_rng.get_state()}
            if device.type == "cuda":
                streams["cuda"] = torch.cuda.get_rng_state(device)
            ranks = dist.gather_states(streams)  # a collective: every rank takes part
            if dist.rank == 0:
                rng = ranks[0] | {f"rank{r}.{k}": v for r, s in enumerate(ranks[1:], 1) for k, v in s.items()}
                state = TrainState(step, position.epoch, position.index, {"skipped_updates": seen.skipped})
                path = save_checkpoint(run_dir, cfg, model, model.student, optimizer, state, rng, pcfg.keep_last,
                                       score=window.checkpoint_score())
                if on_checkpoint is not None:
                    on_checkpoint(path, step, {"loss": seen.last_loss})
            window.checkpoint_done()
            dist.barrier()
            if after_checkpoint is not None:
                after_checkpoint(step)
        if out_of_time:
            break
    final = latest_checkpoint(run_dir)
    assert final is not None
    return final


def update(model: Music2Vec | MusicHubert, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
           micro: list[Batch], cfg: ExperimentConfig, step: int, device: torch.device, mask_rng: torch.Generator,
           dist: DistContext) -> UpdateResult:
    """Update `step` (0-based): its learning rate, the forward/backward of `micro`, the optimiser step (skipped on
    the device when not finite), the EMA teacher. Reads nothing from the device."""
    set_lr(optimizer, lr_at(step, cfg.pretrain))
    result = train_update(model, params, optimizer, micro, cfg, device, mask_rng, dist)
    apply_update(optimizer, result)
    model.ema_step(step + 1, applied=result.finite)
    return result


def compile_model(model: Music2Vec | MusicHubert) -> float:
    """`torch.compile` the student's conv extractor and transformer and the teacher, in place (parameter names, and
    so checkpoints, unchanged); returns the seconds spent here (the graphs themselves compile on the first step)."""
    t0 = time.monotonic()
    model.student.compile_parts()
    if isinstance(model, Music2Vec):
        model.teacher.compile(dynamic=False)  # static shapes, as compile_parts says why
    return time.monotonic() - t0


@dataclass
class UpdateResult:
    """One update's numbers, summed over micro-batches and ranks, as 0-dim tensors on the device (reading them waits
    for the device: the loop does so only at log steps)."""

    loss: Tensor  # per sample (frame), averaged as fairseq divides
    grad_norm: Tensor
    sample_size: Tensor
    frames: int
    logs: dict[str, Tensor]
    finite: Tensor  # bool: the loss and the gradient norm are finite (else the update is skipped)


def train_update(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, micro: list[Batch],
                 cfg: ExperimentConfig, device: torch.device, mask_rng: torch.Generator,
                 dist: DistContext) -> UpdateResult:
    """Forward/backward every micro-batch, sum over ranks, normalise by the sample size, clip; no host sync.

    The optimiser step is left to the caller (`apply_update`, which skips it when the result is not finite).
    """
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16(cfg.pretrain.precision, device))
    loss_sum: Tensor | float = 0.0
    sample_size: Tensor | float = 0.0
    frames, logs = 0, {}
    try:
        for batch in micro:
            audio = batch.audio.to(device, non_blocking=True)
            mask = None if batch.mask is None else batch.mask.to(device, non_blocking=True)
            with autocast:
                if batch.labels is None:
                    out = model(audio, mask_rng, mask=mask)
                else:  # (labels checked against num_clusters when read; the model moves them to the device)
                    out = model(audio, batch.labels, mask_rng, mask=mask)
            out.loss_sum.backward()
            loss_sum = loss_sum + out.loss_sum.detach().float()
            sample_size = sample_size + out.sample_size
            frames += audio.shape[0] * num_frames(audio.shape[1], cfg.model.encoder)
            logs = out.logs
    except torch.OutOfMemoryError as exc:
        raise torch.OutOfMemoryError(
            f"out of memory on {device} with batches of up to data.max_tokens={cfg.data.max_tokens} samples "
            f"(crops of data.max_sample_size={cfg.data.max_sample_size}): lower data.max_tokens and raise "
            f"pretrain.update_freq to keep the effective batch. ({exc})") from exc
    loss_t = torch.as_tensor(loss_sum, dtype=torch.float32, device=device)
    size_t = torch.as_tensor(sample_size, dtype=torch.float32, device=device)
    if dist.world_size > 1:
        loss_t, size_t = dist.all_reduce_grads(params, torch.stack([loss_t, size_t])).unbind()
        frames *= dist.world_size  # logged throughput: this rank's frames times the ranks (max_tokens evens them)
    divisor = size_t.clamp(min=1)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_div_(grads, divisor)
    clip = cfg.pretrain.clip_norm if cfg.pretrain.clip_norm > 0 else None
    grad_norm = (torch.nn.utils.clip_grad_norm_(params, clip) if clip is not None else
                 torch.nn.utils.get_total_norm(grads) if grads else loss_t.new_zeros(()))
    loss = loss_t / divisor
    finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
    return UpdateResult(loss, grad_norm, size_t, frames, logs, finite)


def apply_update(optimizer: torch.optim.Optimizer, result: UpdateResult) -> None:
    """The optimiser step, skipped on the device when the update is not finite (parameters, moments and the step
    count untouched): no host sync."""
    optimizer.found_inf = (~result.finite).float()  # type: ignore[attr-defined]  # read by the fused step
    optimizer.step()


def autocast_bf16(precision: str, device: torch.device) -> bool:
    """Whether the forward runs in bf16 autocast for a precision setting (`pretrain.precision`, `bench model
    --precision`): bf16, or auto on a GPU."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


@dataclass
class _Seen:
    """What `_Window.read` found on the device."""

    bad_in_a_row: int
    last_bad_loss: float
    skipped: int
    last_loss: float
    means: dict[str, float]  # averages of the applied updates since the last flush (empty if none was)


class _Window:
    """The step values between two log points, summed on the device (finite updates only), and the counters of
    skipped updates; frames per second measured over the window."""

    def __init__(self, device: torch.device, skipped: int) -> None:
        self.device = device
        zero = torch.zeros((), device=device)
        self.skipped, self.bad_run, self.last_bad_loss, self.last_loss = zero + skipped, zero, zero, zero
        self.ckpt_sum, self.ckpt_count = zero, zero
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = torch.zeros((), device=self.device)
        self.frames, self.t0 = 0, time.perf_counter()

    def add(self, result: UpdateResult) -> None:
        ok = result.finite.float()
        values = {"loss": result.loss, "grad_norm": result.grad_norm} | result.logs
        for k, v in values.items():  # a skipped update adds nothing (a NaN times 0 is still NaN: hence where)
            self.sums[k] = self.sums.get(k, 0.0) + torch.where(result.finite, v.float(), 0.0)
        self.count = self.count + ok
        self.skipped = self.skipped + (1.0 - ok)
        self.bad_run = (self.bad_run + 1.0) * (1.0 - ok)
        self.last_bad_loss = torch.where(result.finite, self.last_bad_loss, result.loss)
        self.last_loss = torch.where(result.finite, result.loss, self.last_loss)
        self.ckpt_sum = self.ckpt_sum + torch.where(result.finite, result.loss, 0.0)
        self.ckpt_count = self.ckpt_count + ok
        self.frames += result.frames

    def read(self) -> _Seen:
        """Read the counters and averages (this waits for the device)."""
        names = list(self.sums)
        host = torch.stack([self.count, self.bad_run, self.last_bad_loss, self.skipped, self.last_loss,
                            *(self.sums[k] for k in names)]).tolist()
        count = host[0]
        means = {k: v / count for k, v in zip(names, host[5:], strict=True)} if count else {}
        self._seen = _Seen(int(host[1]), host[2], int(host[3]), host[4], means)
        return self._seen

    def flush(self) -> dict[str, float]:
        """The averages of the last `read`, frames per second and skipped updates; starts a new window."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        out = self._seen.means | {"frames_per_s": self.frames / elapsed, "skipped_updates": float(self._seen.skipped)}
        self._reset()
        return out

    def checkpoint_score(self) -> float:
        """Mean training loss of the applied updates since the previous checkpoint (NaN if none)."""
        count = float(self.ckpt_count)
        return float(self.ckpt_sum) / count if count else math.nan

    def checkpoint_done(self) -> None:
        self.ckpt_sum, self.ckpt_count = torch.zeros((), device=self.device), torch.zeros((), device=self.device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
