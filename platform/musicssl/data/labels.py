"""HuBERT label pipeline in fairseq's file formats: features -> k-means -> `{split}.km` + `dict.km.txt`.

The stages mirror `fairseq/examples/hubert/simple_kmeans/` and write the same files, with any featurizer
(MFCC for iteration 1, a model layer for iteration 2):

1. `dump_features` (`data/feature_shards.py`): `{split}_{rank}_{nshard}.npy` (all frames of the shard,
   concatenated, float32) and `.len` (frames per utterance), resumable, a complete shard skipped.
2. `learn_kmeans`: samples whole utterances (`percent`, as fairseq) and calls `fit_kmeans`; centroids are
   saved as `.npy`. Fit once and label every split with the same centroids (fairseq #4312).
3. `dump_labels`: `{split}.km` (one line of space-separated cluster ids per manifest row) and
   `dict.km.txt` (`i 1` for i in 0..k-1).
4. `read_labels` / `check_labels`: read them back and fail loudly on the known plumbing bugs.

Unreadable audio: a file for which `read` (or `featurize`) raises `AudioError`, or whose features hold
NaN / inf, is skipped, never fatal.
It is listed in `{split}_{rank}_{nshard}.failed.tsv` (`row<TAB>path<TAB>reason`), gets 0 frames in `.len`
and an empty line in `{split}.km` (so lines still match manifest rows), and `dump_labels` gathers the
lists into `{split}.failed.tsv`. `check_labels` then rejects those rows and says to drop them from the
manifest (fairseq cannot train on a row without labels).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from musicssl.data.audio import SAMPLE_RATE
from musicssl.data.feature_shards import FeatureShard
from musicssl.data.kmeans import (
    RESIDENT_BYTES,
    KMeansResult,
    assign,
    fit_kmeans,
    load_centroids,
    save_centroids,
)
from musicssl.data.manifest import Manifest, read_manifest


class LabelError(ValueError):
    """Labels do not fit their manifest or dictionary; the message lists every problem found."""


# --------------------------------------------------------------------------------------------------
# 2. k-means


def _as_shard(shard: FeatureShard | str | Path) -> FeatureShard:
    if isinstance(shard, FeatureShard):
        return shard
    path = Path(shard)
    name = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.name
    split, rank, nshard = name.rsplit("_", 2)
    return FeatureShard.open(path.parent, split, int(rank), int(nshard))


def _sample_utterances(
    shards: Sequence[FeatureShard], percent: float, rng: np.random.Generator, scratch: Path
) -> np.ndarray:
    """Frames of a random `percent` of each shard's utterances (all when percent <= 0), concatenated.

    One complete shard is returned memory-mapped without a copy; a sample larger than `RESIDENT_BYTES`
    is gathered into the memory-mapped file `scratch` instead of memory.
    """
    picks = []
    for shard in shards:
        lengths = shard.lengths()
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        if percent <= 0 or percent >= 1:
            chosen = np.arange(lengths.size)
        else:
            chosen = np.sort(rng.choice(lengths.size, size=math.ceil(lengths.size * percent), replace=False))
        picks.append((shard, offsets, chosen))
    if len(shards) == 1 and picks[0][2].size == picks[0][1].size - 1:
        return shards[0].frames()
    total = sum(int((offsets[chosen + 1] - offsets[chosen]).sum()) for _, offsets, chosen in picks)
    dim = shards[0].frames().shape[1]
    if total * dim * 4 <= RESIDENT_BYTES:
        out = np.empty((total, dim), dtype=np.float32)
    else:
        out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(total, dim))
    at = 0
    for shard, offsets, chosen in picks:
        feats = shard.frames()
        if feats.shape[1] != dim:
            raise ValueError(f"{shard.feats}: frames of dimension {feats.shape[1]}, other shards have {dim}")
        for i in chosen:
            size = int(offsets[i + 1] - offsets[i])
            out[at : at + size] = feats[offsets[i] : offsets[i + 1]]
            at += size
    return out


def learn_kmeans(
    feature_shards: Sequence[FeatureShard | str | Path],
    k: int,
    out_path: str | Path,
    percent: float = -1.0,
    seed: int = 0,
    **fit_kwargs: Any,
) -> KMeansResult:
    """Fit k-means on (a sample of) dumped features and save the centroids as `.npy` (fairseq's learn_kmeans).

    Args:
        feature_shards: Shards from `dump_features` (or paths to their `.npy`).
        k: Number of clusters (500 for HuBERT base labels).
        out_path: Centroids file to write, (k, D) float32 `.npy`.
        percent: Fraction of utterances sampled per shard (fairseq `--percent`, whole utterances);
            <= 0 or >= 1 for all of them.
        seed: Seed of the utterance sample and of `fit_kmeans`.
        **fit_kwargs: Passed to `fit_kmeans` (`max_samples`, `iters`, `tol`, `device`, ...).

    Returns:
        The fitted model (its inertia is on the sampled frames).
    """
    shards = [_as_shard(s) for s in feature_shards]
    if not shards:
        raise ValueError("learn_kmeans: no feature shards given")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = out_path.parent / f".{out_path.name}.sample.npy"
    try:
        frames = _sample_utterances(shards, percent, np.random.default_rng(seed), scratch)
        if frames.shape[0] < k:
            raise ValueError(
                f"learn_kmeans: {frames.shape[0]} frames sampled from {len(shards)} shard(s), fewer than "
                f"k={k}; raise percent or dump more audio"
            )
        result = fit_kmeans(frames, k, seed=seed, **fit_kwargs)
    finally:
        scratch.unlink(missing_ok=True)
    save_centroids(out_path, result.centroids)
    return result


# --------------------------------------------------------------------------------------------------
# 3. Labels


def dump_labels(
    feature_shards: Sequence[FeatureShard | str | Path],
    centroids: np.ndarray | str | Path,
    out_dir: str | Path,
    split: str,
    **assign_kwargs: Any,
) -> Path:
    """Label every frame with its nearest centroid; write `{split}.km` and `dict.km.txt` (fairseq format).

    Args:
        feature_shards: All shards of the split, in rank order (together: every manifest row once).
        centroids: (k, D) array, or a `.npy` file from `learn_kmeans`.
        out_dir: Label folder (created); fairseq's `label_dir`.
        split: Split name: writes `{split}.km` and, when audio failed, `{split}.failed.tsv`.
        **assign_kwargs: Passed to `kmeans.assign` (`device`, `chunk`).

    Returns:
        The `.km` file.

    Raises:
        ValueError: The shards do not cover manifest rows 0..N-1 contiguously, or dimensions differ.
    """
    shards = sorted((_as_shard(s) for s in feature_shards), key=lambda s: s.rows)
    expected = 0
    for shard in shards:
        if shard.rows[0] != expected:
            raise ValueError(
                f"{shard.feats}: holds rows {shard.rows[0]}..{shard.rows[1] - 1} but rows from {expected} "
                f"were expected; pass every shard of the split (nshard of them) exactly once"
            )
        expected = shard.rows[1]
    c = centroids if isinstance(centroids, np.ndarray) else load_centroids(centroids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    km_path, failed_path = out_dir / f"{split}.km", out_dir / f"{split}.failed.tsv"
    tmp = out_dir / f"{split}.km.partial"
    failed_lines: list[str] = []
    with tmp.open("w") as out:
        for shard in tqdm(shards, desc=f"labels {split}", disable=len(shards) < 2):
            lengths = shard.lengths()
            feats = shard.frames()
            labels = assign(feats, c, **assign_kwargs) if feats.shape[0] else np.zeros(0, np.int32)
            for piece in np.split(labels, np.cumsum(lengths)[:-1]):
                out.write(" ".join(map(str, piece.tolist())) + "\n")
            if shard.failed_path.is_file():
                failed_lines += shard.failed_path.read_text().splitlines()
    os.replace(tmp, km_path)
    (out_dir / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(c.shape[0])))
    if failed_lines:
        failed_path.write_text("".join(line + "\n" for line in failed_lines))
        warnings.warn(
            f"{km_path}: {len(failed_lines)} row(s) have no labels (unreadable audio, see {failed_path}); "
            "drop them from the manifest before training",
            stacklevel=2,
        )
    else:
        failed_path.unlink(missing_ok=True)
    return km_path


class Labels(list[np.ndarray]):
    """Per-utterance cluster ids (a list of int64 arrays, one per `.km` line) and the dictionary read with them."""

    def __init__(
        self, items: Sequence[np.ndarray], dictionary: Sequence[str], km_path: Path, dict_path: Path
    ):
        super().__init__(items)
        self.dictionary = list(dictionary)
        """Symbols of `dict.km.txt` in file order (fairseq index = position + 4 specials)."""
        self.km_path, self.dict_path = km_path, dict_path


def read_labels(km_path: str | Path, dict_path: str | Path) -> Labels:
    """Read a `.km` file and its `dict.km.txt`.

    Only the syntax is checked here; call `check_labels` for the content (line count, dictionary, rate).

    Returns:
        One int64 array per line (the cluster ids as written), carrying `.dictionary`.

    Raises:
        LabelError: A file is missing, a label is not an integer, or a dict line is not `symbol count`.
    """
    km_path, dict_path = Path(km_path), Path(dict_path)
    for p in (km_path, dict_path):
        if not p.is_file():
            raise LabelError(f"{p}: no such file; write labels with dump_labels (it writes both files)")
    symbols = []
    for number, line in enumerate(dict_path.read_text().splitlines(), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise LabelError(
                f"{dict_path}: line {number}: expected 'symbol count' (e.g. '17 1'), got {line!r}"
            )
        symbols.append(parts[0])
    items = []
    for number, line in enumerate(km_path.read_text().split("\n")[:-1], start=1):
        try:
            items.append(np.array(line.split(), dtype=np.int64))
        except ValueError:
            raise LabelError(f"{km_path}: line {number}: labels must be space-separated integers") from None
    return Labels(items, symbols, km_path, dict_path)


def _rows(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({rows.size} rows)" if rows.size > limit else "")


def check_labels(
    labels: Sequence[np.ndarray],
    manifest: str | Path | Manifest,
    label_rate: float,
    sample_rate: int = SAMPLE_RATE,
    tol_seconds: float = 0.1,
    *,
    dictionary: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> None:
    """Check labels against their manifest and dictionary before training; raise listing every problem.

    Checks: one label line per manifest row; a dictionary that is not empty (fairseq PR #4521: an empty
    `dict.km.txt` silently turns every label into <unk>), lists `0..k-1` in order and has `num_classes`
    entries; every label id inside the dictionary; and audio vs label duration within `tol_seconds` per
    row (fairseq's `verify_label_lengths`; a systematic mismatch means a wrong `label_rate`).

    Args:
        labels: From `read_labels` (carries its dictionary) or any list of int arrays.
        manifest: The manifest the labels belong to.
        label_rate: Labels per second the model will be trained with (100 for MFCC, 50 for model features).
        sample_rate: Rate of the manifest sizes (Hz).
        tol_seconds: Largest allowed |audio duration - labels / label_rate| per row.
        dictionary: Dictionary symbols; default `labels.dictionary` when present (else not checked).
        num_classes: The k the model expects; checked against the dictionary when given.

    Raises:
        LabelError: Any check failed; the message lists all of them with the rows concerned.
    """
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    where = str(getattr(labels, "km_path", "labels"))
    symbols = dictionary if dictionary is not None else getattr(labels, "dictionary", None)
    dict_name = str(getattr(labels, "dict_path", "the dictionary"))
    problems = []
    if len(labels) != len(m):
        problems.append(
            f"{len(labels)} label lines but {len(m)} manifest rows in {m.source}; labels must have one line "
            "per row, dumped from this very manifest (same split, same order)"
        )
    k = num_classes
    if symbols is not None:
        if not symbols:
            problems.append(
                f"{dict_name} is empty: fairseq would map every label to <unk> (PR #4521) and the loss "
                "collapses; write 'i 1' for i in 0..k-1 (dump_labels does)"
            )
        elif list(symbols) != [str(i) for i in range(len(symbols))]:
            problems.append(
                f"{dict_name} must list the cluster ids 0..{len(symbols) - 1} in order, one per line"
            )
        if num_classes is not None and symbols and len(symbols) != num_classes:
            problems.append(
                f"{dict_name} has {len(symbols)} entries but the model expects {num_classes} classes"
            )
        k = len(symbols) if symbols else num_classes
    if k:
        bad = np.array([i for i, lab in enumerate(labels) if lab.size and (lab.min() < 0 or lab.max() >= k)])
        if bad.size:
            worst = max(int(labels[i].max()) for i in bad)
            problems.append(
                f"rows {_rows(bad)} hold label ids outside the dictionary [0, {k}) (largest {worst}); were "
                "the labels made with another k-means model?"
            )
    n = min(len(labels), len(m))
    if n:
        label_len = np.array([lab.size for lab in labels[:n]], dtype=np.float64)
        audio_s = m.sizes[:n] / sample_rate
        off = np.flatnonzero(np.abs(audio_s - label_len / label_rate) > tol_seconds)
        empty = off[label_len[off] == 0]
        if empty.size:
            problems.append(
                f"rows {_rows(empty)} have no labels (audio unreadable or shorter than a frame at feature "
                f"dumping; see the {{split}}.failed.tsv beside {where}); drop them from the manifest"
            )
        off = off[label_len[off] > 0]
        if off.size:
            rate = float(np.median(label_len[off] / np.maximum(audio_s[off], 1e-9)))
            problems.append(
                f"rows {_rows(off)}: audio and label durations differ by more than {tol_seconds} s at "
                f"label_rate={label_rate:g} (the labels are about {rate:.0f} per second); label_rate is "
                "probably wrong: 100 for MFCC, 50 for model features"
            )
    if problems:
        raise LabelError(f"{where}: " + "; ".join(problems))
