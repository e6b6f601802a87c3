"""The fast training step: nothing read from the device between log steps, `torch.compile` of the student and the
teacher without graph breaks or recompiles (and the same numbers as eager), and bf16 autocast against fp32."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from musicssl.config import DataConfig, ExperimentConfig
from musicssl.data.dataset import Batch, DataPosition
from musicssl.data.manifest import read_manifest
from musicssl.pretrain.distributed import DistContext
from musicssl.pretrain.loop import _Window, build_model, compile_model, pretrain, train_update, update
from musicssl.pretrain.optim import build_optimizer

FRAMES = 24  # 8000 samples through the (tiny) conv stack
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "dropout_input": 0.0, "encoder_layerdrop": 0.0}
# ops that hand a value to the host (`.item()`, `bool()`, `.tolist()`) or whose output size only the device knows
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "equal", "is_nonzero", "unique", "_unique2"}


class HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: dispatched ops (`.item()`, `bool()`, `int()` and
    `float()` all reach `_local_scalar_dense`), plus `Tensor.tolist` and `Tensor.numpy`, which read a CPU tensor's
    memory without dispatching anything (on a GPU they copy to the host first): those two are wrapped while the
    block runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: collections.Counter[str] = collections.Counter()
        self._saved: dict[str, Any] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            self.seen[name] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostReads:
        for name in ("tolist", "numpy"):
            original = self._saved[name] = getattr(torch.Tensor, name)

            def counted(tensor: torch.Tensor, *args: Any, _name: str = name, _original: Any = original,
                        **kwargs: Any) -> Any:
                self.seen[_name] += 1
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        super().__exit__(*exc)


def _experiment(paradigm: str, encoder: dict[str, Any] | None = None, **pretrain: Any) -> ExperimentConfig:
    preset = "tiny" if paradigm == "music2vec" else "tiny_hubert"
    return ExperimentConfig.model_validate({
        "model": {"preset": preset, "encoder": encoder or {}, "hubert": {"num_clusters": 8, "label_rate": 50.0}},
        "data": {"labels": "unused.km", "max_sample_size": 16000, "min_sample_size": 8000, "max_tokens": 32000},
        "pretrain": {"device": "cpu", "lr": 1e-3, "clip_norm": 1.0} | pretrain})


def _batch(paradigm: str, seed: int, samples: int = 8000) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, samples, generator=gen)
    labels = torch.randint(0, 8, (2, samples // 320), generator=gen) if paradigm == "musichubert" else None
    return Batch(DataPosition(), audio, labels)


@pytest.mark.parametrize("paradigm", ["music2vec", "musichubert"])
def test_updates_between_log_steps_read_nothing_from_the_device(paradigm: str) -> None:
    """Masks, layerdrop, loss, sample size, gradient normalisation and clipping, the skip of a non-finite update,
    the optimiser step, the EMA teacher and the logging sums: all in device ops (none in HOST_READS)."""
    cfg = _experiment(paradigm, {"encoder_layerdrop": 0.3})
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    params = model.trainable_parameters()
    optimizer = build_optimizer(params, cfg.pretrain)
    window, gen, device = _Window(torch.device("cpu"), 0), torch.Generator().manual_seed(1), torch.device("cpu")
    with HostReads() as reads:
        for step in range(3):
            result = update(model, params, optimizer, [_batch(paradigm, step)], cfg, step, device, gen, DistContext())
            window.add(result)
    assert reads.seen == {}, f"host reads inside the update: {dict(reads.seen)}"
    with HostReads() as reads:
        seen = window.read()
    assert reads.seen["tolist"] == 1, "the log step is where the device is read, once (the counter sees it)"
    assert seen.skipped == 0 and seen.bad_in_a_row == 0 and seen.means["loss"] > 0
    assert float(optimizer.state[params[0]]["step"]) == 3.0


def _explain(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    torch._dynamo.reset()
    return torch._dynamo.explain(module)(*args, **kwargs)


@pytest.mark.parametrize("paradigm", ["music2vec", "musichubert"])
def test_the_compiled_parts_have_no_graph_break(paradigm: str) -> None:
    """The student's conv extractor and transformer (training mode, layerdrop on) and the teacher each trace to one
    graph, so `torch.compile` compiles their forward and backward whole."""
    cfg = _experiment(paradigm, {"encoder_layerdrop": 0.1})
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    audio = torch.randn(2, 8000)
    conv = _explain(model.student.feature_extractor, audio)
    x = torch.randn(2, FRAMES, cfg.model.encoder.embed_dim)
    student = _explain(model.student.encoder, x)
    reports = [conv, student]
    if paradigm == "music2vec":
        model.teacher.eval()
        reports.append(_explain(model.teacher, x, min_layer=cfg.model.encoder.num_layers - 2))
    for report in reports:
        assert report.graph_break_count == 0, report.break_reasons
        assert report.graph_count == 1


def test_batches_of_one_shape_compile_once_and_new_shapes_compile_without_failing() -> None:
    """Batches of the same shape (new audio, new masks, new layerdrop draws) reuse the first graphs; another crop
    length or batch size compiles once more, through inductor, and going back to a shape seen compiles nothing.
    (torch's automatic dynamic shapes, which it would switch on at the second shape, crash inductor on this
    encoder: compile_parts keeps shapes static.)"""
    from torch._dynamo.testing import CompileCounterWithBackend

    cfg = _experiment("music2vec", {"encoder_layerdrop": 0.2})
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    model.student.compile_parts(backend=counter)
    gen = torch.Generator().manual_seed(0)
    for seed in range(4):
        out = model(_batch("music2vec", seed).audio, gen)
        (out.loss_sum / out.sample_size).backward()
    assert counter.frame_count == 2, "one graph for the conv extractor, one for the transformer, compiled once"
    losses = []
    for shape in ((3, 9600), (2, 8000)):
        out = model(torch.randn(*shape), gen)
        out.loss_sum.backward()
        losses.append(float(out.loss_sum.detach() / out.sample_size))
    assert counter.frame_count == 4, "a new shape, two graphs; the shape seen before reuses its graphs"
    assert all(0 < loss < 100 for loss in losses), losses


@pytest.mark.parametrize("paradigm", ["music2vec", "musichubert"])
def test_compiled_and_eager_steps_agree(paradigm: str) -> None:
    """The same update through inductor-compiled modules and eagerly: loss and every gradient agree (no dropout,
    the same mask, so both see the same computation)."""
    cfg = _experiment(paradigm, NO_DROPOUT)
    batches = [_batch(paradigm, 5)]
    gen = torch.Generator().manual_seed(0)
    keys = torch.rand(2, FRAMES, generator=gen)
    batches = [Batch(b.position, b.audio, b.labels, keys <= keys.kthvalue(9, dim=1, keepdim=True).values)
               for b in batches]
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        torch._dynamo.reset()
        model = build_model(cfg.model).train()
        if compiled:
            compile_model(model)
        params = model.trainable_parameters()
        optimizer = build_optimizer(params, cfg.pretrain)
        result = train_update(model, params, optimizer, batches, cfg, torch.device("cpu"), gen, DistContext())
        results.append((float(result.loss), float(result.grad_norm),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_e, norm_e, grads_e), (loss_c, norm_c, grads_c) = results
    assert loss_c == pytest.approx(loss_e, rel=1e-4)
    assert norm_c == pytest.approx(norm_e, rel=1e-3)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 20
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-5, msg=name)


class _Metrics:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


def test_a_compiled_run_logs_its_compile_time_and_writes_plain_checkpoints(tiny_corpus: Path, tmp_path: Path) -> None:
    """`pretrain.compile: true` through the loop: the first log carries pretrain/compile_s, and the checkpoint's
    parameter names are those of the uncompiled model (it loads anywhere, HF export and probes included)."""
    from safetensors.torch import load_file

    from musicssl.models.encoder import SSLEncoder

    torch.set_num_threads(2)
    cfg = _experiment("music2vec", compile=True, max_steps=3, log_every=1, checkpoint_every=3)
    cfg = cfg.model_copy(update={"data": DataConfig(max_sample_size=16000, min_sample_size=8000, max_tokens=32000)})
    sink = _Metrics()
    end = pretrain(cfg, tmp_path, read_manifest(tiny_corpus / "pretrain" / "train.tsv"), sink=sink)
    assert [step for step, _ in sink.rows] == [1, 2, 3]
    assert sink.rows[0][1]["pretrain/compile_s"] > 0
    assert all("pretrain/compile_s" not in m for _, m in sink.rows[1:])
    plain = build_model(cfg.model)
    assert set(load_file(str(end / "model.safetensors"))) == set(plain.state_dict())
    encoder = SSLEncoder(cfg.model.encoder)
    encoder.load_state_dict(load_file(str(end / "encoder.safetensors")))  # strict: every name matches


# bf16 autocast (the GPU's training precision) on the CPU: 100 updates of the tiny models on the tiny corpus. The
# tolerance: bf16 keeps 8 bits of mantissa (a relative rounding of 2^-9 per op), so the two runs' losses drift apart
# a little as training goes; measured here the mean loss of the last 20 updates differed by +1.2% (music2vec) and
# 0.0% (musichubert); the bound is 5%, and each run must learn (its loss falls by a tenth).
BF16_STEPS, BF16_TAIL, BF16_RTOL = 100, 20, 0.05


class _Losses:
    def __init__(self) -> None:
        self.values: list[float] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.values.append(metrics["pretrain/loss"])


def _energy_labels(manifest: Any, folder: Path) -> Path:
    """100 Hz labels a model can learn: each 10 ms frame's log energy in 8 quantile bins (fairseq `.km` format)."""
    import numpy as np

    from musicssl.data.audio import read_audio

    energies = []
    for i in range(len(manifest)):
        wave = read_audio(manifest.path(i))
        energies.append(np.log1p((wave[: len(wave) // 160 * 160].reshape(-1, 160) ** 2).mean(1)))
    edges = np.quantile(np.concatenate(energies), np.linspace(0, 1, 9)[1:-1])
    folder.mkdir(parents=True)
    (folder / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(8)))
    km = folder / "train.km"
    km.write_text("".join(" ".join(map(str, np.digitize(e, edges))) + "\n" for e in energies))
    return km


@pytest.mark.parametrize("paradigm", ["music2vec", "musichubert"])
def test_bf16_training_follows_fp32(paradigm: str, tiny_corpus: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    manifest = read_manifest(tiny_corpus / "pretrain" / "train.tsv")
    labels = _energy_labels(manifest, tmp_path / "labels") if paradigm == "musichubert" else None
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = _experiment(paradigm, NO_DROPOUT, precision=precision, max_steps=BF16_STEPS, log_every=1,
                          checkpoint_every=BF16_STEPS, lr=2e-3, warmup_steps=10, scheduler="polynomial")
        cfg = cfg.model_copy(update={"data": DataConfig(max_sample_size=16000, min_sample_size=8000,
                                                        max_tokens=32000,
                                                        labels=str(labels) if labels else None),
                                     "model": cfg.model.model_copy(update={"hubert": cfg.model.hubert.model_copy(
                                         update={"label_rate": 100.0})})})
        sink = _Losses()
        pretrain(cfg, tmp_path / precision, manifest, sink=sink)
        curves[precision] = sink.values
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) == BF16_STEPS
    tail32, tail16 = sum(fp32[-BF16_TAIL:]) / BF16_TAIL, sum(bf16[-BF16_TAIL:]) / BF16_TAIL
    print(f"{paradigm}: mean loss of the last {BF16_TAIL} updates fp32 {tail32:.4f} bf16 {tail16:.4f} "
          f"({(tail16 - tail32) / tail32:+.2%})")
    assert tail16 == pytest.approx(tail32, rel=BF16_RTOL), (tail32, tail16)
    for curve in (fp32, bf16):
        assert sum(curve[-BF16_TAIL:]) < 0.9 * sum(curve[:BF16_TAIL]), "the run learns"
