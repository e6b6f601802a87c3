"""The embedded synthetic music corpus: polyphonic pieces for pretraining and labelled probe clips (their sounds
and music from `data/synth.py`).

Everything is pure numpy at 16 kHz and deterministic: item `i` of task `t` draws from its own generator
seeded by (seed, crc32(t), i), so items do not depend on each other and the same config gives
byte-identical files (on the same platform). Layout of `generate_corpus(cfg, root)`:

    synthetic-<hash>/DONE, config.json
    synthetic-<hash>/pretrain/piece_00000.wav ..., train.tsv        (fairseq manifest)
    synthetic-<hash>/probe/<task>/audio/<task>_00000.wav ..., labels.jsonl

`labels.jsonl` holds one `{"path", "split", "label"}` object per clip; splits are 70/15/15, stratified
by label for the classification tasks. The probe tasks are the entries of `PROBE_TASKS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from musicssl.config import SyntheticCorpusConfig
from musicssl.data.audio import SAMPLE_RATE, write_wav
from musicssl.data.manifest import write_manifest
from musicssl.data.synth import (
    KEY_NAMES,
    PROGRESSIONS,
    TAG_NAMES,
    TEMPO_RANGE,
    TIMBRES,
    add,
    chords,
    drums,
    finish,
    melody,
    render_note,
    scale_midi,
)

SR = SAMPLE_RATE
CORPUS_VERSION = 1
"""Bumped whenever the generator's output changes, so that stale caches are not reused."""

# --------------------------------------------------------------------------------------------------
# Pretraining pieces and probe tasks

ProbeTask = Callable[[np.random.Generator, int, float], tuple[np.ndarray, Any]]
"""(item rng, item index, clip seconds) -> (audio (T,) float32, JSON-able label)."""
PROBE_TASKS: dict[str, ProbeTask] = {}
"""Probe task name -> clip generator. Classification tasks derive the class from the index (balanced)."""


def _probe_task(name: str) -> Callable[[ProbeTask], ProbeTask]:
    def register(fn: ProbeTask) -> ProbeTask:
        if name in PROBE_TASKS:
            raise ValueError(f"probe task {name!r} is registered twice")
        PROBE_TASKS[name] = fn
        return fn

    return register


def _pick(rng: np.random.Generator, options: Sequence[Any] | np.ndarray) -> Any:
    return options[int(rng.integers(len(options)))]


def synth_piece(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A pretraining piece: melody + chords with bass + (mostly) drums in a random key, tempo and timbres."""
    tonic, minor, beat = int(rng.integers(12)), bool(rng.random() < 0.5), 60.0 / rng.uniform(80, 160)
    lead, pad, bass = (TIMBRES[i] for i in rng.choice(len(TIMBRES), 3, replace=False))
    buf, start = np.zeros(round(seconds * SR)), rng.uniform(0, beat)
    progression = _pick(rng, PROGRESSIONS[minor])
    bars = int(np.ceil(seconds / (4 * beat)))
    chords(buf, rng, pad, tonic, minor, (progression * bars)[:bars], start, 4 * beat, bass=bass)
    melody(buf, rng, lead, tonic, minor, start, seconds, beat)
    if rng.random() < 0.8:
        drums(buf, rng, beat, start)
    return finish(buf)


@_probe_task("synth_pitch")
def synth_pitch(rng: np.random.Generator, index: int, seconds: float) -> tuple[np.ndarray, int]:
    """One note of a random timbre and octave (MIDI 48..83); label = pitch class 0..11 (C = 0)."""
    pitch_class = index % 12
    buf = np.zeros(round(seconds * SR))
    note = render_note(
        _pick(rng, TIMBRES), pitch_class + 12 * int(rng.integers(4, 7)), seconds * rng.uniform(0.6, 0.85)
    )
    add(buf, note, rng.uniform(0.0, 0.05))
    return finish(buf), pitch_class


@_probe_task("synth_key")
def synth_key(rng: np.random.Generator, index: int, seconds: float) -> tuple[np.ndarray, str]:
    """A progression (the tonic for its first two and last chords) with bass and melody; label e.g. 'F# minor'."""
    key = index % 24
    tonic, minor = key % 12, key >= 12
    degrees = (0, *_pick(rng, PROGRESSIONS[minor]), 0)
    buf, length = np.zeros(round(seconds * SR)), seconds / len(degrees)
    chords(buf, rng, _pick(rng, TIMBRES), tonic, minor, degrees, 0.0, length, bass=_pick(rng, TIMBRES))
    melody(buf, rng, _pick(rng, TIMBRES), tonic, minor, 0.0, seconds, length / 2)
    return finish(buf), KEY_NAMES[key]


@_probe_task("synth_instrument")
def synth_instrument(rng: np.random.Generator, index: int, seconds: float) -> tuple[np.ndarray, int]:
    """One timbre playing a short melody; label = index into TIMBRE_NAMES."""
    timbre = index % len(TIMBRES)
    buf = np.zeros(round(seconds * SR))
    beat = 60.0 / rng.uniform(80, 140)
    melody(
        buf, rng, TIMBRES[timbre], int(rng.integers(12)), bool(rng.random() < 0.5), 0.0, seconds, beat, 55, 79
    )
    return finish(buf), timbre


@_probe_task("synth_tags")
def synth_tags(rng: np.random.Generator, index: int, seconds: float) -> tuple[np.ndarray, list[int]]:
    """1..3 timbres (melody, chords, low melody) and maybe drums; label = sorted indices into TAG_NAMES."""
    present = [int(i) for i in rng.choice(len(TIMBRES), int(rng.integers(1, 4)), replace=False)]
    tonic, minor, beat = int(rng.integers(12)), bool(rng.random() < 0.5), 60.0 / rng.uniform(80, 160)
    buf = np.zeros(round(seconds * SR))
    melody(buf, rng, TIMBRES[present[0]], tonic, minor, 0.0, seconds, beat)
    if len(present) > 1:
        degrees = _pick(rng, PROGRESSIONS[minor])
        chords(buf, rng, TIMBRES[present[1]], tonic, minor, degrees, 0.0, seconds / len(degrees))
    if len(present) > 2:
        melody(buf, rng, TIMBRES[present[2]], tonic, minor, 0.0, seconds, beat, 43, 60)
    if rng.random() < 0.5:
        drums(buf, rng, beat, rng.uniform(0, beat))
        present.append(TAG_NAMES.index("drums"))
    return finish(buf), sorted(present)


@_probe_task("synth_beat")
def synth_beat(rng: np.random.Generator, index: int, seconds: float) -> tuple[np.ndarray, list[float]]:
    """A drum pattern (and half the time a bass line on the beats); label = beat times in seconds."""
    beat = 60.0 / rng.uniform(*TEMPO_RANGE)
    buf = np.zeros(round(seconds * SR))
    times = drums(buf, rng, beat, rng.uniform(0, beat))
    if rng.random() < 0.5:
        bass, notes = _pick(rng, TIMBRES), scale_midi(int(rng.integers(12)), bool(rng.random() < 0.5), 36, 52)
        for at in times:
            add(buf, render_note(bass, int(_pick(rng, notes)), beat * 0.7), at, 0.6)
    return finish(buf), times


@_probe_task("synth_tempo")
def synth_tempo(rng: np.random.Generator, index: int, seconds: float) -> tuple[np.ndarray, float]:
    """Drums and one chord per bar at a random tempo; label = tempo in BPM (regression)."""
    tempo = round(float(rng.uniform(*TEMPO_RANGE)), 2)
    beat, tonic, minor = 60.0 / tempo, int(rng.integers(12)), bool(rng.random() < 0.5)
    buf, offset = np.zeros(round(seconds * SR)), rng.uniform(0, 60.0 / tempo)
    drums(buf, rng, beat, offset)
    bar_start = offset - beat * int(rng.integers(4))
    bars = int(np.ceil((seconds - bar_start) / (4 * beat)))
    degrees = (_pick(rng, PROGRESSIONS[minor]) * bars)[:bars]
    chords(buf, rng, _pick(rng, TIMBRES), tonic, minor, degrees, bar_start, 4 * beat)
    return finish(buf), tempo


# --------------------------------------------------------------------------------------------------
# Writing and reading the corpus

SPLITS = (("train", 0.70), ("valid", 0.85), ("test", 1.0))
"""Split names with the upper end of their share of each class."""


def item_rng(seed: int, task: str, index: int) -> np.random.Generator:
    """The generator of one item: depends only on (seed, task, index)."""
    return np.random.default_rng([seed % 2**63, zlib.crc32(task.encode()), index])


def corpus_dir(cfg: SyntheticCorpusConfig, root: str | Path) -> Path:
    """Where `generate_corpus` puts the corpus of `cfg`: `root/synthetic-<hash of version + cfg>`."""
    digest = hashlib.sha256(f"v{CORPUS_VERSION}:{cfg.model_dump_json()}".encode()).hexdigest()[:12]
    return Path(root).resolve() / f"synthetic-{digest}"


def probe_task_dir(corpus_dir: str | Path, task: str) -> Path:
    """Folder of one probe task (`labels.jsonl`, `audio/`) inside a generated corpus."""
    if task not in PROBE_TASKS:
        raise ValueError(f"unknown synthetic probe task {task!r}; known: {', '.join(PROBE_TASKS)}")
    return Path(corpus_dir) / "probe" / task


def assign_splits(labels: Sequence[Any]) -> list[str]:
    """70/15/15 train/valid/test in index order, stratified when labels are classes (int or str).

    Items are ranked within their class, classes are interleaved by relative rank, and the interleaved
    order is cut at 70% and 85%: exact shares overall, each class within one item of its share.
    """
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label if isinstance(label, (int, str)) else None, []).append(i)
    order = sorted((rank / len(members), i) for members in groups.values() for rank, i in enumerate(members))
    splits = [""] * len(labels)
    for position, (_, i) in enumerate(order):
        splits[i] = next(name for name, upper in SPLITS if position < round(upper * len(labels)))
    return splits


def _remove_stale_tmp(final: Path) -> None:
    """Delete the temporary folders of corpus writes on this host whose process is gone (killed mid-write:
    `finally` never ran); writes of live processes and of other hosts (a shared mount) are left alone."""
    host = socket.gethostname()
    prefix = f".{final.name}.tmp-"
    for tmp in final.parent.glob(f"{prefix}*"):
        parts = tmp.name[len(prefix):].rsplit("-", 2)  # host, pid, random hex
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def generate_corpus(cfg: SyntheticCorpusConfig, root: str | Path) -> Path:
    """Generate the corpus of `cfg` under `root` (or reuse it) and return its folder.

    The corpus is written to a temporary sibling and moved into place in one `os.replace`, so an
    interrupted run leaves no half corpus behind; a folder with a `DONE` marker is returned at once.

    Raises:
        FileExistsError: The target folder exists without a `DONE` marker (not written by this function).
    """
    final = corpus_dir(cfg, root)
    return build_once(final, lambda tmp: _write_corpus(cfg, tmp, final))


def build_once(final: Path, write: Callable[[Path], None]) -> Path:
    """`final`, written by `write(tmp)` into a temporary sibling (which must end with a `DONE` marker) and moved
    into place in one `os.replace`, unless it is already there: an interrupted build leaves nothing half-written
    behind, and of two concurrent builders the first to finish wins.

    Raises:
        FileExistsError: `final` exists without a `DONE` marker (not written by this function).
    """
    if (final / "DONE").is_file():
        return final
    if final.exists():
        raise FileExistsError(f"{final}: exists but has no DONE marker, so it is not a finished build; "
                              "delete it and run again")
    _remove_stale_tmp(final)
    tmp = final.with_name(f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "DONE").is_file():  # not a concurrent writer that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _write_corpus(cfg: SyntheticCorpusConfig, out: Path, final: Path) -> None:
    total = cfg.num_pieces + cfg.probe_clips * len(PROBE_TASKS)
    with tqdm(total=total, desc=f"synthetic corpus {final.name}", unit="clip") as bar:
        entries = []
        for i in range(cfg.num_pieces):
            name = f"piece_{i:05d}.wav"
            audio = synth_piece(item_rng(cfg.seed, "pretrain", i), cfg.piece_seconds)
            write_wav(out / "pretrain" / name, audio)
            entries.append((name, len(audio)))
            bar.update()
        write_manifest(out / "pretrain" / "train.tsv", final / "pretrain", entries)
        for task, make in PROBE_TASKS.items():
            labels = []
            for i in range(cfg.probe_clips):
                audio, label = make(item_rng(cfg.seed, task, i), i, cfg.clip_seconds)
                write_wav(out / "probe" / task / "audio" / f"{task}_{i:05d}.wav", audio)
                labels.append(label)
                bar.update()
            rows = [
                {"path": f"audio/{task}_{i:05d}.wav", "split": split, "label": label}
                for i, (label, split) in enumerate(zip(labels, assign_splits(labels), strict=True))
            ]
            (out / "probe" / task / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "config.json").write_text(
        json.dumps({"version": CORPUS_VERSION, **cfg.model_dump()}, indent=2) + "\n"
    )
    (out / "DONE").write_text("")


def load_labels(task_dir: str | Path) -> list[dict[str, Any]]:
    """Read `labels.jsonl` of a probe task folder: one `{"path", "split", "label"}` dict per clip.

    Raises:
        ValueError: The file is missing, or a line is not such a JSON object (the message gives the line).
    """
    path = Path(task_dir) / "labels.jsonl"
    if not path.is_file():
        raise ValueError(f"{path}: labels not found; generate the corpus with generate_corpus()")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not {"path", "split", "label"} <= row.keys():
            raise ValueError(
                f"{path}: line {number}: expected an object with path, split and label, got {line!r}"
            )
        if row["split"] not in ("train", "valid", "test"):
            raise ValueError(
                f"{path}: line {number}: split must be train, valid or test, got {row['split']!r}"
            )
        rows.append(row)
    return rows
