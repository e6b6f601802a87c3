"""Benchmark of `musicssl.data.kmeans` against fairseq's k-means recipe (`learn_kmeans.py`: scikit-learn
`MiniBatchKMeans`), both on the same synthetic MFCC-like frames in the same run (`musicssl bench kmeans`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from musicssl.data.kmeans import assign, fit_kmeans, inertia, resolve_device

T = TypeVar("T")

def mfcc_like_frames(n: int, d: int = 39, components: int = 300, seed: int = 0) -> np.ndarray:
    """Synthetic MFCC-like frames (n, d) float32: a Gaussian mixture that is not trivially separable.

    Component means spread less than the within-component spread in most directions; every component
    has its own random full covariance (correlated dims) and scale (x0.4 to x1.6); the per-dim scale falls
    with the cepstral index and is smaller for the delta and delta-delta thirds; dim 0 carries a +30 offset
    like the MFCC c0; the weights are Dirichlet(2), so cluster sizes vary.
    """
    rng = np.random.default_rng(seed)
    scale = 1.0 / (1.0 + 0.25 * (np.arange(d) % 13)) * np.array([1.0, 0.35, 0.12])[np.arange(d) // 13 % 3]
    means = rng.normal(size=(components, d)) * scale * 2.5
    means[:, 0] += 30.0
    comp = rng.choice(components, size=n, p=rng.dirichlet(np.full(components, 2.0)))
    x = np.empty((n, d), dtype=np.float32)
    for c in range(components):
        idx = np.flatnonzero(comp == c)
        mix = rng.normal(size=(d, d)) * scale[:, None] / np.sqrt(d) * rng.uniform(0.4, 1.6)
        x[idx] = rng.normal(size=(idx.size, d)) @ mix.T + means[c]
    return x


def _timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _reference(k: int, n_init: int, seed: int) -> Any:
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(
        n_clusters=k,
        init="k-means++",
        max_iter=100,
        batch_size=10000,
        n_init=n_init,
        tol=0.0,
        max_no_improvement=100,
        reassignment_ratio=0.0,
        compute_labels=False,
        init_size=None,
        random_state=seed,
    )


def bench_kmeans(
    n: int = 500_000,
    d: int = 39,
    ks: tuple[int, ...] = (500, 2000),
    seed: int = 0,
    ref_n_init: int = 20,
    repeats: int = 3,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Time fairseq's k-means recipe (scikit-learn) and `fit_kmeans` + `assign` on the same data, same run.

    The reference is `learn_kmeans.py`'s `MiniBatchKMeans(k, init="k-means++", max_iter=100,
    batch_size=10000, n_init=20, tol=0.0, max_no_improvement=100, reassignment_ratio=0.0,
    compute_labels=False, init_size=None)` fitted on all frames (`--percent -1`), then `predict` for the
    labels (`dump_km_label.py` does the same argmin). `random_state=seed` is passed for reproducibility
    (fairseq seeds numpy's global generator instead). Reference and musicssl runs alternate `repeats`
    times and the fastest of each is kept (the machine may be shared; both are deterministic). Both
    inertias are computed on all frames by `inertia`.

    Returns:
        One dict per k: times in seconds (best, and every repeat), inertias, `speedup` = reference
        (fit + predict) / ours (fit + assign), `speedup_vs_ref_fit` = reference fit alone / ours,
        `inertia_ratio` = ours / reference, and the 1-minute load average before and after.
    """
    dev = resolve_device(device)
    x = mfcc_like_frames(n, d, seed=seed)
    rows = []
    for k in ks:
        load_before = os.getloadavg()[0]
        ref_times, our_times = [], []
        for _ in range(repeats):
            ref = _reference(k, ref_n_init, seed)
            _, ref_fit = _timed(functools.partial(ref.fit, x), torch.device("cpu"))
            _, ref_predict = _timed(functools.partial(ref.predict, x), torch.device("cpu"))
            ref_times.append((ref_fit, ref_predict))
            ours, our_fit = _timed(functools.partial(fit_kmeans, x, k, seed=seed, device=dev), dev)
            _, our_assign = _timed(functools.partial(assign, x, ours.centroids, device=dev), dev)
            our_times.append((our_fit, our_assign))
        ref_fit, ref_predict = min(ref_times, key=sum)
        our_fit, our_assign = min(our_times, key=sum)
        ref_inertia = inertia(x, ref.cluster_centers_, device=dev)
        our_inertia = inertia(x, ours.centroids, device=dev)
        rows.append(
            {
                "k": k,
                "n": n,
                "d": d,
                "device": str(dev),
                "torch_threads": torch.get_num_threads(),
                "repeats": repeats,
                "ref_n_init": ref_n_init,
                "ref_steps": int(ref.n_steps_),
                "ref_fit_s": ref_fit,
                "ref_predict_s": ref_predict,
                "ref_inertia": ref_inertia,
                "our_fit_s": our_fit,
                "our_assign_s": our_assign,
                "our_inertia": our_inertia,
                "our_passes": ours.iterations,
                "speedup": (ref_fit + ref_predict) / (our_fit + our_assign),
                "speedup_vs_ref_fit": ref_fit / (our_fit + our_assign),
                "inertia_ratio": our_inertia / ref_inertia,
                "ref_times_s": [round(sum(t), 2) for t in ref_times],
                "our_times_s": [round(sum(t), 2) for t in our_times],
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """`python -m musicssl.data.kmeans_bench [--n N] [--ks K ...] [--repeats R] [--ref-n-init I]`: the benchmark."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m musicssl.data.kmeans_bench", description=bench_kmeans.__doc__)
    parser.add_argument("--n", type=int, default=500_000, help="frames")
    parser.add_argument("--d", type=int, default=39, help="dimensions")
    parser.add_argument("--ks", type=int, nargs="+", default=[500, 2000], help="cluster counts")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side; the best is kept")
    parser.add_argument("--ref-n-init", type=int, default=20, help="MiniBatchKMeans n_init (fairseq: 20)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = bench_kmeans(args.n, args.d, tuple(args.ks), 0, args.ref_n_init, args.repeats, args.device)
    for r in rows:
        print(
            f"k={r['k']} n={r['n']} d={r['d']} on {r['device']} ({r['torch_threads']} threads), best of "
            f"{r['repeats']}: reference MiniBatchKMeans(n_init={r['ref_n_init']}) fit {r['ref_fit_s']:.1f} s "
            f"+ predict {r['ref_predict_s']:.1f} s, inertia {r['ref_inertia']:.5f} | musicssl fit "
            f"{r['our_fit_s']:.1f} s ({r['our_passes']} passes) + assign {r['our_assign_s']:.1f} s, inertia "
            f"{r['our_inertia']:.5f} | speedup x{r['speedup']:.1f} (x{r['speedup_vs_ref_fit']:.1f} against "
            f"the reference fit alone), inertia ratio {r['inertia_ratio']:.4f} | all runs: reference "
            f"{r['ref_times_s']} s, musicssl {r['our_times_s']} s, load {r['load_before']:.1f} -> "
            f"{r['load_after']:.1f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
