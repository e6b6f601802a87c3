"""k-means: blob recovery, inertia against scikit-learn, chunked assign against brute force, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from musicssl.data import kmeans as km
from musicssl.data.kmeans import (
    assign,
    fit_kmeans,
    inertia,
    load_centroids,
    save_centroids,
)
from musicssl.data.kmeans_bench import mfcc_like_frames


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 20, size=(8, 5))
    truth = np.repeat(np.arange(8), 400)
    x = (centres[truth] + rng.normal(scale=0.5, size=(truth.size, 5))).astype(np.float32)
    perm = rng.permutation(truth.size)
    return x[perm], truth[perm], centres


def _brute(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)  # (N, k)
    return d.argmin(1), d.min(1)


def test_recovers_well_separated_blobs() -> None:
    x, truth, centres = _blobs()
    result = fit_kmeans(x, 8, seed=0, device="cpu")
    assert result.centroids.shape == (8, 5) and result.centroids.dtype == np.float32
    assert result.samples == x.shape[0] and result.iterations >= 2
    # each fitted centroid is within 0.1 of a distinct true centre (the blob mean is +-0.5/sqrt(400))
    match, dist = _brute(result.centroids, centres)
    assert sorted(match.tolist()) == list(range(8))
    assert np.sqrt(dist).max() < 0.1
    labels = assign(x, result.centroids, device="cpu")
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(match[labels], truth)  # equal up to the permutation `match`
    assert result.inertia == pytest.approx(inertia(x, result.centroids), rel=1e-6)
    assert result.inertia == pytest.approx(5 * 0.25, rel=0.05)  # D * sigma^2


@pytest.mark.parametrize("k", [10, 40])
def test_inertia_no_worse_than_sklearn(k: int) -> None:
    x = mfcc_like_frames(4000, d=13, components=30, seed=1)
    ours = fit_kmeans(x, k, seed=0, device="cpu")
    ref = KMeans(n_clusters=k, random_state=0, n_init=1).fit(x)
    ref_inertia = inertia(x, ref.cluster_centers_)
    assert ref_inertia == pytest.approx(ref.inertia_ / x.shape[0], rel=1e-4)  # same quantity as sklearn's
    assert ours.inertia <= 1.01 * ref_inertia


def test_chunked_assign_and_inertia_equal_brute_force() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 7)).astype(np.float32)
    x[:, 0] += 30.0  # a large common offset, like MFCC c0
    c = x[rng.choice(5000, 37, replace=False)] + rng.normal(scale=0.1, size=(37, 7)).astype(np.float32)
    want, dist = _brute(x, c)
    for chunk in (333, 5000, 100_000):
        np.testing.assert_array_equal(assign(x, c, device="cpu", chunk=chunk), want)
        assert inertia(x, c, device="cpu", chunk=chunk) == pytest.approx(dist.mean(), rel=1e-5)


def test_empty_cluster_is_reseeded_at_the_farthest_frame() -> None:
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0]])
    c = torch.tensor([[0.0, 0.0], [100.0, 100.0], [5.0, 5.0]])  # centroid 1 wins no frame
    c[2] = torch.tensor([4.0, 4.0])
    new, value = km._lloyd_pass(km._tensor_batches(x, 2), c)
    assert torch.allclose(new[0], torch.tensor([0.1 / 3, 0.1 / 3]))
    assert torch.allclose(new[2], torch.tensor([5.0, 5.0]))
    assert torch.allclose(new[1], torch.tensor([5.0, 5.0]))  # the farthest frame from its centroid
    assert value == pytest.approx((0.01 + 0.01 + 2.0) / 4, rel=1e-5)


def test_fewer_distinct_points_than_k_does_not_fail() -> None:
    x = np.repeat(np.eye(3, dtype=np.float32), 50, axis=0)
    result = fit_kmeans(x, 5, seed=0, device="cpu")
    assert np.isfinite(result.centroids).all() and result.inertia == pytest.approx(0.0, abs=1e-6)


def test_memmap_subsample_streaming_and_npy_round_trip(tmp_path: Path, monkeypatch) -> None:
    x = mfcc_like_frames(20_000, d=6, components=12, seed=3)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    resident = fit_kmeans(mm, 16, max_samples=12_000, seed=5, device="cpu", chunk=4096)
    assert resident.samples == 12_000
    monkeypatch.setattr(km, "RESIDENT_BYTES", 1024)  # force streaming from the memmap on every pass
    streamed = fit_kmeans(mm, 16, max_samples=12_000, seed=5, device="cpu", chunk=4096)
    np.testing.assert_allclose(streamed.centroids, resident.centroids, rtol=1e-5, atol=1e-5)
    assert streamed.iterations == resident.iterations
    other = fit_kmeans(mm, 16, max_samples=12_000, seed=6, device="cpu", chunk=4096)
    assert not np.allclose(other.centroids, resident.centroids)
    path = save_centroids(tmp_path / "km" / "c.npy", resident.centroids)
    np.testing.assert_array_equal(load_centroids(path), resident.centroids)
    assert np.load(path, allow_pickle=False).dtype == np.float32


def test_bad_arguments_are_reported() -> None:
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\]"):
        fit_kmeans(x, 11)
    with pytest.raises(ValueError, match=r"expected frames of shape \(N, D\)"):
        fit_kmeans(np.zeros(10, np.float32), 2)
    with pytest.raises(ValueError, match="do not match frames of dimension 3"):
        assign(x, np.zeros((4, 2), np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    x = mfcc_like_frames(30_000, d=39, components=40, seed=4)
    c = fit_kmeans(x, 64, seed=0, device="cpu").centroids
    assert (assign(x, c, device="cuda") == assign(x, c, device="cpu")).mean() > 0.999  # near-ties may flip
    gpu = fit_kmeans(x, 64, seed=0, device="cuda")
    assert gpu.inertia <= 1.01 * inertia(x, c)


@pytest.mark.parametrize(("k", "candidates", "high", "searched"), [(400, 16, 64, 0.05), (60, 2, 3, 0.2)])
def test_pruned_passes_equal_plain_lloyd(
    monkeypatch, k: int, candidates: int, high: int, searched: float
) -> None:
    monkeypatch.setattr(km, "CANDIDATES", candidates)
    monkeypatch.setattr(km, "HIGH_DRIFT", high)
    x = torch.from_numpy(mfcc_like_frames(12_000, d=8, components=50, seed=7))
    batches = km._tensor_batches(x, 5000)
    plain = pruned = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:k]].clone()
    pruner = km._Pruner(x.shape[0], k, torch.device("cpu"))
    full_rows = []
    for _ in range(8):
        plain, want = km._lloyd_pass(batches, plain)
        pruned, got = km._lloyd_pass(batches, pruned, pruner)
        full_rows.append(pruner.full_rows if not pruner.refresh else x.shape[0])
        assert got == pytest.approx(want, rel=1e-6)
        torch.testing.assert_close(pruned, plain, rtol=1e-5, atol=1e-5)
    assert km._inertia(batches, pruned, pruner) == pytest.approx(km._inertia(batches, plain), rel=1e-6)
    assert full_rows[0] == x.shape[0] and min(full_rows) < searched * x.shape[0]  # most frames were pruned


def test_tf32_set_elsewhere_is_off_inside_and_restored_after() -> None:
    inside = km._full_fp32(lambda: torch.backends.cuda.matmul.fp32_precision)
    torch.set_float32_matmul_precision("high")  # what a training script may have done
    try:
        assert inside() == "ieee"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_kmeans_benchmark_reports_both_sides_on_the_same_frames() -> None:
    from musicssl.data.kmeans_bench import bench_kmeans

    (row,) = bench_kmeans(n=3000, d=6, ks=(8,), ref_n_init=1, repeats=2, device="cpu")
    assert (row["k"], row["n"], row["d"], row["repeats"]) == (8, 3000, 6, 2)
    assert len(row["ref_times_s"]) == len(row["our_times_s"]) == 2
    assert row["speedup"] == pytest.approx(
        (row["ref_fit_s"] + row["ref_predict_s"]) / (row["our_fit_s"] + row["our_assign_s"]))
    # both fits land on clusterings of similar quality on these frames (inertias computed the same way)
    assert row["inertia_ratio"] == pytest.approx(row["our_inertia"] / row["ref_inertia"])
    assert 0.7 < row["inertia_ratio"] < 1.3
