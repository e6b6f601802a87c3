"""Benchmarks (`musicssl bench ...`): ratios against a named reference measured in the same run. Not pass/fail.

`bench model`: training-step throughput (forward + backward, frames per second) of musicssl's encoder against
`transformers`' equivalent model (Data2VecAudioModel / HubertModel) with the same config, the same weights and
the same input, interleaved so both see the same machine state. Also the full objective step (Music2Vec:
student + EMA teacher + loss; MusicHuBERT: student + label loss). On CUDA it runs in bf16 autocast and reports
model FLOPs utilisation against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from musicssl.config import PRESETS, ModelConfig
from musicssl.models.convert import export_hf
from musicssl.models.encoder import SSLEncoder, num_frames

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def _timed(step: Callable[[], None], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def train_flops_per_frame(cfg: ModelConfig) -> float:
    """Approximate training FLOPs per 50 Hz frame of the encoder (forward x 3 for forward + backward)."""
    e = cfg.encoder
    d, f = e.embed_dim, e.ffn_dim
    per_layer = 2 * (4 * d * d + 2 * d * f)  # projections + FFN, multiply-adds x 2
    conv = 0.0
    samples_per_frame = 320.0
    in_ch = 1
    stride_acc = 1
    for ch, k, s in e.conv_layers:
        stride_acc *= s
        conv += 2 * in_ch * ch * k * (samples_per_frame / stride_acc)
        in_ch = ch
    k_pos = e.conv_pos if e.pos_conv_depth == 1 else max(3, e.conv_pos // e.pos_conv_depth)
    pos = 2 * d * d * k_pos / e.conv_pos_groups * e.pos_conv_depth
    return 3.0 * (e.num_layers * per_layer + conv + pos + 2 * e.conv_layers[-1][0] * d)


def bench_model(preset: str, batch: int, seconds: float, steps: int, warmup: int, device: str = "auto",
                threads: int | None = None, compile: bool = False, precision: str = "auto") -> dict[str, Any]:
    """Measure frames/s of a forward+backward step for musicssl and transformers on the same input; with `compile`,
    also musicssl's encoder compiled as `pretrain.compile` compiles it (`compiled_*`, and the seconds its first
    step took to compile, `compile_s`). `ratio` and `compiled_ratio` are speed-ups over transformers paired by
    round (`paired_ratio`) over `steps` interleaved rounds, with their range (`ratio_range`, `compiled_ratio_range`).

    `precision`: both sides under bf16 autocast (`bf16`, the default on a GPU) or in fp32 (the default on a CPU).
    The roofline figures put the step against the device's peak: a GPU's published bf16 peak (`mfu`), or on a CPU
    the faster of the FFN's two matrix products timed in the same run (`matmul_gflops`): `bound_ratio` is the most any
    implementation could gain over transformers if every FLOP of the step ran at that rate."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if steps < 1:
        raise ValueError(f"steps (timed rounds) must be at least 1, not {steps}")
    import transformers

    from musicssl.pretrain.loop import autocast_bf16

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if threads:
        torch.set_num_threads(threads)
    cfg = PRESETS[preset]()
    enc_cfg = cfg.encoder.model_copy(update={"encoder_layerdrop": 0.0})  # identical work in both models
    torch.manual_seed(0)
    ours = SSLEncoder(enc_cfg).to(dev).train()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours.state_dict(), enc_cfg, cfg.paradigm, Path(tmp))
        arch = "Data2VecAudioModel" if cfg.paradigm == "music2vec" else "HubertModel"
        theirs = getattr(transformers, arch).from_pretrained(tmp, attn_implementation="sdpa").to(dev).train()
    audio = torch.randn(batch, int(seconds * 16000), device=dev)
    frames = batch * num_frames(audio.shape[1], enc_cfg)
    bf16 = autocast_bf16(precision, dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def step_ours() -> None:
        with autocast:
            loss = ours(audio)[-1].float().pow(2).mean()
        loss.backward()
        ours.zero_grad(set_to_none=True)

    def step_theirs() -> None:
        with autocast:
            loss = theirs(audio).last_hidden_state.float().pow(2).mean()
        loss.backward()
        theirs.zero_grad(set_to_none=True)

    steps_by_name: dict[str, Callable[[], None]] = {
        "ours": step_ours, "transformers": step_theirs, "objective": _objective_step(cfg, enc_cfg, audio, dev, autocast)}
    compile_s: dict[str, float] = {}
    if compile:
        torch._dynamo.reset()
        compiled = SSLEncoder(enc_cfg).to(dev).train()
        compiled.load_state_dict(ours.state_dict())
        compiled.compile_parts()

        def step_compiled() -> None:
            with autocast:
                loss = compiled(audio)[-1].float().pow(2).mean()
            loss.backward()
            compiled.zero_grad(set_to_none=True)

        steps_by_name["compiled"] = step_compiled
        steps_by_name["compiled_objective"] = _objective_step(cfg, enc_cfg, audio, dev, autocast, compiled=True)
        for name in ("compiled", "compiled_objective"):
            compile_s[name] = _timed(steps_by_name[name], dev, 1)[0]  # the first step builds the graphs
    for fn in steps_by_name.values():
        _timed(fn, dev, warmup)
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):  # interleaved rounds: within a round all see the same machine state
        for name, fn in steps_by_name.items():
            times[name] += _timed(fn, dev, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, Any] = {
        "preset": preset, "paradigm": cfg.paradigm, "device": str(dev), "threads": torch.get_num_threads(),
        "precision": "bf16" if bf16 else "fp32",
        "params_m": sum(p.numel() for p in ours.parameters()) / 1e6, "batch": batch, "seconds": seconds,
        "frames_per_step": frames,
        "musicssl_frames_per_s": frames / med["ours"], "transformers_frames_per_s": frames / med["transformers"],
        "objective_frames_per_s": frames / med["objective"], "rounds": steps,
    }
    result["ratio"], result["ratio_range"] = paired_ratio(times["transformers"], times["ours"])
    if compile:
        result["compiled_ratio"], result["compiled_ratio_range"] = paired_ratio(times["transformers"], times["compiled"])
        result |= {"compiled_frames_per_s": frames / med["compiled"],
                   "compiled_objective_frames_per_s": frames / med["compiled_objective"],
                   "compile_s": compile_s["compiled"], "objective_compile_s": compile_s["compiled_objective"]}
    step_flops = train_flops_per_frame(cfg) * frames
    result["gflops_per_s"] = {k: step_flops / t / 1e9 for k, t in med.items() if k in ("ours", "transformers", "compiled")}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        achieved = step_flops / med["ours"] / 1e12
        result |= {"gpu": name, "encoder_tflops": achieved, "mfu": achieved / peak if peak else None}
    else:
        d, f = enc_cfg.embed_dim, enc_cfg.ffn_dim
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak_gflops = max(matmul_gflops(frames, d, f, dtype), matmul_gflops(frames, f, d, dtype))  # fc1, fc2
        result |= {"matmul_gflops": peak_gflops, "bound_ratio": med["transformers"] / (step_flops / peak_gflops / 1e9)}
    return result


def paired_ratio(reference: list[float], candidate: list[float]) -> tuple[float, tuple[float, float]]:
    """Speed-up of `candidate` over `reference` from step times taken in the same interleaved rounds: the median
    of the per-round ratios, and their range (the spread to read any difference against). Pairing by round
    cancels the machine's drift between rounds, which a ratio of the two medians would keep."""
    ratios = [r / c for r, c in zip(reference, candidate, strict=True)]
    return statistics.median(ratios), (min(ratios), max(ratios))


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """GFLOP/s of an (m, k) x (k, n) CPU matrix product (the FFN's shape), the best of repeated timings."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    best, t_end = float("inf"), time.perf_counter() + seconds
    for _ in range(3):
        a @ b
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def _objective_step(cfg: ModelConfig, enc_cfg: Any, audio: torch.Tensor, dev: torch.device,
                    autocast: Any, compiled: bool = False) -> Callable[[], None]:
    """One full objective step (forward + backward, no optimiser) for the preset's paradigm; `compiled` as
    `pretrain.compile` compiles the model."""
    from musicssl.models.music2vec import Music2Vec
    from musicssl.models.musichubert import MusicHubert
    from musicssl.pretrain.loop import compile_model

    mcfg = cfg.model_copy(update={"encoder": enc_cfg})
    gen = torch.Generator(device=dev).manual_seed(0)
    if cfg.paradigm == "music2vec":
        m2v = Music2Vec(mcfg).to(dev).train()
        if compiled:
            compile_model(m2v)

        def step() -> None:
            with autocast:
                out = m2v(audio, gen)
            out.loss_sum.backward()
            m2v.zero_grad(set_to_none=True)
        return step
    hub = MusicHubert(mcfg).to(dev).train()
    if compiled:
        compile_model(hub)
    lab_len = int(audio.shape[1] / 16000 * cfg.hubert.label_rate)
    labels = torch.randint(0, cfg.hubert.num_clusters, (audio.shape[0], lab_len), device=dev)

    def hstep() -> None:
        with autocast:
            out = hub(audio, labels, gen)
        out.loss_sum.backward()
        hub.zero_grad(set_to_none=True)
    return hstep


def bench_data(preset: str = "music2vec_base", workers: tuple[int, ...] = (0, 1, 2), batches: int = 12,
               files: int = 16, seconds: float = 32.0, sample_rate: int = 16000,
               threads: int | None = None) -> dict[str, Any]:
    """The data path alone: decode + crop (+ resample when `sample_rate` is not 16 kHz) of the preset's run defaults
    (its crops and per-GPU batch), as the training loop gets it, with each number of DataLoader workers: sustained
    audio samples per second delivered. Against it, the samples per second one GPU's training step would consume
    (`gpu_need`): the preset's training FLOPs per 320-sample frame at a given MFU of an H100's dense bf16 peak."""
    import numpy as np

    from musicssl.config import ExperimentConfig
    from musicssl.data.audio import write_wav
    from musicssl.data.corpus import synth_piece
    from musicssl.data.dataset import DataPosition, batch_loader
    from musicssl.data.manifest import read_manifest, write_manifest

    if threads:
        torch.set_num_threads(threads)
    cfg = ExperimentConfig.model_validate({"model": {"preset": preset}})
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        entries = []
        for i in range(files):
            wave = synth_piece(rng, seconds * sample_rate / 16000)  # rendered at 16 kHz; written as if at `sample_rate`
            write_wav(Path(tmp) / f"{i}.wav", wave, sample_rate=sample_rate)
            entries.append((f"{i}.wav", int(seconds * 16000)))
        manifest = read_manifest(write_manifest(Path(tmp) / "train.tsv", tmp, entries))
        for n in workers:
            data = cfg.data.model_copy(update={"num_workers": n})
            stream = batch_loader(manifest, data, 0, DataPosition(), device=torch.device("cpu"))
            next(stream)  # workers started, first batch ready
            t0, samples = time.perf_counter(), 0
            for _ in range(batches):
                samples += next(stream).audio.numel()
            elapsed = time.perf_counter() - t0
            del stream
            rows.append({"workers": n, "samples_per_s": samples / elapsed, "batches_per_s": batches / elapsed})
    per_sample = train_flops_per_frame(cfg.model) / 320.0
    need = {f"{int(100 * mfu)}%": mfu * PEAK_BF16_TFLOPS["H100"] * 1e12 / per_sample for mfu in (0.3, 0.5, 1.0)}
    return {"preset": preset, "crop": cfg.data.max_sample_size, "batch_samples": cfg.data.max_tokens,
            "sample_rate": sample_rate, "normalize": cfg.data.normalize, "threads": torch.get_num_threads(),
            "rows": rows, "gpu_need": need}


def bench_extract(preset: str, clips: int = 8, clip_seconds: float = 30.0, window_seconds: float = 30.0,
                  device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Feature-extraction throughput (seconds of audio per second) of a preset's encoder on 16 kHz WAV files."""
    import numpy as np

    from musicssl.data.audio import write_wav
    from musicssl.probe.features import extract

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if threads:
        torch.set_num_threads(threads)
    cfg = PRESETS[preset]()
    torch.manual_seed(0)
    encoder = SSLEncoder(cfg.encoder)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_wav(Path(tmp) / f"{i}.wav", 0.3 * rng.standard_normal(int(clip_seconds * 16000)).astype("float32"))
                 for i in range(clips)]
        extract(encoder, paths[:1], window_seconds, True, dev)  # warm-up
        t0 = time.perf_counter()
        feats = extract(encoder, paths, window_seconds, True, dev)
        elapsed = time.perf_counter() - t0
    return {"preset": preset, "device": str(dev), "threads": torch.get_num_threads(), "clips": clips,
            "audio_s": clips * clip_seconds, "wall_s": elapsed, "audio_s_per_s": clips * clip_seconds / elapsed,
            "windows": int(feats.x.shape[0]), "states": int(feats.x.shape[1])}


def bench_probe(checkpoint: Path, tasks: tuple[str, ...], corpus: Path, cache_dir: Path, **probe: Any) -> dict[str, Any]:
    """Wall time of probing `tasks` on one checkpoint: first call (extraction + probes), then from cached features."""
    from musicssl.config import ProbeConfig
    from musicssl.probe.run import probe_checkpoint

    cfg = ProbeConfig(tasks=tasks, **probe)
    t0 = time.perf_counter()
    probe_checkpoint(checkpoint, cfg, synthetic_root=corpus, cache_dir=cache_dir)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, average = probe_checkpoint(checkpoint, cfg, synthetic_root=corpus, cache_dir=cache_dir)
    cached = time.perf_counter() - t0
    return {"tasks": list(tasks), "first_s": first, "cached_s": cached, "average": average,
            "scores": {k: r.score for k, r in results.items()}}


def bench_standardize(checkpoints: list[Path], tasks: tuple[str, ...], corpus: Path, cache_dir: Path,
                      overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Test scores of `tasks` on each checkpoint with `probe.standardize` off and on (everything else from the
    checkpoint's own probe section and `overrides`): the measurement behind the default."""
    from musicssl.probe.run import probe_checkpoint, probe_settings

    rows = []
    for checkpoint in checkpoints:
        for standardize in (False, True):
            cfg = probe_settings(checkpoint, [*overrides, f"probe.standardize={standardize}"], "musicssl bench",
                                 list(tasks))
            results, average = probe_checkpoint(checkpoint, cfg, synthetic_root=corpus, cache_dir=cache_dir)
            rows.append({"checkpoint": str(checkpoint), "standardize": standardize, "average": average,
                         "scores": {k: r.score for k, r in results.items()}})
    return rows
