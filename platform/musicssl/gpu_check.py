"""The prepared GPU check (`docker/gpu_check.sh`, or `python -m musicssl.gpu_check`): what one GPU does with the
training step, printed as one table.

For each base model (Music2Vec, MusicHuBERT) at the paper's per-GPU batch (the `data.max_tokens` of its defaults,
in crops of `data.max_sample_size`), the full training update (`pretrain.loop.update`: forward, backward, fused
optimiser step, EMA teacher) in bf16 autocast, eager and compiled: frames per second, model FLOPs utilisation
against the GPU's dense bf16 peak, peak memory, and the compile time. Then a training run on generated music
(`data.corpus.synth_piece`) in bf16 and in fp32 from the same weights and batches, and how far apart their losses
end.

It needs only PyTorch, numpy, safetensors, pydantic and PyYAML (no Ray, MLflow or audio libraries). `--device cpu
--tiny` runs the same code on the CPU with the tiny presets, which is how the test suite keeps it working.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from musicssl.bench import PEAK_BF16_TFLOPS, train_flops_per_frame
from musicssl.config import ExperimentConfig
from musicssl.data.corpus import synth_piece
from musicssl.data.dataset import Batch, DataPosition
from musicssl.models.encoder import num_frames
from musicssl.pretrain.distributed import DistContext
from musicssl.pretrain.loop import _Window, build_model, compile_model, update
from musicssl.pretrain.optim import build_optimizer

BASE = ("music2vec_base", "musichubert_base")
TINY = ("tiny", "tiny_hubert")
LABEL_BINS = 8


@dataclass
class Row:
    """One line of the table."""

    model: str
    mode: str
    batch: str
    frames_per_s: float = math.nan
    mfu: float | None = None
    peak_mem_gb: float | None = None
    compile_s: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def experiment(preset: str, device: torch.device, *, precision: str = "bf16", crop: int | None = None,
               batch: int | None = None) -> ExperimentConfig:
    """The preset with its paradigm's run defaults (the paper's per-GPU batch); `crop`/`batch` override the crops."""
    raw: dict[str, Any] = {"model": {"preset": preset},
                           "pretrain": {"device": device.type, "precision": precision, "lr": 5e-4}}
    if preset.endswith("hubert"):  # the generated labels: 8 energy bins at 100 Hz, as MFCC labels come
        raw["model"]["hubert"] = {"num_clusters": LABEL_BINS}
    if crop is not None:
        raw["data"] = {"max_sample_size": crop, "min_sample_size": min(crop, 32000),
                       "max_tokens": crop * (batch or 1)}
    return ExperimentConfig.model_validate(raw)


def music_batches(count: int, batch: int, crop: int, seed: int, labels: bool) -> list[Batch]:
    """`count` batches of `batch` crops of generated music (and, for MusicHuBERT, 100 Hz labels: each 10 ms frame's
    log energy in 8 bins, something a model can learn)."""
    rng = np.random.default_rng(seed)
    seconds = crop / 16000 + 0.05
    out = []
    for _ in range(count):
        audio = np.stack([synth_piece(rng, seconds)[:crop] for _ in range(batch)]).astype(np.float32)
        audio = (audio - audio.mean(1, keepdims=True)) / (audio.std(1, keepdims=True) + 1e-5)
        lab = None
        if labels:
            frames = audio[:, : crop // 160 * 160].reshape(batch, -1, 160)
            energy = np.log1p((frames**2).mean(-1))
            lab = torch.from_numpy(np.clip((energy / 0.5).astype(np.int64), 0, LABEL_BINS - 1))
        out.append(Batch(DataPosition(), torch.from_numpy(audio), lab))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_updates(cfg: ExperimentConfig, device: torch.device, batches: list[Batch], *, compiled: bool, warmup: int,
                 steps: int) -> tuple[float, float, float | None]:
    """Median seconds per update, seconds of the first update (the compile, when compiled) and peak GPU memory."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg.model).to(device).train()
    if compiled:
        torch._dynamo.reset()
        compile_model(model)
    params = model.trainable_parameters()
    optimizer = build_optimizer(params, cfg.pretrain)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(1 + warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        update(model, params, optimizer, [batches[i % len(batches)]], cfg, i, device, gen, DistContext())
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, optimizer, params
    return statistics.median(times[1 + warmup:]), times[0], peak


def throughput_rows(preset: str, device: torch.device, tiny: bool, steps: int) -> list[Row]:
    """Eager and compiled updates at the paper's per-GPU batch (tiny: 2 crops of 1 s)."""
    cfg = experiment(preset, device, crop=16000 if tiny else None, batch=2 if tiny else None)
    crop = cfg.data.max_sample_size
    batch = max(1, cfg.data.max_tokens // crop)
    batches = music_batches(2, batch, crop, 0, cfg.model.paradigm == "musichubert")
    frames = batch * num_frames(crop, cfg.model.encoder)
    peak = _peak_tflops(device)
    rows = []
    for compiled in (False, True):
        try:
            per_update, first, mem = time_updates(cfg, device, batches, compiled=compiled, warmup=2, steps=steps)
        except torch.OutOfMemoryError as exc:
            rows.append(Row(preset, "compiled" if compiled else "eager", f"{batch}x{crop / 16000:g}s",
                            note=f"out of memory: {str(exc)[:60]}"))
            continue
        fps = frames / per_update
        tflops = train_flops_per_frame(cfg.model) * fps / 1e12
        rows.append(Row(preset, "compiled" if compiled else "eager", f"{batch}x{crop / 16000:g}s", fps,
                        tflops / peak if peak else None, mem, first if compiled else None,
                        extra={"seconds_per_update": per_update, "tflops": tflops}))
    return rows


def precision_row(preset: str, device: torch.device, tiny: bool, steps: int) -> Row:
    """`steps` updates in bf16 and in fp32 from the same weights on the same generated batches; the mean loss of
    the last quarter of each run, and their relative difference."""
    crop, batch = (16000, 2) if tiny else (80000, 4)
    tails = {}
    for precision in ("fp32", "bf16"):
        cfg = experiment(preset, device, precision=precision, crop=crop, batch=batch)
        cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={
            "max_steps": steps, "scheduler": "polynomial", "warmup_steps": max(1, steps // 10), "lr": 5e-4})})
        batches = music_batches(8, batch, crop, 1, cfg.model.paradigm == "musichubert")
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device).train()
        params = model.trainable_parameters()
        optimizer = build_optimizer(params, cfg.pretrain)
        gen = torch.Generator(device=device).manual_seed(0)
        window = _Window(device, 0)
        losses = []
        for step in range(steps):
            result = update(model, params, optimizer, [batches[step % len(batches)]], cfg, step, device, gen,
                            DistContext())
            window.add(result)
            losses.append(result.loss.detach())
        seen = window.read()
        values = torch.stack(losses).tolist()
        tail = values[-max(1, steps // 4):]
        tails[precision] = (statistics.fmean(tail), statistics.fmean(values[: max(1, steps // 4)]), seen.skipped)
        del model, optimizer, params
    (fp32, fp32_head, skip32), (bf16, bf16_head, skip16) = tails["fp32"], tails["bf16"]
    return Row(preset, f"bf16 vs fp32, {steps} updates", f"{batch}x{crop / 16000:g}s",
               note=f"last-quarter loss fp32 {fp32:.4f} bf16 {bf16:.4f} ({(bf16 - fp32) / fp32:+.2%}); "
                    f"first quarter {fp32_head:.3f}/{bf16_head:.3f}; skipped {skip32}/{skip16}",
               extra={"fp32_tail": fp32, "bf16_tail": bf16, "rel_diff": (bf16 - fp32) / fp32,
                      "fp32_head": fp32_head, "bf16_head": bf16_head, "skipped": [skip32, skip16]})


def _peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def format_table(rows: list[Row], header: str) -> str:
    """The rows as one fixed-width table."""
    lines = [header, f"{'model':17s} {'mode':26s} {'batch':9s} {'frames/s':>9s} {'MFU':>6s} {'peak GB':>8s} "
                     f"{'compile s':>9s}  note"]
    for r in rows:
        fps = f"{r.frames_per_s:9.0f}" if math.isfinite(r.frames_per_s) else f"{'-':>9s}"
        mfu = f"{100 * r.mfu:5.1f}%" if r.mfu is not None else f"{'-':>6s}"
        mem = f"{r.peak_mem_gb:8.1f}" if r.peak_mem_gb is not None else f"{'-':>8s}"
        comp = f"{r.compile_s:9.1f}" if r.compile_s is not None else f"{'-':>9s}"
        lines.append(f"{r.model:17s} {r.mode:26s} {r.batch:9s} {fps} {mfu} {mem} {comp}  {r.note}")
    return "\n".join(lines)


def run(device: torch.device, tiny: bool, steps: int, precision_steps: int,
        progress: Callable[[str], None] = print) -> tuple[list[Row], str]:
    """Every measurement, in order; returns the rows and the header line."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        what = f"{torch.cuda.get_device_name(device)} (dense bf16 peak {_peak_tflops(device) or 'unknown'} TFLOP/s)"
    else:
        what = f"CPU, {torch.get_num_threads()} threads"
    header = f"musicssl GPU check: torch {torch.__version__} on {what}"
    rows: list[Row] = []
    for preset in TINY if tiny else BASE:
        t0 = time.perf_counter()
        rows += throughput_rows(preset, device, tiny, steps)
        progress(f"[gpu_check] {preset}: throughput measured in {time.perf_counter() - t0:.0f} s")
    for preset in TINY if tiny else BASE:
        t0 = time.perf_counter()
        rows.append(precision_row(preset, device, tiny, precision_steps))
        progress(f"[gpu_check] {preset}: bf16 vs fp32 run in {time.perf_counter() - t0:.0f} s")
    return rows, header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny presets on 2 x 1 s crops (the CPU fallback)")
    parser.add_argument("--steps", type=int, default=5, help="timed updates per model and mode (median reported)")
    parser.add_argument("--precision-steps", type=int, default=200, help="updates of each bf16 / fp32 run")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; --device cpu --tiny runs the CPU fallback")
    t0 = time.perf_counter()
    rows, header = run(device, args.tiny, args.steps, args.precision_steps)
    print(format_table(rows, header))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": [r.__dict__ for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
