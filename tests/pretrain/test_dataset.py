"""Pretraining batches (fairseq `audio_pretraining` semantics): size-capped batches, crops, epochs, shards."""

from __future__ import annotations

import numpy as np
import pytest

from musicssl.config import DataConfig
from musicssl.data.dataset import crop_batch, plan_batches

CFG = DataConfig(max_sample_size=16000, min_sample_size=4000, max_tokens=50000)


def sizes(n: int = 200, seed: int = 0) -> np.ndarray:
    """Lengths from 1000 to 40000 samples: some too short, many longer than max_sample_size."""
    return np.random.default_rng(seed).integers(1000, 40000, size=n)


def test_batches_respect_max_tokens_and_are_sorted_by_length() -> None:
    s = sizes()
    capped = np.minimum(s, CFG.max_sample_size)
    batches = plan_batches(s, CFG, seed=0, epoch=0)
    for b in batches:
        assert len(b) * capped[b].max() <= CFG.max_tokens
        assert (np.diff(capped[b]) <= 0).all()  # longest first within a batch
    # greedy: every batch but the last one (holding the shortest item) was closed because one more won't fit
    shortest = min(np.concatenate(batches), key=lambda i: capped[i])
    for b in batches:
        if shortest not in b:
            assert (len(b) + 1) * capped[b].max() > CFG.max_tokens
    assert {len(b) for b in batches if capped[b].max() == CFG.max_sample_size} <= {1, 2, 3}
    assert max(len(b) for b in batches) >= 8  # short crops pack more items


def test_short_items_are_dropped_and_every_other_item_appears_once_per_epoch() -> None:
    s = sizes()
    for epoch in range(3):
        items = np.concatenate(plan_batches(s, CFG, seed=0, epoch=epoch))
        assert sorted(items.tolist()) == np.flatnonzero(s >= CFG.min_sample_size).tolist()
    assert (s < CFG.min_sample_size).sum() > 5  # the drop was exercised


def test_plan_is_deterministic_per_seed_and_epoch() -> None:
    s = sizes()

    def plan(seed: int, epoch: int) -> list[list[int]]:
        return [b.tolist() for b in plan_batches(s, CFG, seed=seed, epoch=epoch)]

    assert plan(0, 0) == plan(0, 0)
    assert plan(0, 0) != plan(0, 1)
    assert plan(0, 0) != plan(1, 0)
    assert sorted(map(tuple, plan(0, 0))) != sorted(map(tuple, plan(0, 1)))  # ties broken differently, too


def test_world_size_two_gives_disjoint_equal_shards() -> None:
    s = sizes(n=201)
    whole = plan_batches(s, CFG, seed=0, epoch=0)
    shards = [plan_batches(s, CFG, seed=0, epoch=0, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) // 2
    a, b = (set(np.concatenate(sh).tolist()) for sh in shards)
    assert not a & b
    assert a | b <= set(np.concatenate(whole).tolist())
    assert len(whole) % 2 == 1 or a | b == set(np.concatenate(whole).tolist())


def test_crop_batch_to_the_shortest_item_at_uniform_offsets() -> None:
    waves = [np.arange(n, dtype=np.float32) + 100000 * i for i, n in enumerate((30000, 21000, 45000))]
    starts: list[list[int]] = [[], [], []]
    for seed in range(200):
        out = crop_batch(waves, 40000, np.random.default_rng(seed)).numpy()
        assert out.shape == (3, 21000) and out.dtype == np.float32
        for row, w in enumerate(waves):
            start = int(out[row, 0] - 100000 * row)
            np.testing.assert_array_equal(out[row], w[start:start + 21000])
            starts[row].append(start)
    assert starts[1] == [0] * 200  # the shortest item is taken whole
    for row, n in ((0, 30000), (2, 45000)):
        assert min(starts[row]) >= 0 and max(starts[row]) <= n - 21000
        assert np.mean(starts[row]) == pytest.approx((n - 21000) / 2, rel=0.15)
    capped = crop_batch(waves, 16000, np.random.default_rng(0))
    assert capped.shape == (3, 16000)


def _stream(batches, n):  # type: ignore[no-untyped-def]
    return [(b.position, b.audio.numpy().copy(), None if b.labels is None else b.labels.numpy().copy())
            for b, _ in zip(batches, range(n), strict=False)]


def test_dataloader_workers_give_the_very_same_stream(tiny_corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two DataLoader workers (each decoding every second batch) hand back exactly the batches, crops, labels and
    positions of the in-process stream, across an epoch boundary, from a resume position too; an unreadable file is
    dropped from its batch in both."""
    import shutil

    import torch

    from musicssl.data.dataset import DataPosition, batch_loader, iterate_batches
    from musicssl.data.manifest import read_manifest

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus / "pretrain", corpus)
    lines = (corpus / "train.tsv").read_text().splitlines()
    (corpus / "train.tsv").write_text("\n".join([str(corpus), *lines[1:]]) + "\n")  # the copy's own root
    manifest = read_manifest(corpus / "train.tsv")
    assert manifest.path(3).parent == corpus
    manifest.path(3).write_bytes(b"not a wav")
    cfg = DataConfig(max_sample_size=16000, min_sample_size=8000, max_tokens=32000, num_workers=2)
    labels = [np.arange(int(n) * 100 // 16000) % 7 for n in manifest.sizes]
    per_epoch = len(plan_batches(manifest.sizes, cfg, 0, 0))
    for start in (DataPosition(), DataPosition(0, 2)):
        n = per_epoch + 3  # into the next epoch
        ours = _stream(iterate_batches(manifest, cfg, 0, start, labels=labels), n)
        loaded = _stream(batch_loader(manifest, cfg, 0, start, device=torch.device("cpu"), labels=labels), n)
        assert [b[0] for b in loaded] == [b[0] for b in ours]
        assert any(p.epoch == 1 for p, _, _ in ours)
        for (_, audio_a, lab_a), (_, audio_b, lab_b) in zip(ours, loaded, strict=True):
            np.testing.assert_array_equal(audio_a, audio_b)
            np.testing.assert_array_equal(lab_a, lab_b)


def test_a_batch_pins_its_audio_for_a_gpu() -> None:
    import torch

    from musicssl.data.dataset import Batch, DataPosition

    if not torch.cuda.is_available():
        pytest.skip("page-locked memory needs a CUDA driver")
    batch = Batch(DataPosition(0, 1), torch.zeros(2, 4), None).pin_memory()
    assert batch.audio.is_pinned() and batch.position == DataPosition(0, 1)


def test_workers_default_to_none_on_the_cpu_and_up_to_four_on_a_gpu() -> None:
    import torch

    from musicssl.data.dataset import loader_workers

    cfg = DataConfig(max_sample_size=16000, min_sample_size=8000, max_tokens=32000)
    import os

    cores = len(os.sched_getaffinity(0))
    assert loader_workers(cfg, torch.device("cpu")) == 0
    assert loader_workers(cfg, torch.device("cuda")) == max(1, min(4, cores - 1))  # 1 on this 2-core machine
    assert loader_workers(cfg.model_copy(update={"num_workers": 2}), torch.device("cpu")) == 2
