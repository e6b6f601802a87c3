"""k-means for HuBERT-style frame labels: seeded on a subsample, refined by coarse-to-fine full-batch Lloyd.

The reference is fairseq's `examples/hubert/simple_kmeans/learn_kmeans.py` (scikit-learn `MiniBatchKMeans`,
`n_init=20`, `batch_size=10000`). Here the whole fit runs in torch (float32, CUDA when present):

1. Seeding: greedy k-means++ (2 + ln k candidates per step, as scikit-learn) on a random subsample.
2. Lloyd iterations on growing random subsamples (x4 per stage, the last stage is the whole fitting set),
   so most iterations run on a small sample and the full data only sees a few polishing passes.
3. Each pass: distances by `||c||^2 - 2 x c^T` (one matmul per cache-sized block), nearest centroid,
   centroid sums with `index_add_` (float64 across chunks), an empty cluster re-seeded at the farthest
   frame; a stage ends when a pass improves the inertia by less than `tol`.
4. For k >= 1500, passes after the first of a stage are pruned exactly (`_Pruner`): each frame is scored
   against its 16 nearest centroids of the last full search plus the 64 centroids that moved most, and a
   triangle-inequality bound proves that no other centroid can be nearer (else a full search is done).

Data is read chunk by chunk, so `x` may be a `numpy.memmap` of hundreds of millions of frames: a fitting
set that fits in `RESIDENT_BYTES` is copied once to the device, a larger one is streamed on every pass.
Centroids are stored as `.npy` (`save_centroids` / `load_centroids`), never pickled.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

RESIDENT_BYTES = 4 << 30
"""A fitting set up to this size (float32) is copied to the device once; a larger one is streamed."""

DEFAULT_CHUNK = 1 << 16
"""Frames read (from a memmap) and moved to the device at a time."""

BLOCK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 27}
"""Size (frames x k) of one distance block per device type: 8 MB stays in a CPU cache (3x faster than
256 MB blocks on 2 cores), 512 MB keeps a GPU busy."""


@dataclass(frozen=True)
class KMeansResult:
    """A fitted k-means model."""

    centroids: np.ndarray
    """Cluster centres, shape (k, D), float32."""
    inertia: float
    """Mean squared distance of the fitting sample to its nearest centroid (the final centroids)."""
    iterations: int
    """Lloyd passes run over all stages (stage passes are over subsamples, the last over the fitting set)."""
    samples: int
    """Number of frames the model was fitted on."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _full_fp32(fn: Callable[P, T]) -> Callable[P, T]:
    """Run `fn` with IEEE float32 matmuls. TF32 / bf16 matmuls (`set_float32_matmul_precision("high")`
    or `torch.backends.*.matmul.fp32_precision`, which training code may set globally) keep 10 or 7
    mantissa bits and would flip nearest-centroid decisions. Uses the per-backend API (torch >= 2.9;
    mixing it with the legacy one raises), else the legacy one."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        found: tuple[Any, ...] = (torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None))
        backends = [b for b in found if hasattr(b, "fp32_precision")]
        if backends:
            saved = [b.fp32_precision for b in backends]
            for b in backends:
                b.fp32_precision = "ieee"
            try:
                return fn(*args, **kwargs)
            finally:
                for b, value in zip(backends, saved, strict=True):
                    b.fp32_precision = value
        legacy = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_float32_matmul_precision(legacy)

    return wrapper


def _check_data(x: np.ndarray | torch.Tensor, name: str = "x") -> None:
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected frames of shape (N, D) with N, D > 0, got {tuple(x.shape)}")


Batches = Callable[[], Iterator[torch.Tensor]]
"""A re-iterable source of (B, D) float32 frame blocks on the device: one call, one pass over the data."""


def _chunks(
    x: np.ndarray | torch.Tensor, device: torch.device, chunk: int, rows: np.ndarray | None = None
) -> Iterator[torch.Tensor]:
    """Yield (B, D) float32 tensors on `device`: rows of `x` (all, or the sorted indices `rows`)."""
    n = x.shape[0] if rows is None else rows.size
    for start in range(0, n, chunk):
        if isinstance(x, torch.Tensor):
            block = x[start : start + chunk]
        else:
            part = x[start : start + chunk] if rows is None else x[rows[start : start + chunk]]
            part = np.ascontiguousarray(part, dtype=np.float32)
            block = torch.from_numpy(part if part.flags.writeable else part.copy())  # memmaps are read-only
        yield block.to(device=device, dtype=torch.float32, non_blocking=True)


def _take(x: np.ndarray, rows: np.ndarray | None, device: torch.device, chunk: int) -> torch.Tensor:
    """Copy rows of `x` (all when `rows` is None) to one float32 tensor on `device`, chunk by chunk."""
    n = x.shape[0] if rows is None else rows.size
    out = torch.empty((n, x.shape[1]), dtype=torch.float32, device=device)
    start = 0
    for block in _chunks(x, device, chunk, rows):
        out[start : start + block.shape[0]] = block
        start += block.shape[0]
    return out


def _nearest(xb: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row and its exact squared distance. xb (B, D), c (k, D), c_sq (k,).

    Call with `xb` and `c` shifted by the same vector near the data mean, so that `||c||^2 - 2 x.c`
    is not dominated by a large common offset (MFCC c0) in float32. Distances are computed in blocks
    of `BLOCK_ELEMENTS` so the (block, k) score matrix stays in cache.
    """
    step = max(256, BLOCK_ELEMENTS.get(xb.device.type, 1 << 21) // c.shape[0])
    assign = torch.empty(xb.shape[0], dtype=torch.long, device=xb.device)
    for start in range(0, xb.shape[0], step):
        scores = torch.addmm(c_sq, xb[start : start + step], c.T, alpha=-2.0)  # (b, k)
        torch.argmin(scores, dim=1, out=assign[start : start + step])
    dist = (xb - c[assign]).pow_(2).sum(dim=1)  # (B,) exact, no cancellation against ||x||^2
    return assign, dist


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + ln k candidates per centre, as scikit-learn). x (S, D) -> (k, D)."""
    s = x.shape[0]
    trials = 2 + int(math.log(k))
    mean = x.mean(dim=0)
    x = x - mean
    x_sq = x.pow(2).sum(dim=1)  # (S,)
    first = int(torch.randint(s, (1,), generator=gen, device=x.device))
    idx = torch.empty(k, dtype=torch.long, device=x.device)
    idx[0] = first
    closest = (x - x[first]).pow(2).sum(dim=1)  # (S,) squared distance to the nearest centre so far
    for i in range(1, k):
        cum = torch.cumsum(closest, dim=0)
        r = torch.rand(trials, generator=gen, device=x.device) * cum[-1]
        cand = torch.searchsorted(cum, r).clamp_(max=s - 1)  # (L,) sampled proportionally to closest
        d = torch.addmm(x_sq[cand, None] + x_sq[None, :], x[cand], x.T, alpha=-2.0).clamp_min_(0.0)
        d = torch.minimum(d, closest[None, :])  # (L, S)
        best = d.sum(dim=1).argmin()
        closest = d[best]
        idx[i] = cand[best]
    return x[idx] + mean


CANDIDATES = 16
"""Pruned passes score each frame against its nearest centroids of the last full search ..."""

HIGH_DRIFT = 64
"""... and against the centroids that moved most since then; see `_Pruner`."""

PRUNE_MIN_K = 1500
"""Smallest k for which stages are pruned (`_Pruner.worth_it`)."""

REFRESH_FRACTION = 0.05
"""A full search (refresh of the candidates) follows a pass in which more frames than this needed one."""


class _Pruner:
    """Exact nearest-centroid search that skips most distances on repeated passes over the same frames.

    A full search keeps each frame's `CANDIDATES` nearest centroids and its distance `lower` to the next
    one. In a later pass, a centroid j that is not a candidate is at least `lower - drift[j]` away
    (triangle inequality; `drift[j]` sums the moves of j since that search). Scoring the candidates and
    the `HIGH_DRIFT` centroids that moved most therefore settles every frame whose best distance is within
    `lower - (largest other drift)`; the few others get a full search. No approximation is made.
    """

    def __init__(self, n: int, k: int, device: torch.device) -> None:
        self.m, self.h = CANDIDATES, min(HIGH_DRIFT, k - CANDIDATES - 1)
        self.cand = torch.empty(
            (n, self.m), dtype=torch.int16 if k <= 1 << 15 else torch.int32, device=device
        )
        self.lower = torch.empty(n, device=device)  # (N,) distance to the (m+1)-th nearest at the last search
        self.drift = torch.zeros(k, device=device)
        self.valid = False
        self.full_rows = 0

    @staticmethod
    def worth_it(k: int) -> bool:
        """Pruning pays from about k = 1500: the full search that opens a stage needs a top-17 (2 to 5
        times an argmin on CPU), a pruned pass costs about a plain pass at k = 400 (2 CPU cores)."""
        return k >= PRUNE_MIN_K

    def begin(self, c: torch.Tensor) -> None:
        """Start a pass with centroids `c` (k, D)."""
        self.c, self.shift = c, c.mean(dim=0)
        self.cs = c - self.shift
        self.c_sq = self.cs.pow(2).sum(dim=1)
        self.refresh, self.full_rows = not self.valid, 0
        if not self.refresh:
            top = self.drift.topk(self.h + 1)
            self.high, self.rest = top.indices[: self.h], top.values[self.h]
            self.high_c, self.high_sq = self.cs[self.high], self.c_sq[self.high]

    def label(self, xb: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest centroid and exact squared distance of rows [start, start + B) of the frames."""
        xs = xb - self.shift
        rows = slice(start, start + xb.shape[0])
        if self.refresh:
            return self._search(xs, rows)
        cand = self.cand[rows].long()  # (B, m)
        assign = torch.empty(xs.shape[0], dtype=torch.long, device=xs.device)
        step = max(256, BLOCK_ELEMENTS.get(xs.device.type, 1 << 21) // (self.m * xs.shape[1] + self.h))
        for i in range(0, xs.shape[0], step):
            xi, ci = xs[i : i + step], cand[i : i + step]
            near = self.c_sq[ci] - 2.0 * torch.einsum("bmd,bd->bm", self.cs[ci], xi)  # (b, m)
            moved = torch.addmm(self.high_sq, xi, self.high_c.T, alpha=-2.0)  # (b, h)
            best = torch.cat([near, moved], dim=1).argmin(dim=1)  # (b,)
            from_cand = ci.gather(1, best.clamp(max=self.m - 1)[:, None])[:, 0]
            assign[i : i + step] = torch.where(
                best < self.m, from_cand, self.high[(best - self.m).clamp(min=0)]
            )
        dist = (xs - self.cs[assign]).pow_(2).sum(dim=1)
        unsure = torch.nonzero(dist.sqrt() > self.lower[rows] - self.rest).flatten()
        if unsure.numel():
            assign[unsure], dist[unsure] = _nearest(xs[unsure], self.cs, self.c_sq)
            self.full_rows += unsure.numel()
        return assign, dist

    def _search(self, xs: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        step = max(256, BLOCK_ELEMENTS.get(xs.device.type, 1 << 21) // self.cs.shape[0])
        near = torch.empty((xs.shape[0], self.m + 1), dtype=torch.long, device=xs.device)
        for i in range(0, xs.shape[0], step):
            scores = torch.addmm(self.c_sq, xs[i : i + step], self.cs.T, alpha=-2.0)  # (b, k)
            near[i : i + step] = scores.topk(self.m + 1, dim=1, largest=False).indices
        self.cand[rows] = near[:, : self.m].to(self.cand.dtype)
        # exact distance to the (m+1)-th, less a 1e-4 margin for rounding in the ranking
        self.lower[rows] = (xs - self.cs[near[:, self.m]]).pow_(2).sum(dim=1).sqrt_().mul_(1.0 - 1e-4)
        return near[:, 0], (xs - self.cs[near[:, 0]]).pow_(2).sum(dim=1)

    def end(self, new: torch.Tensor, n: int) -> None:
        """Finish the pass: the centroids moved from `c` to `new`; n frames were labelled."""
        if self.refresh:
            self.drift.zero_()
            self.valid = True
        self.drift += (new - self.c).norm(dim=1)
        if self.full_rows > REFRESH_FRACTION * n:
            self.valid = False


def _lloyd_pass(
    batches: Batches, c: torch.Tensor, pruner: _Pruner | None = None
) -> tuple[torch.Tensor, float]:
    """One Lloyd pass: the updated centroids (k, D) and the inertia (mean) of the given centroids `c`.

    With a `pruner`, `batches` must yield the same frames in the same order on every pass.
    An empty cluster is re-seeded at one of the farthest frames of the pass (one extra pass, rare).
    """
    k, dim = c.shape
    sums = torch.zeros((k, dim), dtype=torch.float64, device=c.device)
    counts = torch.zeros(k, dtype=torch.long, device=c.device)
    total = torch.zeros((), dtype=torch.float64, device=c.device)
    n = 0
    for xb, (assign, dist) in _labelled(batches, c, pruner):
        sums += torch.zeros_like(c).index_add_(0, assign, xb)  # float32 per chunk, float64 across chunks
        counts += torch.bincount(assign, minlength=k)
        total += dist.sum(dtype=torch.float64)
        n += xb.shape[0]
    new = (sums / counts.clamp_min(1)[:, None]).float()
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        new[empty] = _farthest(batches, c, empty.numel())
    if pruner is not None:
        pruner.end(new, n)
    return new, float(total) / n


def _labelled(
    batches: Batches, c: torch.Tensor, pruner: _Pruner | None
) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
    """Each block of frames with its nearest centroid in `c` and squared distance to it."""
    if pruner is not None:
        pruner.begin(c)
        start = 0
        for xb in batches():
            yield xb, pruner.label(xb, start)
            start += xb.shape[0]
        return
    shift = c.mean(dim=0)
    cs = c - shift
    c_sq = cs.pow(2).sum(dim=1)
    for xb in batches():
        yield xb, _nearest(xb - shift, cs, c_sq)


def _farthest(batches: Batches, c: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` frames farthest from their nearest centroid in `c` (count, D), farthest first."""
    shift = c.mean(dim=0)
    cs = c - shift
    c_sq = cs.pow(2).sum(dim=1)
    far_d = torch.full((count,), -1.0, device=c.device)
    far_x = torch.zeros((count, c.shape[1]), device=c.device)
    for xb in batches():
        dist = _nearest(xb - shift, cs, c_sq)[1]
        top = dist.topk(min(count, dist.numel()))
        keep = torch.cat([far_d, top.values]).topk(count).indices
        far_d, far_x = torch.cat([far_d, top.values])[keep], torch.cat([far_x, xb[top.indices]])[keep]
    return far_x


STAGE_GROWTH = 4
"""Each Lloyd stage fits this many times more frames than the one before (the last: all of them)."""


def _stage_sizes(m: int, first: int) -> list[int]:
    """Lloyd stage sizes: m, m/4, m/16, ... down to no less than `first`, smallest first."""
    sizes = [m]
    while sizes[-1] // STAGE_GROWTH >= first:
        sizes.append(sizes[-1] // STAGE_GROWTH)
    return sizes[::-1]


def _sample_rows(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct row indices drawn uniformly from range(n), sorted; memory O(size), not O(n)."""
    if n <= 1 << 24:
        return np.sort(rng.choice(n, size=size, replace=False))
    block = 1 << 20
    starts = np.arange(0, n, block)
    sizes = np.minimum(block, n - starts)
    counts = rng.multivariate_hypergeometric(sizes, size, method="marginals")  # samples per block
    parts = [
        s + np.sort(rng.choice(int(b), size=int(c), replace=False))
        for s, b, c in zip(starts, sizes, counts, strict=True)
    ]
    return np.concatenate(parts)


def _tensor_batches(t: torch.Tensor, chunk: int) -> Batches:
    return lambda: (t[s : s + chunk] for s in range(0, t.shape[0], chunk))


@_full_fp32
def fit_kmeans(
    x: np.ndarray,
    k: int,
    *,
    max_samples: int | None = None,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    seed_samples: int | None = None,
    first_stage: int | None = None,
    device: str | torch.device | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> KMeansResult:
    """Fit k-means to the frames `x` (an array or `numpy.memmap`, read chunk by chunk).

    Args:
        x: Frames, shape (N, D); any float dtype (computed in float32).
        k: Number of clusters (at most the number of fitting frames).
        max_samples: Fit on a uniform random subsample of this many frames (all frames when None or >= N).
        iters: Most Lloyd passes per stage (a pass over the whole fitting set costs about one `assign`).
        tol: A stage stops when a pass improves the inertia by less than this fraction.
        seed: Seed of every random choice (subsamples, seeding); the same seed gives the same centroids
            on the same device.
        seed_samples: Frames the k-means++ seeding runs on; default `max(30000, 20 k)`.
        first_stage: Frames of the first Lloyd stage; default `max(30000, 32 k)`. Stages grow x4 up
            to the whole fitting set, each warm-starting the next.
        device: Torch device; CUDA when available, else CPU.
        chunk: Frames read and moved to the device at a time.

    Returns:
        The centroids, the inertia of the fitting set, the number of Lloyd passes and of fitting frames.

    Raises:
        ValueError: `x` is not 2-D, or has fewer (fitting) frames than `k`.
    """
    _check_data(x)
    dev = resolve_device(device)
    n, dim = x.shape
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    rows = _sample_rows(n, max_samples, rng) if max_samples is not None and max_samples < n else None
    m = n if rows is None else rows.size
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the number of fitting frames), got {k}")
    if m * dim * 4 <= RESIDENT_BYTES:  # copy the fitting set to the device once
        resident = _take(x, rows, dev, chunk)
        full = _tensor_batches(resident, chunk)
    else:  # stream it from `x` on every pass
        resident = None
        full = lambda: _chunks(x, dev, chunk, rows)  # noqa: E731

    def sample(size: int) -> torch.Tensor:
        pick = _sample_rows(m, size, rng)
        if resident is not None:
            return resident[torch.from_numpy(pick).to(dev)]
        return _take(x, pick if rows is None else rows[pick], dev, chunk)

    centres = _kmeans_pp(sample(min(m, seed_samples or max(30000, 20 * k))), k, gen)
    passes = 0
    sizes = _stage_sizes(m, first_stage or max(30000, 32 * k))
    pruner = None
    for stage, size in enumerate(sizes):
        last = stage == len(sizes) - 1
        batches = full if last else _tensor_batches(sample(size), chunk)
        pruner = _Pruner(size, k, dev) if _Pruner.worth_it(k) and (resident is not None or not last) else None
        prev = math.inf
        for _ in range(iters):
            centres, value = _lloyd_pass(batches, centres, pruner)
            passes += 1
            log.debug("k-means stage of %d frames, pass %d: inertia %.6g", size, passes, value)
            if prev - value <= tol * value:
                break
            prev = value
    final = _inertia(full, centres, pruner)
    return KMeansResult(centroids=centres.cpu().numpy(), inertia=final, iterations=passes, samples=m)


def _inertia(batches: Batches, c: torch.Tensor, pruner: _Pruner | None = None) -> float:
    total, n = 0.0, 0
    for xb, (_, dist) in _labelled(batches, c, pruner):
        total += float(dist.sum(dtype=torch.float64))
        n += xb.shape[0]
    return total / n


def _centroids(centroids: np.ndarray | torch.Tensor, dim: int, device: torch.device) -> torch.Tensor:
    c = torch.as_tensor(
        np.asarray(centroids, dtype=np.float32) if not isinstance(centroids, torch.Tensor) else centroids,
        device=device,
    ).float()
    if c.ndim != 2 or c.shape[1] != dim:
        raise ValueError(f"centroids of shape {tuple(c.shape)} do not match frames of dimension {dim}")
    return c


@_full_fp32
def assign(
    x: np.ndarray,
    centroids: np.ndarray,
    *,
    device: str | torch.device | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Nearest-centroid label of every frame, computed chunk by chunk (works on `numpy.memmap`).

    Args:
        x: Frames, shape (N, D).
        centroids: Shape (k, D).
        device: Torch device; CUDA when available, else CPU.
        chunk: Frames read and moved to the device at a time.

    Returns:
        Labels, shape (N,), int32.
    """
    _check_data(x)
    dev = resolve_device(device)
    c = _centroids(centroids, x.shape[1], dev)
    shift = c.mean(dim=0)
    cs = c - shift
    c_sq = cs.pow(2).sum(dim=1)
    out = np.empty(x.shape[0], dtype=np.int32)
    start = 0
    for xb in _chunks(x, dev, chunk):
        out[start : start + xb.shape[0]] = _nearest(xb - shift, cs, c_sq)[0].cpu().numpy()
        start += xb.shape[0]
    return out


@_full_fp32
def inertia(
    x: np.ndarray,
    centroids: np.ndarray,
    *,
    device: str | torch.device | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> float:
    """Mean squared Euclidean distance of the frames `x` (N, D) to their nearest centroid (k, D)."""
    _check_data(x)
    dev = resolve_device(device)
    return _inertia(lambda: _chunks(x, dev, chunk), _centroids(centroids, x.shape[1], dev))


def save_centroids(path: str | Path, centroids: np.ndarray) -> Path:
    """Write centroids (k, D) as a float32 `.npy` file, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(centroids, dtype=np.float32), allow_pickle=False)
    return path


def load_centroids(path: str | Path) -> np.ndarray:
    """Read centroids written by `save_centroids`; a (k, D) float32 array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no centroids file; fit them with learn_kmeans first")
    c = np.load(path, allow_pickle=False)
    if c.ndim != 2:
        raise ValueError(f"{path}: expected centroids of shape (k, D), got {c.shape}")
    return c.astype(np.float32, copy=False)
