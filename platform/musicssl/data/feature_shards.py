"""Stage 1 of the HuBERT label pipeline (`data/labels.py`): features of every manifest row, dumped in fairseq's
`simple_kmeans/dump_*_feature.py` shard files.

`dump_features` writes `{split}_{rank}_{nshard}.npy` (all frames of the shard, concatenated, float32) and `.len`
(frames per utterance, one per line) for the manifest rows `round(N/nshard*rank)` onwards. Written incrementally
and resumable: `.partial` files grow one utterance at a time and a rerun truncates them to the last complete
utterance and goes on; the `.json` beside them is written last and marks the shard complete, so a complete shard
is skipped. A file whose reading or features fail (`AudioError`, NaN / inf) is skipped and listed in
`{split}_{rank}_{nshard}.failed.tsv`, with 0 frames in `.len`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from musicssl.data.audio import AudioError, read_audio
from musicssl.data.manifest import Manifest, read_manifest

NPY_HEADER_BYTES = 128
"""Fixed size of the `.npy` header written before the frames, rewritten in place once the shape is known."""


@dataclass(frozen=True)
class FeatureShard:
    """One complete shard of dumped features (the files of `dump_features`)."""

    feats: Path
    """`{split}_{rank}_{nshard}.npy`: frames of all utterances, concatenated, (frames, D) float32."""
    rows: tuple[int, int]
    """Manifest rows [start, end) the shard holds, in order."""

    @property
    def lengths_path(self) -> Path:
        """`.len`: frames per utterance, one per line."""
        return self.feats.with_suffix(".len")

    @property
    def failed_path(self) -> Path:
        """`.failed.tsv`: `row<TAB>path<TAB>reason` for each utterance whose audio could not be used."""
        return self.feats.with_suffix(".failed.tsv")

    def lengths(self) -> np.ndarray:
        """Frames per utterance, int64, shape (end - start,)."""
        return np.array(self.lengths_path.read_text().split(), dtype=np.int64)

    def frames(self) -> np.ndarray:
        """All frames, memory-mapped read-only, shape (frames, D)."""
        return np.load(self.feats, mmap_mode="r")

    @classmethod
    def open(cls, feat_dir: str | Path, split: str, rank: int = 0, nshard: int = 1) -> FeatureShard:
        """The complete shard `{feat_dir}/{split}_{rank}_{nshard}`; raises FileNotFoundError if unfinished."""
        stem = Path(feat_dir) / f"{split}_{rank}_{nshard}"
        meta_path = _file(stem, ".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: shard not complete; run (or rerun) dump_features for it")
        meta = json.loads(meta_path.read_text())
        return cls(feats=_file(stem, ".npy"), rows=(meta["rows"][0], meta["rows"][1]))


def _file(stem: Path, suffix: str) -> Path:
    """`stem` + `suffix` (not `Path.with_suffix`, which would eat a dot in the split name)."""
    return stem.parent / (stem.name + suffix)


def _npy_header(frames: int, dim: int) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({frames}, {dim}), }}"
    body = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _shard_rows(n: int, nshard: int, rank: int) -> tuple[int, int]:
    """fairseq's `get_path_iterator` split: rows [round(n/nshard*rank), round(n/nshard*(rank+1)))."""
    if not 0 <= rank < nshard:
        raise ValueError(f"rank must be in [0, nshard={nshard}), got {rank}")
    return round(n / nshard * rank), round(n / nshard * (rank + 1))


def _resume(stem: Path, meta: dict[str, Any]) -> tuple[list[int], int | None]:
    """Load the progress of an interrupted dump and cut every partial file back to whole utterances.

    Returns the frame counts of the utterances done and the feature dimension (None before the first frame).
    """
    paths = {s: _file(stem, s + ".partial") for s in (".json", ".npy", ".len", ".failed.tsv")}
    old = json.loads(paths[".json"].read_text()) if paths[".json"].is_file() else None
    if old != meta or not paths[".len"].is_file():
        for p in paths.values():
            p.unlink(missing_ok=True)
        paths[".json"].write_text(json.dumps(meta))
        return [], None
    text = paths[".len"].read_text()
    lines = text.split("\n")[:-1]  # the last piece is "" or a half-written line
    lengths = [int(v) for v in lines]
    dim = None
    data_bytes = 0
    if paths[".npy"].is_file() and paths[".npy"].stat().st_size >= NPY_HEADER_BYTES:
        with paths[".npy"].open("rb") as f:
            np.lib.format.read_magic(f)
            dim = np.lib.format.read_array_header_1_0(f)[0][1]
        data_bytes = paths[".npy"].stat().st_size - NPY_HEADER_BYTES
    while lengths and (dim is None and sum(lengths) > 0 or sum(lengths) * (dim or 0) * 4 > data_bytes):
        lengths.pop()  # frames of the last utterance(s) did not reach the disk
    with paths[".len"].open("w") as f:
        f.write("".join(f"{v}\n" for v in lengths))
    with paths[".npy"].open("ab") as f:  # no header yet (dim None): start the file afresh
        f.truncate(0 if dim is None else NPY_HEADER_BYTES + sum(lengths) * dim * 4)
    done_rows = meta["rows"][0] + len(lengths)
    if paths[".failed.tsv"].is_file():
        kept = [
            ln
            for ln in paths[".failed.tsv"].read_text().split("\n")[:-1]
            if int(ln.split("\t")[0]) < done_rows
        ]
        paths[".failed.tsv"].write_text("".join(ln + "\n" for ln in kept))
    return lengths, dim


def dump_features(
    manifest: str | Path | Manifest,
    featurize: Callable[[np.ndarray], np.ndarray],
    out_dir: str | Path,
    split: str,
    *,
    read: Callable[[Path], np.ndarray] = read_audio,
    nshard: int = 1,
    rank: int = 0,
) -> FeatureShard:
    """Featurize the manifest rows of shard `rank` of `nshard` into `{split}_{rank}_{nshard}.npy` + `.len`.

    Resumable: rerunning after an interruption keeps every complete utterance and goes on from there;
    rerunning a complete shard returns it at once. Unreadable audio is skipped and reported (module doc).

    Args:
        manifest: A fairseq `.tsv` manifest (or one already read).
        featurize: Waveform (samples,) float32 at 16 kHz -> frames (T, D); D must not change.
        out_dir: Folder of the feature files (created).
        split: Name of the split (`train`, `valid`): the file prefix.
        read: Path -> waveform; raises `AudioError` for an unusable file.
        nshard: Number of shards the manifest is split into (fairseq's split).
        rank: Which shard to dump.

    Returns:
        The complete shard.

    Raises:
        ValueError: `featurize` returned something other than (T, D) frames, or D changed.
        RuntimeError: `out_dir` holds a complete shard of another manifest.
    """
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    start, end = _shard_rows(len(m), nshard, rank)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{split}_{rank}_{nshard}"
    sizes_hash = hashlib.sha1(
        m.sizes[start:end].tobytes() + "\n".join(m.paths[start:end]).encode()
    ).hexdigest()
    meta: dict[str, Any] = {"manifest": m.source, "rows": [start, end], "items": sizes_hash}
    final_meta = _file(stem, ".json")
    if final_meta.is_file():
        done = json.loads(final_meta.read_text())
        if [done.get("rows"), done.get("items")] != [meta["rows"], meta["items"]]:
            raise RuntimeError(
                f"{final_meta}: these features were dumped from another manifest or shard split "
                f"({done.get('manifest')} rows {done.get('rows')}); delete {stem}.* or use another out_dir"
            )
        return FeatureShard(feats=_file(stem, ".npy"), rows=(start, end))
    lengths, dim = _resume(stem, meta)
    data_path, len_path = _file(stem, ".npy.partial"), _file(stem, ".len.partial")
    failed_path = _file(stem, ".failed.tsv.partial")
    failures = len(failed_path.read_text().splitlines()) if failed_path.is_file() else 0
    bar = tqdm(
        range(start + len(lengths), end),
        desc=f"features {stem.name}",
        initial=len(lengths),
        total=end - start,
    )
    with data_path.open("ab") as data, len_path.open("a") as lens, failed_path.open("a") as failed:
        for row in bar:
            try:
                frames = np.asarray(featurize(read(m.path(row))), dtype=np.float32)
                if frames.ndim != 2 or (dim is not None and frames.shape[1] != dim):
                    raise ValueError(
                        f"{m.path(row)}: featurize returned shape {frames.shape}; expected (frames, "
                        f"{dim if dim is not None else 'D'})"
                    )
                if not np.isfinite(frames).all():
                    raise AudioError(m.path(row), "features hold NaN or inf (silent or clipped audio?)")
            except AudioError as exc:
                reason = " ".join(exc.reason.split())  # one line, no tabs
                failed.write(f"{row}\t{m.paths[row]}\t{reason}\n")
                failed.flush()
                failures += 1
                bar.set_postfix(failed=failures)
                frames = None
            if frames is not None:
                if dim is None:
                    dim = frames.shape[1]
                    data.write(_npy_header(0, dim))
                data.write(np.ascontiguousarray(frames).tobytes())
                data.flush()
            lens.write(f"{0 if frames is None else frames.shape[0]}\n")  # the progress marker, written last
            lens.flush()
            lengths.append(0 if frames is None else frames.shape[0])
    bar.close()
    if dim is None:  # every file failed: an empty (0, 0) array keeps the layout valid
        dim = 0
        data_path.write_bytes(_npy_header(0, 0))
    with data_path.open("r+b") as f:
        f.write(_npy_header(sum(lengths), dim))
    for suffix in (".npy", ".len", ".failed.tsv"):
        os.replace(_file(stem, suffix + ".partial"), _file(stem, suffix))
    meta.update(frames=sum(lengths), dim=dim, failed=failures)
    final_meta.write_text(json.dumps(meta, indent=1))  # marks the shard complete
    _file(stem, ".json.partial").unlink(missing_ok=True)
    if failures:
        warnings.warn(
            f"{failures} unreadable audio file(s) skipped; see {_file(stem, '.failed.tsv')}", stacklevel=2
        )
    return FeatureShard(feats=_file(stem, ".npy"), rows=(start, end))
