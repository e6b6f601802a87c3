"""`musicssl data manifest DIR -o OUT`: scan a folder of audio, validate every file, write fairseq manifests.

Every file is decoded in full (so a file that would crash training is caught now), resampled to 16 kHz and
checked for length, silence and NaN/inf. Usable files go to `train.tsv` / `valid.tsv` (fairseq format: root
line, then `relpath<TAB>num_samples` at 16 kHz); every rejected file is listed in `rejected.tsv` with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from musicssl.data.audio import SAMPLE_RATE, AudioError, read_audio
from musicssl.data.manifest import write_manifest

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one file: its 16 kHz length, or why it is unusable."""

    relpath: str
    samples: int
    problem: str | None


@dataclass(frozen=True)
class ScanResult:
    """What `scan_to_manifest` wrote."""

    train: Path
    valid: Path
    rejected: Path
    num_train: int
    num_valid: int
    num_rejected: int
    hours: float


def find_audio(root: Path, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[str]:
    """Relative paths of the audio files under `root`, sorted (hidden folders skipped)."""
    exts = tuple(e.lower() for e in extensions)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.lower().endswith(exts)]
    return sorted(found)


UNLISTABLE = "\t\n\r"
"""Characters a fairseq manifest (one tab-separated `path<TAB>samples` line per file) cannot hold in a path."""


def escape_path(relpath: str) -> str:
    """`relpath` with tabs and line breaks written as ``\\t``, ``\\n``, ``\\r`` (one line of `rejected.tsv`)."""
    return relpath.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def check_file(root: Path, relpath: str, min_samples: int, silence_rms: float) -> FileCheck:
    """Decode one file and judge it; never raises for a bad file."""
    if any(c in relpath for c in UNLISTABLE):
        return FileCheck(relpath, 0, "its path holds a tab or a line break, which a manifest line cannot store; "
                                     "rename the file")
    try:
        wave = read_audio(root / relpath, SAMPLE_RATE)
    except AudioError as exc:
        return FileCheck(relpath, 0, exc.reason if hasattr(exc, "reason") else str(exc))
    except Exception as exc:  # a decoder bug must not stop a scan of 100k files: report it with its type
        return FileCheck(relpath, 0, f"{type(exc).__name__}: {exc}")
    if len(wave) < min_samples:
        return FileCheck(relpath, len(wave), f"too short: {len(wave) / SAMPLE_RATE:.2f} s < {min_samples / SAMPLE_RATE:.2f} s")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < silence_rms:
        return FileCheck(relpath, len(wave), f"silent: RMS {rms:.2e} < {silence_rms:.0e}")
    return FileCheck(relpath, len(wave), None)


def _check(args: tuple[Path, str, int, float]) -> FileCheck:
    return check_file(*args)


def scan_to_manifest(root: Path, out_dir: Path, *, valid_percent: float = 0.01, seed: int = 42,
                     min_seconds: float = 2.0, silence_rms: float = 1e-4, workers: int | None = None,
                     extensions: Iterable[str] = AUDIO_EXTENSIONS) -> ScanResult:
    """Validate every audio file under `root` and write `train.tsv`, `valid.tsv` and `rejected.tsv` into `out_dir`."""
    root = root.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    files = find_audio(root, extensions)
    if not files:
        raise FileNotFoundError(f"{root}: no audio files ({', '.join(extensions)})")
    jobs = [(root, f, int(min_seconds * SAMPLE_RATE), silence_rms) for f in files]
    workers = workers or max(1, (os.cpu_count() or 1))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            checks = list(tqdm(pool.map(_check, jobs, chunksize=16), total=len(jobs), desc="checking audio"))
    else:
        checks = [_check(j) for j in tqdm(jobs, desc="checking audio")]
    good = [c for c in checks if c.problem is None]
    bad = [c for c in checks if c.problem is not None]
    rng = np.random.default_rng(seed)
    is_valid = rng.random(len(good)) < valid_percent
    out_dir.mkdir(parents=True, exist_ok=True)
    train = write_manifest(out_dir / "train.tsv", root, [(c.relpath, c.samples) for c, v in zip(good, is_valid, strict=True) if not v])
    valid = write_manifest(out_dir / "valid.tsv", root, [(c.relpath, c.samples) for c, v in zip(good, is_valid, strict=True) if v])
    rejected = out_dir / "rejected.tsv"
    rejected.write_text("path\treason\n" + "".join(f"{escape_path(c.relpath)}\t{' '.join(str(c.problem).split())}\n"
                                                    for c in bad))
    hours = sum(c.samples for c in good) / SAMPLE_RATE / 3600
    return ScanResult(train, valid, rejected, int((~is_valid).sum()), int(is_valid.sum()), len(bad), hours)
