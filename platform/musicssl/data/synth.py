"""Sound and music building blocks of the synthetic corpus (`data/corpus.py`): timbres, envelopes, notes and
drums, then keys, chords, melodies and drum patterns. Pure numpy at 16 kHz; randomness only through the
generator a caller passes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from musicssl.data.audio import SAMPLE_RATE

SR = SAMPLE_RATE

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
