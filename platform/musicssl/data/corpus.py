"""The embedded synthetic music corpus: polyphonic pieces for pretraining and labelled probe clips.

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

import functools
import hashlib
import json
import os
import shutil
import socket
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from musicssl.config import SyntheticCorpusConfig
from musicssl.data.audio import SAMPLE_RATE, write_wav
from musicssl.data.manifest import write_manifest

SR = SAMPLE_RATE
CORPUS_VERSION = 1
"""Bumped whenever the generator's output changes, so that stale caches are not reused."""

# --------------------------------------------------------------------------------------------------
# Sound building blocks: timbres, envelopes, notes, drums


@dataclass(frozen=True)
class Timbre:
    """A synthetic instrument: partials (frequency ratio, amplitude) and an envelope."""

    name: str
    """Instrument name (the `synth_instrument` / `synth_tags` class name)."""
    ratios: tuple[float, ...]
    """Partial frequencies as multiples of the note's frequency (all integers = harmonic, wavetable)."""
    amps: tuple[float, ...]
    """Amplitude of each partial."""
    attack: float
    """Seconds to full level."""
    decay: float
    """Sustained timbres: seconds from full level to `sustain`; percussive ones: exponential time constant."""
    sustain: float
    """Level held until note-off; 0 marks a percussive timbre (exponential decay)."""
    release: float
    """Seconds of fade after note-off."""


def _harmonics(
    count: int, power: float, odd_only: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    ns = [n for n in range(1, count + 1) if not odd_only or n % 2]
    return tuple(float(n) for n in ns), tuple(n**-power for n in ns)


TIMBRES = (
    Timbre("flute", (1.0, 2.0, 3.0, 4.0), (1.0, 0.22, 0.07, 0.03), 0.06, 0.1, 0.85, 0.08),
    Timbre("string", *_harmonics(40, 1.0), 0.09, 0.15, 0.9, 0.12),
    Timbre("clarinet", *_harmonics(40, 1.0, odd_only=True), 0.03, 0.05, 0.9, 0.06),
    Timbre("pluck", *_harmonics(24, 1.6), 0.003, 0.22, 0.0, 0.05),
    Timbre("bell", (1.0, 2.76, 5.40, 8.93), (1.0, 0.45, 0.25, 0.12), 0.002, 0.7, 0.0, 0.1),
    Timbre("organ", (1.0, 2.0, 3.0, 4.0, 6.0, 8.0), (1.0, 0.5, 0.45, 0.3, 0.15, 0.12), 0.01, 0.02, 1.0, 0.04),
)
TABLE_SIZE = 2048


def midi_to_hz(midi: float) -> float:
    """Equal-tempered frequency of a MIDI note (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _wavetable(timbre: Timbre, freq: float) -> np.ndarray:
    """One period of the timbre's harmonic partials below 0.45 * SR (no aliasing), wrapped: (TABLE_SIZE + 1,)."""
    return _table(timbre, sum(r * freq < 0.45 * SR for r in timbre.ratios))


@functools.lru_cache(maxsize=256)
def _table(timbre: Timbre, partials: int) -> np.ndarray:
    x = np.arange(TABLE_SIZE + 1) / TABLE_SIZE
    pairs = zip(timbre.ratios[:partials], timbre.amps[:partials], strict=True)
    table = sum((a * np.sin(2 * np.pi * r * x) for r, a in pairs), np.zeros(TABLE_SIZE + 1))
    table.flags.writeable = False  # shared by every note
    return table


def _oscillate(timbre: Timbre, freq: float, n: int) -> np.ndarray:
    """n samples of the timbre's steady tone at `freq`: wavetable lookup, or summed sines when inharmonic."""
    if all(r == int(r) for r in timbre.ratios):
        table = _wavetable(timbre, freq)
        phase = (np.arange(n) * (freq * TABLE_SIZE / SR)) % TABLE_SIZE
        i0 = phase.astype(np.int64)
        return table[i0] + (phase - i0) * (table[i0 + 1] - table[i0])
    t = np.arange(n) * (2 * np.pi * freq / SR)
    return sum(
        (a * np.sin(r * t) for r, a in zip(timbre.ratios, timbre.amps, strict=True) if r * freq < 0.45 * SR),
        np.zeros(n),
    )


def envelope(timbre: Timbre, seconds: float) -> np.ndarray:
    """Amplitude envelope of a note held for `seconds`, release included: (round((seconds + release) * SR),)."""
    t = np.arange(round((seconds + timbre.release) * SR)) / SR
    rise = np.clip(t / timbre.attack, 0.0, 1.0)
    fall = np.clip((seconds + timbre.release - t) / timbre.release, 0.0, 1.0)
    if timbre.sustain > 0:  # ADSR
        body = np.interp(t, [timbre.attack, timbre.attack + timbre.decay], [1.0, timbre.sustain])
    else:  # percussive: exponential decay from the attack peak
        body = np.exp(-np.maximum(t - timbre.attack, 0.0) / timbre.decay)
    return rise * body * fall


def render_note(timbre: Timbre, midi: float, seconds: float, velocity: float = 1.0) -> np.ndarray:
    """One note with its envelope, peak about `velocity`: (round((seconds + release) * SR),)."""
    env = envelope(timbre, seconds)
    return velocity / sum(timbre.amps) * _oscillate(timbre, midi_to_hz(midi), len(env)) * env


def _noise_hit(rng: np.random.Generator, seconds: float, tau: float, highpass: int) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    noise = rng.standard_normal(len(t) + highpass)
    noise = np.diff(noise, n=highpass) / 2.0**highpass if highpass else noise[: len(t)]
    return noise * np.exp(-t / tau)


def drum_kit(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A kick (decaying low sine sweep), a snare (noise burst + tone) and a hi-hat (high-passed noise)."""
    t = np.arange(round(0.35 * SR)) / SR
    sweep = 45.0 + rng.uniform(80, 130) * np.exp(-t / 0.035)  # Hz
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / SR) * np.exp(-t / 0.11)
    tone = np.sin(2 * np.pi * rng.uniform(170, 220) * t[: round(0.2 * SR)]) * np.exp(
        -t[: round(0.2 * SR)] / 0.06
    )
    snare = 0.5 * tone + 0.5 * _noise_hit(rng, 0.2, 0.05, highpass=1)
    hat = 0.8 * _noise_hit(rng, 0.06, 0.012, highpass=3)
    return {"kick": kick, "snare": snare, "hat": hat}


def add(buf: np.ndarray, sound: np.ndarray, start: float, gain: float = 1.0) -> None:
    """Mix `sound` into `buf` from `start` seconds (may be negative), cut at both ends."""
    first = round(start * SR)
    if first < 0:
        sound, first = sound[-first:], 0
    end = min(len(buf), first + len(sound))
    if end > first:
        buf[first:end] += gain * sound[: end - first]


def finish(buf: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Peak-normalise a mix to `peak`, as float32."""
    top = float(np.abs(buf).max())
    return (buf * (peak / top) if top > 0 else buf).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Music: keys, chords, melodies, drum patterns

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
KEY_NAMES = tuple(f"{n} {m}" for m in ("major", "minor") for n in NOTE_NAMES)
"""The 24 `synth_key` labels in mir_eval spelling; index = tonic + 12 * minor."""
TIMBRE_NAMES = tuple(t.name for t in TIMBRES)
"""`synth_instrument` labels are indices into this tuple."""
TAG_NAMES = (*TIMBRE_NAMES, "drums")
"""`synth_tags` labels are indices into this tuple."""
TEMPO_RANGE = (70.0, 180.0)
"""BPM range of `synth_beat` and `synth_tempo`."""
SPLITS = (("train", 0.70), ("valid", 0.85), ("test", 1.0))
"""Split names with the upper end of their share of each class."""
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: the major V and the leading tone mark the key
PROGRESSIONS = {  # scale degrees (0 = tonic); every progression opens on the tonic
    False: ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 1, 4, 0), (0, 3, 0, 4)),
    True: ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 5, 1, 4)),
}


def scale_midi(tonic: int, minor: bool, low: int, high: int) -> np.ndarray:
    """MIDI notes of the key's scale within [low, high]."""
    steps = MINOR if minor else MAJOR
    return np.array([m for m in range(low, high + 1) if (m - tonic) % 12 in steps])


def triad(tonic: int, minor: bool, degree: int, octave: int = 4) -> list[int]:
    """MIDI notes of the diatonic triad on `degree` (thirds stacked in the scale), root in `octave`."""
    steps = MINOR if minor else MAJOR
    base = 12 * (octave + 1) + tonic
    return [base + steps[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]


def chords(
    buf: np.ndarray,
    rng: np.random.Generator,
    timbre: Timbre,
    tonic: int,
    minor: bool,
    degrees: Sequence[int],
    start: float,
    length: float,
    bass: Timbre | None = None,
) -> None:
    """Play `degrees` as block triads of `length` seconds each from `start`, optionally with a root bass."""
    octave = int(rng.integers(3, 5))
    for i, degree in enumerate(degrees):
        at = start + i * length
        for note in triad(tonic, minor, degree, octave):
            add(buf, render_note(timbre, note, length * 0.95, rng.uniform(0.5, 0.7)), at)
        if bass is not None:
            add(buf, render_note(bass, triad(tonic, minor, degree, 2)[0], length * 0.9, 0.9), at)


def melody(
    buf: np.ndarray,
    rng: np.random.Generator,
    timbre: Timbre,
    tonic: int,
    minor: bool,
    start: float,
    seconds: float,
    beat: float,
    low: int = 60,
    high: int = 84,
) -> None:
    """A random walk on the key's scale from its tonic, in eighth, quarter and half notes, for `seconds`."""
    notes = scale_midi(tonic, minor, low, high)
    pos = int(np.argmin(np.abs(notes - (tonic + 12 * ((low + high) // 24)))))
    t = start
    while t < start + seconds:
        length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        add(buf, render_note(timbre, int(notes[pos]), length * 0.9, rng.uniform(0.7, 1.0)), t)
        pos = int(np.clip(pos + rng.choice([-2, -1, -1, 1, 1, 2]), 0, len(notes) - 1))
        t += length


def drums(buf: np.ndarray, rng: np.random.Generator, beat: float, offset: float) -> list[float]:
    """A rock pattern: kick on bar beats 1 and 3, snare on 2 and 4, hi-hat on eighths.

    The first beat falls at `offset` seconds (earlier hi-hats still sound); returns the beat times.
    """
    kit = drum_kit(rng)
    bar_pos = int(rng.integers(0, 4))  # which beat of the bar comes first
    seconds = len(buf) / SR
    times = []
    for k in range(-1, int((seconds - offset) / beat) + 1):
        at = offset + k * beat
        add(buf, kit["hat"], at + beat / 2, rng.uniform(0.3, 0.45))
        add(buf, kit["hat"], at, rng.uniform(0.35, 0.5))
        add(buf, kit["kick" if (bar_pos + k) % 2 == 0 else "snare"], at, rng.uniform(0.85, 1.0))
        if 0 <= at < seconds:
            times.append(round(at, 4))
    return times


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
