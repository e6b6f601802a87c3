"""Features of one (checkpoint, task) are extracted once, even when several probe jobs ask at the same time."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from musicssl.probe.features import Features, cached_extract


def _worker(cache: str, key: str, log: str, start: float) -> float:
    def compute() -> Features:
        with open(log, "a") as f:  # one line per extraction actually run
            f.write("computed\n")
        time.sleep(1.0)  # long enough that every worker asks while the first one is still extracting
        return Features(np.full((4, 3, 2), 7.0, dtype=np.float32), np.arange(4))

    time.sleep(max(0.0, start - time.time()))
    feats = cached_extract(Path(cache), key, compute)
    return float(np.asarray(feats.x).sum())


def test_concurrent_workers_extract_once_and_share(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    start = time.time() + 1.0
    with mp.get_context("spawn").Pool(4) as pool:
        sums = pool.starmap(_worker, [(str(tmp_path / "cache"), "k1", str(log), start)] * 4)
    assert sums == [4 * 3 * 2 * 7.0] * 4
    assert log.read_text().count("computed") == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["k1.clip.npy", "k1.x.npy"]  # no lock left
