"""Real-music probe tasks that need no download: music21's corpus of scores, rendered with a General MIDI soundfont.

The scores come from the `music21` package (its bundled corpus), the soundfont is `TimGM6mb.sf2` from the
`pretty_midi` package and `midirenderer` (a self-contained Rust SoundFont synthesiser) renders MIDI bytes to audio;
nothing is fetched at run time. Two tasks:

- `music21_key`: 24 keys. Bach chorales whose MusicXML states its key with a mode (`<key><fifths><mode>`: the
  score's own key, not an analysis), the opening and the closing phrase of each (both in the home key), each
  excerpt transposed so that every split holds each tonic of a mode about equally often; label = the transposed key.
- `music21_composer`: Bach (chorales), Palestrina (mass movements), Monteverdi (madrigals), Mozart (string
  quartet movements); excerpts from random places in each piece.

Every excerpt is `clip_seconds` long, at a tempo and with one General MIDI program for all its voices drawn from
the excerpt's own generator (independent of its class, so neither gives the answer away). Splits are 70/15/15 by
piece (a file of the corpus), stratified by the piece's key or composer: no piece is in two splits. Layout, the
synthetic corpus's (`corpus.py`), cached under `root/realmusic-<hash>` with a `DONE` marker; the hash covers
`REALMUSIC_VERSION`, the config and the versions of music21 and midirenderer and the soundfont's digest:

    realmusic-<hash>/DONE, config.json
    realmusic-<hash>/probe/<task>/audio/<task>_00000.wav ..., labels.jsonl   (+ piece, start, transpose, program)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import soundfile as sf
import soxr
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from musicssl.data.audio import SAMPLE_RATE, write_wav
from musicssl.data.corpus import assign_splits, build_once, item_rng
from musicssl.data.synth import KEY_NAMES, finish

REALMUSIC_VERSION = 1
"""Bumped whenever the builder's output changes, so that stale caches are not reused."""
TASKS = ("music21_key", "music21_composer")
COMPOSERS = ("bach", "palestrina", "monteverdi", "mozart")
"""`music21_composer` classes, in label order; each is a music21 corpus composer."""
PROGRAMS = (0, 6, 19, 48)
"""General MIDI programs an excerpt is played with: piano, harpsichord, church organ, string ensemble."""
TEMPO_RANGE = (80.0, 110.0)
"""Quarter notes per minute of an excerpt."""


class RealMusicConfig(BaseModel):
    """Size of the real-music tasks (the defaults build in well under a minute on one core)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    seed: int = 0
    """Seed of every excerpt's generator: the same seed gives byte-identical audio."""
    clip_seconds: Annotated[float, Field(gt=1.0)] = 4.0
    """Length of each excerpt."""
    key_pieces: Annotated[int, Field(ge=8)] = 96
    """Bach chorales of `music21_key` (two excerpts each: opening and closing phrase)."""
    composer_pieces: Annotated[int, Field(ge=4)] = 24
    """Pieces per composer of `music21_composer` (fewer where the corpus has fewer)."""
    composer_clips: Annotated[int, Field(ge=4)] = 48
    """Excerpts per composer of `music21_composer`, spread evenly over its pieces."""


@dataclass(frozen=True)
class Score:
    """The notes of one corpus file: onsets and durations in quarter notes, MIDI pitches."""

    piece: str
    """Path inside music21's corpus, e.g. `bach/bwv10.7.mxl`."""
    notes: np.ndarray  # (N, 3): onset, duration, pitch
    length: float
    key: tuple[int, bool] | None
    """(tonic pitch class, minor) of the score's first key with a stated mode; None when it has none."""


def soundfont_path() -> Path:
    """The General MIDI soundfont shipped inside the `pretty_midi` package."""
    return Path(str(importlib.resources.files("pretty_midi") / "TimGM6mb.sf2"))


def realmusic_dir(cfg: RealMusicConfig, root: str | Path) -> Path:
    """Where `build_realmusic` puts the tasks of `cfg`: `root/realmusic-<hash>`."""
    versions = {p: importlib.metadata.version(p) for p in ("music21", "midirenderer")}
    sf2 = hashlib.sha256(soundfont_path().read_bytes()).hexdigest()
    text = f"v{REALMUSIC_VERSION}:{cfg.model_dump_json()}:{json.dumps(versions, sort_keys=True)}:{sf2}"
    return Path(root).resolve() / f"realmusic-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def build_realmusic(root: str | Path, cfg: RealMusicConfig | None = None) -> Path:
    """Build the real-music tasks under `root` (or reuse them) and return their folder.

    Written to a temporary sibling and moved into place in one `os.replace`, as `generate_corpus` does.

    Raises:
        FileExistsError: The target folder exists without a `DONE` marker (not written by this function).
    """
    cfg = cfg or RealMusicConfig()
    final = realmusic_dir(cfg, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    return build_once(final, lambda tmp: _write_tasks(cfg, tmp, final.name))


def task_dir(folder: str | Path, task: str) -> Path:
    """Folder of one real-music task (`labels.jsonl`, `audio/`) inside a built `realmusic-<hash>` folder."""
    if task not in TASKS:
        raise ValueError(f"unknown real-music task {task!r}; known: {', '.join(TASKS)}")
    return Path(folder) / "probe" / task


# --------------------------------------------------------------------------------------------------
# Choosing pieces and excerpts


def _load_score(piece: str) -> Score:
    from music21 import corpus, key

    score = corpus.parse(piece)
    notes = [note for part in score.parts for note in _tied_notes(part.flatten().notes)]
    found = next((k for k in score.recurse().getElementsByClass(key.Key) if k.mode in ("major", "minor")), None)
    home = (found.tonic.pitchClass, found.mode == "minor") if found is not None else None
    return Score(piece, np.array(sorted(notes), dtype=np.float64).reshape(-1, 3), float(score.highestTime), home)


def _tied_notes(notes: Any) -> list[tuple[float, float, int]]:
    """(onset, duration, pitch) of one part's notes and chords, tied notes joined (music21's stripTies, 5x faster)."""
    out: list[list[float]] = []
    open_ties: dict[int, int] = {}  # pitch -> index in `out` of its note still tied over
    for n in notes:
        if n.quarterLength <= 0:  # grace notes
            continue
        onset, duration = float(n.offset), float(n.quarterLength)
        for part in getattr(n, "notes", None) or (n,):  # a chord's notes carry their own ties
            pitch, tie = part.pitch.midi, part.tie if part.tie is not None else n.tie
            held = open_ties.pop(pitch, None)
            if held is not None and tie is not None and tie.type in ("continue", "stop"):
                out[held][1] = onset + duration - out[held][0]
            else:
                held = len(out)
                out.append([onset, duration, pitch])
            if tie is not None and tie.type in ("start", "continue"):
                open_ties[pitch] = held
    return [(a, b, int(c)) for a, b, c in out]


def _corpus_files(composer: str) -> list[str]:
    """Scores of `composer` in music21's corpus (MusicXML or Humdrum, no analyses), sorted, as corpus paths."""
    from music21 import corpus

    files = []
    for path in corpus.getComposer(composer):
        rel = Path(path).as_posix().split("/corpus/")[-1]
        if rel.endswith((".mxl", ".krn")) and (composer != "bach" or Path(rel).name.startswith("bwv")):
            files.append(rel)
    return sorted(files)


def _pick_pieces(composer: str, count: int, need_key: bool, bar: tqdm) -> list[Score]:
    """The first `count` usable scores of `composer` (with a stated key and mode when `need_key`)."""
    scores: list[Score] = []
    for piece in _corpus_files(composer):
        if len(scores) == count:
            break
        score = _load_score(piece)
        if len(score.notes) and (score.key is not None or not need_key):
            scores.append(score)
            bar.update()
    if len(scores) < min(count, 4):
        raise RuntimeError(f"music21's corpus has only {len(scores)} usable {composer} scores; expected {count}")
    return scores


def _piece_splits(count: int) -> list[str]:
    """70/15/15 train/valid/test in index order, at least one piece in each split (count >= 3)."""
    held_out = max(1, round(0.15 * count))
    return ["train"] * (count - 2 * held_out) + ["valid"] * held_out + ["test"] * held_out


@dataclass(frozen=True)
class Excerpt:
    score: Score
    start: float  # quarter notes
    bpm: float
    transpose: int
    program: int
    label: Any
    split: str


def _excerpt_plan(rng: np.random.Generator, score: Score, seconds: float, where: str) -> tuple[float, float, int]:
    """(start in quarters, tempo, program): `where` = opening, closing or random (on a beat)."""
    bpm = float(rng.uniform(*TEMPO_RANGE))
    span = seconds * bpm / 60.0
    last = max(0.0, score.length - span)
    start = {"opening": 0.0, "closing": float(np.floor(last)), "random": float(rng.integers(0, int(last) + 1))}[where]
    return start, bpm, int(PROGRAMS[int(rng.integers(len(PROGRAMS)))])


def _key_excerpts(cfg: RealMusicConfig, scores: list[Score]) -> list[Excerpt]:
    splits = assign_splits([KEY_NAMES[s.key[0] + 12 * s.key[1]] for s in scores if s.key is not None])
    excerpts, index = [], 0
    for split in ("train", "valid", "test"):
        counts = [0, 0]  # per mode: the next tonic of the cycle, so each split covers every tonic evenly
        offsets = item_rng(cfg.seed, f"music21_key:{split}", 0).integers(12, size=2)
        for score, score_split in zip(scores, splits, strict=True):
            if score_split != split or score.key is None:
                continue
            tonic, minor = score.key
            for where in ("opening", "closing"):
                target = int(offsets[int(minor)] + 7 * counts[minor]) % 12  # steps of a fifth cover all 12
                counts[minor] += 1
                start, bpm, program = _excerpt_plan(item_rng(cfg.seed, "music21_key", index), score,
                                                    cfg.clip_seconds, where)
                shift = (target - tonic + 6) % 12 - 6  # in -6..5
                excerpts.append(Excerpt(score, start, bpm, shift, program, KEY_NAMES[target + 12 * minor], split))
                index += 1
    return excerpts


def _composer_excerpts(cfg: RealMusicConfig, bar: tqdm, bach: list[Score]) -> list[Excerpt]:
    excerpts, index = [], 0
    for composer in COMPOSERS:
        scores = bach[:cfg.composer_pieces] if composer == "bach" else _pick_pieces(
            composer, cfg.composer_pieces, need_key=False, bar=bar)
        splits = _piece_splits(len(scores))
        for k in range(cfg.composer_clips):
            score = scores[k % len(scores)]
            start, bpm, program = _excerpt_plan(item_rng(cfg.seed, "music21_composer", index), score,
                                                cfg.clip_seconds, "random")
            excerpts.append(Excerpt(score, start, bpm, 0, program, composer, splits[k % len(scores)]))
            index += 1
    return excerpts


# --------------------------------------------------------------------------------------------------
# Rendering and writing


def render_excerpt(excerpt: Excerpt, seconds: float, soundfont: bytes) -> np.ndarray:
    """The excerpt's notes as one General MIDI program, rendered and cut to `seconds` at 16 kHz mono: (T,)."""
    import midirenderer
    import pretty_midi

    span = seconds * excerpt.bpm / 60.0
    quarter = 60.0 / excerpt.bpm
    midi = pretty_midi.PrettyMIDI(initial_tempo=excerpt.bpm)
    instrument = pretty_midi.Instrument(program=excerpt.program)
    for onset, duration, pitch in excerpt.score.notes:
        on, off = max(onset - excerpt.start, 0.0), min(onset + duration - excerpt.start, span)
        if off > on:
            instrument.notes.append(pretty_midi.Note(velocity=80, pitch=int(pitch) + excerpt.transpose,
                                                     start=on * quarter, end=off * quarter))
    if not instrument.notes:
        raise ValueError(f"{excerpt.score.piece}: no notes from quarter {excerpt.start} on")
    midi.instruments.append(instrument)
    buffer = io.BytesIO()
    midi.write(buffer)
    wav, rate = sf.read(io.BytesIO(midirenderer.render_wave_from(soundfont, buffer.getvalue())), dtype="float64")
    mono = wav.mean(axis=1) if wav.ndim == 2 else wav
    audio = np.zeros(round(seconds * SAMPLE_RATE))
    resampled = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")[:len(audio)]
    audio[:len(resampled)] = resampled
    return finish(audio)


def _write_tasks(cfg: RealMusicConfig, out: Path, name: str) -> None:
    soundfont = soundfont_path().read_bytes()
    with tqdm(desc=f"real-music tasks {name}: scores", unit="score") as bar:
        bach = _pick_pieces("bach", max(cfg.key_pieces, cfg.composer_pieces), need_key=True, bar=bar)
        key = _key_excerpts(cfg, bach[:cfg.key_pieces])
        composer = _composer_excerpts(cfg, bar, bach)
    for task, excerpts in zip(TASKS, (key, composer), strict=True):
        rows = []
        for i, excerpt in enumerate(tqdm(excerpts, desc=f"real-music tasks {name}: {task}", unit="clip")):
            path = f"audio/{task}_{i:05d}.wav"
            write_wav(out / "probe" / task / path, render_excerpt(excerpt, cfg.clip_seconds, soundfont))
            rows.append({"path": path, "split": excerpt.split, "label": excerpt.label, "piece": excerpt.score.piece,
                         "start": excerpt.start, "transpose": excerpt.transpose, "program": excerpt.program})
        (out / "probe" / task / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "config.json").write_text(json.dumps({"version": REALMUSIC_VERSION, **cfg.model_dump()}, indent=2) + "\n")
    (out / "DONE").write_text("")
